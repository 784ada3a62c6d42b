"""The LightningModule: metrics summed on the device per batch, logged once per epoch."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import bare_trainer
from torch import Tensor

from lit_tune import schedules
from lit_tune.data import Digits
from lit_tune.models import MLP
from lit_tune.module import Classifier
from lit_tune.schedules import none as no_schedule


def test_epoch_metrics_are_the_means_over_every_example():
    # lr 0: the weights never move, so every batch of the epoch sees the same model and the
    # epoch means can be recomputed here in one pass.
    L.seed_everything(0)
    dm = Digits(batch_size=100, val_fraction=0.15, test_fraction=0.15, seed=0)
    net = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_layers=1, width=16)
    module = Classifier(net, 10, functools.partial(torch.optim.SGD, lr=0.0), no_schedule)
    trainer = bare_trainer(max_epochs=1)
    trainer.fit(module, datamodule=dm)
    logged = dict(trainer.callback_metrics)
    trainer.test(module, datamodule=dm, verbose=False)
    logged.update(trainer.callback_metrics)
    net.eval()
    with torch.no_grad():
        # Uneven last batches (1298, 229 and 270 examples): a mean of batch means would differ.
        for split in ("train", "val", "test"):
            x, y = dm.splits[split]
            logits = net(x)
            loss = float(F.cross_entropy(logits, y))
            assert float(logged[f"{split}/loss"]) == pytest.approx(loss, rel=1e-5), split
            if split != "train":
                accuracy = float((logits.argmax(1) == y).float().mean())
                assert float(logged[f"{split}/acc"]) == pytest.approx(accuracy, abs=1e-6)


def fit(steps_per_execution: int, scheduler, max_epochs: int = 3, **digits):
    L.seed_everything(0)
    dm = Digits(batch_size=64, val_fraction=0.15, test_fraction=0.15, seed=0, **digits)
    net = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_layers=1, width=32, dropout=0.2)
    sgd = functools.partial(torch.optim.SGD, lr=0.2)
    module = Classifier(net, 10, sgd, scheduler, steps_per_execution=steps_per_execution)
    trainer = bare_trainer(max_epochs=max_epochs)
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "epoch_time"}
    return module, trainer, metrics


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_several_steps_per_batch_train_exactly_as_one(loader: str):
    """Same seed, k = 1 (Lightning's automatic optimisation) or 5 steps per Lightning batch
    (the fast path, by hand): the same steps, rates and metrics, to the bit (dropout draws in
    the same order; the per-step schedule spans the same steps)."""
    one_cycle = functools.partial(
        schedules.one_cycle, max_lr=0.2, pct_start=0.3, div_factor=10.0, final_div_factor=100.0
    )
    one, trainer_one, metrics_one = fit(1, one_cycle, loader=loader)
    five, trainer_five, metrics_five = fit(5, one_cycle, loader=loader)
    assert len(five.lr_history) == 3 * 21  # 1298 examples in batches of 64, 3 epochs
    assert five.lr_history == one.lr_history
    assert trainer_five.global_step == trainer_one.global_step == 3 * 21  # optimizer steps
    assert trainer_five.num_training_batches == 5  # 21 steps in batches of 5 steps
    assert metrics_five == metrics_one
    assert metrics_five["val/acc"] > 0.8  # it trained
    assert trainer_one.lightning_module.automatic_optimization
    assert not trainer_five.lightning_module.automatic_optimization


def test_epoch_schedules_step_once_per_epoch_and_plateau_reads_its_metric():
    exponential = functools.partial(schedules.exponential, s=1.0)  # lr / 10 each epoch
    module, _, _ = fit(4, exponential)
    per_epoch = module.lr_history[::21]
    assert per_epoch == pytest.approx([0.2, 0.02, 0.002])
    assert len(set(module.lr_history[:21])) == 1  # constant within the epoch
    # Plateau on val/loss with mode=max: a falling loss is "no progress", so with patience 0
    # the rate halves after every epoch but the first.
    plateau = functools.partial(
        schedules.plateau, monitor="val/loss", mode="max", factor=0.5, patience=0
    )
    module, _, _ = fit(4, plateau, max_epochs=4)
    assert module.monitor == "val/loss"
    assert module.lr_history[::21] == pytest.approx([0.2, 0.2, 0.1, 0.05])


def one_step_moves(clip: float | None, algorithm: str | None) -> Tensor:
    """What one SGD step of lr 1 (the gradient itself) moves the weights by."""
    L.seed_everything(0)
    dm = Digits(batch_size=64, val_fraction=0.15, test_fraction=0.15, seed=0)
    net = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_layers=1, width=32)
    before = [p.detach().clone() for p in net.parameters()]
    sgd = functools.partial(torch.optim.SGD, lr=1.0)
    module = Classifier(net, 10, sgd, no_schedule, steps_per_execution=8)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1
    # Clipping is Lightning's: the module leaves the fast path for its automatic optimisation.
    assert module.automatic_optimization == (clip is not None)
    return torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(net.parameters(), before, strict=True)]
    )


def test_gradients_are_clipped_as_lightning_defines():
    free = one_step_moves(None, None)
    assert float(free.norm()) > 0.1 and float(free.abs().max()) > 0.01
    assert float(one_step_moves(1e-3, "norm").norm()) == pytest.approx(1e-3, rel=1e-4)
    assert float(one_step_moves(1e-3, "value").abs().max()) == pytest.approx(1e-3, rel=1e-4)


def test_accumulated_gradients_step_once_per_k_batches():
    """accumulate_grad_batches: Lightning's own (the fast path steps aside): 21 batches of an
    epoch in steps of 4 batches are 6 optimizer steps (the last holds 1)."""
    L.seed_everything(0)
    dm = Digits(batch_size=64, val_fraction=0.15, test_fraction=0.15, seed=0)
    net = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_layers=1, width=16)
    module = Classifier(
        net, 10, functools.partial(torch.optim.SGD, lr=0.1), no_schedule, steps_per_execution=8
    )
    trainer = bare_trainer(max_epochs=2, accumulate_grad_batches=4)
    trainer.fit(module, datamodule=dm)
    assert module.automatic_optimization
    assert trainer.num_training_batches == 21
    assert trainer.global_step == len(module.lr_history) == 2 * 6


def test_a_datamodule_of_another_kind_gets_lightnings_optimisation():
    """The fast path needs pieces of several batches, which only lit_tune's in-memory data
    serves: with a plain DataLoader a built-in module takes one step per batch, Lightning's way."""
    L.seed_everything(0)
    x, y = torch.randn(200, 1, 8, 8), torch.randint(0, 10, (200,))
    loader = torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=32)
    net = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_layers=1, width=16)
    module = Classifier(
        net, 10, functools.partial(torch.optim.SGD, lr=0.1), no_schedule, steps_per_execution=8
    )
    trainer = bare_trainer(max_epochs=1)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert module.automatic_optimization
    assert trainer.global_step == len(module.lr_history) == 7


class CountBackward(L.Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.calls += 1


def test_a_callback_on_the_backward_hooks_is_called_every_step():
    """Without such a callback the module calls loss.backward() itself, skipping the hooks'
    dispatch; with one, Lightning's backward runs and calls it."""
    L.seed_everything(0)
    dm = Digits(batch_size=64, val_fraction=0.15, test_fraction=0.15, seed=0)
    net = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_layers=1, width=16)
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    module = Classifier(net, 10, sgd, no_schedule, steps_per_execution=4)
    counter = CountBackward()
    trainer = bare_trainer(max_epochs=2)
    trainer.callbacks.append(counter)
    trainer.fit(module, datamodule=dm)
    assert not module._plain_backward
    assert counter.calls == trainer.global_step == 2 * 21
    plain = Classifier(net, 10, sgd, no_schedule, steps_per_execution=4)
    bare = bare_trainer(max_epochs=1)
    bare.fit(plain, datamodule=dm)
    assert plain._plain_backward
