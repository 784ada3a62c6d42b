"""The sweeper under a Hydra app that is not lit_tune's (tests/foreign/app.py): with only the
sweeper line changed, it keeps the budget across a kill and records failing trials FAIL with
their reason while the sweep goes on (issue 17 builds the rest: MLflow, pruning)."""

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
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper._study import FAIL_REASON, counts
from lit_tune.trial import open_storage

APP = ROOT / "tests" / "foreign"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    shutil.copytree(APP, tmp_path / "foreign")
    return tmp_path / "foreign"


def sweep(app: Path, *args: str) -> list[str]:
    return [sys.executable, str(app / "app.py"), "-m", *args]


def study(app: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{app}/optuna.db")
    return optuna.load_study(study_name="foreign", storage=storage)


def test_failing_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(app: Path):
    storage = open_storage(f"sqlite:///{app}/optuna.db")
    queued = optuna.create_study(study_name="foreign", storage=storage, direction="minimize")
    for x in (4.8, -4.8, 1.5):
        queued.enqueue_trial({"x": x})
    done = subprocess.run(
        sweep(app, "hydra.sweeper.n_trials=5"),
        cwd=app,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study(app).trials
    assert [t.state for t in trials[:3]] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "x=4.8 is out of range" in trials[0].user_attrs[FAIL_REASON]
    assert "not finite" in trials[1].user_attrs[FAIL_REASON]
    assert trials[2].value == pytest.approx(0.25)
    assert sum(counts(t) for t in trials) == 5 and len(trials) == 5


def test_a_killed_sweep_run_again_ends_with_exactly_its_budget(app: Path):
    args = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]
    kill_while_trial_runs(sweep(app, "sleep=2", *args), app, cli_env(), lambda: study(app).trials)
    assert any(t.state == TrialState.RUNNING for t in study(app).trials)

    time.sleep(2.5)  # the killed trial's heartbeat is older than grace_period
    second = subprocess.run(
        sweep(app, *args), cwd=app, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    trials = study(app).trials
    assert sum(counts(t) for t in trials) == 6
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(math.isfinite(t.value) for t in trials if t.state == TrialState.COMPLETE)
