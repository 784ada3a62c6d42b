"""Coarse-to-fine: the space derived from the best trials of a study."""

from __future__ import annotations

import math
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import create_trial

from hydra_plugins.lit_tune_sweeper._errors import ConfigError
from hydra_plugins.lit_tune_sweeper._refine import refined_params

SPACE = {
    "optimizer.lr": FloatDistribution(1e-4, 1.0, log=True),
    "model.dropout": FloatDistribution(0.0, 0.5),
    "model.width": IntDistribution(16, 1024, log=True),
    "model.hidden_layers": IntDistribution(1, 4),
    "optimizer": CategoricalDistribution(["sgd", "adam", "rmsprop"]),
}


def study_with(trials: list[tuple[dict, float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for params, value in trials:
        study.add_trial(create_trial(params=params, distributions=SPACE, value=value))
    return study


def bounds(expression: str) -> tuple[float, float]:
    low, high = re.search(r"interval\(([^,]+), ([^)]+)\)", expression).groups()
    return float(low), float(high)


def trial(lr: float, dropout: float, width: int, layers: int, optimizer: str) -> dict:
    return {
        "optimizer.lr": lr,
        "model.dropout": dropout,
        "model.width": width,
        "model.hidden_layers": layers,
        "optimizer": optimizer,
    }


def test_the_space_narrows_around_the_top_trials():
    study = study_with(
        [
            (trial(1e-3, 0.1, 128, 2, "adam"), 0.97),
            (trial(4e-3, 0.2, 256, 3, "adam"), 0.96),
            (trial(2e-3, 0.15, 200, 2, "rmsprop"), 0.95),
            (trial(0.5, 0.45, 16, 1, "sgd"), 0.30),  # not among the top 3
        ]
    )
    space = refined_params(study, k=3)
    # lr spans 1e-3..4e-3: log span ln 4, widened by a quarter on each side.
    widen = 4**0.25
    low, high = 1e-3 / widen, 4e-3 * widen
    assert space["optimizer.lr"].startswith("tag(log, interval(")
    assert bounds(space["optimizer.lr"]) == pytest.approx((low, high))
    assert space["model.dropout"].startswith("interval(")
    assert bounds(space["model.dropout"]) == pytest.approx((0.075, 0.225))
    lo_w = math.floor(math.exp(math.log(128) - 0.25 * math.log(2)))
    hi_w = math.ceil(math.exp(math.log(256) + 0.25 * math.log(2)))
    assert space["model.width"] == f"tag(log, int(interval({lo_w}, {hi_w})))"
    assert space["model.hidden_layers"] == "int(interval(1, 4))"  # clipped to the coarse bounds
    assert space["optimizer"] == "choice(adam, rmsprop)"


def test_a_single_winning_category_becomes_a_fixed_value():
    study = study_with([(trial(1e-3, 0.1, 128, 2, "adam"), 0.9)])
    assert refined_params(study, k=5)["optimizer"] == "adam"


def test_a_study_without_completed_trials_is_refused():
    with pytest.raises(ConfigError, match="no completed trial"):
        refined_params(optuna.create_study(), k=5)
