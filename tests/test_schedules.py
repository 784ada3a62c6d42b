"""Each LR schedule follows its formula: unit checks on the functions, one through the CLI."""

from __future__ import annotations

import csv
import functools
import math
from itertools import pairwise
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import bare_trainer, run_cli

from lit_tune import schedules
from lit_tune.data import Digits
from lit_tune.models import MLP
from lit_tune.module import Classifier

LR0 = 0.1


def lrs(config: dict, steps: int, metrics: list[float] | None = None) -> list[float]:
    """The LR before step 0, 1, ..., steps-1 of a scheduler config dict."""
    optimizer = config["scheduler"].optimizer
    seen = []
    for i in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if metrics is None:
            config["scheduler"].step()
        else:
            config["scheduler"].step(metrics[i])
    return seen


def sgd() -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR0)


@pytest.mark.parametrize(
    ("name", "kwargs", "formula"),
    [
        ("none", {}, lambda e: LR0),
        ("time_decay", {"decay": 0.5}, lambda e: LR0 / (1 + 0.5 * e)),
        ("step", {"step_size": 3, "factor": 0.5}, lambda e: LR0 * 0.5 ** (e // 3)),
        ("exponential", {"s": 4}, lambda e: LR0 * 0.1 ** (e / 4)),
        ("power", {"s": 2, "c": 1.5}, lambda e: LR0 / (1 + e / 2) ** 1.5),
    ],
)
def test_epoch_schedules_follow_their_formula(name, kwargs, formula):
    config = getattr(schedules, name)(sgd(), total_steps=1000, **kwargs)
    assert config["interval"] == "epoch"
    assert lrs(config, 12) == pytest.approx([formula(e) for e in range(12)], rel=1e-9)


def test_one_cycle_rises_to_max_lr_then_anneals_per_batch():
    total, max_lr = 100, 1.0
    config = schedules.one_cycle(
        sgd(), total, max_lr=max_lr, pct_start=0.25, div_factor=10.0, final_div_factor=100.0
    )
    assert config["interval"] == "step"
    seen = lrs(config, total)
    peak = seen.index(max(seen))
    assert seen[0] == pytest.approx(max_lr / 10)
    assert max(seen) == pytest.approx(max_lr)
    assert peak == pytest.approx(0.25 * total, abs=1)
    assert all(a <= b for a, b in pairwise(seen[: peak + 1]))
    assert all(a >= b for a, b in pairwise(seen[peak:]))
    assert seen[-1] == pytest.approx(max_lr / 1000, rel=0.05)


def test_plateau_cuts_the_rate_after_patience_epochs_without_progress():
    config = schedules.plateau(sgd(), 1000, monitor="val/loss", mode="min", factor=0.5, patience=2)
    assert config["monitor"] == "val/loss"
    losses = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    # Epoch 3 is the first without progress; after 3 such epochs (> patience) the rate halves.
    seen = lrs(config, len(losses), metrics=losses)
    assert seen == pytest.approx([LR0] * 6 + [LR0 / 2] * 3)


def test_cosine_warms_up_linearly_then_follows_the_cosine():
    total, warmup_fraction, min_lr = 200, 0.1, 0.001
    config = schedules.cosine(sgd(), total, warmup_fraction=warmup_fraction, min_lr=min_lr)
    assert config["interval"] == "step"
    seen = lrs(config, total)
    warmup = 20
    start = LR0 * 1e-3
    for t in range(warmup):
        assert seen[t] == pytest.approx(start + (LR0 - start) * t / warmup, rel=1e-6)
    for t in range(warmup, total):
        progress = (t - warmup) / (total - warmup)
        expected = min_lr + (LR0 - min_lr) * (1 + math.cos(math.pi * progress)) / 2
        assert seen[t] == pytest.approx(expected, rel=1e-6)


@pytest.mark.cli
def test_the_trainer_applies_the_schedule_epoch_by_epoch(tmp_path: Path):
    """Through the CLI: the `lr` logged per epoch is lr0 * 0.1 ** (epoch / s)."""
    result = run_cli(
        "scheduler=exponential",
        "scheduler.s=2",
        "optimizer=sgd",
        "optimizer.lr=0.2",
        "trainer.max_epochs=4",
        "callbacks.early_stopping.patience=100",
        "logger=csv",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (metrics_file,) = tmp_path.glob("outputs/*/*/csv/version_0/metrics.csv")
    rows = [row for row in csv.DictReader(metrics_file.open()) if row.get("lr")]
    assert [float(row["lr"]) for row in rows] == pytest.approx(
        [0.2 * 0.1 ** (e / 2) for e in range(4)]
    )


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_the_run_records_the_rate_of_every_step_as_the_schedule_gave_it(steps_per_execution: int):
    """`lr_history` (plotted as plots/lr_schedule.png) is the rate each step used."""
    L.seed_everything(0)
    dm = Digits(batch_size=100, val_fraction=0.15, test_fraction=0.15, seed=0)
    net = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_layers=1, width=16)
    one_cycle = functools.partial(
        schedules.one_cycle, max_lr=LR0, pct_start=0.3, div_factor=10.0, final_div_factor=100.0
    )
    optimizer = functools.partial(torch.optim.SGD, lr=LR0)
    module = Classifier(net, 10, optimizer, one_cycle, steps_per_execution=steps_per_execution)
    trainer = bare_trainer(max_epochs=3)
    trainer.fit(module, datamodule=dm)
    total = 3 * 13  # 1298 examples in batches of 100
    assert len(module.lr_history) == trainer.global_step == total
    assert module.lr_history == pytest.approx(lrs(one_cycle(sgd(), total), total), rel=1e-9)
