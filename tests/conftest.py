"""Shared helpers: drive the real CLI in a process of its own (forked by tests/zygote.py where
it can be), compose configs in-process."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import optuna
import pytest
import requests
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.trial import TrialState
from zygote import Forked, Zygote

from hydra_plugins.lit_tune_sweeper._study import counts
from hydra_plugins.lit_tune_sweeper.storage import open_storage

# Ctrl-C reaches our subprocesses as in a terminal, also where a shell started the tests in
# the background (`make test &`), which ignores SIGINT for them all: the ignoring is inherited.
signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"
SYNTHETIC_MNIST = "LIT_TUNE_SYNTHETIC_MNIST"  # set: mnist_dir is synthetic even where MNIST is
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with tests that train (`slow`) first, then those that run a command (`cli`),
    the in-process ones last: xdist hands the files out in this order (pyproject: --dist
    loadfile), so the two workers end together on short files instead of one waiting for the
    other's last long one. A file's tests run on one worker: its module fixtures once."""

    def order(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("cli") else 2

    first: dict[str, int] = {}
    for item in items:
        first[item.path.name] = min(first.get(item.path.name, 2), order(item))
    items.sort(key=lambda item: first[item.path.name])


def cli_env(warnings: bool = False) -> dict[str, str]:
    """The environment for a CLI subprocess: no MLflow settings of the caller's; Python's
    warnings shown as a user sees them only when `warnings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.pop("PYTHONWARNINGS", None)
    if not warnings:
        env["PYTHONWARNINGS"] = "ignore"
    env.setdefault("OMP_NUM_THREADS", "1")  # two test workers on two cores
    return env


def cli(*args: str) -> list[str]:
    """The command line of `python train.py ARGS`."""
    return [sys.executable, str(ROOT / "train.py"), *args]


_ZYGOTE: Zygote | None = None


def popen(
    argv: list[str], cwd: Path | str, env: dict[str, str], **kwargs: Any
) -> subprocess.Popen[str] | Forked:
    """subprocess.Popen(argv, cwd=cwd, env=env, text=True, **kwargs) for stdout, stderr and
    start_new_session; forked from a Python that has imported lit_tune already when it can
    be (tests/zygote.py: 8 s of CPU less per command)."""
    global _ZYGOTE
    if _ZYGOTE is None:
        _ZYGOTE = Zygote(cli_env(), Path(tempfile.mkdtemp(prefix="lit-tune-zygote-")))
        atexit.register(_ZYGOTE.close)
    if _ZYGOTE.serves(argv, env):
        forked = _ZYGOTE.popen(argv, cwd, env, **kwargs)
        if forked is not None:
            return forked
    return subprocess.Popen(argv, cwd=cwd, env=env, text=True, **kwargs)


def run(
    argv: list[str], cwd: Path | str, env: dict[str, str], timeout: float = 600, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(argv, capture_output=True, text=True, ...) through `popen`."""
    process = popen(argv, cwd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(argv, process.wait(), stdout, stderr)


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, warnings: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python train.py ARGS` in `cwd` (so outputs/ and mlruns/ land there)."""
    return run(cli(*args), cwd, cli_env(warnings), timeout)


def objectives(stdout: str) -> list[float]:
    """The objective values a run or multirun printed, in order."""
    return [float(line.rsplit("=", 1)[1]) for line in stdout.splitlines() if "objective " in line]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture
def compose_cfg() -> Iterator[object]:
    """compose(*overrides) -> the DictConfig `python train.py` would get."""
    import lit_tune.config  # noqa: F401  (registers the resolvers the configs use)

    with initialize_config_dir(str(CONF_DIR)):

        def _compose(*overrides: str) -> DictConfig:
            return compose("train", overrides=list(overrides), return_hydra_config=True)

        yield _compose


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of MNIST's files (magic 0x0801 / 0x0803)."""
    header = struct.pack(">I", 0x0800 + array.ndim)
    header += b"".join(struct.pack(">I", size) for size in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def idx_count(path: Path) -> int:
    """How many items an IDX file holds (its first dimension)."""
    return int(struct.unpack(">I", path.read_bytes()[4:8])[0])


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with MNIST/raw: the real IDX files under ../shared/data where they are, else
    (or with LIT_TUNE_SYNTHETIC_MNIST=1) a small stand-in in the same layout, 600 train and 200
    test images, that a net can learn: each class a bright bar of its own over noise."""
    if (SHARED_DATA / "MNIST" / "raw").is_dir() and not os.environ.get(SYNTHETIC_MNIST):
        return SHARED_DATA
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in [("train", 600), ("t10k", 200)]:
        labels = rng.permutation(np.arange(n) % 10)
        images = rng.integers(0, 96, (n, 28, 28))
        for image, label in zip(images, labels, strict=True):
            image[4 + 2 * label : 6 + 2 * label, 4:24] = 255
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Fashion-MNIST in the real IDX layout: 300 train and 100 test images."""
    root = tmp_path_factory.mktemp("fashion")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in [("train", 300), ("t10k", 100)]:
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def bare_trainer(max_epochs: int, **kwargs: Any) -> L.Trainer:
    """A CPU Trainer with nothing around the loop: no logger, checkpoint, bar or sanity steps."""
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_command(target: str, **variables: str) -> list[str]:
    """`make TARGET VARIABLES...` in the repository, with this test's Python."""
    # -o install: the venv running this test is built already; never rebuild it from here.
    command = ["make", "--no-print-directory", "-C", str(ROOT), "-o", "install", target]
    return [*command, f"PY={sys.executable}", *(f"{k}={v}" for k, v in variables.items())]


@contextmanager
def make_server(target: str, log: Path, **variables: str) -> Iterator[str]:
    """`make TARGET PORT=<free port> VARIABLES...` serving MLflow (`ui`, `server`) until the
    block ends; then stopped with all its processes. Yields its URL."""
    port = free_port()
    command = make_command(
        target, PORT=str(port), SERVER_PORT=str(port), SERVE_PORT=str(port), **variables
    )
    # One worker and no job runner (GenAI jobs: 8 more processes) start in a third of the time
    # on two busy cores; the flags stay those of the make target.
    env = {**cli_env(), "MLFLOW_WORKERS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:
        # Its own session: make, mlflow and uvicorn form one process group to stop.
        server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_answer(url, server, log)
        yield url
    finally:
        stop(server)


def wait_for_answer(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"make exited {server.returncode}:\n{log.read_text()}"
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=5).ok:
                return
        time.sleep(0.5)
    pytest.fail(f"nothing answers on {url} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the whole group, then SIGKILL to whatever outlived make."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


# -- a sweep's records: the Optuna study and its MLflow runs --------------------------------


def load(cwd: Path, name: str) -> optuna.Study:
    # Through the sweeper's own door: opening the store while a sweep creates it would race.
    storage = open_storage(f"sqlite:///{cwd}/mlruns/optuna.db")
    return optuna.load_study(study_name=name, storage=storage)


def kill_while_trial_runs(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    trials: Callable[[], list[optuna.trial.FrozenTrial]],
    ready: Callable[[], bool] = lambda: True,
    settle: float = 0.0,
    timeout: float = 180,
) -> None:
    """Start the sweep `command` in its own session and SIGKILL it, with every process it
    started, once trial 1 of `trials()` (KeyError: no study yet) is RUNNING and `ready()`
    holds, `settle` seconds later; at the latest after `timeout` seconds."""
    sweep = popen(
        command,
        cwd,
        env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                found = trials()
            except KeyError:
                continue
            if any(t.number == 1 and t.state == TrialState.RUNNING for t in found) and ready():
                break
        time.sleep(settle)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()


def mlflow_runs(cwd: Path, name: str) -> tuple[list, dict[int, list]]:
    """(parent runs, {trial number: child runs}) of study `name`."""
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`optuna.study_name` = '{name}'",
    )
    parents = [r for r in runs if r.data.tags.get("lit_tune.role") == "sweep"]
    children: dict[int, list] = {}
    for run in runs:
        if "optuna.trial_number" in run.data.tags:
            children.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    return parents, children


def assert_optuna_and_mlflow_agree(cwd: Path, name: str) -> optuna.Study:
    """Every trial that ran has one MLflow run, nested under the sweep's one parent run, whose
    status and `outcome` say what Optuna says; none is left RUNNING. Returns the study."""
    study = load(cwd, name)
    parents, children = mlflow_runs(cwd, name)
    assert len(parents) == 1
    for trial in study.trials:
        if trial.user_attrs.get("skipped") or trial.state == TrialState.WAITING:
            continue  # never ran
        if not counts(trial) and trial.number not in children:
            continue  # killed with its sweep before its run began: nothing to close
        (run,) = children[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.run_name == f"{name}-{trial.number}"
        if counts(trial):
            assert run.data.tags["outcome"] == trial.state.name, trial.number
            assert run.info.status == RUN_STATUS[trial.state.name], trial.number
        elif trial.user_attrs.get("interrupted"):  # Ctrl-C: failed, re-queued
            assert run.info.status == "KILLED" and run.data.tags["outcome"] == "KILLED"
        else:  # left running by a killed sweep, then failed and re-queued
            assert run.info.status == "FAILED"
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    return study
