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

    max_resource is the sweeper's (the most steps a trial reports; lit_tune sets its
    trainer.max_epochs), not Optuna's "auto" (the length of the first finished trial, which
    EarlyStopping can cut short) unless the sweeper's is "auto". reduction_factor 4
    (Optuna's default is 3): on one seed of the MNIST benchmark 3 needed 60 % of the epochs and 4
    39 %; over ten seeds 4 needs 43 % and 5 40 % (docs/benchmarks.md).
    """

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "${..max_resource}"
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
class ResourcesConfig:
    """What each of the trials that run at once on this machine gets (_resources.py)."""

    # CPU threads per trial (OMP_NUM_THREADS, MKL_NUM_THREADS, ... for the worker processes):
    # auto: this machine's CPUs // n_jobs (every core with n_jobs=1); an integer; null: the
    # environment as it is.
    threads: Any = "auto"
    # With gpu_override: auto spreads the trial slots over every GPU (ceil(n_jobs / GPUs) on
    # one); an integer k packs k trials on a GPU, on as few GPUs as that needs.
    trials_per_gpu: Any = "auto"


@dataclass
class StopConfig:
    """Stop launching trials before n_trials when the study has done enough (_stopping.py);
    the running trials finish, and the results file and the parent run say why."""

    # Once the best value reaches this (>= when maximizing, <= when minimizing).
    target: float | None = None
    # After this many finished trials of this run without an improvement of more than
    # min_delta (pruned and failed trials count as none).
    patience: int | None = None
    min_delta: float = 0.0
    # After this many seconds of this run.
    timeout: float | None = None


@dataclass
class WarmStartConfig:
    """What a new study tries, or learns from, first (_warm_start.py)."""

    # Parameter sets to try first, each a mapping (partial: the sampler picks the rest).
    points: list[Any] = field(default_factory=list)
    # Another study in the same storage: its top_k parameter sets that fit this space are
    # tried next; as_prior: the sampler also learns from its completed trials that fit.
    from_study: str | None = None
    top_k: int = 5
    as_prior: bool = False


@dataclass
class MLflowConfig:
    """Where the sweep's parent run goes; the trials' runs nest under it (the plugin's README)."""

    # false: no MLflow at all.
    parent_run: bool = True
    # None: MLflow's own default ($MLFLOW_TRACKING_URI, else ./mlruns). A relative SQLite path
    # is taken from the directory the sweep started in. Jobs get it as $MLFLOW_TRACKING_URI.
    tracking_uri: str | None = None
    # None: the app's job name (hydra.job.name). Jobs get its id as $MLFLOW_EXPERIMENT_ID.
    experiment: str | None = None
    # Where a new experiment keeps its artifacts (None: the store's default).
    artifact_location: str | None = None
    # The name of the MLflow model a trial's run logs (`mlflow.<flavour>.log_model(name=...)`):
    # the best trial's is registered as a version of the model named after the study, and
    # `alias` points at it (moved when a resumed sweep finds a better one). None: nothing.
    register: str | None = None
    alias: str = "champion"


@dataclass
class LitTuneSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.lit_tune_sweeper.sweeper.LitTuneSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    pruner: PrunerConfig = MISSING
    # None: `<MLflow experiment or job name>-<date>_<time>`; give a name to resume or share.
    study_name: str | None = None
    # None: sqlite:///optuna.db in the directory the sweep started in. Any Optuna RDB URL;
    # a relative SQLite path is taken from that directory.
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
    # The objective's name, for reports and MLflow (the metric PruningCallback reports).
    metric: str | None = None
    # The most steps (epochs) a trial reports: the Hyperband pruner's max_resource.
    max_resource: Any = "auto"
    # With the joblib launcher on a machine with several GPUs: the override that puts a trial
    # on GPU {gpu} (lit_tune: trainer.devices=[{gpu}]), one GPU per trial slot. None: nothing.
    gpu_override: str | None = None
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    # false: the sweep's output is one line per finished trial (and the launcher's, Optuna's
    # and the heartbeat's chatter goes); true: everything the libraries say.
    verbose: bool = False


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="lit_tune", node=LitTuneSweeperConf, provider="lit_tune")
# The same, for an app whose own hydra/sweeper/lit_tune.yaml extends it (`defaults:
# [lit_tune_base]`) to fill settings from its keys wherever its configs pick the sweeper.
store.store(
    group="hydra/sweeper", name="lit_tune_base", node=LitTuneSweeperConf, provider="lit_tune"
)
for name, node in {
    "none": NopPrunerConfig,
    "median": MedianPrunerConfig,
    "percentile": PercentilePrunerConfig,
    "successive_halving": SuccessiveHalvingPrunerConfig,
    "hyperband": HyperbandPrunerConfig,
    "wilcoxon": WilcoxonPrunerConfig,
}.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="lit_tune")
