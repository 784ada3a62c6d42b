"""Friedman's #1 regression problem as a LightningDataModule.

y = 10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5 + noise, with x uniform in [0, 1]^10:
five of the ten features matter. The noise's standard deviation is the best RMSE there is.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class FriedmanData(L.LightningDataModule):
    """`samples` rows of make_friedman1 (fixed by `seed`), split 70/15/15, features and target
    as scikit-learn gives them. `num_features`, `target_mean` and `target_std` are what a net
    and lit_tune's regressor read (their `???` in conf/)."""

    def __init__(
        self, samples: int = 3000, noise: float = 1.0, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        from sklearn.datasets import make_friedman1

        x, y = make_friedman1(n_samples=samples, noise=noise, random_state=seed)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed))
        n_val = n_test = int(0.15 * samples)
        parts = order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]
        self.splits = {
            name: TensorDataset(x[i], y[i])
            for name, i in zip(("train", "val", "test"), parts, strict=True)
        }
        self.batch_size = batch_size
        train_y = y[parts[0]]
        self.num_features = x.shape[1]
        self.target_mean, self.target_std = float(train_y.mean()), float(train_y.std())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=512)
