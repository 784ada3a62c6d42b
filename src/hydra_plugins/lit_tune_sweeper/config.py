"""The sweeper's config: hydra-optuna-sweeper's, plus a pruner group and what resume needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import MISSING


@dataclass
class PrunerConfig:
    _target_: str = MISSING


@dataclass
class NopPrunerConfig(PrunerConfig):
    """Never prune."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig(PrunerConfig):
    """Prune when the value is worse than the median of earlier trials at the same epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConfig(PrunerConfig):
    """Prune below the given percentile of earlier trials at the same epoch."""

    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConfig(PrunerConfig):
    """Asynchronous successive halving (ASHA): keep the top 1/reduction_factor at each rung.

    The search spaces' default. min_resource "auto" prunes nothing until a trial has completed
    (the yardstick), then judges trials after epochs 1, 4, 16, ... Over ten seeds of the MNIST
    benchmark it kept the best (-0.12 pt) with 33 % of the epochs, where Hyperband needed 43 %;
    it favours fast starters (docs/benchmarks.md, docs/sweeps.md).
    """

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConfig(PrunerConfig):
    """Hyperband: several successive-halving brackets; resource = epochs.

    max_resource is the trials' epoch budget (trainer.max_epochs), not Optuna's "auto" (the
    length of the first finished trial, which EarlyStopping can cut short). reduction_factor 4
    (Optuna's default is 3): on one seed of the MNIST benchmark 3 needed 60 % of the epochs and 4
    39 %; over ten seeds 4 needs 43 % and 5 40 % (docs/benchmarks.md).
    """

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "${oc.select:trainer.max_epochs,auto}"
    reduction_factor: int = 4
    bootstrap_count: int = 0


@dataclass
class WilcoxonPrunerConfig(PrunerConfig):
    """Wilcoxon signed-rank test against the best trial, step by step."""

    _target_: str = "optuna.pruners.WilcoxonPruner"
    p_threshold: float = 0.1
    n_startup_steps: int = 2


@dataclass
class RefineConfig:
    """Coarse-to-fine: search around the top_k trials of the finished study `from_study`."""

    from_study: str | None = None
    top_k: int = 5


@dataclass
class LitTuneSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.lit_tune_sweeper.sweeper.LitTuneSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    pruner: PrunerConfig = MISSING
    # None: `<experiment_name>-<date>_<time>`; give a name to resume or share a study.
    study_name: str | None = None
    # None: SQLite beside the MLflow store (paths.mlruns/optuna.db). Any Optuna RDB URL works.
    storage: Any | None = None
    n_trials: int = 20
    n_jobs: int = 1
    # Stop once failed trials exceed this fraction of n_trials (counted over the whole study).
    max_failure_rate: float = 0.5
    # A trial whose sweep sent no heartbeat for grace_period seconds was killed: it is failed
    # and its parameters are queued again, once.
    heartbeat_interval: int = 5
    grace_period: int = 20
    refine: RefineConfig = field(default_factory=RefineConfig)


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="lit_tune", node=LitTuneSweeperConf, provider="lit_tune")
for name, node in {
    "none": NopPrunerConfig,
    "median": MedianPrunerConfig,
    "percentile": PercentilePrunerConfig,
    "successive_halving": SuccessiveHalvingPrunerConfig,
    "hyperband": HyperbandPrunerConfig,
    "wilcoxon": WilcoxonPrunerConfig,
}.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="lit_tune")
