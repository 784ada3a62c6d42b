"""A user's own nn.Module."""

from torch import Tensor, nn


class TinyNet(nn.Module):
    """Flatten, one hidden layer, a head."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
