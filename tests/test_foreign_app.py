"""The sweeper under Hydra apps that are not lit_tune's, in two shapes: a plain function that
returns a float (tests/foreign/app.py), whose config changes only its sweeper line, and a
Lightning app with its own module and MLflow logger (tests/foreign_lightning/app.py), whose
config also adds PruningCallback. Each runs as a user runs it: a subprocess."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, cli_env, kill_while_trial_runs
from conftest import run as run_command
from mlflow import MlflowClient
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper._study import FAIL_REASON, counts
from hydra_plugins.lit_tune_sweeper.storage import open_storage

APP = ROOT / "tests" / "foreign"
LIGHTNING_APP = ROOT / "tests" / "foreign_lightning"

pytestmark = pytest.mark.cli  # every test runs the foreign app in subprocesses


@pytest.fixture
def app(tmp_path: Path) -> Path:
    shutil.copytree(APP, tmp_path / "foreign")
    return tmp_path / "foreign"


def sweep(app: Path, *args: str, script: str = "app.py") -> list[str]:
    return [sys.executable, str(app / script), "-m", *args]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = run_command(command, cwd, cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def study(app: Path, name: str = "foreign") -> optuna.Study:
    storage = open_storage(f"sqlite:///{app}/optuna.db")
    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(app: Path, experiment: str, name: str) -> tuple[list, dict[int, list]]:
    """(parent runs, {trial number: its runs}) of study `name` in the app's MLflow store."""
    client = MlflowClient(f"sqlite:///{app}/mlflow.db")
    (found,) = [e for e in client.search_experiments() if e.name == experiment]
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lit_tune.role") == "sweep"]
    children: dict[int, list] = {}
    for r in runs:
        if r.data.tags.get("optuna.study_name") == name and "optuna.trial_number" in r.data.tags:
            children.setdefault(int(r.data.tags["optuna.trial_number"]), []).append(r)
    return parents, children


def test_failing_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(app: Path):
    storage = open_storage(f"sqlite:///{app}/optuna.db")
    queued = optuna.create_study(study_name="foreign", storage=storage, direction="minimize")
    for x in (4.8, -4.8, 1.5):
        queued.enqueue_trial({"x": x})
    # Up to every trial may fail: the two queued failures and any the sampler finds.
    run(sweep(app, "hydra.sweeper.n_trials=5", "hydra.sweeper.max_failure_rate=1"), app)
    trials = study(app).trials
    assert [t.state for t in trials[:3]] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "x=4.8 is out of range" in trials[0].user_attrs[FAIL_REASON]
    assert "not finite" in trials[1].user_attrs[FAIL_REASON]
    assert trials[2].value == pytest.approx(0.25)
    assert sum(counts(t) for t in trials) == 5 and len(trials) == 5

    # MLflow, from the returned values alone: one parent run, one nested run per trial with
    # its params, value and outcome (the app logs nothing itself; the job is named "app").
    parents, children = trial_runs(app, "app", "foreign")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(children) == [t.number for t in trials]
    for trial in trials:
        (child,) = children[trial.number]
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.tags["outcome"] == trial.state.name
        assert float(child.data.params["x"]) == pytest.approx(trial.params["x"])
        if trial.state == TrialState.COMPLETE:
            assert child.info.status == "FINISHED"
            assert child.data.metrics["objective"] == pytest.approx(trial.value)
        else:
            assert child.info.status == "FAILED"
            assert child.data.tags["fail_reason"] == trial.user_attrs[FAIL_REASON]
    assert parents[0].data.metrics["best_value"] == pytest.approx(
        min(t.value for t in trials if t.state == TrialState.COMPLETE)
    )


def started_while_another_ran(app: Path, script: str) -> bool:
    """Sweep three trials two at a time, the first long (6 s) and the others short; whether
    the third started after the second ended but while the first still ran."""
    storage = open_storage(f"sqlite:///{app}/optuna.db")
    queued = optuna.create_study(study_name="foreign", storage=storage, direction="minimize")
    for sleep in (6.0, 0.5, 0.5):
        queued.enqueue_trial({"x": 0.0, "sleep": sleep})
    args = ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=3"]
    run(sweep(app, *args, "sleep=choice(0.5,6.0)", script=script), app)
    first, second, third = study(app).trials
    assert [t.params["sleep"] for t in (first, second, third)] == [6.0, 0.5, 0.5]
    assert third.datetime_start > second.datetime_complete
    return third.datetime_start < first.datetime_complete


def test_parallel_trials_start_as_soon_as_one_ends(app: Path):
    assert started_while_another_ran(app, "app.py")


def test_the_no_barrier_check_fails_against_a_sweeper_that_runs_in_batches(app: Path):
    assert not started_while_another_ran(app, "batched.py")


def test_a_killed_sweep_run_again_ends_with_exactly_its_budget(app: Path):
    command = sweep(
        app, "sleep=2", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"
    )
    kill_while_trial_runs(command, app, cli_env(), lambda: study(app).trials)
    assert any(t.state == TrialState.RUNNING for t in study(app).trials)

    time.sleep(2.5)  # the killed trial's heartbeat is older than grace_period
    second = run_command(command, app, cli_env(), timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = study(app).trials
    assert sum(counts(t) for t in trials) == 6
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(math.isfinite(t.value) for t in trials if t.state == TrialState.COMPLETE)


def test_a_lightning_app_is_pruned_and_optuna_and_mlflow_agree_trial_by_trial(tmp_path: Path):
    app = tmp_path / "lightning"
    shutil.copytree(LIGHTNING_APP, app)
    run(sweep(app), app)
    trials = study(app, "line").trials
    states = [t.state for t in trials]
    assert len(trials) == 8 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(max(t.intermediate_values) < 6 for t in pruned)  # stopped before its last epoch
    parents, children = trial_runs(app, "line", "line")
    assert len(parents) == 1
    for trial in trials:
        (child,) = children[trial.number]  # the app's own MLFlowLogger run, nested
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.run_name == f"line-{trial.number}"
        assert "val_loss" in child.data.metrics  # logged by the app, not the sweeper
        assert child.data.tags["outcome"] == trial.state.name
        assert child.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial.state.name]
