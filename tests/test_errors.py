"""Bad input: a non-zero exit, one line naming the key and what it allows, nothing left RUNNING.

Exit 2 is bad input caught before anything trains; exit 1 is a sweep that stopped because its
trials failed (each trial a clean FAIL, its reason in the message).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from conftest import cli, cli_env, run, run_cli
from mlflow import MlflowClient

from hydra_plugins.lit_tune_sweeper._errors import ConfigError
from hydra_plugins.lit_tune_sweeper.storage import check_parallel_sqlite, network_filesystem

SWEEP = ["-m", "hparams_search=mlp", "hydra.sweeper.n_trials=1", "trainer.max_epochs=1"]

# name: (arguments, what the one error line contains, exit code)
CASES = {
    # groups and keys
    "unknown option": (["optimizer=adamx"], "optimizer=adamx: no such option; one of adagrad", 2),
    "unknown option in a sweep": (
        ["-m", "scheduler=step,stepp"],
        "scheduler=stepp: no such option; one of cosine",
        2,
    ),
    "unknown option in a list of options": (
        ["logger=[mlflow,tensorbord]"],
        "logger=tensorbord: no such option; one of csv, mlflow, none, tensorboard",
        2,
    ),
    "a logger key without its logger's name": (
        ["logger.tracking_uri=sqlite:///x.db"],
        "logger.tracking_uri: no such key; logger has mlflow",
        2,
    ),
    "misspelt group": (["optimiser=adam"], "optimiser: no such key; did you mean optimizer?", 2),
    "misspelt key": (
        ["optimizer.lrr=0.1"],
        "optimizer.lrr: no such key; did you mean optimizer.lr?",
        2,
    ),
    "key below a value": (["seed.value=1"], "seed.value: no such key; seed is a value", 2),
    "key of another option": (["model.channels=8"], "model.channels: no such key; model has", 2),
    "unexpected argument": (
        ["+model.depth=3"],
        "model: MLP.__init__() got an unexpected keyword",
        2,
    ),
    "missing mandatory value": (["optimizer.lr=???"], "optimizer.lr: missing mandatory value", 2),
    # types and ranges
    "non-positive lr": (["optimizer.lr=-0.01"], "optimizer.lr=-0.01: must be a number > 0", 2),
    "zero batch size": (["data.batch_size=0"], "data.batch_size=0: must be an integer > 0", 2),
    "batch size not a number": (
        ["data.batch_size=abc"],
        "data.batch_size='abc': must be an integer",
        2,
    ),
    "zero width": (["model.width=0"], "model.width=0: must be an integer > 0", 2),
    "dropout of 1.5": (["model.dropout=1.5"], "model.dropout=1.5: must be a number in [0, 1)", 2),
    "fraction above 1": (
        ["data.val_fraction=1.2"],
        "data.val_fraction=1.2: must be a number in (0",
        2,
    ),
    "not a boolean": (["compile=maybe"], "compile='maybe': must be true or false", 2),
    "unknown activation": (
        ["model.activation=swish"],
        "model.activation='swish': must be one of",
        2,
    ),
    "unknown loader": (
        ["data.loader=gpu"],
        "data.loader='gpu': must be one of device, dataloader",
        2,
    ),
    "bad schedule value": (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0", 2),
    "negative gradient clip": (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1", 2),
    "zero steps per execution": (
        ["module.steps_per_execution=0"],
        "module.steps_per_execution=0: must be an integer > 0",
        2,
    ),
    "zero gradient accumulation": (
        ["+trainer.accumulate_grad_batches=0"],
        "trainer.accumulate_grad_batches=0: must be an integer > 0",
        2,
    ),
    "accelerator this machine lacks": (["trainer.accelerator=tpu"], "trainer.accelerator='tpu'", 2),
    "zero devices": (
        ["trainer.devices=0"],
        "trainer: `Trainer(devices=0)` value is not a valid input",
        2,
    ),
    "unknown objective mode": (["objective.mode=best"], "objective.mode='best': must be one of", 2),
    # search spaces and the sweeper
    "interval with one bound": (
        [*SWEEP, "optimizer.lr=interval(0.1)"],
        "optimizer.lr=interval(0.1): TypeError while evaluating",
        2,
    ),
    "empty choice": (["-m", "data.batch_size=choice()"], "empty choice is not legal", 2),
    "lower above upper": (
        [*SWEEP, "optimizer.lr=interval(0.1,0.001)"],
        "optimizer.lr=interval(0.1,0.001): `low <= high` must hold",
        2,
    ),
    "log scale from 0": (
        [*SWEEP, "optimizer.lr=tag(log,interval(0,0.1))"],
        "optimizer.lr=tag(log,interval(0,0.1)): `low > 0` must hold for `log=True`",
        2,
    ),
    "empty range": ([*SWEEP, "data.batch_size=range(10,1)"], "data.batch_size=range(10,1)", 2),
    "unknown sampler": ([*SWEEP, "hydra/sweeper/sampler=foo"], "hydra/sweeper/sampler=foo", 2),
    "unknown pruner": ([*SWEEP, "hydra/sweeper/pruner=foo"], "hydra/sweeper/pruner=foo", 2),
    "no trials": ([*SWEEP, "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0", 2),
    "failure rate above 1": (
        [*SWEEP, "hydra.sweeper.max_failure_rate=2"],
        "hydra.sweeper.max_failure_rate=2.0: must be in [0, 1]",
        2,
    ),
    "no patience": (
        [*SWEEP, "hydra.sweeper.stop.patience=0"],
        "hydra.sweeper.stop.patience=0: must be > 0 (or null)",
        2,
    ),
    "a target for several objectives": (
        [*SWEEP, "hparams_search=multi_objective", "hydra.sweeper.stop.target=0.9"],
        "hydra.sweeper.stop.target, stop.patience: a multi-objective study has no best",
        2,
    ),
    "no threads": (
        [*SWEEP, "hydra.sweeper.resources.threads=0"],
        "hydra.sweeper.resources.threads=0: auto, null or an integer > 0",
        2,
    ),
    "direction and objective.mode both given, and at odds": (
        [*SWEEP, "hydra.sweeper.direction=minimize", "objective.mode=max"],
        "hydra.sweeper.direction=minimize, objective.mode=max: give one of the two, the other "
        "follows it",
        2,
    ),
    "bad storage URL": (
        [*SWEEP, "hydra.sweeper.storage=foo://bar"],
        "hydra.sweeper.storage=foo://bar: cannot open it",
        2,
    ),
    "storage password is masked": (
        [*SWEEP, "hydra.sweeper.storage=postgresql://me:s3cret@127.0.0.1:9/db"],
        "hydra.sweeper.storage=postgresql://me:***@127.0.0.1:9/db: cannot open it",
        2,
    ),
    "every trial fails": (
        [*SWEEP, "model.activation=swish"],
        "1 trials failed, more than hydra.sweeper.max_failure_rate=0.5 of n_trials=1; the "
        "first, trial 0: ConfigError: model.activation='swish'",
        1,
    ),
    # files, folders and servers
    "data directory without the files": (
        ["data=mnist", "data.data_dir=empty", "data.download=false"],
        "data.data_dir: no MNIST files in",
        2,
    ),
    "missing data directory": (
        ["data=mnist", "data.data_dir=nowhere", "data.download=false"],
        "data.data_dir: no MNIST files in",
        2,
    ),
    "corrupt IDX file": (
        ["data=mnist", "data.data_dir=corrupt"],
        "train-images-idx3-ubyte has 24 bytes, its header says 47040016",
        2,
    ),
    "output folder under a file": (["hydra.run.dir=afile/run"], "hydra.run.dir=afile/run", 2),
    "unreachable tracking server": (
        ["logger.mlflow.tracking_uri=http://127.0.0.1:9"],
        "logger.mlflow.tracking_uri=http://127.0.0.1:9: no MLflow server answers there",
        2,
    ),
    # objectives and tasks
    "objective the module does not log": (
        ["objective.metric=val/f1", "trainer.max_epochs=1", "callbacks=none"],
        "objective.metric=val/f1: the module logs no 'f1'; it logs val/<name> and "
        "val/<name>_best for loss, acc (add others under module.metrics)",
        2,
    ),
    "regression objective with a classification metric": (
        ["data=diabetes", "module=regressor", "objective.metric=val/acc_best"],
        "objective.metric=val/acc_best: the module logs no 'acc'; it logs val/<name> and "
        "val/<name>_best for loss, mae, rmse, r2",
        2,
    ),
    "objective with no direction": (
        ["objective.metric=val/acc_best", "~module.metrics"],
        "objective.mode: cannot tell whether a higher or a lower val/acc_best is better; set "
        "objective.mode=max or objective.mode=min",
        2,
    ),
    "classifier on regression data": (
        ["data=diabetes"],
        "module.num_classes: ??? is filled from the datamodule's `num_classes`, and the "
        "datamodule (Tabular, task regression) has none",
        2,
    ),
    "cnn on tabular data": (
        ["data=wine", "model=cnn"],
        "model: CNN needs images (channels, height, width); the data's input_shape is (13,): "
        "use model=mlp",
        2,
    ),
    "tabular file and bundled set at once": (
        ["data=tabular", "data.path=x.csv"],
        "data.dataset=breast_cancer, data.path=x.csv: give exactly one",
        2,
    ),
}


def corrupt_mnist(root: Path) -> None:
    """MNIST files whose headers promise more than they hold."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, dims in {
        "train-images-idx3-ubyte": (60000, 28, 28),
        "train-labels-idx1-ubyte": (60000,),
        "t10k-images-idx3-ubyte": (10000, 28, 28),
        "t10k-labels-idx1-ubyte": (10000,),
    }.items():
        header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
        (raw / name).write_bytes(header + bytes(24 - len(header)))


@pytest.mark.cli
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_in_one_line(case: str, tmp_path: Path):
    args, expected, code = CASES[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    corrupt_mnist(tmp_path / "corrupt")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert expected in errors[0]
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    # Nothing left RUNNING; bad input leaves no study behind.
    store = tmp_path / "mlruns" / "mlflow.db"
    if store.exists():
        client = MlflowClient(f"sqlite:///{store}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert "RUNNING" not in [r.info.status for r in runs]
    study = tmp_path / "mlruns" / "optuna.db"
    if study.exists():
        with sqlite3.connect(study) as db:
            studies = db.execute("SELECT count(*) FROM studies").fetchone()[0]
            states = [s for (s,) in db.execute("SELECT state FROM trials")]
        if code == 2:
            assert studies == 0
        else:
            assert states and set(states) <= {"COMPLETE", "PRUNED", "FAIL"}


@pytest.mark.parametrize(
    "case", ["unknown option", "misspelt key", "non-positive lr", "missing mandatory value"]
)
def test_bad_input_is_refused_before_torch_is_imported(case: str, tmp_path: Path):
    """A bad command line or config value fails before the run imports torch and Lightning
    (about 6 s of CPU; lit_tune/cli.py): here they cannot be imported at all."""
    for name in ("torch", "lightning"):
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(
            f"raise ImportError('{name} was imported')\n"
        )
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "blocked"), env.get("PYTHONPATH", "")])
    args, expected, code = CASES[case]
    result = run(cli(*args), tmp_path, env)  # fresh: stand-ins for torch (tests/zygote.py)
    assert result.returncode == code, result.stderr[-3000:]
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert expected in error


def test_sqlite_on_a_network_filesystem_is_refused_for_parallel_trials(tmp_path: Path, caplog):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        f"server:/export {tmp_path}/shared\\040dir nfs4 rw 0 0\n"
        f"tmpfs {tmp_path}/shared\\040dir/local tmpfs rw 0 0\n"
    )
    on_nfs = f"sqlite:///{tmp_path}/shared dir/mlruns/optuna.db"
    stores = {
        "hydra.sweeper.storage": on_nfs,
        "logger.mlflow.tracking_uri": "http://127.0.0.1:5000",
    }
    assert network_filesystem(on_nfs, mounts) == "nfs4"
    assert network_filesystem(f"sqlite:///{tmp_path}/shared dir/local/x.db", mounts) is None
    assert network_filesystem(f"sqlite:///{tmp_path}/elsewhere.db", mounts) is None
    with pytest.raises(ConfigError) as refused:
        check_parallel_sqlite(stores, parallel=True, mounts=mounts)
    assert str(refused.value).startswith(f"hydra.sweeper.storage={on_nfs} is on nfs4")
    assert "postgresql://" in str(refused.value)
    check_parallel_sqlite(stores, parallel=False, mounts=mounts)  # one at a time: a warning
    assert "do not share this study" in caplog.text
