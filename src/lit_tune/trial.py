"""The Optuna trial a lit_tune sweep hands to one training run, found from the Hydra config.

The sweeper runs each trial as Hydra job number = trial number and passes the study's name
and storage as `hydra.sweeper.*` overrides, so a run (in this process or another) can load
its trial, report the objective every epoch and be pruned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import optuna
from alembic.util.exc import CommandError
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from optuna.storages import RDBStorage
from sqlalchemy.exc import IntegrityError, OperationalError

SWEEPER_TARGET = "hydra_plugins.lit_tune_sweeper.sweeper.LitTuneSweeper"
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: the sweep's MLflow parent run


def open_storage(url: str, **kwargs: Any) -> RDBStorage:
    """An Optuna RDB storage; SQLite waits up to a minute for a lock instead of failing."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, OperationalError, CommandError):
            # Processes that open a new database at once race to create its tables; the
            # loser finds them made on its next try.
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class SweepTrial:
    """This run's trial, its study's name and the sweep's MLflow parent run (if any)."""

    trial: optuna.Trial
    study_name: str
    parent_run_id: str | None

    @property
    def reports(self) -> bool:
        """Whether the run reports its objective every epoch (for the pruner and the
        intermediate-values plot): Optuna takes reports from single-objective studies only."""
        return len(self.trial.study.directions) == 1


def current_trial() -> SweepTrial | None:
    """The trial this run is, when a lit_tune sweep launched it; None otherwise."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get("_target_") != SWEEPER_TARGET:
        return None
    pruner = instantiate(sweeper.pruner, _execution_whitelist_=["optuna.pruners.*"])
    study = optuna.load_study(
        study_name=sweeper.study_name,
        storage=open_storage(sweeper.storage),
        sampler=optuna.samplers.RandomSampler(),  # this side never samples
        pruner=pruner,
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(
        study._study_id, hydra_cfg.job.num
    )
    return SweepTrial(
        trial=optuna.trial.Trial(study, trial_id),
        study_name=study.study_name,
        parent_run_id=study.user_attrs.get(PARENT_RUN_ATTR),
    )
