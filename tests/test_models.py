"""The networks: layer sizes from the config and the data, inits that suit the activation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_tune.models import ACTIVATIONS, CNN, MLP, hidden_widths


def linear_sizes(net: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]


def test_mlp_width_with_a_taper():
    assert hidden_widths(3, 256, 0.5) == [256, 128, 64]
    net = MLP((1, 28, 28), 10, hidden_layers=3, width=256, taper=0.5)
    assert linear_sizes(net) == [(784, 256), (256, 128), (128, 64), (64, 10)]


def test_mlp_widths_listed_one_by_one_win_over_width():
    net = MLP((1, 8, 8), 10, hidden_layers=1, width=999, widths=[32, 16])
    assert linear_sizes(net) == [(64, 32), (32, 16), (16, 10)]


def test_mlp_without_hidden_layers_is_softmax_regression():
    assert linear_sizes(MLP((1, 8, 8), 10, hidden_layers=0)) == [(64, 10)]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_and_keeps_the_signal_alive(activation: str):
    torch.manual_seed(0)
    net = MLP((1, 28, 28), 10, hidden_layers=4, width=512, activation=activation)
    out = net(torch.randn(256, 1, 28, 28)).detach()
    assert out.shape == (256, 10)
    # A suitable init keeps the output scale within an order of magnitude or so of the input's.
    assert 0.05 < float(out.std()) < 20


def test_mlp_batch_norm_and_dropout_layers():
    net = MLP((1, 8, 8), 10, hidden_layers=2, width=16, batch_norm=True, dropout=0.2)
    kinds = [type(m) for m in net.layers]
    assert kinds.count(nn.BatchNorm1d) == 2 and kinds.count(nn.Dropout) == 2
    selu = MLP((1, 8, 8), 10, hidden_layers=2, width=16, activation="selu", dropout=0.2)
    assert any(isinstance(m, nn.AlphaDropout) for m in selu.layers)


@pytest.mark.parametrize(("shape", "depth"), [((1, 8, 8), 1), ((1, 8, 8), 4), ((1, 28, 28), 3)])
def test_cnn_fits_any_input_size_and_depth(shape, depth):
    net = CNN(shape, 10, channels=8, depth=depth)
    assert net(torch.randn(5, *shape)).shape == (5, 10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8 * 2**i for i in range(depth)]
