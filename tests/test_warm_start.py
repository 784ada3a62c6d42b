"""Warm start (`hydra.sweeper.warm_start`) through the foreign app: the given points and the
other study's best run first, in that order; values outside the space are refused (points)
or left out (another study's trials); with as_prior the sampler starts where that study
found the best."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, cli_env, run
from optuna.distributions import FloatDistribution

from hydra_plugins.lit_tune_sweeper._warm_start import ORIGIN
from hydra_plugins.lit_tune_sweeper.storage import open_storage

pytestmark = pytest.mark.cli


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return shutil.copytree(ROOT / "tests" / "foreign", tmp_path / "foreign")


def sweep(app: Path, *args: str) -> tuple[int, str]:
    command = [sys.executable, str(app / "app.py"), "-m", *args]
    done = run(command, app, cli_env(), timeout=300)
    return done.returncode, done.stderr + done.stdout


def storage(app: Path) -> optuna.storages.RDBStorage:
    return open_storage(f"sqlite:///{app}/optuna.db")


def source(app: Path, results: dict[float, float]) -> optuna.Study:
    """A finished study 'coarse' with trials {x: value}, over a wider x than the app's."""
    study = optuna.create_study(study_name="coarse", storage=storage(app), direction="minimize")
    wide = {"x": FloatDistribution(-10, 10)}
    for x, value in results.items():
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=wide, value=value))
    return study


def trials(app: Path, name: str = "foreign") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage(app)).trials


def test_given_points_then_the_other_studys_best_that_fit_run_first(app: Path):
    # x=6 is the best of 'coarse' but outside this space (-5, 5): left out, with a warning.
    source(app, {6.0: 0.0, 1.2: 0.04, -1.0: 4.0, 0.5: 0.25})
    code, output = sweep(
        app,
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.warm_start.points=[{x:-1.5},{x:4}]",
        "hydra.sweeper.warm_start.from_study=coarse",
        "hydra.sweeper.warm_start.top_k=2",
    )
    assert code == 0, output[-3000:]
    ran = trials(app)
    assert [t.params["x"] for t in ran[:4]] == [-1.5, 4.0, 1.2, 0.5]
    assert [t.user_attrs[ORIGIN] for t in ran[:4]] == [
        "points[0]",
        "points[1]",
        "top 1 of study coarse",
        "top 2 of study coarse",
    ]
    assert len(ran) == 5 and ORIGIN not in ran[4].user_attrs  # then the sampler's own
    assert "trial 0 of coarse left out: x=6.0 is outside values in [-5.0, 5.0]" in output
    assert len(trials(app, "coarse")) == 4  # the other study is only read


def test_a_point_outside_the_space_is_refused_before_anything_runs(app: Path):
    code, output = sweep(app, "hydra.sweeper.warm_start.points=[{x:0.5},{x:7}]")
    assert code == 2
    assert "Error: hydra.sweeper.warm_start.points[1].x=7: outside the search space" in output
    assert "foreign" not in optuna.get_all_study_names(storage(app))  # no study begun


def test_as_prior_the_sampler_starts_from_the_other_studys_results(app: Path):
    # 21 results of (x - 1)^2 over [-5, 5]: TPE, which samples at random for its first 10
    # trials, has seen enough to start near x = 1 at once.
    source(app, {x / 2: (x / 2 - 1) ** 2 for x in range(-10, 11)})
    args = ["hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=0"]
    code, output = sweep(
        app,
        *args,
        "hydra.sweeper.warm_start.from_study=coarse",
        "hydra.sweeper.warm_start.top_k=0",
        "hydra.sweeper.warm_start.as_prior=true",
    )
    assert code == 0, output[-3000:]
    warm = [t.params["x"] for t in trials(app)]
    assert len(warm) == 4 and all(abs(x - 1) < 1.0 for x in warm), warm
    assert len(trials(app, "coarse")) == 21  # shown to the sampler, not copied
    # The same seed without the prior: random draws over [-5, 5].
    code, output = sweep(app, *args, "hydra.sweeper.study_name=cold")
    cold = [t.params["x"] for t in trials(app, "cold")]
    assert not all(abs(x - 1) < 1.0 for x in cold), cold
