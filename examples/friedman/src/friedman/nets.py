"""A residual MLP for tabular data."""

from __future__ import annotations

from torch import Tensor, nn


class Block(nn.Module):
    """x + MLP(LayerNorm(x)): the pre-norm residual block."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 2 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResidualMLP(nn.Module):
    """Features -> width, `blocks` residual blocks, -> one value per target."""

    def __init__(
        self,
        num_features: int,
        num_outputs: int = 1,
        width: int = 64,
        blocks: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Linear(num_features, width)
        self.blocks = nn.Sequential(*(Block(width, dropout) for _ in range(blocks)))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
