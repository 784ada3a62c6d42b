"""Checks on a composed config, so that bad input fails in one line before anything runs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from lit_tune.models import ACTIVATIONS


class ConfigError(ValueError):
    """Bad input; the message is one line that names the key and what it allows."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a ConfigError into `Error: <message>` on stderr and exit code 2."""
    try:
        yield
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)


def auto_precision() -> str:
    """bf16-mixed on a GPU that has bf16, else full fp32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


OmegaConf.register_resolver("lit_tune.precision", auto_precision, replace=True)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


Rule = tuple[Callable[[Any], bool], str]
POSITIVE_INT: Rule = (lambda v: _is_int(v) and v > 0, "an integer > 0")
NON_NEGATIVE_INT: Rule = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
POSITIVE: Rule = (lambda v: _is_number(v) and v > 0, "a number > 0")
NON_NEGATIVE: Rule = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
FRACTION: Rule = (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")
PROBABILITY: Rule = (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
BOOLEAN: Rule = (lambda v: isinstance(v, bool), "true or false")


def _one_of(*allowed: str) -> Rule:
    return (lambda v: v in allowed, "one of " + ", ".join(allowed))


def _list_of_positive_ints(v: Any) -> bool:
    return v is None or (isinstance(v, list) and len(v) > 0 and all(POSITIVE_INT[0](w) for w in v))


# Keys that a config may or may not have (model.width only exists for the MLP); a key
# that is absent is not checked.
RULES: dict[str, Rule] = {
    "seed": NON_NEGATIVE_INT,
    "compile": BOOLEAN,
    "objective.mode": _one_of("max", "min"),
    "data.batch_size": POSITIVE_INT,
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.loader": _one_of("device", "dataloader"),
    "data.num_workers": NON_NEGATIVE_INT,
    "data.shift": NON_NEGATIVE_INT,
    "model.hidden_layers": NON_NEGATIVE_INT,
    "model.width": POSITIVE_INT,
    "model.widths": (_list_of_positive_ints, "null or a non-empty list of integers > 0"),
    "model.taper": POSITIVE,
    "model.activation": _one_of(*ACTIVATIONS),
    "model.dropout": PROBABILITY,
    "model.channels": POSITIVE_INT,
    "model.depth": POSITIVE_INT,
    "model.kernel_size": POSITIVE_INT,
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": PROBABILITY,
    "scheduler.decay": NON_NEGATIVE,
    "scheduler.step_size": POSITIVE_INT,
    "scheduler.factor": FRACTION,
    "scheduler.s": POSITIVE,
    "scheduler.c": NON_NEGATIVE,
    "scheduler.max_lr": POSITIVE,
    "scheduler.patience": NON_NEGATIVE_INT,
    "scheduler.warmup_fraction": PROBABILITY,
    "trainer.max_epochs": POSITIVE_INT,
}


def check(cfg: DictConfig) -> None:
    """Raise ConfigError for a missing mandatory value or a value outside what its key allows."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(
            f"{error.full_key}: missing mandatory value; set it on the command line "
            f"({error.full_key}=...)"
        ) from None
    except InterpolationResolutionError as error:
        raise ConfigError(f"{error.full_key}: {str(error.msg).splitlines()[0]}") from None
    for key, (ok, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=KeyError)
        if value is KeyError:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_object(value)
        if not ok(value):
            raise ConfigError(f"{key}={value!r}: must be {allowed}")


def check_choices(args: list[str], conf_dir: Path) -> None:
    """Raise ConfigError for a command-line override that does not parse, or a `group=option`
    naming an option with no yaml. Hydra reports both too, but over a dozen lines."""
    conf_dirs = [conf_dir, *_extra_config_dirs(args)]
    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except HydraException as error:
            reason = str(error).strip().splitlines()
            raise ConfigError(f"{arg}: {reason[0] if reason else 'cannot parse'}") from None
        groups = [
            d / override.key_or_group for d in conf_dirs if (d / override.key_or_group).is_dir()
        ]
        if override.is_delete() or override.package or not groups:
            continue
        if override.is_choice_sweep():
            chosen = list(override.sweep_string_iterator())
        elif override.is_sweep_override():
            continue
        else:
            chosen = [override.get_value_element_as_str()]
        options = sorted({p.stem for group in groups for p in group.glob("*.yaml")})
        for option in chosen:
            if option not in options:
                raise ConfigError(
                    f"{override.key_or_group}={option}: no such option; one of {', '.join(options)}"
                )


def _extra_config_dirs(args: list[str]) -> list[Path]:
    """Folders added with --config-dir/-cd (Hydra searches them too)."""
    dirs = []
    for i, arg in enumerate(args):
        if arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
        elif arg in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(Path(args[i + 1]))
    return dirs
