"""The command line: `lit-tune` and `python train.py`. Light on purpose: it checks the command
line and the composed config before Lightning is imported (about 6 s of CPU), so that bad
input fails in about a second, and a sweep's own process, whose trials run in launcher
workers, never imports it at all."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import execution_whitelist
from omegaconf import DictConfig

from lit_tune import output
from lit_tune.config import ConfigError, check, check_choices, one_line_errors
from lit_tune.signals import Interrupted, exit_status, stop_on_signal, stopped_by
from lit_tune.trust import ENV, project_settings, trusted_targets

if TYPE_CHECKING:
    from lit_tune.evaluate import Source

CONF_DIR = str(Path(__file__).resolve().parent / "conf")
COMMANDS = ("eval", "predict", "best")
_evaluating: list[Source] = []  # what `eval` tests, for the Hydra task below
log = logging.getLogger("lit_tune.train")


def main(trusted: Sequence[str] = (), config_dir: str | Path | None = None) -> None:
    """`python train.py [overrides]` trains once, `python train.py -m [sweep overrides]` sweeps;
    `eval MODEL [overrides]`, `predict MODEL INPUT` and `best STUDY` use what they made
    (README, "Use the winner").

    `trusted`: more `_target_` patterns a config may name (`"myproj.*"`); `config_dir`: a folder
    of config groups of your own, searched after lit_tune's. Both can also be given in the
    `[tool.lit_tune] table of your project's pyproject.toml (README, "Tune your own model")."""
    if "verbose=true" not in (arg.lower() for arg in sys.argv[1:]):
        output.quiet_warnings()  # before Hydra imports its plugins
    with one_line_errors():
        where, settings = project_settings()
        patterns = [*trusted, *settings.get("trusted", [])]
        os.environ[ENV] = ",".join([*os.environ.get(ENV, "").split(","), *patterns]).strip(",")
        folder = config_dir or settings.get("config_dir")
        base = where.parent if where is not None and config_dir is None else Path.cwd()
        conf_dirs = [*([(base / folder).resolve()] if folder is not None else []), Path(CONF_DIR)]
        command = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in COMMANDS else None
        if command == "best":
            from lit_tune import best

            return best.main(sys.argv[2:], _program(), conf_dirs)
        if command == "predict":
            from lit_tune import predict

            return predict.main(sys.argv[2:], _program())
        if command == "eval":
            if len(sys.argv) < 3 or sys.argv[2].startswith("-"):
                raise ConfigError(
                    "eval MODEL [overrides]: give MODEL, a checkpoint file or an "
                    "MLflow URI (models:/NAME@champion)"
                )
            from lit_tune import evaluate

            source = evaluate.resolve(sys.argv[2])
            sys.argv[1:] = evaluate.merged(source.overrides, sys.argv[3:])
            _evaluating.append(source)
        if folder is not None and not {"--config-dir", "-cd"} & set(sys.argv):
            sys.argv[1:1] = ["--config-dir", str(conf_dirs[0])]
        check_choices(sys.argv[1:], Path(CONF_DIR))
    try:
        _hydra_main()
    except KeyboardInterrupt:
        sys.exit(exit_status())  # the run, or the sweep, has said what it closed and how to resume


def _program() -> str:
    """How this command was started: `python train.py` or `lit-tune`."""
    started = sys.argv[0]
    return f"python {started}" if started.endswith(".py") else Path(started).name


@hydra.main(config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | list[float] | None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        from lit_tune.train import train

        return train(cfg)  # the sweeper records the error as the trial's failure
    with one_line_errors():
        if _evaluating:
            from lit_tune import evaluate

            with execution_whitelist(trusted_targets()), stop_on_signal():
                results = evaluate.evaluate(cfg, _evaluating[0])
            shown = ", ".join(f"{k} = {v:.6g}" for k, v in sorted(results.items()))
            log.info("eval %s: %s", _evaluating[0].given, shown)
            return None
        check(cfg, light=True)  # before Lightning's import: bad input fails in a second
        from lit_tune.train import train

        try:
            return train(cfg)
        except Interrupted:
            log.error("Interrupted by %s: the run stopped, its MLflow run is KILLED", stopped_by())
            raise KeyboardInterrupt from None  # Hydra reports an Exception with a traceback
