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
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRSchedulerConfigType]


class Classifier(L.LightningModule):
    """Cross-entropy classification. Logs per epoch: train/loss, val/loss, val/acc,
    val/acc_best, epoch_time (s); after testing, test/loss, test/acc and `confusion`."""

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
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion: Tensor | None = None
        # Counted on the device, read once per epoch: divergence costs no per-step sync.
        self.register_buffer(
            "_nonfinite_steps", torch.zeros((), dtype=torch.long), persistent=False
        )
        self._epoch_start = 0.0
        self.channels_last = False

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        # Epoch-level only: a per-step value would force a device sync every batch.
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self._nonfinite_steps += ~torch.isfinite(loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.test_confusion.update(logits, y)
        self.log("test/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("test/acc", self.test_acc, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        # Lightning runs the epoch's validation before this hook, so this is train + val.
        self.log("epoch_time", time.perf_counter() - self._epoch_start)
        if int(self._nonfinite_steps):  # one sync per epoch
            raise FloatingPointError(
                f"diverged: train/loss was not finite in {int(self._nonfinite_steps)} steps "
                f"of epoch {self.current_epoch}"
            )

    def on_fit_start(self) -> None:
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
