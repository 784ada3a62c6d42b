"""Fault injection: a sweep killed (SIGKILL, SIGTERM, SIGINT) at several points, then re-run
with the same command, ends with exactly its budget and nothing lost (tests/faults/)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli, cli_env, run
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_sweeper import assert_optuna_and_mlflow_agree, load, mlflow_runs

from hydra_plugins.lit_tune_sweeper._study import counts

# Two sweeps per test, each allowed 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
N_TRIALS = 2
SWEEP = [
    "-m",
    "hparams_search=mlp",
    "hydra/launcher=basic",
    "trainer.max_epochs=2",
    "callbacks.progress_bar.refresh_rate=0",
    "mlflow_model=none",  # no fault point is in the export, which takes 1.5 s a trial
    "hydra/sweeper/pruner=none",
    f"hydra.sweeper.n_trials={N_TRIALS}",
    "hydra.sweeper.study_name=faults",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.grace_period=2",
]
# Where the fault hits: the N-th time the process reaches the point (see tests/faults/).
POINTS = {
    "batch": 5,  # a training batch (of 8 steps) inside the first trial, in its second epoch
    "tell": 1,  # the first trial has ended (its MLflow run too), before Optuna is told
    "between": 1,  # after the first trial's result was told, before the next trial
    "checkpoint": 2,  # while the second checkpoint file is written
    "mlflow": 8,  # while MLflow writes the eighth batch of metrics
}


def sweep(cwd: Path, fault: str | None = None, *extra: str) -> subprocess.CompletedProcess[str]:
    env = cli_env()
    if fault:
        env["LIT_TUNE_FAULT"] = fault
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "tests" / "faults"), env.get("PYTHONPATH")) if p
        )
    return run(
        cli(*SWEEP, *extra),
        cwd,
        env,
        timeout=300,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )


def all_runs(cwd: Path) -> list:
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


# Inside a trial (batch, checkpoint, mlflow) the run's own handler takes SIGINT and SIGTERM
# alike (lit_tune/signals.py), and with in-process trials the group is this one process:
# SIGINT is sent only where the sweeper, not the run, takes it (Python's KeyboardInterrupt).
CASES = [(point, name) for point in POINTS for name in ("KILL", "TERM")]
CASES += [("tell", "INT"), ("between", "INT")]


@pytest.mark.parametrize(("point", "name"), CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_a_sweep_killed_anywhere_resumes_to_its_budget_and_loses_nothing(
    point: str, name: str, tmp_path: Path
):
    kill_and_resume(tmp_path, point, name, POINTS[point])


def test_a_sweep_killed_before_its_first_heartbeat_resumes(tmp_path: Path):
    """The sweeper beats for its running trials every heartbeat_interval (here 60 s), so the
    trial killed at its first batch has only the beat taken when it started: enough for the
    re-run to find it stale instead of waiting for it for ever."""
    kill_and_resume(tmp_path, "batch", "KILL", 1, "hydra.sweeper.heartbeat_interval=60")


def kill_and_resume(tmp_path: Path, point: str, name: str, nth: int, *extra: str) -> None:
    signum = signal.Signals[f"SIG{name}"]
    first = sweep(tmp_path, f"{point}:{name}:{nth}", *extra)
    output = first.stdout + first.stderr
    assert f"fault injected: {point} SIG{name}" in output, output[-3000:]
    if signum == signal.SIGKILL:
        assert first.returncode == -signal.SIGKILL
    else:  # a clean stop: nothing left running, one line on how to resume
        assert first.returncode == 128 + signum, output[-3000:]
        assert "Traceback" not in output
        assert "Resume with the same command and hydra.sweeper.study_name=faults" in output
        assert not [t for t in load(tmp_path, "faults").trials if t.state == TrialState.RUNNING]
        assert not [r for r in all_runs(tmp_path) if r.info.status == "RUNNING"]

    second = sweep(tmp_path, None, *extra)
    assert second.returncode == 0, second.stderr[-3000:]
    study = assert_optuna_and_mlflow_agree(tmp_path, "faults")  # one parent, reopened
    assert sum(counts(t) for t in study.trials) == N_TRIALS
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    runs = all_runs(tmp_path)
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED", "KILLED"}
    parents, children = mlflow_runs(tmp_path, "faults")
    assert parents[0].info.status == "FINISHED"
    for trial in study.trials:  # each counted trial has its metrics, epoch by epoch
        if counts(trial):
            (run,) = children[trial.number]
            assert run.data.metrics["val/acc_best"] == pytest.approx(trial.value)
    checkpoints = list(tmp_path.glob("multirun/**/*.ckpt"))
    assert checkpoints
    for path in checkpoints:  # whole: none was cut short
        assert "state_dict" in torch.load(path, weights_only=True)
    cut = list(tmp_path.glob("multirun/**/.*.partial"))
    assert bool(cut) == (point == "checkpoint" and signum == signal.SIGKILL)
