"""Stopping a study before its budget (`hydra.sweeper.stop`): each of target, patience and
timeout stops the foreign app's sweep early, the running trials finish, the results file and
the parent run say why, and the same command with a larger budget goes on with the study."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, cli_env, run
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper.storage import open_storage

pytestmark = pytest.mark.cli


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return shutil.copytree(ROOT / "tests" / "foreign", tmp_path / "foreign")


def sweep(app: Path, *args: str) -> None:
    command = [sys.executable, str(app / "app.py"), "-m", *args]
    done = run(command, app, cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def finished(app: Path) -> list[optuna.trial.FrozenTrial]:
    """The study's finished trials (not those still queued)."""
    return [t for t in study(app).trials if t.state.is_finished()]


def study(app: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{app}/optuna.db")
    return optuna.create_study(
        study_name="foreign", storage=storage, direction="minimize", load_if_exists=True
    )


def stopped(app: Path) -> list[tuple[str | None, str | None]]:
    """(stopped_by, its reason) of each run of the sweep, oldest first: from the results
    files and from the parent run's tags, which must agree."""
    files = sorted(app.glob("multirun/*/*/optimization_results.yaml"))
    found = [OmegaConf.to_container(OmegaConf.load(f)).get("stopped", {}) for f in files]
    from_files = [(s.get("by"), s.get("reason")) for s in found]
    client = MlflowClient(f"sqlite:///{app}/mlflow.db")
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`lit_tune.role` = 'sweep'",
    )
    assert (parent.data.tags.get("stopped_by"), parent.data.tags.get("stop_reason")) == (
        from_files[-1]
    ), "the parent run (one per study) carries the latest run's reason"
    return from_files


def test_target_stops_the_study_once_the_best_reaches_it_and_a_raised_one_goes_on(app: Path):
    for x in (3.0, 1.5, 1.2, 1.1):  # (x - 1)^2: 4, 0.25, 0.04, 0.01
        study(app).enqueue_trial({"x": x})
    sweep(app, "hydra.sweeper.n_trials=10", "hydra.sweeper.stop.target=0.5")
    assert [t.value for t in finished(app)] == [4.0, 0.25]
    sweep(app, "hydra.sweeper.n_trials=10", "hydra.sweeper.stop.target=0.02")
    values = [t.value for t in finished(app)]
    assert values[:4] == pytest.approx([4.0, 0.25, 0.04, 0.01]) and len(values) == 4
    (by, reason), (by_again, reason_again) = stopped(app)
    assert (by, by_again) == ("target", "target")
    assert "best 0.25 (trial 1) reached stop.target=0.5" in reason
    assert "best 0.01 (trial 3) reached stop.target=0.02" in reason_again


def test_patience_stops_after_trials_that_do_not_improve_and_a_resumed_study_goes_on(
    app: Path,
):
    # 0.25 improves on nothing yet; 0.2 by less than min_delta; then two worse ones.
    for x in (1.5, 1.45, 3.0, -2.0, 1.0, 4.0, 4.0):
        study(app).enqueue_trial({"x": x})
    args = ["hydra.sweeper.n_trials=20", "hydra.sweeper.stop.patience=3"]
    sweep(app, *args, "hydra.sweeper.stop.min_delta=0.1")
    trials = finished(app)
    assert [t.params["x"] for t in trials] == [1.5, 1.45, 3.0, -2.0]
    # The same budget goes on: patience counts this run's trials (x=1 improves, then 3 more).
    sweep(app, *args, "hydra.sweeper.n_trials=30")
    trials = finished(app)
    assert [t.params["x"] for t in trials[:7]] == [1.5, 1.45, 3.0, -2.0, 1.0, 4.0, 4.0]
    assert len(trials) == 8 and trials[4].value == 0.0
    (by, reason), (by_again, _) = stopped(app)
    assert (by, by_again) == ("patience", "patience")
    assert "3 trials without an improvement of more than stop.min_delta=0.1 on 0.25" in reason


def test_timeout_stops_launching_and_lets_the_running_trial_finish(app: Path):
    args = ["hydra.sweeper.n_trials=50", "sleep=1.0", "hydra.sweeper.stop.timeout=2.5"]
    sweep(app, *args)
    first = finished(app)
    assert 2 <= len(first) < 10
    assert all(t.state == TrialState.COMPLETE for t in first)
    # The last one ran past the timeout: it was launched before it and finished.
    started, ended = first[0].datetime_start, first[-1].datetime_complete
    assert (ended - started).total_seconds() > 2.5
    sweep(app, *args)
    again = finished(app)
    assert len(first) + 2 <= len(again) < 50 and [t.number for t in again] == list(
        range(len(again))
    )
    assert [by for by, _ in stopped(app)] == ["timeout", "timeout"]
