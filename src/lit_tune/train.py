"""One run: composed config -> instantiated parts -> Trainer -> the objective for the sweeper."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import hydra
import lightning as L
import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import execution_whitelist, instantiate, to_absolute_path
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from optuna_integration import PyTorchLightningPruningCallback

from lit_tune import tracking, tuning
from lit_tune.checkpoint_io import AtomicCheckpointIO
from lit_tune.config import ConfigError, check, check_choices, first_line, one_line_errors
from lit_tune.module import Classifier, count_parameters
from lit_tune.signals import STOP, Interrupted, exit_status, stop_on_signal, stopped_by
from lit_tune.trial import current_trial

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger(__name__)
# What a config's `_target_` may name. A new home for models or data is added here, in
# code, so that a config file alone can never run arbitrary Python.
TRUSTED_TARGETS = ["lit_tune.*", "torch.optim.*", "lightning.pytorch.*"]


def train(cfg: DictConfig) -> float | list[float]:
    """Train, test the best checkpoint, record the run; return the value of `objective.metric`
    (followed by those of `objective.extra`, for a multi-objective sweep)."""
    with execution_whitelist(TRUSTED_TARGETS), stop_on_signal():
        return _train(cfg)


class StopOnRequest(L.Callback):
    """Raise Interrupted at the first batch end after STOP was set."""

    def _check(self) -> None:
        if STOP.is_set():
            raise Interrupted(f"interrupted by {stopped_by()}")

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()


def _train(cfg: DictConfig) -> float | list[float]:
    check(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls where bf16 is not used
    datamodule = _build(cfg, "data")
    datamodule.prepare_data()  # a missing data set fails here, before any run is recorded
    net = _build(
        cfg, "model", input_shape=datamodule.input_shape, num_classes=datamodule.num_classes
    )
    if cfg.compile:
        net.compile()  # in place: state_dict keys (and so checkpoints) stay as they were
    optimizer = _factory(cfg, "optimizer", _convert_="all")
    scheduler = _factory(cfg, "scheduler")
    with _config_errors("optimizer"):  # the partials fail now on a bad argument, not mid-run
        trial_optimizer = optimizer(net.parameters())
    with _config_errors("scheduler"):
        scheduler(trial_optimizer, total_steps=100)
    # The module clips gradients itself (it optimises by hand, which Lightning does not clip).
    clip = cfg.trainer.get("gradient_clip_val"), cfg.trainer.get("gradient_clip_algorithm")
    module = Classifier(net, datamodule.num_classes, optimizer, scheduler, *clip)
    logger = _build(cfg, "logger") if cfg.logger else False
    callbacks = [_build(cfg, f"callbacks.{name}") for name in cfg.callbacks or {}]
    if not logger:  # Lightning refuses an LR monitor with nowhere to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(StopOnRequest())
    sweep = current_trial()  # None unless a lit_tune sweep launched this run
    pruning = None
    if sweep is not None and sweep.reports:
        pruning = EpochsPruning(sweep.trial, monitor=cfg.objective.metric)
        callbacks.append(pruning)
    callbacks.append(tracking.ResultPlots())
    trainer: L.Trainer = _build(
        cfg,
        "trainer",
        callbacks=callbacks,
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        gradient_clip_val=None,
    )
    _check_launcher(cfg, trainer)
    tracking.nest(trainer.loggers, sweep)
    with _config_errors("tune"):  # before the MLflow run exists: the params are what it found
        found = tuning.find(cfg, trainer, module, datamodule)
    if "optimizer.lr" in found:  # rebuilt, so that the schedule follows too (one_cycle's max_lr)
        module.optimizer_factory = _factory(cfg, "optimizer", _convert_="all")
        module.scheduler_factory = _factory(cfg, "scheduler")
    num_parameters = count_parameters(net)
    try:
        for each in trainer.loggers:  # under fast_dev_run, Lightning's no-op logger
            each.log_hyperparams({**tracking.flatten(cfg), "num_parameters": num_parameters})
        tuning.record(trainer.loggers, found, cfg.paths.output_dir)
        resume = to_absolute_path(cfg.ckpt_path) if cfg.ckpt_path else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        if pruning is not None:
            pruning.check_pruned()
        values = _objective(trainer, cfg.objective, num_parameters)
        best = trainer.checkpoint_callback
        ckpt_path = "best" if isinstance(best, ModelCheckpoint) and best.best_model_path else None
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        tracking.log_results(trainer.loggers, cfg)
    except optuna.TrialPruned as pruned:
        tracking.log_results(trainer.loggers, cfg)  # its curves show why
        tracking.finish(trainer.loggers, "PRUNED", str(pruned))
        raise
    except BaseException as error:
        # Asked to stop: KILLED however the run then ended (Lightning turns a second SIGINT,
        # as submitit's job controller sends, into exit(1)).
        if STOP.is_set() or isinstance(error, KeyboardInterrupt | SIGTERMException):
            reason = f"interrupted by {stopped_by()}"
            tracking.finish(trainer.loggers, "KILLED", reason)
            raise Interrupted(reason) from error
        tracking.finish(trainer.loggers, "FAIL", f"{type(error).__name__}: {error}")
        raise
    tracking.finish(trainer.loggers, "COMPLETE")
    log.info("objective %s = %s", cfg.objective.metric, " ".join(f"{v:.6f}" for v in values))
    return values[0] if len(values) == 1 else values


def _build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """instantiate(cfg.<key>); a constructor that rejects its arguments is a config error."""
    with _config_errors(key):
        return instantiate(OmegaConf.select(cfg, key), **kwargs)


@dataclass(frozen=True)
class Factory:
    """A `_partial_: true` config node that pickles: a call instantiates the node (resolved
    when built) under TRUSTED_TARGETS and calls the result. DDP spawn pickles the module,
    factories included, to every process; Hydra's own partials refuse to be pickled."""

    node: dict[str, Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with execution_whitelist(TRUSTED_TARGETS):
            return instantiate(self.node)(*args, **kwargs)


def _factory(cfg: DictConfig, key: str, **kwargs: Any) -> Factory:
    """The partial at cfg.<key> as a Factory; a bad target or argument fails here."""
    _build(cfg, key, **kwargs)
    node = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True))
    return Factory({**node, **kwargs})


@contextmanager
def _config_errors(key: str) -> Iterator[None]:
    try:
        yield
    except ConfigError:
        raise  # names its own key
    except (InstantiationException, TypeError, ValueError, MisconfigurationException) as error:
        raise ConfigError(f"{key}: {first_line(error.__cause__ or error)}") from error


class EpochsPruning(PyTorchLightningPruningCallback):
    """Optuna's Lightning callback, reporting at step = epochs trained (1, 2, ...) instead of
    Lightning's 0-based epoch index. A pruner's resources are then epochs: `min_resource=1`
    judges a trial after its first epoch (not its second) and `max_resource=max_epochs` is the
    last step a trial reaches. A pruned trial ends its epoch (its train/loss logged, as under
    DDP) and `check_pruned` raises after fit."""

    pruned: optuna.TrialPruned | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pruned is not None:  # min_epochs holds it
            return
        # The parent reads nothing from the module but `current_epoch`.
        epochs = SimpleNamespace(current_epoch=pl_module.current_epoch + 1)
        try:
            super().on_validation_end(trainer, epochs)  # type: ignore[arg-type]
        except optuna.TrialPruned as pruned:  # one process: raised, not flagged
            self.pruned, trainer.should_stop = pruned, True
            trainer.fit_loop.min_epochs = 0  # which would keep it training
            trainer.fit_loop.epoch_loop.min_steps = 0

    def check_pruned(self) -> None:
        if self.pruned is not None:
            raise self.pruned
        super().check_pruned()


def _check_launcher(cfg: DictConfig, trainer: L.Trainer) -> None:
    """In a multirun, refuse a strategy that starts ranks 1.. by running this command line
    again (Lightning's `ddp`): each would start a whole new sweep, ask the study for trials
    of its own and join this trial's process group with another model."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    launcher = trainer.strategy.launcher
    if (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally  # torchrun, SLURM
    ):
        strategy = cfg.trainer.get("strategy", "auto")
        raise ConfigError(
            f"trainer.strategy={strategy} in a sweep (-m): Lightning starts each other rank "
            "by re-running this command, which starts a whole new sweep; use "
            "trainer.strategy=ddp_spawn"
        )


def _objective(trainer: L.Trainer, objective: DictConfig, num_parameters: int) -> list[float]:
    """The values of objective.metric and objective.extra, in that order; all finite."""
    logged = {**trainer.callback_metrics, "num_parameters": num_parameters}
    values = []
    for metric in [objective.metric, *objective.get("extra", [])]:
        if metric not in logged:
            known = ", ".join(sorted(logged))
            raise ConfigError(f"objective.metric={metric!r} was never logged; logged: {known}")
        value = float(logged[metric])  # type: ignore[arg-type]
        if not math.isfinite(value):
            raise FloatingPointError(f"objective {metric} is {value}")
        values.append(value)
    return values


def main() -> None:
    """`python train.py [overrides]` trains once, `python train.py -m [sweep overrides]` sweeps."""
    with one_line_errors():
        check_choices(sys.argv[1:], Path(CONF_DIR))
    try:
        _hydra_main()
    except KeyboardInterrupt:
        sys.exit(exit_status())  # the run, or the sweep, has said what it closed and how to resume


@hydra.main(config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | list[float]:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return train(cfg)  # the sweeper records the error as the trial's failure
    with one_line_errors():
        try:
            return train(cfg)
        except Interrupted:
            log.error("Interrupted by %s: the run stopped, its MLflow run is KILLED", stopped_by())
            raise KeyboardInterrupt from None  # Hydra reports an Exception with a traceback
