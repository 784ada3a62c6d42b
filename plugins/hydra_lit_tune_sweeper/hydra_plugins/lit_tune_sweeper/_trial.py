"""The app's side of a sweep: the trial this Hydra job runs, to report to, prune and stop.

The sweeper runs trial n as Hydra job n and pins the study's name and storage into
`hydra.sweeper`, so a job (in the sweep's process or another, on this machine or another)
finds its trial from the Hydra config alone.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ._signals import STOP, request_stop, stop_signal

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

log = logging.getLogger(__name__)

SWEEPER_TARGET = "hydra_plugins.lit_tune_sweeper.sweeper.LitTuneSweeper"
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: the sweep's MLflow parent run
STOP_ATTR = "stop_signal"  # trial system attr: the signal that stopped the sweep running it
OVERRIDES_ATTR = "overrides"  # trial user attr: its job's overrides (passwords masked)

_current: dict[tuple[str, str, int], Trial] = {}  # one Trial per job, however often asked
_lock = threading.Lock()


class Trial:
    """The Optuna trial a lit_tune sweep runs this job as (see `current_trial`)."""

    def __init__(self, trial: optuna.Trial, study_name: str, metric: str | None) -> None:
        self.optuna = trial
        self.study_name = study_name
        self.metric = metric

    @property
    def number(self) -> int:
        """The trial's number in its study (also the Hydra job's number)."""
        return self.optuna.number

    @property
    def params(self) -> dict[str, Any]:
        """The values the sweeper chose, by override key (`{"optimizer.lr": 0.01, ...}`)."""
        return dict(self.optuna.params)

    @property
    def reports(self) -> bool:
        """Whether reports reach the pruner: Optuna prunes single-objective studies only."""
        return len(self.optuna.study.directions) == 1

    def report(self, value: float, step: int) -> None:
        """Record the objective's value at `step` (an epoch, say) for the pruner and the
        intermediate-values plot. Does nothing in a multi-objective study."""
        if self.reports:
            self.optuna.report(float(value), step)

    def should_prune(self) -> bool:
        """Whether the pruner would stop this trial now, from its reports so far. To prune,
        raise `optuna.TrialPruned` from the job: the sweeper records the trial PRUNED."""
        return self.reports and self.optuna.should_prune()

    def stop_requested(self) -> int | None:
        """The signal (SIGINT, SIGTERM) that stopped the sweep, once it asks its trials to
        stop; None until then. A job that sees it should end at its next step."""
        return stop_signal() if STOP.is_set() else None


def current_trial() -> Trial | None:
    """The trial this Hydra job runs when a lit_tune sweep launched it; None otherwise
    (a single run, another sweeper, no Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get("_target_") != SWEEPER_TARGET:
        return None
    key = (str(sweeper.storage), str(sweeper.study_name), int(hydra_cfg.job.num))
    with _lock:
        if key not in _current:
            _current[key] = _load(*key, metric=sweeper.get("metric"), sweeper=sweeper)
        return _current[key]


def _load(url: str, study_name: str, number: int, *, metric: str | None, sweeper: Any) -> Trial:
    import optuna
    from hydra.utils import instantiate

    from .storage import open_storage

    pruner = instantiate(sweeper.pruner, _execution_whitelist_=["optuna.pruners.*"])
    storage = open_storage(url)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # this side never samples
        pruner=pruner,
    )
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    _stop_when_asked(storage, trial_id, sweeper.heartbeat_interval)
    # Optuna has no public way to reopen a trial by id in another process: its constructor
    # is the one the study's own ask() uses (tests/test_private_apis.py).
    return Trial(optuna.trial.Trial(study, trial_id), study_name, metric)


def _stop_when_asked(storage: RDBStorage, trial_id: int, interval: float) -> None:
    """Set STOP once the sweep asks the trial to stop (Ctrl-C or SIGTERM), looking every
    `interval` seconds from a thread until the trial ends. A signal reaches a job only in the
    sweep's process group on its machine: not Ray's workers, nor a job on another machine."""

    def watch() -> None:
        while not STOP.wait(interval):
            try:
                trial = storage.get_trial(trial_id)
            except Exception as error:  # a missed look must not end the run
                log.debug("cannot read trial %d: %s", trial_id, error)
                continue
            if STOP_ATTR in trial.system_attrs:
                request_stop(int(trial.system_attrs[STOP_ATTR]))
            elif trial.state.is_finished():
                return

    threading.Thread(target=watch, name=f"stop-watch-{trial_id}", daemon=True).start()
