"""`make dashboard` serves optuna-dashboard on the project's studies, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, free_port


@pytest.mark.cli
def test_make_dashboard_lists_the_studies_of_the_store(tmp_path: Path):
    study = optuna.create_study(study_name="demo", storage=f"sqlite:///{tmp_path}/optuna.db")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    port = free_port()
    venv = Path(sys.executable).parents[1]  # the environment running this test, as it is
    server = subprocess.Popen(
        [
            "make",
            "-s",
            "dashboard",
            f"VENV={venv}",
            "-o",
            f"{venv}/.installed",
            f"MLRUNS={tmp_path}",
            f"DASHBOARD_PORT={port}",
        ],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as page:
                    studies = json.load(page)["study_summaries"]
            except OSError:
                assert server.poll() is None, "make dashboard exited"
                time.sleep(0.5)
        assert studies is not None, "no answer within 60 s"
        (found,) = studies
        assert found["study_name"] == "demo"
        study_id = found["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}") as page:
            assert len(json.load(page)["trials"]) == 3
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
