"""Real training through the CLI, read back from MLflow (and TensorBoard beside it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import cli, cli_env, objectives, popen, run_cli
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EPOCHS = 10
SECRET_URL = "postgresql://me:s3cret@db.example/optuna"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("digits")
    result = run_cli(
        "model=mlp",
        "optimizer=adam",
        f"trainer.max_epochs={EPOCHS}",
        "callbacks.early_stopping.patience=100",
        "experiment_name=digits",
        f"+notes.store={SECRET_URL}",  # a password in the config must not be recorded
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result.stdout


@pytest.mark.slow
def test_ten_epochs_on_digits_reach_95_percent(digits_run):
    _, stdout = digits_run
    (objective,) = objectives(stdout)
    assert objective >= 0.95


@pytest.mark.slow
def test_the_mlflow_run_holds_params_metrics_and_artifacts(digits_run):
    cwd, stdout = digits_run
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["optimizer._target_"] == "torch.optim.Adam"
    assert params["model.width"] == "256"
    assert params["trainer.max_epochs"] == str(EPOCHS)
    assert int(params["num_parameters"]) == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert "trainer.max_epochs=10" in run.data.tags["hydra.overrides"]

    for key in ["train/loss", "val/loss", "val/acc", "val/acc_best", "lr", "epoch_time"]:
        assert len(client.get_metric_history(run.info.run_id, key)) == EPOCHS, key
    assert run.data.metrics["val/acc_best"] == pytest.approx(objectives(stdout)[0], abs=1e-6)
    assert run.data.metrics["test/acc"] >= 0.9
    assert "test/loss" in run.data.metrics

    artifacts = set()
    folders = [""]
    while folders:
        for item in client.list_artifacts(run.info.run_id, folders.pop()):
            (folders.append if item.is_dir else artifacts.add)(item.path)
    plots = {"learning_curves", "lr_schedule", "confusion_matrix"}
    assert {"config.yaml", *(f"plots/{name}.png" for name in plots)} <= artifacts
    assert "best/best.ckpt" in artifacts

    local = Path(client.download_artifacts(run.info.run_id, "best/best.ckpt", str(cwd)))
    checkpoint = torch.load(local, weights_only=True)
    history = sorted(client.get_metric_history(run.info.run_id, "val/acc"), key=lambda m: m.step)
    accuracies = [m.value for m in history]
    assert checkpoint["epoch"] == accuracies.index(max(accuracies))  # the first at the best
    config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(cwd)))
    assert "_target_: lit_tune.models.MLP" in config.read_text()

    masked = "postgresql://me:***@db.example/optuna"
    assert params["notes.store"] == masked
    assert masked in config.read_text() and masked in run.data.tags["hydra.overrides"]
    assert "s3cret" not in config.read_text() + str(params) + str(run.data.tags)


def metric_histories(cwd: Path) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
        if key != "epoch_time"
    }


@pytest.mark.cli
def test_mlflow_and_tensorboard_together_record_the_same_values_each_epoch(tmp_path: Path):
    result = run_cli("logger=[mlflow,tensorboard]", "trainer.max_epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    in_mlflow = metric_histories(tmp_path)
    # The run's own events, in its output dir (in a sweep, each trial's): a file for fit and
    # one for test, as Lightning writes them; TensorBoard reads the folder.
    (folder,) = tmp_path.glob("outputs/*/*/tensorboard")
    assert list(folder.glob("events.out.tfevents.*"))
    board = EventAccumulator(str(folder))
    board.Reload()
    in_board = {
        key: [(e.step, e.value) for e in board.Scalars(key)]
        for key in board.Tags()["scalars"]
        if key != "epoch_time"
    }
    assert {"train/loss", "val/loss", "val/acc", "val/acc_best", "test/acc"} <= in_mlflow.keys()
    assert in_board.keys() == in_mlflow.keys()
    assert len(in_mlflow["val/acc"]) == len(in_mlflow["train/loss"]) == 3
    for key, history in in_mlflow.items():
        steps, values = zip(*sorted(history), strict=True)
        board_steps, board_values = zip(*sorted(in_board[key]), strict=True)
        assert board_steps == steps, key
        assert board_values == pytest.approx(values, rel=1e-6), key  # TensorBoard's float32


@pytest.mark.cli
@pytest.mark.parametrize("data", ["digits", "mnist"])
def test_the_same_seed_gives_the_same_metrics(data: str, tmp_path: Path, request):
    args = ["trainer.max_epochs=3", "model.dropout=0.2", "seed=7"]
    if data == "mnist":
        mnist = request.getfixturevalue("mnist_dir")
        args += ["data=mnist", f"data.data_dir={mnist}", "trainer.limit_train_batches=2"]
    histories = []
    for attempt in ("first", "second"):
        (tmp_path / attempt).mkdir()
        result = run_cli(*args, cwd=tmp_path / attempt)
        assert result.returncode == 0, result.stderr[-3000:]
        histories.append(metric_histories(tmp_path / attempt))
    first, second = histories
    assert {"train/loss", "val/loss", "val/acc", "test/acc"} <= first.keys()
    assert len(first["val/acc"]) == 3
    assert first == second  # bit for bit


@pytest.mark.cli
def test_compile_runs_and_keeps_checkpoint_keys(tmp_path: Path):
    result = run_cli("compile=true", "trainer.max_epochs=1", "logger=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.0 < objectives(result.stdout)[0] <= 1.0
    [checkpoint] = tmp_path.glob("outputs/*/*/checkpoints/best.ckpt")
    keys = torch.load(checkpoint, weights_only=True)["state_dict"].keys()
    assert keys and not any("_orig_mod" in key for key in keys)  # loads into an uncompiled net


@pytest.mark.parametrize(
    ("stop", "status", "said"),
    [
        (lambda pid: os.killpg(pid, signal.SIGINT), 130, "Ctrl-C"),  # Ctrl-C in a terminal
        (lambda pid: os.kill(pid, signal.SIGTERM), 143, "SIGTERM"),  # `kill PID`
    ],
    ids=["ctrl-c", "sigterm"],
)
@pytest.mark.cli
def test_a_signal_stops_a_run_and_closes_it_killed(stop, status: int, said: str, tmp_path: Path):
    run = popen(
        cli("trainer.max_epochs=1000", "callbacks.early_stopping.patience=1000"),
        tmp_path,
        cli_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(tmp_path.glob("outputs/*/*/checkpoints/*")):
        time.sleep(0.5)  # until it is training
    stop(run.pid)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == status, output[-3000:]
    assert "Traceback" not in output
    assert f"Interrupted by {said}: the run stopped, its MLflow run is KILLED" in output
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (found,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert found.info.status == "KILLED" and found.data.tags["outcome"] == "KILLED"
    assert found.data.tags["killed"] == f"interrupted by {said}"
    assert len(client.get_metric_history(found.info.run_id, "val/acc")) < 1000


@pytest.mark.cli
def test_a_stopped_run_resumes_from_its_last_checkpoint_to_the_same_metrics(tmp_path: Path):
    args = [
        "trainer.max_epochs=8",
        "callbacks.early_stopping.patience=100",
        "data.batch_size=4",  # slow epochs: room to stop the run mid-way
        "model.dropout=0.3",
        "scheduler=exponential",  # stepped per epoch: a resume must not step it twice
        "scheduler.s=4",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    (tmp_path / "whole").mkdir()
    whole = run_cli(*args, cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    (tmp_path / "stopped").mkdir()
    run = popen(cli(*args), tmp_path / "stopped", cli_env())
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(
        tmp_path.glob("stopped/outputs/*/*/checkpoints/last.ckpt")
    ):
        time.sleep(0.2)
    time.sleep(1.0)
    run.kill()  # SIGKILL: no chance to tidy up
    run.wait()
    (last,) = tmp_path.glob("stopped/outputs/*/*/checkpoints/last.ckpt")
    stopped_at = torch.load(last, weights_only=True)["epoch"]
    assert stopped_at < 7  # it was stopped before the end

    resumed = run_cli(*args, f"ckpt_path={last}", cwd=tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert objectives(resumed.stdout) == objectives(whole.stdout)
    whole_metrics = metric_histories(tmp_path / "whole")
    client = MlflowClient(f"sqlite:///{tmp_path}/stopped/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1  # the resumed run; the killed one never finished
    for key in ["val/acc", "val/loss", "train/loss"]:
        history = client.get_metric_history(finished[0].info.run_id, key)
        assert len(history) == 8 - (stopped_at + 1)  # only the epochs after the stop
        assert [(m.step, m.value) for m in history] == whole_metrics[key][stopped_at + 1 :]
    assert finished[0].data.metrics["test/acc"] == whole_metrics["test/acc"][-1][1]


# -- early stopping and the best checkpoint --------------------------------------------------

PATIENCE = 3
MAX_EPOCHS = 60  # far more than digits needs to stop improving


def stopping(max_epochs: int = MAX_EPOCHS) -> list[str]:
    return [
        f"trainer.max_epochs={max_epochs}",
        f"callbacks.early_stopping.patience={PATIENCE}",
        "callbacks.progress_bar.refresh_rate=0",
    ]


def checkpoints(cwd: Path) -> Path:
    (folder,) = cwd.glob("outputs/*/*/checkpoints")
    return folder


def early_stopping_state(checkpoint: Path) -> dict:
    states = torch.load(checkpoint, weights_only=True)["callbacks"]
    (state,) = [v for k, v in states.items() if k.startswith("EarlyStopping")]
    return state


def last_improvement(best_so_far: list[float]) -> int:
    """The epoch (from 0) where val/acc_best last rose: EarlyStopping's (min_delta 0) last
    improvement of what it watches."""
    return max(i for i, v in enumerate(best_so_far) if i == 0 or v > best_so_far[i - 1])


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on digits that EarlyStopping ends."""
    cwd = tmp_path_factory.mktemp("stopped")
    result = run_cli(*stopping(), cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.mark.slow
def test_early_stopping_stops_patience_epochs_after_the_last_improvement(stopped_run: Path):
    best_so_far = [v for _, v in metric_histories(stopped_run)["val/acc_best"]]
    improved = last_improvement(best_so_far)
    assert len(best_so_far) == improved + PATIENCE + 1 < MAX_EPOCHS
    last = checkpoints(stopped_run) / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == improved + PATIENCE
    state = early_stopping_state(last)
    assert (state["wait_count"], state["stopped_epoch"]) == (PATIENCE, improved + PATIENCE)


@pytest.mark.slow
def test_a_resumed_run_keeps_its_early_stopping_count(stopped_run: Path, tmp_path: Path):
    whole = metric_histories(stopped_run)
    improved = last_improvement([v for _, v in whole["val/acc_best"]])
    first = improved + 2  # epochs in the first part: it ends one epoch into its patience
    (tmp_path / "first").mkdir()
    result = run_cli(*stopping(max_epochs=first), cwd=tmp_path / "first")
    assert result.returncode == 0, result.stderr[-3000:]
    last = checkpoints(tmp_path / "first") / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == first - 1
    state = early_stopping_state(last)
    assert state["wait_count"] == 1
    assert float(state["best_score"]) == pytest.approx(whole["val/acc_best"][improved][1])

    (tmp_path / "resumed").mkdir()
    resumed = run_cli(*stopping(), f"ckpt_path={last}", cwd=tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert objectives(resumed.stdout) == pytest.approx([max(v for _, v in whole["val/acc"])])
    after = metric_histories(tmp_path / "resumed")
    for key in ["val/acc", "val/acc_best", "train/loss"]:  # it stops where the whole run did
        assert after[key] == whole[key][first:], key
    assert after["test/acc"] == whole["test/acc"]


def evaluated(checkpoint: Path, cwd: Path) -> float:
    """test/acc of `checkpoint`, by `python train.py eval`."""
    result = run_cli("eval", str(checkpoint), "logger=none", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (acc,) = re.findall(r"test/acc = ([\d.]+)", result.stdout + result.stderr)
    return float(acc)


@pytest.mark.slow
def test_the_run_is_tested_on_its_best_checkpoint_not_its_last(stopped_run: Path, tmp_path: Path):
    folder = checkpoints(stopped_run)
    improved = last_improvement([v for _, v in metric_histories(stopped_run)["val/acc_best"]])
    epochs = {
        name: torch.load(folder / f"{name}.ckpt", weights_only=True)["epoch"]
        for name in ("best", "last")
    }
    assert epochs == {"best": improved, "last": improved + PATIENCE}
    scores = {name: evaluated(folder / f"{name}.ckpt", tmp_path) for name in epochs}
    assert scores["best"] != scores["last"]  # else this test could not tell which was tested
    tested = metric_histories(stopped_run)["test/acc"]
    assert [v for _, v in tested] == [pytest.approx(scores["best"], abs=1e-6)]
