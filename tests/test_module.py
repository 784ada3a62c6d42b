"""The LightningModule: metrics summed on the device per batch, logged once per epoch."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import bare_trainer

from lit_tune.data import Digits
from lit_tune.models import MLP
from lit_tune.module import Classifier
from lit_tune.schedules import none as no_schedule


def test_epoch_metrics_are_the_means_over_every_example():
    # lr 0: the weights never move, so every batch of the epoch sees the same model and the
    # epoch means can be recomputed here in one pass.
    L.seed_everything(0)
    dm = Digits(batch_size=100, val_fraction=0.15, test_fraction=0.15, seed=0)
    net = MLP(input_shape=(1, 8, 8), num_classes=10, hidden_layers=1, width=16)
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
