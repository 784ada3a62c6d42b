"""The LightningModule: a classifier around any net, optimizer and LR schedule from the config."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRSchedulerConfigType]


class Classifier(L.LightningModule):
    """Cross-entropy classification. Logs per epoch (never per step): train/loss, val/loss,
    val/acc, val/acc_best, epoch_time (s); after testing, test/loss, test/acc, `confusion`.
    `lr_history` is the learning rate of every optimizer step this run took."""

    _loss_sum: Tensor
    _seen: Tensor
    _nonfinite_steps: Tensor

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
    ) -> None:
        super().__init__()
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
        # about 1 ms of Lightning bookkeeping each (docs/benchmarks.md); this costs two adds.
        for name, dtype in [("_loss_sum", torch.float32), ("_seen", torch.long)]:
            self.register_buffer(name, torch.zeros((), dtype=dtype), persistent=False)
        self.register_buffer(
            "_nonfinite_steps", torch.zeros((), dtype=torch.long), persistent=False
        )
        self._epoch_start = 0.0
        self.channels_last = False
        self._base_seed = torch.initial_seed()  # the run's seed (seed_everything came first)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self._loss_sum += loss.detach() * len(y)
        self._seen += len(y)
        self._nonfinite_steps += ~torch.isfinite(loss)
        return loss

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        # Before the step: the rate this step uses, whatever the schedule's interval.
        self.lr_history.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
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
        self.log("train/loss", self._loss_sum / self._seen.clamp(min=1), sync_dist=True)
        nonfinite = int(self._nonfinite_steps)  # one sync per epoch
        for buffer in (self._loss_sum, self._seen, self._nonfinite_steps):
            buffer.zero_()
        if nonfinite:
            raise FloatingPointError(
                f"diverged: train/loss was not finite in {nonfinite} steps "
                f"of epoch {self.current_epoch}"
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
        total_steps = int(self.trainer.estimated_stepping_batches)
        return {
            "optimizer": optimizer,
            "lr_scheduler": self.scheduler_factory(optimizer, total_steps=total_steps),
        }


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
