"""Checks on a composed config, so that bad input fails in one line before anything runs."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import HydraException
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue


class ConfigError(ValueError):
    """Bad input; the message is one line that names the key and what it allows."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a ConfigError into `Error: <message>` on stderr and exit code 2."""
    try:
        yield
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)


# Set while a config is checked before the run imports torch (lit_tune/cli.py): the two
# resolvers that would import it give a stand-in (resolvers cache nothing: use_cache is off);
# the run checks its config again with the real values.
_LIGHT: ContextVar[bool] = ContextVar("lit_tune_light_check", default=False)


def auto_precision() -> str:
    """bf16-mixed on a GPU that has bf16, else full fp32."""
    if _LIGHT.get():
        return "32-true"
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


OmegaConf.register_resolver("lit_tune.precision", auto_precision, replace=True)


def objective_mode(metric: str, *, _root_: DictConfig) -> str:
    """max or min for `metric` (`objective.mode`'s default). A direction a config gave the
    sweeper itself (a stock hydra-optuna-sweeper block) decides it; else min for a loss, else
    what the torchmetrics metric of that name under `module.metrics` says of itself
    (higher_is_better). `val/acc_best` is judged as `acc`."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        given = given_direction(HydraConfig.get().sweeper)
        if given is not None:
            return {"maximize": "max", "minimize": "min"}.get(given, given)
    name = metric.rsplit("/", 1)[-1].removesuffix("_best")
    if "loss" in name:
        return "min"
    metrics = OmegaConf.select(_root_, "module.metrics", default=None)
    if not metrics:
        raise ConfigError(
            f"objective.mode: cannot tell whether a higher or a lower {metric} is better; "
            "set objective.mode=max or objective.mode=min"
        )
    if name not in metrics:
        known = ", ".join(["loss", *metrics])
        raise ConfigError(
            f"objective.metric={metric}: the module logs no {name!r}; it logs val/<name> and "
            f"val/<name>_best for {known} (add others under module.metrics)"
        )
    if _LIGHT.get():
        return "max"
    return "max" if _higher_is_better(metrics[name]) else "min"


def given_direction(sweeper: DictConfig | None) -> str | None:
    """The sweeper's (first) direction where a config gave it, not the interpolation from
    `objective.mode` that conf/hydra/sweeper/lit_tune.yaml puts there; None otherwise."""
    if sweeper is None or "direction" not in sweeper:
        return None
    settings = OmegaConf.to_container(sweeper, resolve=False)
    raw = settings["direction"] if isinstance(settings, dict) else None
    first = raw[0] if isinstance(raw, list) and raw else raw
    if first is None or "objective.mode" in str(first):
        return None
    return str(first).lower()


def _higher_is_better(node: DictConfig) -> bool:
    """A torchmetrics class's own `higher_is_better`; a task wrapper (Accuracy, F1Score, ...)
    says it once it has a task, which does not change it."""
    from hydra.utils import get_class

    from lit_tune.trust import is_trusted, trusted_targets

    target = str(node.get("_target_"))
    if not is_trusted(target, trusted_targets()):
        raise ConfigError(f"module.metrics: {target} is not trusted")
    metric = get_class(target)
    higher = getattr(metric, "higher_is_better", None)
    if higher is None:
        higher = getattr(metric(task="multiclass", num_classes=2), "higher_is_better", None)
    if higher is None:
        raise ConfigError(f"objective.mode: {target} does not say whether higher is better")
    return bool(higher)


OmegaConf.register_resolver("lit_tune.mode", objective_mode, replace=True)
# hydra.sweeper.direction from objective.mode: one fact, one key.
OmegaConf.register_resolver(
    "lit_tune.direction",
    lambda mode: {"max": "maximize", "min": "minimize"}.get(mode, mode),
    replace=True,
)


def sweeper_gpu_override(*, _root_: DictConfig) -> str | None:
    """hydra.sweeper.gpu_override: a GPU of its own for each parallel trial when the trainer
    asks for one device that may be a GPU; else None (trainer=cpu, or every GPU to each
    trial, as with DDP)."""
    trainer = OmegaConf.select(_root_, "trainer", default={})
    if trainer.get("devices") == 1 and trainer.get("accelerator") in ("auto", "gpu", "cuda"):
        return "trainer.devices=[{gpu}]"
    return None


def logs_to_mlflow(*, _root_: DictConfig) -> bool:
    """hydra.sweeper.mlflow.parent_run: whether the runs log to MLflow (logger=mlflow, alone
    or with others: logger=[mlflow,tensorboard])."""
    target = str(OmegaConf.select(_root_, "logger.mlflow._target_", default=""))
    return target.endswith(("mlflow_logger", "MLFlowLogger"))


OmegaConf.register_resolver("lit_tune.gpu_override", sweeper_gpu_override, replace=True)
OmegaConf.register_resolver("lit_tune.logs_to_mlflow", logs_to_mlflow, replace=True)


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


# The MLP's activations: their names in torch.nn (lit_tune/models.py), here without torch.
ACTIVATIONS = {
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
    "elu": "ELU",
    "gelu": "GELU",
    "selu": "SELU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
}

# Keys that a config may or may not have (model.width only exists for the MLP); a key
# that is absent is not checked.
RULES: dict[str, Rule] = {
    "seed": NON_NEGATIVE_INT,
    "ckpt_path": (lambda v: v is None or Path(to_absolute_path(v)).is_file(), "a file or null"),
    "compile": BOOLEAN,
    "objective.mode": _one_of("max", "min"),
    "data.batch_size": POSITIVE_INT,
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.loader": _one_of("device", "dataloader"),
    "data.num_workers": NON_NEGATIVE_INT,
    "data.shift": NON_NEGATIVE_INT,
    "module.steps_per_execution": POSITIVE_INT,
    "model.hidden_layers": NON_NEGATIVE_INT,
    "model.width": POSITIVE_INT,
    "model.widths": (_list_of_positive_ints, "null or a non-empty list of integers > 0"),
    "model.taper": POSITIVE,
    "model.activation": _one_of(*ACTIVATIONS),  # lit_tune/models.py
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
    "trainer.gradient_clip_val": (lambda v: v is None or NON_NEGATIVE[0](v), "null or >= 0"),
    "trainer.accumulate_grad_batches": POSITIVE_INT,
    "tune.lr_find": BOOLEAN,
    "tune.lr_find_args.min_lr": POSITIVE,
    "tune.lr_find_args.max_lr": POSITIVE,
    "tune.lr_find_args.num_training": POSITIVE_INT,
    "tune.scale_batch_size": BOOLEAN,
    "tune.scale_batch_size_args.mode": _one_of("power", "binsearch"),
    "tune.scale_batch_size_args.max_trials": POSITIVE_INT,
    "tune.scale_batch_size_args.max_val": POSITIVE_INT,
}

# The key each finder of `tune` sets for the run.
FINDERS = {"tune.lr_find": "optimizer.lr", "tune.scale_batch_size": "data.batch_size"}


# Where a `???` is filled from the datamodule (lit_tune/build.py), not a missing value.
FILLED = ("module", "model")


def check(cfg: DictConfig, *, light: bool = False) -> None:
    """Raise ConfigError for a missing mandatory value or a value outside what its key allows.
    `light`: without importing torch, which leaves out what needs it (trainer.precision, and
    whether a higher or a lower objective is better); the run checks those."""
    token = _LIGHT.set(light)
    try:
        _check(cfg)
    finally:
        _LIGHT.reset(token)


def _check(cfg: DictConfig) -> None:
    try:
        for key in cfg:
            node = cfg[key]
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True, throw_on_missing=key not in FILLED)
    except MissingMandatoryValue as error:
        raise ConfigError(
            f"{error.full_key}: missing mandatory value; set it on the command line "
            f"({error.full_key}=...)"
        ) from None
    except InterpolationResolutionError as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConfigError):  # one of our resolvers: names its key
            raise ConfigError(str(cause)) from None
        raise ConfigError(f"{error.full_key}: {str(error.msg).splitlines()[0]}") from None
    for key, (ok, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=KeyError)
        if value is KeyError:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_object(value)
        if not ok(value):
            raise ConfigError(f"{key}={value!r}: must be {allowed}")
    for finder, key in FINDERS.items():
        if OmegaConf.select(cfg, finder) and cfg.ckpt_path:
            raise ConfigError(
                f"{finder}=true: not with ckpt_path; a resumed run goes on with its {key}"
            )
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if not _LIGHT.get() and accelerator not in _accelerators():
        raise ConfigError(
            f"trainer.accelerator={accelerator!r}: one of {', '.join(_accelerators())} "
            "on this machine (auto takes the GPU when there is one)"
        )


def _accelerators() -> list[str]:
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found += ["gpu", "cuda"]
    if torch.backends.mps.is_available():
        found += ["mps"]
    return found


def check_choices(args: list[str], conf_dir: Path) -> None:
    """Raise ConfigError for a command-line override that does not parse, a `group=option`
    naming no option of the group, or a `key=value` naming no key of the composed config.
    Hydra reports all three too, but over a dozen lines."""
    if "--shell-completion" in args or "-sc" in args:
        return  # its arguments (install=bash, query=bash) are no overrides
    conf_dirs = [conf_dir, *_extra_config_dirs(args)]
    for extra in conf_dirs[1:]:
        _check_not_shadowed(extra, conf_dir)
    parser = OverridesParser.create()
    overrides = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            overrides.append(parser.parse_override(arg))
        except HydraException as error:
            raise ConfigError(f"{arg}: {first_line(error)}") from None
    with initialize_config_dir(str(conf_dir)):  # Hydra 1.4: version_base is deprecated
        loader = GlobalHydra.instance().config_loader()
        groups, keys = [], []
        for override in overrides:
            name = override.key_or_group
            dirs = [d / name for d in conf_dirs if (d / name).is_dir()]
            options = {p.stem for d in dirs for p in d.glob("*.yaml")}
            options |= set(loader.get_group_options(name))  # and those of plugins
            if options:
                if not (override.is_delete() or override.package):
                    _check_options(override, sorted(options))
                    groups.append(override)
            elif not (override.is_add() or override.is_force_add() or override.is_delete()):
                keys.append(name)
        # The config the groups make, to look the keys up in (a sweep's first choice of each).
        chosen = []
        if conf_dirs[1:]:  # --config-dir folders; Hydra's own search path otherwise
            chosen.append(
                f"hydra.searchpath=[{','.join(d.resolve().as_uri() for d in conf_dirs[1:])}]"
            )
        for o in groups:
            if not isinstance(o.value(), Glob) and (
                o.is_choice_sweep() or not o.is_sweep_override()
            ):
                prefix = "++" if o.is_force_add() else "+" if o.is_add() else ""
                chosen.append(f"{prefix}{o.key_or_group}={_first(o)}")
        try:
            cfg = compose("train", overrides=chosen, return_hydra_config=True)
        except HydraException as error:  # e.g. a group only another option brings in
            raise ConfigError("; ".join(str(error).strip().splitlines()[:2])) from None
    for key in keys:
        _check_key(cfg, key)
    _check_one_direction(overrides, cfg)
    if "-m" in args or "--multirun" in args:
        _check_finders_in_sweep(overrides, cfg)
    for override in overrides:
        if override.key_or_group in OUTPUT_DIRS and not override.is_sweep_override():
            _check_writable(override.key_or_group, override.get_value_element_as_str())


# Where a run writes; a bad one would fail with a traceback once the run has begun.
OUTPUT_DIRS = ("hydra.run.dir", "hydra.sweep.dir", "paths.mlruns", "paths.root")


def _check_writable(key: str, value: str) -> None:
    """Raise ConfigError unless the folder `value` (up to its first interpolation) can be made."""
    path = Path(value.split("${")[0] or ".").absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}={value}: cannot write there; {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value}: cannot write there; {existing} is not writable")


def _check_one_direction(overrides: list[Any], cfg: DictConfig) -> None:
    """Raise ConfigError where both the sweeper's direction and `objective.mode` are given
    and disagree. Given one, the other follows it: `objective.mode` fills the sweeper's
    direction (conf/hydra/sweeper/lit_tune.yaml), and a direction given to the sweeper (a
    stock hydra-optuna-sweeper block, `hydra.sweeper.direction=`) fills `objective.mode`."""
    given = {
        o.key_or_group: o.get_value_element_as_str() for o in overrides if not o.is_sweep_override()
    }
    mode = given.get("objective.mode")
    direction = given.get(_DIRECTION) or given_direction(
        OmegaConf.select(cfg, "hydra.sweeper", default=None)
    )
    if mode is None or direction is None:
        return
    if {"max": "maximize", "min": "minimize"}.get(mode) != direction.lower():
        raise ConfigError(
            f"{_DIRECTION}={direction}, objective.mode={mode}: give one of the two, the "
            "other follows it"
        )


_DIRECTION = "hydra.sweeper.direction"


def _check_finders_in_sweep(overrides: list[Any], cfg: DictConfig) -> None:
    """Raise ConfigError for a finder switched on in a sweep that searches the key it sets:
    the finder would replace each trial's choice, and the sweeper would learn nothing."""
    swept = {o.key_or_group for o in overrides if o.is_sweep_override()}
    swept |= set(OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {})
    given = {o.key_or_group: o.value() for o in overrides if not o.is_sweep_override()}
    for finder, key in FINDERS.items():
        if given.get(finder, OmegaConf.select(cfg, finder)) is True and key in swept:
            raise ConfigError(
                f"{finder}=true: not in a sweep that searches {key}; the finder would replace "
                f"each trial's {key}. Run it once without -m, then search around its value"
            )


def _first(override: Any) -> str:
    if override.is_choice_sweep():
        return str(next(iter(override.sweep_string_iterator())))
    return str(override.get_value_element_as_str())


def _check_options(override: Any, options: list[str]) -> None:
    if isinstance(override.value(), Glob):
        return
    if override.is_choice_sweep():
        chosen = list(override.sweep_iterator())
    elif override.is_sweep_override():
        return
    else:
        chosen = [override.value()]
    # `group=[a,b]` selects several options at once (logger=[mlflow,tensorboard]).
    for option in (str(o) for c in chosen for o in (c if isinstance(c, list) else [c])):
        if option not in options:
            raise ConfigError(
                f"{override.key_or_group}={option}: no such option; one of {', '.join(options)}"
            )


def _check_key(cfg: DictConfig, key: str) -> None:
    """Raise ConfigError naming the nearest existing node and its keys when `key` is not in cfg."""
    parts = key.split(".")
    node: Any = cfg
    depth = 0
    # keys(), not `in node`: OmegaConf's `in` is False for a key whose value is ??? (missing).
    while depth < len(parts) and isinstance(node, DictConfig) and parts[depth] in node.keys():  # noqa: SIM118
        node = node._get_node(parts[depth])
        depth += 1
    if depth == len(parts):
        return
    where = ".".join(parts[:depth]) or "the config"
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{key}: no such key; {where} is a value, not a group of keys")
    known = sorted(str(k) for k in node if not str(k).startswith("_"))
    close = difflib.get_close_matches(parts[depth], known, n=1)
    hint = f"did you mean {'.'.join([*parts[:depth], close[0]])}? " if close else ""
    raise ConfigError(
        f"{key}: no such key; {hint}{where} has {', '.join(known)} (+{key}=... adds one)"
    )


def _check_not_shadowed(extra: Path, ours: Path) -> None:
    """Raise ConfigError for a config of `extra` that one of lit_tune's would hide: Hydra
    searches lit_tune's folder first, so a user's conf/model/mlp.yaml would never be read."""
    for path in sorted(extra.rglob("*.yaml")):
        relative = path.relative_to(extra)
        if (ours / relative).is_file():
            group, option = relative.parent.as_posix(), relative.stem
            name = f"{group}={option}" if group != "." else relative.name
            raise ConfigError(
                f"{path}: lit_tune has {name} too, and Hydra reads lit_tune's; "
                "give yours another name"
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
