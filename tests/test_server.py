"""Tracking server mode: trials log to `make server` over HTTP, from worker processes, and nest
under one parent run; their artifacts go through the server to its store."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli, cli_env, make_server
from conftest import run as run_command
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def test_trials_logged_to_a_tracking_server_nest_under_one_parent(tmp_path: Path):
    store, work = tmp_path / "server", tmp_path / "work"
    work.mkdir()
    with make_server("server", tmp_path / "server.log", MLRUNS=str(store)) as url:
        result = run_command(
            cli(
                "-m",
                "hparams_search=mlp",
                "hydra.sweeper.n_jobs=2",  # two worker processes, each logging over HTTP
                "hydra.sweeper.n_trials=4",
                "hydra.sweeper.study_name=served",
                "trainer.max_epochs=2",
                "callbacks.progress_bar.refresh_rate=0",
            ),
            work,
            {**cli_env(), "MLFLOW_TRACKING_URI": url},
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("lit_tune")
        assert experiment is not None
        runs = client.search_runs(
            [experiment.experiment_id], filter_string="tags.`optuna.study_name` = 'served'"
        )
        (parent,) = [r for r in runs if r.data.tags.get("lit_tune.role") == "sweep"]
        children = [r for r in runs if "optuna.trial_number" in r.data.tags]
        assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [0, 1, 2, 3]
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
        assert {r.info.status for r in [parent, *children]} <= {"FINISHED", "KILLED"}
        assert all(len(client.get_metric_history(r.info.run_id, "val/acc")) for r in children)
        for run in children:  # finished or pruned: each has its learning curves
            plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
            assert "plots/learning_curves.png" in plots
    # The artifacts went through the server to its store; nothing went to a local store.
    curves = list(store.glob("server-artifacts/**/learning_curves.png"))
    assert len(curves) == len(children) == 4
    assert not (work / "mlruns" / "mlflow.db").exists()
