"""The built-in modules' fast path: several optimizer steps per Lightning batch.

Lightning's per-batch machinery (every callback's hooks, the optimisation closure, progress
tracking) costs about 1 ms a batch on our CPU, nearly half of an MNIST MLP step
(docs/benchmarks.md). So where it is safe, a built-in module (`StepsPerExecution`, Keras's name)
takes `steps_per_execution` optimizer steps per Lightning batch: a datamodule of ours serves
that many batches' examples in one piece, cuts it into its batches after the transfer to the
device, and the module steps once per batch, optimising by hand (Lightning's manual
optimisation) and stepping the LR schedules where Lightning would. The steps, their batches
and their order are those of one step per batch, to the bit (tested).

It is used only where both sides are ours and Lightning counts nothing per batch that the
run asked for (`steps_per_batch`). Everywhere else, and always for a module or datamodule of
the user's, a batch is one step and Lightning's automatic optimisation does what it defines:
gradient clipping, `accumulate_grad_batches`, the tuner's finders, `fast_dev_run`,
`overfit_batches`, an integer `limit_train_batches`, DDP.
"""

from __future__ import annotations

import math
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import BatchSizeFinder, LearningRateFinder
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

Batch = tuple[Tensor, Tensor]


def steps_per_batch(trainer: L.Trainer | None, module: L.LightningModule | None = None) -> int:
    """Optimizer steps in one Lightning training batch: the module's `steps_per_execution`
    where the fast path applies (see the module's docstring), else 1."""
    if trainer is None:
        return 1
    module = module or trainer.lightning_module
    data = getattr(trainer, "datamodule", None)
    steps = getattr(module, "steps_per_execution", 1)
    if steps == 1 or not getattr(data, "serves_pieces", False):
        return 1
    counts_batches = (
        trainer.world_size > 1  # DDP syncs gradients once per forward
        or trainer.accumulate_grad_batches != 1
        or bool(trainer.gradient_clip_val)
        or bool(getattr(trainer, "fast_dev_run", 0))
        or bool(getattr(trainer, "overfit_batches", 0))
        or isinstance(trainer.limit_train_batches, int)
        or any(isinstance(c, BatchSizeFinder | LearningRateFinder) for c in trainer.callbacks)  # type: ignore[attr-defined]
    )
    return 1 if counts_batches else int(steps)


def split(batch: Batch, batch_size: int) -> list[Batch]:
    """A piece of several batches' examples cut into its batches (the last may be short)."""
    x, y = batch
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


class StepsPerExecution(L.LightningModule):
    """Base of the built-in modules. Subclasses give `training_loss(batch)`; this class takes
    one optimizer step per batch of a piece by hand when `steps_per_batch` > 1, and leaves
    everything to Lightning otherwise."""

    steps_per_execution: int = 1
    monitor: str | None = None  # the metric a plateau schedule watches (the fast path steps it)
    _plain_backward = False

    def training_loss(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    @property  # type: ignore[override]
    def automatic_optimization(self) -> bool:
        return steps_per_batch(self._trainer, self) == 1

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        pass  # decided by steps_per_batch; LightningModule.__init__ sets it

    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> Tensor:
        if self.automatic_optimization:
            return self.training_loss(cast(Batch, batch))
        return self._steps(batch if isinstance(batch, list) else [batch], batch_idx)

    def _steps(self, batches: list[Batch], batch_idx: int) -> Tensor:
        """One optimizer step per batch; returns the last step's loss."""
        optimizer = cast(LightningOptimizer, self.optimizers())
        schedules = [c for c in self.trainer.lr_scheduler_configs if c.interval == "step"]
        loss = torch.zeros(())
        max_steps = self.trainer.max_steps
        for batch in batches:
            if 0 < max_steps <= self.global_step:
                break
            loss = self.training_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            if self._plain_backward:
                loss.backward()
            else:
                self.manual_backward(loss)
            optimizer.step()
            for config in schedules:
                config.scheduler.step()  # type: ignore[call-arg]
        if batch_idx + 1 == self.trainer.num_training_batches:
            self._step_epoch_schedules(plateau=False)
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        # Not on the epoch a resumed run restarts at: its metrics are gone (as Lightning).
        if not self.automatic_optimization and not self.trainer.fit_loop.restarting:
            self._step_epoch_schedules(plateau=True)

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
        self._plain_backward = not self.automatic_optimization and self._backward_is_plain()

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

    def schedule_config(self, schedule: dict[str, Any]) -> dict[str, Any]:
        """Lightning's lr-scheduler config for this run: by hand, the module keeps the plateau
        monitor itself (Lightning drops it, with a warning, for a hand-optimised module)."""
        if self.automatic_optimization:
            return schedule
        self.monitor = schedule.pop("monitor", None)
        return schedule

    def total_steps(self) -> int:
        """Optimizer steps in the whole run, which a per-step schedule spans. Lightning
        counts training batches; on the fast path each holds several steps."""
        trainer = self.trainer
        batches = int(trainer.estimated_stepping_batches)  # sets num_training_batches
        steps = steps_per_batch(trainer)
        if steps == 1 or trainer.max_epochs in (None, -1):
            return batches  # max_steps sets it
        examples = trainer.datamodule.train_examples()  # type: ignore[attr-defined]
        per_epoch = math.ceil(examples / trainer.datamodule.batch_size)  # type: ignore[attr-defined]
        per_epoch = min(int(trainer.num_training_batches) * steps, per_epoch)
        total = per_epoch * trainer.max_epochs
        return min(total, trainer.max_steps) if trainer.max_steps > 0 else total
