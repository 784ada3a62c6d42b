"""`hydra/sweeper=lit_tune`: the Sweeper Hydra instantiates; the work is in `_core`."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from . import config as config  # registers the configs
from ._errors import one_line_errors


class LitTuneSweeper(Sweeper):
    """Optuna sweeps with pruning, failure tolerance, resume, parallel trials and MLflow."""

    def __init__(self, **kwargs: Any) -> None:
        # Hydra imports this module in every app at start-up: torch, optuna and mlflow only
        # once a sweep is asked for.
        from ._core import LitTuneSweeperImpl

        with one_line_errors():
            self.sweeper = LitTuneSweeperImpl(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        with one_line_errors():
            self.sweeper.sweep(arguments)
