"""One run: composed config -> instantiated parts -> Trainer -> the objective for the sweeper."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import execution_whitelist, to_absolute_path
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig

from hydra_plugins.lit_tune_sweeper import PruningCallback, Trial, current_trial
from lit_tune import build, export, output, tracking, tuning
from lit_tune.checkpoint_io import AtomicCheckpointIO
from lit_tune.config import ConfigError, check
from lit_tune.module import TaskModule, count_parameters
from lit_tune.signals import (
    STOP,
    Interrupted,
    request_stop,
    stop_on_signal,
    stopped_by,
)
from lit_tune.trust import check_trusted, trusted_targets

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | list[float]:
    """Train, test the best checkpoint, record the run; return the value of `objective.metric`
    (followed by those of `objective.extra`, for a multi-objective sweep)."""
    with execution_whitelist(trusted_targets()), stop_on_signal():
        return _train(cfg)


class StopOnRequest(L.Callback):
    """Raise Interrupted at the first batch end after STOP was set, or the sweep running this
    trial asked it to stop."""

    def __init__(self, sweep: Trial | None) -> None:
        self.sweep = sweep

    def _check(self) -> None:
        signum = self.sweep.stop_requested() if self.sweep is not None else None
        if signum is not None:
            request_stop(signum)
        if STOP.is_set():
            raise Interrupted(f"interrupted by {stopped_by()}")

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()


class ObjectiveLogged(L.Callback):
    """Fail the run after its first validation when the module did not log the objective,
    naming what it did log (EarlyStopping would fail later, in more lines)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self.metric not in trainer.callback_metrics:
            raise ConfigError(_not_logged(self.metric, trainer.callback_metrics))


def _not_logged(metric: str, logged: Any) -> str:
    known = ", ".join(sorted(logged)) or "nothing"
    return f"objective.metric={metric!r} was never logged; the module logged {known}"


def _train(cfg: DictConfig) -> float | list[float]:
    verbose = bool(cfg.get("verbose", False))
    quiet = not verbose and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if not verbose:
        output.quiet_warnings()  # again: a launcher's worker process never ran main()
    sweep = current_trial()  # None unless a lit_tune sweep launched this run
    if quiet:  # a sweep's trial: a line per trial says how it went
        output.quiet_console(own_lines=sweep is None)
    check(cfg)
    export.check_setting(cfg.mlflow_model)
    check_trusted(cfg, trusted_targets())
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls where bf16 is not used
    datamodule = build.datamodule(cfg)
    build.fill_sizes(cfg, datamodule)
    module, factories = build.module(cfg)
    if cfg.compile:
        module.compile()  # in place: state_dict keys (and so checkpoints) stay as they were
    if isinstance(module, TaskModule):  # the partials fail now on a bad argument, not mid-run
        with build.config_errors("optimizer"):
            trial_optimizer = module.optimizer_factory(module.parameters())
        with build.config_errors("scheduler"):
            module.scheduler_factory(trial_optimizer, total_steps=100)
    loggers = build.loggers(cfg)
    callbacks = [build.build(cfg, f"callbacks.{name}") for name in cfg.callbacks or {}]
    if not loggers:  # Lightning refuses an LR monitor with nowhere to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if quiet:  # and Lightning refuses a progress bar callback when bars are off
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    callbacks = [ObjectiveLogged(cfg.objective.metric), *callbacks, StopOnRequest(sweep)]
    # Last: a pruned trial's fit raises TrialPruned as it ends, after the plots are drawn.
    pruning = PruningCallback(cfg.objective.metric)
    callbacks += [tracking.ResultPlots(), pruning]
    bars = {"enable_progress_bar": False} if quiet else {}
    trainer: L.Trainer = build.build(
        cfg,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **bars,
    )
    _check_launcher(cfg, trainer)
    with build.config_errors("tune"):  # before the MLflow run exists: the params are found
        found = tuning.find(cfg, trainer, module, datamodule, factories)
    num_parameters = count_parameters(module)
    try:
        for each in trainer.loggers:  # under fast_dev_run, Lightning's no-op logger
            each.log_hyperparams({**tracking.flatten(cfg), "num_parameters": num_parameters})
        tuning.record(trainer.loggers, found, cfg.paths.output_dir)
        resume = to_absolute_path(cfg.ckpt_path) if cfg.ckpt_path else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        pruning.check_pruned()  # for ddp_spawn, whose ranks cannot raise it
        values = _objective(trainer, cfg.objective, num_parameters)
        best = trainer.checkpoint_callback
        ckpt_path = "best" if isinstance(best, ModelCheckpoint) and best.best_model_path else None
        if _can_test(module, datamodule):
            trainer.test(
                module,
                datamodule=datamodule,
                ckpt_path=ckpt_path,
                weights_only=True,
                verbose=not quiet,
            )
        tracking.log_results(trainer.loggers, cfg)
        if export.wanted(cfg.mlflow_model, values[0], sweep):
            export.log_best(trainer, module, datamodule)
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


def _can_test(module: L.LightningModule, datamodule: L.LightningDataModule) -> bool:
    """Whether the module has a test_step and the datamodule a test split (a module of the
    user's that only trains and validates is tuned all the same, on its validation metric)."""
    if is_overridden("test_step", module) and is_overridden("test_dataloader", datamodule):
        return True
    log.info("no test: the module has no test_step or the datamodule no test_dataloader")
    return False


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
    """The values of objective.metric and objective.extra, in that order; all finite. That of
    objective.metric is the best of the run (what its best checkpoint scored) where a
    checkpoint watched it, else its last."""
    logged = {**trainer.callback_metrics, "num_parameters": num_parameters}
    best = trainer.checkpoint_callback
    values = []
    for metric in [objective.metric, *objective.get("extra", [])]:
        if metric not in logged:
            raise ConfigError(_not_logged(metric, trainer.callback_metrics))
        value = logged[metric]
        if (
            metric == objective.metric
            and isinstance(best, ModelCheckpoint)
            and best.monitor == metric
            and best.best_model_score is not None
        ):
            value = best.best_model_score
        value = float(value)  # type: ignore[arg-type]
        if not math.isfinite(value):
            raise FloatingPointError(f"objective {metric} is {value}")
        values.append(value)
    return values
