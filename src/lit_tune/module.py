"""The LightningModule: a classifier around any net, optimizer and LR schedule from the config."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRSchedulerConfigType]
Batch = tuple[Tensor, Tensor]


class Classifier(L.LightningModule):
    """Cross-entropy classification. Logs per epoch (never per step): train/loss, val/loss,
    val/acc, val/acc_best, epoch_time (s); after testing, test/loss, test/acc, `confusion`.
    `lr_history` is the learning rate of every optimizer step this run took.

    A training batch may be a list of batches, one optimizer step each (the data's
    `steps_per_execution`): so the module optimises by hand (Lightning's manual optimization)
    and steps the LR schedule, and clips gradients, itself; Lightning does neither for a
    module that optimises by hand."""

    _loss_sum: Tensor

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints: a resumed run keeps its best
        # "disable": no NaN check, which would cost a device-to-host sync per batch. (It also
        # drops `weight` in torchmetrics 1.9, so the steps pass one loss per example.)
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion: Tensor | None = None
        self.lr_history: list[float] = []  # a Python float per step: no device sync
        # Summed on the device, read once per epoch. A self.log per training step would cost
        # about 1 ms of Lightning bookkeeping each (docs/benchmarks.md); this costs one add.
        # A step whose loss is not finite leaves the sum not finite: the epoch end sees it.
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)
        self._seen = 0
        self._epoch_start = 0.0
        self.monitor: str | None = None  # the metric a plateau schedule watches
        self._plain_backward = False
        self.channels_last = False
        self._base_seed = torch.initial_seed()  # the run's seed (seed_everything came first)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> Tensor:
        """One optimizer step per batch in `batch`; returns the last step's loss (which
        Lightning's LR finder reads)."""
        optimizer = cast(LightningOptimizer, self.optimizers())
        schedules = [c for c in self.trainer.lr_scheduler_configs if c.interval == "step"]
        loss = torch.zeros(())
        max_steps = self.trainer.max_steps  # counts optimizer steps (fast_dev_run sets it)
        for x, y in batch if isinstance(batch, list) else [batch]:
            if 0 < max_steps <= self.global_step:
                break
            # The rate this step uses, whatever the schedule's interval.
            self.lr_history.append(optimizer.param_groups[0]["lr"])
            loss = F.cross_entropy(self(x), y)
            optimizer.zero_grad(set_to_none=True)
            if self._plain_backward:
                loss.backward()
            else:
                self.manual_backward(loss)
            optimizer.step()
            for config in schedules:
                config.scheduler.step()  # type: ignore[call-arg]
            loss = loss.detach()
            self._loss_sum.add_(loss, alpha=len(y))
            self._seen += len(y)
        if batch_idx + 1 == self.trainer.num_training_batches:
            self._step_epoch_schedules(plateau=False)
        return loss

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Here, not before optimizer.step(): under 16-mixed the gradients are unscaled now.
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.val_loss.update(F.cross_entropy(logits, y, reduction="none"))

    def on_validation_epoch_end(self) -> None:
        # Logged once per epoch, like train/loss: see __init__.
        self.log("val/loss", self.val_loss)
        self.log("val/acc", self.val_acc, prog_bar=True)
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc.update(logits, y)
        self.test_loss.update(F.cross_entropy(logits, y, reduction="none"))
        self.test_confusion.update(logits, y)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        self.log("test/acc", self.test_acc)
        self.confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        # Dropout and augmentation draw from a seed of (run, epoch): a run resumed from a
        # checkpoint at epoch e draws what the uninterrupted run drew (the data order is
        # epoch_order's, likewise).
        torch.manual_seed(self._base_seed * 100_003 + self.current_epoch)

    def on_train_epoch_end(self) -> None:
        # Lightning runs the epoch's validation before this hook, so this is train + val.
        self.log("epoch_time", time.perf_counter() - self._epoch_start)
        # Not on the epoch a resumed run restarts at: its metrics are gone (as Lightning).
        if not self.trainer.fit_loop.restarting:
            self._step_epoch_schedules(plateau=True)
        loss = self._loss_sum / max(self._seen, 1)
        self.log("train/loss", loss, sync_dist=True)
        self._loss_sum.zero_()
        self._seen = 0
        if not math.isfinite(loss):  # one sync per epoch
            raise FloatingPointError(
                f"diverged: train/loss was not finite ({float(loss)}) in epoch {self.current_epoch}"
            )

    def _step_epoch_schedules(self, plateau: bool) -> None:
        """Step the schedules of interval "epoch" where Lightning does for a module it
        optimises: the others after the epoch's last batch (before validation, so that the
        epoch's checkpoint holds them stepped), a plateau schedule after the epoch, with the
        metric it monitors."""
        for config in self.trainer.lr_scheduler_configs:
            on_plateau = isinstance(config.scheduler, ReduceLROnPlateau)
            if config.interval != "epoch" or plateau != on_plateau:
                continue
            if not plateau:
                config.scheduler.step()  # type: ignore[call-arg]
                continue
            metric = self.trainer.callback_metrics.get(self.monitor or "")
            if metric is None:
                known = ", ".join(sorted(self.trainer.callback_metrics))
                raise MisconfigurationException(
                    f"scheduler.monitor={self.monitor!r} was not logged; logged: {known}"
                )
            config.scheduler.step(float(metric))  # type: ignore[arg-type]

    def on_train_start(self) -> None:
        self._plain_backward = self._backward_is_plain()

    def _backward_is_plain(self) -> bool:
        """Whether Lightning's backward does no more than loss.backward() in this run: one
        device (no DDP reducer to prepare), no gradient scaling (16-mixed has it) and nobody
        overriding the hooks around it. Its calls of those hooks (every callback's, twice a
        step) then only cost time: about 0.3 ms a step on our CPU (docs/benchmarks.md)."""
        trainer = self.trainer
        plugin = trainer.precision_plugin
        unscaled = type(plugin) is Precision or (
            type(plugin) is MixedPrecision and plugin.scaler is None
        )
        hooks = ["on_before_backward", "on_after_backward"]
        callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
        return (
            type(trainer.strategy) is SingleDeviceStrategy
            and unscaled
            and type(self).backward is L.LightningModule.backward
            and all(getattr(type(self), h) is getattr(L.LightningModule, h) for h in hooks)
            and all(getattr(type(c), h) is getattr(L.Callback, h) for c in callbacks for h in hooks)
        )

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a resumed run has its best from the checkpoint
            self.val_acc_best.reset()
        # On a GPU, convolutions run fastest on NHWC ("channels last") tensors.
        convolutional = any(isinstance(m, nn.Conv2d) for m in self.net.modules())
        self.channels_last = self.device.type == "cuda" and convolutional
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = self.optimizer_factory(self.parameters())
        schedule = self.scheduler_factory(optimizer, total_steps=self._total_steps())
        # Kept here: Lightning drops (with a warning) what a hand-optimised module must read.
        self.monitor = schedule.pop("monitor", None)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def _total_steps(self) -> int:
        """Optimizer steps in the whole run, which a per-step schedule spans. Lightning
        counts training batches; the data module says how many steps they hold."""
        trainer = self.trainer
        batches = int(trainer.estimated_stepping_batches)  # sets num_training_batches
        datamodule = getattr(trainer, "datamodule", None)
        optimizer_steps = getattr(datamodule, "optimizer_steps", None)
        if optimizer_steps is None or trainer.max_epochs in (None, -1):
            return batches  # max_steps sets it
        steps = optimizer_steps(int(trainer.num_training_batches))
        total = steps * trainer.max_epochs
        return min(total, trainer.max_steps) if trainer.max_steps > 0 else total


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
