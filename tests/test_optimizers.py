"""Each optimizer option builds the torch optimizer it names, with its hyperparameters."""

from __future__ import annotations

import pytest
import torch
from conftest import group_options
from hydra.utils import instantiate

from lit_tune.trust import DEFAULT_TRUSTED

EXPECTED = {
    "sgd": (torch.optim.SGD, {"lr": 0.01, "momentum": 0, "nesterov": False}),
    "momentum": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.01}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 0.001, "alpha": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 0.001, "betas": (0.9, 0.999)}),
    "adamw": (torch.optim.AdamW, {"lr": 0.001, "weight_decay": 0.01}),
}


def test_every_optimizer_option_is_covered():
    assert group_options("optimizer") == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_optimizer_receives_its_hyperparameters(compose_cfg, name):
    cls, defaults = EXPECTED[name]
    cfg = compose_cfg(f"optimizer={name}", "optimizer.lr=0.0123", "optimizer.weight_decay=0.004")
    params = [torch.nn.Parameter(torch.zeros(3))]
    build = instantiate(cfg.optimizer, _convert_="all", _execution_whitelist_=list(DEFAULT_TRUSTED))
    optimizer = build(params)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    expected = {**defaults, "lr": 0.0123, "weight_decay": 0.004}
    for key, value in expected.items():
        actual = tuple(group[key]) if key == "betas" else group[key]
        assert actual == value, key


def test_betas_reach_adam_from_the_command_line(compose_cfg):
    cfg = compose_cfg("optimizer=adam", "optimizer.betas=[0.8,0.99]")
    build = instantiate(cfg.optimizer, _convert_="all", _execution_whitelist_=list(DEFAULT_TRUSTED))
    optimizer = build([torch.nn.Parameter(torch.zeros(1))])
    assert tuple(optimizer.param_groups[0]["betas"]) == (0.8, 0.99)
