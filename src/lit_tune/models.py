"""The networks of `conf/model/`: an MLP and a small CNN.

Both take `input_shape` (the shape of one example) and `num_outputs` (classes, or regression
targets) from the datamodule: their configs leave them `???`, which the run fills from the
datamodule's attributes of those names, so sizes are never typed twice. Both initialise their
weights to suit the activation: He for the ReLU family, LeCun for SELU (self-normalising nets
need it), Glorot for tanh and sigmoid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from lit_tune import config

ACTIVATIONS: dict[str, type[nn.Module]] = {
    name: getattr(nn, cls) for name, cls in config.ACTIVATIONS.items()
}


def _init_weights(net: nn.Module, activation: str) -> None:
    for layer in net.modules():
        if not isinstance(layer, nn.Linear | nn.Conv2d):
            continue
        if activation == "selu":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")  # LeCun normal
        elif activation in ("tanh", "sigmoid"):
            nn.init.xavier_uniform_(layer.weight)
        else:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def _dropout(p: float, activation: str) -> nn.Module:
    # Plain dropout would break SELU's self-normalisation; alpha dropout keeps it.
    return nn.AlphaDropout(p) if activation == "selu" else nn.Dropout(p)


def hidden_widths(hidden_layers: int, width: int, taper: float) -> list[int]:
    """Widths of the hidden layers: width * taper**i, never below 1."""
    return [max(1, round(width * taper**i)) for i in range(hidden_layers)]


class MLP(nn.Module):
    """Flatten, then [Linear, (BatchNorm), activation, (Dropout)] per hidden layer, then Linear:
    for images and tabular data alike."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden_layers: int = 2,
        width: int = 256,
        taper: float = 1.0,
        widths: Sequence[int] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        sizes = list(widths) if widths else hidden_widths(hidden_layers, width, taper)
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for size in sizes:
            layers.append(nn.Linear(fan_in, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(_dropout(dropout, activation))
            fan_in = size
        layers.append(nn.Linear(fan_in, num_outputs))
        self.layers = nn.Sequential(*layers)
        _init_weights(self, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """`depth` blocks of conv-(bn)-act-maxpool with doubling channels, global pooling, head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: int = 32,
        depth: int = 2,
        kernel_size: int = 3,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"CNN needs images (channels, height, width); the data's input_shape is "
                f"{tuple(input_shape)}: use model=mlp"
            )
        in_channels, height, _ = input_shape
        layers: list[nn.Module] = []
        for i in range(depth):
            out_channels = channels * 2**i
            layers.append(
                nn.Conv2d(
                    in_channels, out_channels, kernel_size, padding="same", bias=not batch_norm
                )
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(ACTIVATIONS[activation]())
            if height >= 2:  # pool while there is something left to pool
                layers.append(nn.MaxPool2d(2))
                height //= 2
            in_channels = out_channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(_dropout(dropout, activation))
        layers.append(nn.Linear(in_channels, num_outputs))
        self.layers = nn.Sequential(*layers)
        _init_weights(self, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
