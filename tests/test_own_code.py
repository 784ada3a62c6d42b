"""Your own code, tuned: a project outside src/ (tests/userproj) with its own net, its own
LightningModules (a plain one, one in lightning-hydra-template's style) and its own
DataModule, none of which knows lit_tune, run from the project's root by `lit-tune`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from conftest import (
    ROOT,
    assert_optuna_and_mlflow_agree,
    cli_env,
    kill_while_trial_runs,
    load,
    mlflow_runs,
    objectives,
    run,
)
from mlflow import MlflowClient
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper._study import counts
from hydra_plugins.lit_tune_sweeper.storage import open_storage

pytestmark = pytest.mark.slow
USERPROJ = ROOT / "tests" / "userproj"
LIT_TUNE = Path(sys.executable).parent / "lit-tune"  # the console script pip installed
QUIET = ["callbacks.progress_bar.refresh_rate=0"]
GOOD, USELESS = 0.05, 1e-9  # learning rates: one learns in an epoch, one cannot


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the user's project; its package is importable as `pip install -e .` makes it."""
    shutil.copytree(USERPROJ, tmp_path / "userproj")
    return tmp_path / "userproj"


def user_env(project: Path) -> dict[str, str]:
    return {**cli_env(), "PYTHONPATH": str(project)}


def lit_tune(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`lit-tune ARGS` in the project's root, as its user types it."""
    return run([str(LIT_TUNE), *args], cwd, user_env(cwd), timeout)


def enqueue(project: Path, name: str, key: str, rates: list[float]) -> None:
    """Make the study with these rates first: the trials come in this order."""
    storage = open_storage(f"sqlite:///{project}/mlruns/optuna.db")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for lr in rates:
        study.enqueue_trial({key: lr})


def artifacts(client: MlflowClient, run_id: str) -> set[str]:
    found, folders = set(), [""]
    while folders:
        for item in client.list_artifacts(run_id, folders.pop()):
            (folders.append if item.is_dir else found.add)(item.path)
    return found


def test_a_users_net_is_swept_pruned_and_nested_in_mlflow(project: Path):
    # Two trials learn, then two cannot: the median pruner stops those after one epoch.
    enqueue(project, "tiny", "optimizer.lr", [GOOD, GOOD, USELESS, USELESS])
    result = lit_tune(
        "-m",
        "hparams_search=tiny",
        "model=tiny",
        f"optimizer.lr=choice({GOOD},{USELESS})",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.study_name=tiny",
        "trainer.max_epochs=4",
        *QUIET,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = assert_optuna_and_mlflow_agree(project, "tiny")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2
    _, children = mlflow_runs(project, "tiny")
    params = children[0][0].data.params
    assert params["model._target_"] == "userproj.nets.TinyNet"
    # The sizes came from the datamodule (digits: 8x8 images, 10 classes), as MLflow records.
    assert (params["model.num_features"], params["model.num_classes"]) == ("64", "10")
    assert (project / "mlruns" / "mlflow.db").is_file()  # in the user's own root


def test_a_template_style_module_survives_a_kill_is_pruned_and_tests_its_best(project: Path):
    """net, `_partial_` optimizer and scheduler, save_hyperparameters: a sweep killed by
    SIGKILL mid-trial, then the same command, ends with exactly its budget; a trial that
    cannot learn is pruned; each finished trial tested its best checkpoint."""
    enqueue(project, "lit", "module.optimizer.lr", [GOOD, GOOD, USELESS, GOOD, USELESS])
    args = [
        "-m",
        "hparams_search=lit",
        "module=lit",
        "data=userdigits",
        f"module.optimizer.lr=choice({GOOD},{USELESS})",
        "module.net.hidden=16",
        "data.batch_size=8",  # epochs of a second: a trial is still training when killed
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.study_name=lit",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=2",
        "trainer.max_epochs=6",
        *QUIET,
    ]
    kill_while_trial_runs(  # while trial 1 is training (its MLflow run began)
        [str(LIT_TUNE), *args],
        project,
        user_env(project),
        lambda: load(project, "lit").trials,
        ready=lambda: 1 in mlflow_runs(project, "lit")[1],
    )
    assert any(t.state == TrialState.RUNNING for t in load(project, "lit").trials)

    second = lit_tune(*args, cwd=project)
    assert second.returncode == 0, second.stderr[-3000:]
    study = assert_optuna_and_mlflow_agree(project, "lit")
    assert sum(counts(t) for t in study.trials) == 5
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert [t for t in study.trials if t.state == TrialState.PRUNED]

    _, children = mlflow_runs(project, "lit")
    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete
    for trial in complete:
        (run,) = children[trial.number]
        assert run.data.params["module.optimizer._target_"] == "torch.optim.Adam"
        assert run.data.params["module.net.num_features"] == "64"
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert trial.value == pytest.approx(max(m.value for m in history))  # its best epoch
        assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) > len(history)
        assert {"config.yaml", "best/best.ckpt", "plots/learning_curves.png"} <= artifacts(
            client, run.info.run_id
        )
        # test/acc is the best checkpoint's (it loads with weights_only=True).
        best = Path(client.download_artifacts(run.info.run_id, "best/best.ckpt", str(project)))
        assert run.data.metrics["test/acc"] == pytest.approx(best_accuracy(best, project), abs=1e-6)
        assert "confusion_matrix" not in str(artifacts(client, run.info.run_id))


def best_accuracy(checkpoint: Path, project: Path) -> float:
    """The accuracy on the user's test split of the net in `checkpoint`."""
    sys.path.insert(0, str(project))
    try:
        from userproj.data import DigitsData
        from userproj.nets import TinyNet
    finally:
        sys.path.pop(0)
    state = torch.load(checkpoint, weights_only=True)
    assert "net" in state["lit_tune_dropped"]["hyper_parameters"]  # the net: weights only
    assert state["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.Adam"
    net = TinyNet(64, 10, hidden=16)
    weights = {k.removeprefix("net."): v for k, v in state["state_dict"].items()}
    net.load_state_dict({k: v for k, v in weights.items() if k.startswith("layers.")})
    data = DigitsData(seed=42)
    data.setup()
    x, y = (torch.stack(t) for t in zip(*data.splits["test"], strict=True))
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def test_a_plain_module_logs_per_step_and_its_own_rate_is_found(project: Path):
    result = lit_tune(
        "module=plain",
        "data=userdigits",
        "trainer.max_epochs=4",
        "tune.lr_find=true",
        "tune.lr_find_args.num_training=40",
        *QUIET,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    val = client.get_metric_history(run.info.run_id, "val_acc")
    assert len(val) == 4
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) > 4  # every 10 steps
    assert objectives(result.stdout) == [pytest.approx(max(m.value for m in val))]
    assert "test_acc" in run.data.metrics
    # The LR finder set the module's own `lr`, which MLflow records.
    configured, found = run.data.tags["tuned.module.lr"].split(" -> ")
    assert configured == "0.05" and float(run.data.params["module.lr"]) == float(found)


def test_a_template_style_module_runs_under_ddp_spawn(project: Path):
    result = lit_tune(
        "module=lit",
        "data=userdigits",
        "trainer=ddp",
        "trainer.strategy=ddp_spawn",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_epochs=2",
        *QUIET,
        cwd=project,
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("All distributed processes registered. Starting with 2 processes") == 2
    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert "test/acc" in run.data.metrics


def test_a_module_without_a_test_step_is_tuned_on_validation_alone(project: Path):
    result = lit_tune(
        "module=plain",
        "module._target_=userproj.plain.TrainOnly",
        "data=userdigits",
        "trainer.max_epochs=2",
        *QUIET,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(objectives(result.stdout)) == 1
    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and "val_acc" in run.data.metrics
    assert not [name for name in run.data.metrics if name.startswith("test")]


def test_a_train_py_of_your_own_trusts_your_package(project: Path):
    (project / "pyproject.toml").unlink()  # no project settings: main's arguments alone
    (project / "train.py").write_text(
        "from lit_tune import main\n\n"
        'if __name__ == "__main__":\n'
        '    main(trusted=["userproj.*"], config_dir="conf")\n'
    )
    result = run(
        [sys.executable, "train.py", "model=tiny", "trainer.max_epochs=1", "logger=none"],
        project,
        user_env(project),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(objectives(result.stdout)) == 1


# name: (arguments, what the one error line contains)
ERRORS = {
    "module never logs the objective": (
        ["module=plain", "data=userdigits", "objective.metric=val/f1", "trainer.max_epochs=1"],
        "objective.metric='val/f1' was never logged; the module logged lr-SGD, "
        "train_loss, val_acc, val_loss",
    ),
    "a net where the module goes": (
        ["module=plain", "module._target_=userproj.nets.TinyNet", "~module.lr", "~module.hidden"],
        "module._target_=userproj.nets.TinyNet: builds a TinyNet, not a LightningModule",
    ),
    "a size the datamodule lacks": (
        ["model=tiny", "+model.depth=???"],
        "model.depth: ??? is filled from the datamodule's `depth`, and the datamodule (Digits, "
        "task multiclass) has none; it gives input_shape, num_features, num_classes",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_of_your_own_fails_in_one_line(case: str, project: Path):
    args, expected = ERRORS[case]
    result = lit_tune(*args, *QUIET, cwd=project)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    store = project / "mlruns" / "mlflow.db"
    if store.exists():  # the run that began is closed FAILED, not left RUNNING
        client = MlflowClient(f"sqlite:///{store}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert "RUNNING" not in [r.info.status for r in runs]


def test_a_config_of_yours_that_ours_would_hide_is_refused(project: Path):
    (project / "conf" / "model" / "mlp.yaml").write_text("_target_: userproj.nets.TinyNet\n")
    result = lit_tune("model=mlp", cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: {project}/conf/model/mlp.yaml: lit_tune has model=mlp too, and Hydra reads "
        "lit_tune's; give yours another name"
    )


def test_an_untrusted_target_says_how_to_trust_it(project: Path):
    (project / "pyproject.toml").unlink()
    result = lit_tune("--config-dir", "conf", "model=tiny", cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: model._target_=userproj.nets.TinyNet: not trusted (a config file alone may not "
        'run code); trust it in your pyproject.toml ([tool.lit_tune] trusted = ["userproj.*"]) '
        'or with lit_tune.main(trusted=["userproj.*"])'
    )
    assert not (project / "mlruns" / "mlflow.db").exists()  # nothing ran
