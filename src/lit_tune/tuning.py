"""Lightning's tuner before training (`tune` in conf/train.yaml): the batch-size finder, then
the LR finder. What they find replaces data.batch_size and optimizer.lr in the config, so the
run trains with it and MLflow records it as those params."""

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
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
LR_PLOT = "lr_find.png"  # in the run's output folder, and under plots/ in MLflow

# {key: (configured, found)}; found is None when a finder found nothing.
Found = dict[str, tuple[Any, Any]]


def find(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
) -> Found:
    """Run the finders that `cfg.tune` switches on and write what they find into `cfg`. The
    batch size comes first: the best learning rate depends on it."""
    if not (cfg.tune.scale_batch_size or cfg.tune.lr_find):
        return {}
    with _steps_only(trainer, datamodule):
        found = _run_finders(cfg, trainer, module, datamodule)
    for key, (configured, value) in found.items():
        if value is None:
            log.warning(
                "Tuner: found no %s (skipped under fast_dev_run, or too few batches); keeping %s",
                key,
                configured,
            )
        else:
            OmegaConf.update(cfg, key, value)
            log.info("Tuner: %s %s -> %s", key, configured, value)
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
        size = tuner.scale_batch_size(
            module, datamodule=datamodule, **cfg.tune.scale_batch_size_args
        )
        found["data.batch_size"] = (cfg.data.batch_size, size)
    if cfg.tune.lr_find:
        # update_attr=False: our optimizer is a partial, rebuilt from cfg.optimizer.lr.
        args = cfg.tune.lr_find_args
        finder = tuner.lr_find(module, datamodule=datamodule, update_attr=False, **args)
        lr = steepest_descent(finder.results["lr"], finder.results["loss"]) if finder else None
        if finder and lr is not None and trainer.is_global_zero:
            fig, ax = plt.subplots()
            finder.plot(ax=ax)
            ax.axvline(lr, color="red", linestyle="--", label=f"optimizer.lr = {lr:.3g}")
            ax.legend()
            fig.savefig(Path(cfg.paths.output_dir) / LR_PLOT)
            plt.close(fig)
        found["optimizer.lr"] = (cfg.optimizer.lr, lr)
    return found


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
def _steps_only(trainer: L.Trainer, datamodule: L.LightningDataModule) -> Iterator[None]:
    """The finders count steps. The run's max_epochs would cut the LR range test short (100
    steps are 5 epochs of digits) and its min_epochs would run it on past a diverging loss.
    They also read one loss per batch: so one step per batch (data.steps_per_execution)."""
    loop = trainer.fit_loop
    epochs = loop.min_epochs, loop.max_epochs
    steps = getattr(datamodule, "steps_per_execution", 1)
    # Not -1 (no limit): configure_optimizers sizes the schedule from a finite step count.
    loop.min_epochs, loop.max_epochs = 0, 10**6
    datamodule.steps_per_execution = 1  # type: ignore[attr-defined]
    try:
        yield
    finally:
        loop.min_epochs, loop.max_epochs = epochs
        datamodule.steps_per_execution = steps  # type: ignore[attr-defined]


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
