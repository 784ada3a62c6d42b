"""Bad input: non-zero exit, one line naming the key and what it allows, no run recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from mlflow import MlflowClient

CASES = {
    "unknown option": (["optimizer=adamx"], "optimizer=adamx: no such option; one of adagrad"),
    "unknown option in a sweep": (
        ["-m", "scheduler=step,stepp"],
        "scheduler=stepp: no such option; one of cosine",
    ),
    "non-positive lr": (["optimizer.lr=-0.01"], "optimizer.lr=-0.01: must be a number > 0"),
    "zero batch size": (["data.batch_size=0"], "data.batch_size=0: must be an integer > 0"),
    "zero width": (["model.width=0"], "model.width=0: must be an integer > 0"),
    "missing mandatory value": (["optimizer.lr=???"], "optimizer.lr: missing mandatory value"),
    "unknown activation": (["model.activation=swish"], "model.activation='swish': must be one of"),
    "unexpected argument": (["+model.depth=3"], "model: MLP.__init__() got an unexpected keyword"),
    "bad schedule value": (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0"),
    "data directory without the files": (
        ["data=mnist", "data.data_dir=empty", "data.download=false"],
        "data.data_dir: no MNIST files in",
    ),
    "objective never logged": (
        ["objective.metric=val/f1", "trainer.max_epochs=1", "callbacks=none"],
        "objective.metric='val/f1' was never logged",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_in_one_line(case: str, tmp_path: Path):
    args, expected = CASES[case]
    (tmp_path / "empty").mkdir()
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert expected in errors[0]
    assert "Traceback" not in result.stderr
    store = tmp_path / "mlruns" / "mlflow.db"
    if store.exists():  # only the objective case gets as far as recording a run
        client = MlflowClient(f"sqlite:///{store}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert [r.info.status for r in runs] == ["FAILED"]
