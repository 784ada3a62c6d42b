"""The built-in LightningModules of `conf/module/`: a classifier and a regressor around any net,
optimizer and LR schedule of the config, their metrics from torchmetrics by config.

A module of your own needs none of this: `module._target_` may name any LightningModule.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MeanMetric, Metric, MinMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_tune.fast_path import Batch, StepsPerExecution

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRSchedulerConfigType]
MetricFactory = Callable[..., Metric]


class TaskModule(StepsPerExecution):
    """What the built-in modules share. Logs once per epoch, never per step: train/loss,
    val/loss, `val/<m>` and `val/<m>_best` (the best so far, kept in checkpoints) for each
    metric m of `metrics`, epoch_time (s); after testing, test/loss and `test/<m>`.
    `lr_history` is the learning rate of every optimizer step the run took."""

    _loss_sum: Tensor

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        metrics: Mapping[str, MetricFactory],
        steps_per_execution: int = 1,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.steps_per_execution = steps_per_execution
        self.val_metrics = nn.ModuleDict({k: self.build_metric(f) for k, f in metrics.items()})
        self.test_metrics = nn.ModuleDict({k: self.build_metric(f) for k, f in metrics.items()})
        self.best = nn.ModuleDict(
            {
                k: MaxMetric() if m.higher_is_better else MinMetric()
                for k, m in self.val_metrics.items()
            }
        )
        for best in self.best.values():
            cast(Metric, best).persistent(True)  # in checkpoints: a resumed run keeps its best
        # "disable": no NaN check, which would cost a device-to-host sync per batch. (It also
        # drops `weight` in torchmetrics 1.9, so the steps pass one loss per example.)
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.lr_history: list[float] = []  # a Python float per step: no device sync
        # Summed on the device, read once per epoch. A self.log per training step would cost
        # about 1 ms of Lightning bookkeeping each (docs/benchmarks.md); this costs one add.
        # A step whose loss is not finite leaves the sum not finite: the epoch end sees it.
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)
        self._seen = 0
        self._epoch_start = 0.0
        self.channels_last = False
        self._base_seed = torch.initial_seed()  # the run's seed (seed_everything came first)

    # -- what each task says -----------------------------------------------------------------

    def build_metric(self, factory: MetricFactory) -> Metric:
        return factory()

    def loss(self, output: Tensor, y: Tensor, reduction: Literal["mean", "none"]) -> Tensor:
        raise NotImplementedError

    def predictions(self, output: Tensor) -> Tensor:
        """What the metrics compare with the targets."""
        raise NotImplementedError

    def answer(self, output: Tensor) -> Tensor:
        """What a served model returns for the net's output (lit_tune/export.py)."""
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_loss(self, batch: Batch) -> Tensor:
        x, y = batch
        loss = self.loss(self(x), y, "mean")
        self._loss_sum.add_(loss.detach(), alpha=len(y))
        self._seen += len(y)
        return loss

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        self.lr_history.append(optimizer.param_groups[0]["lr"])

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        # Dropout and augmentation draw from a seed of (run, epoch): a run resumed from a
        # checkpoint at epoch e draws what the uninterrupted run drew (the data order is
        # epoch_order's, likewise).
        torch.manual_seed(self._base_seed * 100_003 + self.current_epoch)

    def on_train_epoch_end(self) -> None:
        # Lightning runs the epoch's validation before this hook, so this is train + val.
        self.log("epoch_time", time.perf_counter() - self._epoch_start)
        super().on_train_epoch_end()  # the fast path's plateau schedule
        loss = self._loss_sum / max(self._seen, 1)
        self.log("train/loss", loss, sync_dist=True)
        self._loss_sum.zero_()
        self._seen = 0
        if not math.isfinite(loss):  # one sync per epoch
            raise FloatingPointError(
                f"diverged: train/loss was not finite ({float(loss)}) in epoch {self.current_epoch}"
            )

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = self.optimizer_factory(self.parameters())
        schedule = self.scheduler_factory(optimizer, total_steps=self.total_steps())
        config = self.schedule_config(cast(dict[str, Any], schedule))
        return {"optimizer": optimizer, "lr_scheduler": config}  # type: ignore[typeddict-item]

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a resumed run has its best from the checkpoint
            for best in self.best.values():
                cast(Metric, best).reset()
        # On a GPU, convolutions run fastest on NHWC ("channels last") tensors.
        convolutional = any(isinstance(m, nn.Conv2d) for m in self.net.modules())
        self.channels_last = self.device.type == "cuda" and convolutional
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    # -- validation and test -----------------------------------------------------------------

    def _evaluate(self, batch: Batch, loss: MeanMetric, metrics: nn.ModuleDict) -> Tensor:
        x, y = batch
        output = self(x)
        loss.update(self.loss(output, y, "none"))
        predictions = self.predictions(output)
        for metric in metrics.values():
            cast(Metric, metric).update(predictions, y)
        return output

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        # Logged once per epoch, like train/loss: see __init__.
        self.log("val/loss", self.val_loss)
        for i, (name, metric) in enumerate(self.val_metrics.items()):
            self.log(f"val/{name}", cast(Metric, metric), prog_bar=i == 0)
        if self.trainer.sanity_checking:
            return
        for i, (name, metric) in enumerate(self.val_metrics.items()):
            best = cast(Metric, self.best[name])
            best(cast(Metric, metric).compute())
            self.log(f"val/{name}_best", best.compute(), prog_bar=i == 0, sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        for name, metric in self.test_metrics.items():
            self.log(f"test/{name}", cast(Metric, metric))


class Classifier(TaskModule):
    """Cross-entropy over `num_classes` logits (two for a binary task). Each metric is a
    torchmetrics task wrapper (Accuracy, F1Score, AUROC, ...) given `task` ("binary" for two
    classes, else "multiclass") and `num_classes`; it sees the class probabilities (binary: the
    second class's). After testing, `confusion` holds the test set's confusion matrix."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        metrics: Mapping[str, MetricFactory] | None = None,
        steps_per_execution: int = 1,
    ) -> None:
        self.num_classes = num_classes
        self.task = "binary" if num_classes == 2 else "multiclass"
        super().__init__(
            net,
            optimizer,
            scheduler,
            metrics or {"acc": torchmetrics.Accuracy},
            steps_per_execution,
        )
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion: Tensor | None = None

    def build_metric(self, factory: MetricFactory) -> Metric:
        return factory(task=self.task, num_classes=self.num_classes)

    def loss(self, output: Tensor, y: Tensor, reduction: Literal["mean", "none"]) -> Tensor:
        return F.cross_entropy(output, y, reduction=reduction)

    def predictions(self, output: Tensor) -> Tensor:
        probabilities = output.softmax(-1)
        return probabilities[:, 1] if self.task == "binary" else probabilities

    def answer(self, output: Tensor) -> Tensor:
        """The probability of every class (binary too: two columns)."""
        return output.softmax(-1)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        output = self._evaluate(batch, self.test_loss, self.test_metrics)
        self.test_confusion.update(output, batch[1])

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()


LOSSES: dict[str, Callable[..., Tensor]] = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": F.huber_loss,
}


class Regressor(TaskModule):
    """Regression of the net's outputs onto the targets (one per example, or a row of them).
    The net learns standardised targets, (y - target_mean) / target_std with the training
    split's statistics, so that one learning rate suits any scale; `loss` (mse, mae or huber,
    whose train/loss and val/loss are in those standardised units) is taken there. The
    metrics (MAE, RMSE and R² by default) see predictions in the targets' own units."""

    target_mean: Tensor
    target_std: Tensor

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        target_mean: float | Sequence[float] = 0.0,
        target_std: float | Sequence[float] = 1.0,
        loss: Literal["mse", "mae", "huber"] = "mse",
        huber_delta: float = 1.0,
        metrics: Mapping[str, MetricFactory] | None = None,
        steps_per_execution: int = 1,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: one of {', '.join(LOSSES)}")
        defaults: dict[str, MetricFactory] = {
            "mae": torchmetrics.MeanAbsoluteError,
            "rmse": functools.partial(torchmetrics.MeanSquaredError, squared=False),
            "r2": torchmetrics.R2Score,
        }
        super().__init__(net, optimizer, scheduler, metrics or defaults, steps_per_execution)
        self.loss_name, self.huber_delta = loss, huber_delta
        std = torch.as_tensor(target_std, dtype=torch.float32).reshape(-1)
        self.register_buffer("target_mean", torch.as_tensor(target_mean).float().reshape(-1))
        self.register_buffer("target_std", torch.where(std > 0, std, torch.ones_like(std)))

    def _standardised(self, output: Tensor) -> Tensor:
        return output.squeeze(-1) if output.ndim == 2 and output.shape[1] == 1 else output

    def loss(self, output: Tensor, y: Tensor, reduction: Literal["mean", "none"]) -> Tensor:
        target = (y - self._scale(self.target_mean, y)) / self._scale(self.target_std, y)
        kwargs: dict[str, Any] = {"delta": self.huber_delta} if self.loss_name == "huber" else {}
        return LOSSES[self.loss_name](
            self._standardised(output), target, reduction=reduction, **kwargs
        )

    def predictions(self, output: Tensor) -> Tensor:
        output = self._standardised(output)
        return output * self._scale(self.target_std, output) + self._scale(self.target_mean, output)

    def answer(self, output: Tensor) -> Tensor:
        """The predicted values, in the targets' units: (N, targets)."""
        values = self.predictions(output)
        # unsqueeze, not reshape(len(output), -1): len() would fix the exported batch size.
        return values.unsqueeze(-1) if values.ndim == 1 else values

    @staticmethod
    def _scale(statistic: Tensor, like: Tensor) -> Tensor:
        """A per-target statistic shaped to broadcast over `like` ((N,) or (N, T))."""
        return statistic.squeeze(0) if like.ndim == 1 else statistic


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
