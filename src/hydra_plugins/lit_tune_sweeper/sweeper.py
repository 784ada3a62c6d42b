"""`hydra/sweeper=lit_tune`: the Sweeper Hydra instantiates; the work is in `_core`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from . import config as config  # registers the configs


class LitTuneSweeper(Sweeper):
    """Optuna sweeps with pruning, failure tolerance, resume, parallel trials and MLflow."""

    def __init__(self, **kwargs: Any) -> None:
        from ._core import LitTuneSweeperImpl  # optuna and mlflow only when sweeping

        with _one_line_errors():
            self.sweeper = LitTuneSweeperImpl(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        with _one_line_errors():
            self.sweeper.sweep(arguments)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Bad sweep input: one line and exit code 2, as for a single run (see lit_tune.train)."""
    from lit_tune.config import ConfigError

    try:
        yield
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
