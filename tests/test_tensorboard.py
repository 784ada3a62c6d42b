"""`make tensorboard` serves the runs' TensorBoard files (logger=[mlflow,tensorboard]), on
127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, make_command, stop
from lightning.pytorch.loggers import TensorBoardLogger


@pytest.mark.cli
def test_make_tensorboard_serves_the_scalars_of_each_run_under_logdir(tmp_path: Path):
    for run, acc in [("0", 0.5), ("1", 0.75)]:  # as conf/logger/tensorboard.yaml writes them
        logger = TensorBoardLogger(tmp_path / "multirun" / run, name="tensorboard", version="")
        logger.log_metrics({"val/acc": acc}, step=1)
        logger.finalize("success")
    port = free_port()
    venv = Path(sys.executable).parents[1]  # the environment running this test, as it is
    command = make_command(
        "tensorboard", VENV=str(venv), LOGDIR=str(tmp_path / "multirun"), TB_PORT=str(port)
    )
    server = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
        deadline, tags = time.monotonic() + 120, None
        while not tags and time.monotonic() < deadline:  # it loads the files after it answers
            try:
                with urllib.request.urlopen(url) as page:
                    tags = json.load(page)
            except OSError:
                assert server.poll() is None, "make tensorboard exited"
            time.sleep(0.5)
        assert tags, "no runs listed within 120 s"
        assert {run: set(found) for run, found in tags.items()} == {
            "0/tensorboard": {"val/acc"},
            "1/tensorboard": {"val/acc"},
        }
    finally:
        stop(server)
