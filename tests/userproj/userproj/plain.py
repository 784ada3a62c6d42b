"""A plain LightningModule: its own net and configure_optimizers, self.log at every step."""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class TrainOnly(L.LightningModule):
    """Trains and validates; no test_step."""

    def __init__(self, num_features: int, num_classes: int, lr: float = 0.01, hidden: int = 64):
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)  # per step: Lightning's default in training_step
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class PlainModule(TrainOnly):
    """And tests."""

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean())
