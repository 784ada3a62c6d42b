"""Lightning's tuner before training (`tune` in conf/train.yaml): the batch-size finder, then
the LR finder. What they find replaces the batch size and the learning rate of the run, in the
config too, so that MLflow records it as those params.

Where the rate goes: into the module's optimizer partial where it has one (the built-in
modules' `${optimizer}`, the template's `module.optimizer`), else into the module's own `lr` or
`learning_rate` (hparams included), where Lightning's finder looks. The batch size goes where
Lightning's finder puts it (the datamodule's or the module's `batch_size`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
from omegaconf import DictConfig, OmegaConf

from lit_tune.build import Factory, optimizer_node, refresh
from lit_tune.config import ConfigError

log = logging.getLogger(__name__)
LR_PLOT = "lr_find.png"  # in the run's output folder, and under plots/ in MLflow

# {key: (configured, found)}; found is None when a finder found nothing.
Found = dict[str, tuple[Any, Any]]


def find(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    factories: dict[str, Factory],
) -> Found:
    """Run the finders that `cfg.tune` switches on and put what they find into the run. The
    batch size comes first: the best learning rate depends on it."""
    if not (cfg.tune.scale_batch_size or cfg.tune.lr_find):
        return {}
    with _steps_only(trainer):
        found = _run_finders(cfg, trainer, module, datamodule)
    for key, (configured, value) in found.items():
        if value is None:
            log.warning(
                "Tuner: found no %s (skipped under fast_dev_run, or too few batches); keeping %s",
                key,
                configured,
            )
            continue
        if OmegaConf.select(cfg, key, default=None) is not None:
            OmegaConf.update(cfg, key, value)
        log.info("Tuner: %s %s -> %s", key, configured, value)
    refresh(cfg, factories)  # one_cycle's max_lr follows optimizer.lr
    return found


def _run_finders(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
) -> Found:
    tuner = Tuner(trainer)
    found: Found = {}
    if cfg.tune.scale_batch_size:
        where = "data" if hasattr(datamodule, "batch_size") else "module"
        before = getattr(datamodule if where == "data" else module, "batch_size", None)
        size = tuner.scale_batch_size(
            module, datamodule=datamodule, **cfg.tune.scale_batch_size_args
        )
        found[f"{where}.batch_size"] = (before, size)
    if cfg.tune.lr_find:
        key = _lr_key(cfg, module)
        args = cfg.tune.lr_find_args
        # update_attr=False: the rate goes where _lr_key says, with our suggestion.
        finder = tuner.lr_find(module, datamodule=datamodule, update_attr=False, **args)
        lr = steepest_descent(finder.results["lr"], finder.results["loss"]) if finder else None
        if finder and lr is not None and trainer.is_global_zero:
            fig, ax = plt.subplots()
            finder.plot(ax=ax)
            ax.axvline(lr, color="red", linestyle="--", label=f"{key} = {lr:.3g}")
            ax.legend()
            fig.savefig(Path(cfg.paths.output_dir) / LR_PLOT)
            plt.close(fig)
        if lr is not None and key.startswith("module.") and optimizer_node(cfg) is None:
            lightning_setattr(module, key.removeprefix("module."), lr)
        found[key] = (OmegaConf.select(cfg, key, default=None), lr)
    return found


def _lr_key(cfg: DictConfig, module: L.LightningModule) -> str:
    """The config key of the learning rate the LR finder sets (module.<attr> for a module's
    own `lr` or `learning_rate`)."""
    partial = optimizer_node(cfg)
    if partial is not None:
        return f"{partial}.lr"
    for attr in ("lr", "learning_rate"):
        if lightning_hasattr(module, attr):
            return f"module.{attr}"
    raise ConfigError(
        "tune.lr_find=true: the module has no optimizer partial (module.optimizer) and no "
        "`lr` or `learning_rate` attribute or hparam for the finder to set"
    )


def steepest_descent(lrs: list[float], losses: list[float]) -> float | None:
    """The lr where the smoothed loss falls fastest against log10(lr), skipping the first 10
    points and the last (as Lightning does); None with fewer than 2 finite points. Lightning's
    own suggestion (2.6) differentiates against lr itself, so on its log-spaced points it
    picks a wiggle at the smallest rates (Lightning-AI/pytorch-lightning#21141)."""
    lr, loss = torch.tensor(lrs[10:-1]), torch.tensor(losses[10:-1])
    finite = torch.isfinite(loss)
    if int(finite.sum()) < 2:
        return None
    slope = torch.gradient(loss[finite], spacing=[lr[finite].log10()])[0]
    return float(lr[finite][slope.argmin()])


@contextmanager
def _steps_only(trainer: L.Trainer) -> Iterator[None]:
    """The finders count steps. The run's max_epochs would cut the LR range test short (100
    steps are 5 epochs of digits) and its min_epochs would run it on past a diverging loss.
    (They also read one loss per batch: the fast path sees them and takes one step a batch.)"""
    loop = trainer.fit_loop
    epochs = loop.min_epochs, loop.max_epochs
    # Not -1 (no limit): configure_optimizers sizes the schedule from a finite step count.
    loop.min_epochs, loop.max_epochs = 0, 10**6
    try:
        yield
    finally:
        loop.min_epochs, loop.max_epochs = epochs


@rank_zero_only  # under DDP every rank tunes (with the same result); one records
def record(loggers: list[Logger], found: Found, output_dir: str) -> None:
    """Tag an MLflow run with each finder's `configured -> found` and add the LR plot."""
    plot = Path(output_dir) / LR_PLOT
    for logger in loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
            for key, (configured, value) in found.items():
                logger.experiment.set_tag(logger.run_id, f"tuned.{key}", f"{configured} -> {value}")
            if "optimizer.lr" in found and plot.is_file():
                logger.experiment.log_artifact(logger.run_id, str(plot), "plots")
