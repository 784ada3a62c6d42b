"""Learning-rate schedules, one function per `conf/scheduler/<name>.yaml`.

Each takes the optimizer and the run's total number of optimizer steps (known only once the
data is loaded) plus its own hyperparameters, and returns Lightning's lr-scheduler dict.
torch's schedulers are used where they exist; `LambdaLR` carries the formulas torch lacks.
Epoch-wise schedules see `epoch` = number of epochs finished, so epoch 0 runs at lr0.
"""

from __future__ import annotations

import math
from typing import Literal

from lightning.pytorch.utilities.types import LRSchedulerConfigType
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)


def _per_epoch(
    scheduler: LRScheduler | ReduceLROnPlateau, monitor: str | None = None
) -> LRSchedulerConfigType:
    # "name" makes LearningRateMonitor log the rate as plain `lr`.
    return {"scheduler": scheduler, "interval": "epoch", "name": "lr", "monitor": monitor}


def _per_step(scheduler: LRScheduler) -> LRSchedulerConfigType:
    return {"scheduler": scheduler, "interval": "step", "name": "lr"}


def none(optimizer: Optimizer, total_steps: int) -> LRSchedulerConfigType:
    """A constant learning rate."""
    return _per_epoch(LambdaLR(optimizer, lambda epoch: 1.0))


def time_decay(optimizer: Optimizer, total_steps: int, decay: float) -> LRSchedulerConfigType:
    """lr = lr0 / (1 + decay * epoch)."""
    return _per_epoch(LambdaLR(optimizer, lambda epoch: 1.0 / (1.0 + decay * epoch)))


def step(
    optimizer: Optimizer, total_steps: int, step_size: int, factor: float
) -> LRSchedulerConfigType:
    """lr = lr0 * factor ** floor(epoch / step_size)."""
    return _per_epoch(StepLR(optimizer, step_size=step_size, gamma=factor))


def exponential(optimizer: Optimizer, total_steps: int, s: float) -> LRSchedulerConfigType:
    """lr = lr0 * 0.1 ** (epoch / s): ten times smaller every s epochs."""
    return _per_epoch(ExponentialLR(optimizer, gamma=0.1 ** (1.0 / s)))


def power(optimizer: Optimizer, total_steps: int, s: float, c: float) -> LRSchedulerConfigType:
    """lr = lr0 / (1 + epoch / s) ** c."""
    return _per_epoch(LambdaLR(optimizer, lambda epoch: (1.0 + epoch / s) ** -c))


def one_cycle(
    optimizer: Optimizer,
    total_steps: int,
    max_lr: float,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
) -> LRSchedulerConfigType:
    """1cycle: warm up to max_lr for pct_start of the batches, then anneal; per batch."""
    return _per_step(
        OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
    )


def plateau(
    optimizer: Optimizer,
    total_steps: int,
    monitor: str,
    mode: Literal["min", "max"],
    factor: float,
    patience: int,
) -> LRSchedulerConfigType:
    """Performance scheduling: lr *= factor after `patience` epochs without progress."""
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
    return _per_epoch(scheduler, monitor=monitor)


def cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float, min_lr: float
) -> LRSchedulerConfigType:
    """Linear warmup over warmup_fraction of the batches, then cosine annealing; per batch."""
    warmup = min(max(1, math.ceil(warmup_fraction * total_steps)), total_steps)
    if warmup >= total_steps:
        return _per_step(LinearLR(optimizer, start_factor=1e-3, total_iters=total_steps))
    return _per_step(
        SequentialLR(
            optimizer,
            schedulers=[
                LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup),
                CosineAnnealingLR(optimizer, T_max=total_steps - warmup, eta_min=min_lr),
            ],
            milestones=[warmup],
        )
    )
