"""A user's own LightningDataModule: scikit-learn's digits through torch DataLoaders."""

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset, random_split


class DigitsData(L.LightningDataModule):
    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.splits: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def num_features(self) -> int:
        return 64

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target)
        parts = random_split(
            TensorDataset(x, y), [0.7, 0.15, 0.15], torch.Generator().manual_seed(self.hparams.seed)
        )
        self.splits = dict(zip(("train", "val", "test"), parts, strict=True))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=256)
