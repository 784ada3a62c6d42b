"""A Lightning app that knows nothing of lit_tune: its own LightningModule, data and MLflow
logger, all from its Hydra config. Its config changes the sweeper line, adds the one callback
line that prunes (PruningCallback) and names its MLflow experiment for the sweeper
(tests/test_foreign_app.py)."""

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Line(L.LightningModule):
    """y = 3x - 1 + noise, fitted by one linear unit."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Linear(1, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(seed: int, shuffle: bool) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(256, 1, generator=g) * 2 - 1
    y = 3 * x - 1 + 0.1 * torch.randn(256, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=shuffle)


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        logger=hydra.utils.instantiate(cfg.logger),
        callbacks=[hydra.utils.instantiate(c) for c in cfg.callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(Line(cfg.lr), loader(0, True), loader(1, False))
    return float(trainer.callback_metrics["val_loss"])


if __name__ == "__main__":
    main()
