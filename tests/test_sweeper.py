"""The lit_tune sweeper through the real CLI (`python train.py -m ...`), on digits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import (
    ROOT,
    assert_optuna_and_mlflow_agree,
    cli,
    cli_env,
    kill_while_trial_runs,
    load,
    mlflow_runs,
    popen,
    run,
    run_cli,
)
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hydra_plugins.lit_tune_sweeper._study import counts
from hydra_plugins.lit_tune_sweeper.storage import open_storage, sqlite_lock

pytestmark = pytest.mark.slow
# tests/foreign/batched.py: an app under a sweeper patched to wait for a whole batch of trials.
BATCHED = ROOT / "tests" / "foreign" / "batched.py"
# In-process trials, short training: these tests are about the sweep, not the models.
FAST = [
    "hydra/launcher=basic",
    "trainer.max_epochs=5",
    "callbacks.early_stopping.patience=100",
    "callbacks.progress_bar.refresh_rate=0",
    "mlflow_model=none",  # 2.3 s of CPU a best-so-far trial; tests/test_winner.py covers it
]


def test_pruned_trials_are_recorded_alike_in_optuna_and_mlflow(tmp_path: Path):
    result = run_cli(
        "-m",
        "hparams_search=mlp",
        *FAST,
        "trainer.max_epochs=6",
        "trainer.min_epochs=6",  # a pruned trial stops all the same
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.study_name=prune",
        cwd=tmp_path,
        warnings=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = assert_optuna_and_mlflow_agree(tmp_path, "prune")
    states = [t.state for t in study.trials]
    assert len(states) == 8
    # One line per finished trial: n/N, state, value (a failure's reason), best so far and
    # its trial, how many run, were pruned and failed, elapsed and remaining time.
    output = result.stdout + result.stderr
    lines = re.findall(
        r"trial (\d+) \((\d+)/8 done\): (\w+) ([\d.]+|\(.+\)); best ([\d.]+) \(trial (\d+)\); "
        r"(\d+) running, (\d+) pruned, (\d+) failed; (\d+)s elapsed, about (\d+)s to go",
        output,
    )
    assert [int(done) for _, done, *_ in lines] == list(range(1, 9))
    for number, done, state, value, _, _, running, pruned, failed, *_ in lines:
        trial = study.trials[int(number)]
        assert state == trial.state.name
        if state == "FAIL":  # diverged: lr up to 1.0 in this space
            assert value == f"({trial.user_attrs['fail_reason']})"
        else:
            assert float(value) == pytest.approx(trial.value, abs=1e-4)
        so_far = states[: int(done)]  # in-process: trials end in the order they start
        assert (int(running), int(pruned), int(failed)) == (
            0,
            so_far.count(TrialState.PRUNED),
            so_far.count(TrialState.FAIL),
        )
    assert float(lines[-1][4]) == pytest.approx(study.best_value, abs=1e-4)
    assert int(lines[-1][5]) == study.best_trial.number
    assert lines[-1][-1] == "0"
    summary = (
        f"Study 'prune': 8 trials done ({states.count(TrialState.COMPLETE)} complete, "
        f"{states.count(TrialState.PRUNED)} pruned, {states.count(TrialState.FAIL)} failed)"
    )
    assert summary in output
    # What a person reads: no library warnings, no progress bars, no test tables, not even
    # three lines a trial; each trial's log file keeps Lightning's messages.
    assert "warn" not in output.lower(), output
    assert "it/s" not in output and "Test metric" not in output
    assert len(output.splitlines()) < 8 * 3, output
    (trial_log,) = tmp_path.glob("multirun/*/*/0/train.log")
    assert "GPU available" in trial_log.read_text()
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    _, children = mlflow_runs(tmp_path, "prune")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for trial in study.trials:
        # Steps are epochs trained, so the pruner's resources are epochs.
        (run,) = children[trial.number]
        epochs = client.get_metric_history(run.info.run_id, "val/acc")
        assert sorted(trial.intermediate_values) == list(range(1, len(epochs) + 1))
        if trial.state == TrialState.PRUNED:
            # It keeps its last reported value; its run stopped where Optuna stopped it.
            assert trial.value == trial.intermediate_values[len(epochs)]
            assert len(epochs) < 6
            # Its last epoch ended (train/loss logged, as for every epoch) and its curves show
            # why it was pruned.
            losses = client.get_metric_history(run.info.run_id, "train/loss")
            assert len(losses) == len(epochs)
            plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
            assert "plots/learning_curves.png" in plots
    parent, _ = mlflow_runs(tmp_path, "prune")
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id, "plots")}
    assert "plots/optimization_history.png" in artifacts
    page = Path(
        client.download_artifacts(parent[0].info.run_id, "plots/optuna.html", str(tmp_path))
    )
    html = page.read_text()
    assert html.count("Plotly.newPlot") == 4  # history, importances, coordinates, curves
    assert "Intermediate Values Plot" in html and "prune" in html
    assert parent[0].data.metrics["best_value"] == pytest.approx(study.best_value)
    results = yaml.safe_load(
        next(tmp_path.glob("multirun/*/*/optimization_results.yaml")).read_text()
    )
    assert results["best_value"] == pytest.approx(study.best_value)


def test_verbose_brings_back_what_a_sweep_hides(tmp_path: Path):
    result = run_cli(
        "-m",
        "hparams_search=mlp",
        *FAST,
        "trainer.max_epochs=2",
        "hydra.sweeper.n_trials=1",
        "callbacks.progress_bar.refresh_rate=1",
        "verbose=true",
        cwd=tmp_path,
        warnings=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "it/s" in output and "Test metric" in output  # bars and the test table
    assert "GPU available" in output  # Lightning's messages
    assert re.search(r"#0 : .*optimizer", output)  # the launcher's line of overrides
    assert "Heartbeat of storage is supposed to be used with Study.optimize" in output


def test_diverging_trials_fail_and_the_sweep_goes_on(tmp_path: Path):
    result = run_cli(
        "-m",
        "hparams_search=grid",
        *FAST,
        "optimizer=sgd",
        "optimizer.lr=choice(0.05,1e8)",
        "data.batch_size=choice(32,64)",
        "hydra.sweeper.study_name=nan",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = assert_optuna_and_mlflow_agree(tmp_path, "nan")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(study.trials) == 4 and len(failed) == 2
    assert all(t.params["optimizer.lr"] == 1e8 for t in failed)
    assert all("not finite" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.user_attrs["diverged"] is True for t in failed)  # the sampler sees them
    _, children = mlflow_runs(tmp_path, "nan")
    for trial in failed:
        (run,) = children[trial.number]
        assert run.data.tags["fail_reason"] == trial.user_attrs["fail_reason"]


def test_a_killed_sweep_resumes_to_exactly_its_budget(tmp_path: Path):
    args = cli(
        "-m",
        "hparams_search=mlp",
        *FAST,
        "trainer.max_epochs=25",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.study_name=killed",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=2",
    )
    env = cli_env()

    def trials() -> list[optuna.trial.FrozenTrial]:
        if not (tmp_path / "mlruns" / "optuna.db").exists():
            raise KeyError("no study yet")
        return load(tmp_path, "killed").trials

    kill_while_trial_runs(list(args), tmp_path, env, trials, settle=1.0, timeout=120)
    assert any(t.state == TrialState.RUNNING for t in load(tmp_path, "killed").trials)

    second = run(args, tmp_path, env)
    assert second.returncode == 0, second.stderr[-3000:]
    study = assert_optuna_and_mlflow_agree(tmp_path, "killed")
    assert sum(counts(t) for t in study.trials) == 4
    (interrupted,) = [t for t in study.trials if not counts(t)]
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == interrupted.number]
    assert len(retried) == 1 and retried[0].params == interrupted.params
    job_dirs = [p.name for p in tmp_path.glob("multirun/*/*/*") if p.is_dir()]
    assert len(job_dirs) == len(set(job_dirs))  # job numbers continue across the two runs


@pytest.mark.parametrize(
    ("launcher", "signum", "to_group"),
    [
        ("hydra/launcher=basic", signal.SIGINT, True),  # Ctrl-C in a terminal: the group
        ("hydra.sweeper.n_jobs=2", signal.SIGINT, True),
        ("hydra.sweeper.n_jobs=2", signal.SIGTERM, False),  # `kill PID`: the workers only
    ],  # hear of it from the sweep
    ids=["ctrl-c", "ctrl-c-2-workers", "sigterm-2-workers"],
)
def test_a_signal_stops_a_sweep_cleanly_and_it_resumes(
    launcher: str, signum: int, to_group: bool, tmp_path: Path
):
    args = [
        "-m",
        "hparams_search=mlp",
        launcher,
        "trainer.max_epochs=500",
        "callbacks.early_stopping.patience=500",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=ctrlc",
        "mlflow_model=none",
    ]
    running = 1 if "basic" in launcher else 2
    sweep = popen(
        cli(*args),
        tmp_path,
        cli_env(),
        start_new_session=True,  # a process group, as a terminal makes one
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # until the trials are training
        time.sleep(1.0)
        if (tmp_path / "mlruns" / "mlflow.db").exists():
            with sqlite_lock(f"sqlite:///{tmp_path}/mlruns/mlflow.db"):  # made while we look?
                _, children = mlflow_runs(tmp_path, "ctrlc")
            if (
                sum(r.info.status == "RUNNING" for runs in children.values() for r in runs)
                == running
            ):
                break
    time.sleep(3.0)
    started = time.monotonic()
    (os.killpg if to_group else os.kill)(sweep.pid, signum)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signum, output[-3000:]
    assert time.monotonic() - started < 60  # the trials stopped, they did not run to the end
    assert "Traceback" not in output
    said = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"Interrupted by {said}. Resume with the same command and " in output
    assert "hydra.sweeper.study_name=ctrlc" in output

    study = assert_optuna_and_mlflow_agree(tmp_path, "ctrlc")
    stopped = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(stopped) == running and all(t.state == TrialState.FAIL for t in stopped)
    assert all(t.user_attrs["interrupted"] == said for t in stopped)
    queued = [t for t in study.trials if t.state == TrialState.WAITING]
    queued_params = [t.system_attrs["fixed_params"] for t in queued]
    assert sorted(map(str, queued_params)) == sorted(str(t.params) for t in stopped)
    parents, _ = mlflow_runs(tmp_path, "ctrlc")
    assert parents[0].info.status == "KILLED"

    args[args.index("trainer.max_epochs=500")] = "trainer.max_epochs=2"
    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = assert_optuna_and_mlflow_agree(tmp_path, "ctrlc")
    assert sum(counts(t) for t in study.trials) == 3
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
    finished = [str(t.params) for t in study.trials if counts(t)]
    assert all(str(t.params) in finished for t in stopped)  # their parameters ran after all


@pytest.mark.timeout(1200)  # four sweeps of 12 trials on two cores; each may take 900 s
def test_four_workers_share_one_study_and_one_mlflow_store(tmp_path: Path):
    def worker(seed: int) -> subprocess.Popen[str]:
        return popen(
            cli(
                "-m",
                "hparams_search=mlp",
                *FAST,
                "trainer.max_epochs=2",
                "hydra.sweeper.n_trials=12",
                "hydra.sweeper.study_name=shared",
                f"hydra.sweeper.sampler.seed={seed}",
                # A space where no trial diverges: any FAIL would be the store's fault.
                "optimizer=adam",
                "optimizer.lr=tag(log, interval(0.0001, 0.01))",
            ),
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    workers = [worker(seed) for seed in range(4)]
    for w in workers:
        _, stderr = w.communicate(timeout=900)
        assert w.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr and "locked" not in stderr
    study = assert_optuna_and_mlflow_agree(tmp_path, "shared")  # every trial has its run
    assert sum(counts(t) for t in study.trials) == 12
    assert not [t for t in study.trials if t.state == TrialState.FAIL and counts(t)]
    _, children = mlflow_runs(tmp_path, "shared")
    assert sorted(children) == sorted(
        t.number for t in study.trials if not t.user_attrs.get("skipped")
    )


def parallel_sweep(tmp_path: Path, program: list[str]) -> tuple[FrozenTrial, FrozenTrial]:
    """Sweep three trials two at a time, the first long (100 epochs) and the others one epoch
    each, with `program` as `python train.py`; (the first trial, the third). No MLflow
    models: exporting one would take the short trials about as long as the epochs between."""
    (tmp_path / "mlruns").mkdir()
    storage = open_storage(f"sqlite:///{tmp_path}/mlruns/optuna.db")
    queued = optuna.create_study(study_name="parallel", storage=storage, direction="maximize")
    for epochs in (100, 1, 1):
        queued.enqueue_trial({"trainer.max_epochs": epochs})
    args = ["-m", "hparams_search=grid", "hydra/sweeper/sampler=random", "hydra/launcher=joblib"]
    args += [
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=parallel",
    ]
    args += ["trainer.max_epochs=choice(1,100)", "optimizer=adam", "optimizer.lr=0.01"]
    args += ["callbacks.early_stopping.patience=100", "callbacks.progress_bar.refresh_rate=0"]
    args += ["mlflow_model=none"]
    result = run([*program, *args], tmp_path, cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    first, second, third = assert_optuna_and_mlflow_agree(tmp_path, "parallel").trials
    assert [t.params["trainer.max_epochs"] for t in (first, second, third)] == [100, 1, 1]
    assert third.datetime_start > second.datetime_complete  # asked once the second ended
    return first, third


def test_parallel_trials_do_not_wait_for_a_batch(tmp_path: Path):
    first, third = parallel_sweep(tmp_path, cli())
    assert third.datetime_start < first.datetime_complete  # in batches: after it


def test_the_no_batch_check_fails_against_a_sweeper_that_runs_in_batches(tmp_path: Path):
    first, third = parallel_sweep(tmp_path, [sys.executable, str(BATCHED), str(ROOT / "train.py")])
    assert third.datetime_start > first.datetime_complete


def test_a_stock_sweeper_params_block_runs_unchanged(tmp_path: Path):
    searches = tmp_path / "extra" / "hparams_search"
    searches.mkdir(parents=True)
    (searches / "stock.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n"
        "  - override /hydra/sweeper: lit_tune\n"
        "hydra:\n"
        "  sweeper:\n"
        "    direction: maximize\n"
        "    study_name: stock\n"
        "    n_trials: 3\n"
        "    params:\n"
        "      optimizer.lr: interval(0.0001, 0.1)\n"
        "      data.batch_size: choice(32, 64, 128, 256)\n"
    )
    result = run_cli(
        "-m", f"--config-dir={tmp_path / 'extra'}", "hparams_search=stock", *FAST, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path, "stock")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    distributions = study.trials[0].distributions
    assert distributions["optimizer.lr"] == FloatDistribution(0.0001, 0.1)
    assert distributions["data.batch_size"] == CategoricalDistribution([32, 64, 128, 256])


def test_a_direction_given_to_the_sweeper_decides_objective_mode(tmp_path: Path):
    # One fact, either key: as a stock block gives it, the direction fills objective.mode,
    # which the trial's checkpointing and early stopping then follow.
    args = ["hparams_search=mlp", *FAST, "trainer.max_epochs=1", "hydra.sweeper.n_trials=1"]
    args += ["hydra.sweeper.study_name=given", "hydra.sweeper.direction=minimize"]
    result = run_cli("-m", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load(tmp_path, "given").direction.name == "MINIMIZE"
    _, children = mlflow_runs(tmp_path, "given")
    (run,) = children[0]
    assert run.data.params["objective.mode"] == "min"


def test_multi_objective_sweep_returns_a_pareto_front(tmp_path: Path):
    result = run_cli(
        "-m",
        "hparams_search=multi_objective",
        *FAST,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=pareto",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path, "pareto")
    _, children = mlflow_runs(tmp_path, "pareto")
    for trial in study.trials:
        (run,) = children[trial.number]
        assert trial.values[1] == float(run.data.params["num_parameters"])
    results = yaml.safe_load(
        next(tmp_path.glob("multirun/*/*/optimization_results.yaml")).read_text()
    )
    assert results["solutions"]
    (parent,), _ = mlflow_runs(tmp_path, "pareto")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/pareto_front.png" in plots


def test_coarse_to_fine_searches_inside_the_best_region(tmp_path: Path):
    common = ["-m", "hparams_search=mlp", *FAST, "hydra/sweeper/sampler=random"]
    coarse = run_cli(
        *common, "hydra.sweeper.n_trials=6", "hydra.sweeper.study_name=coarse", cwd=tmp_path
    )
    assert coarse.returncode == 0, coarse.stderr[-3000:]
    fine = run_cli(
        *common,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=fine",
        "hydra.sweeper.refine.from_study=coarse",
        "hydra.sweeper.refine.top_k=3",
        cwd=tmp_path,
    )
    assert fine.returncode == 0, fine.stderr[-3000:]
    wide = load(tmp_path, "coarse").trials[0].distributions
    narrow = load(tmp_path, "fine").trials[0].distributions
    lr, lr_wide = narrow["optimizer.lr"], wide["optimizer.lr"]
    assert lr.log and lr_wide.low <= lr.low < lr.high <= lr_wide.high
    assert lr.high / lr.low < lr_wide.high / lr_wide.low
    if isinstance(narrow.get("optimizer"), CategoricalDistribution):
        assert set(narrow["optimizer"].choices) <= set(wide["optimizer"].choices)


def test_sweeps_started_at_once_on_one_study_make_one_parent_run(tmp_path: Path, monkeypatch):
    """Workers sharing a study each open the parent run. The second's run is made after the
    first has looked for others, and its clock is behind (another machine): without the
    study storage's lock both keep their own parent (CI saw it on PostgreSQL)."""
    import threading

    from omegaconf import OmegaConf

    from hydra_plugins.lit_tune_sweeper._report import ParentRun

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(storage))
    config = OmegaConf.create(
        {
            "hydra": {
                "runtime": {"cwd": str(tmp_path)},
                "job": {"name": "app"},
                "sweeper": {
                    "n_trials": 2,
                    "n_jobs": 1,
                    "sampler": {"seed": 0},
                    "pruner": {},
                    "mlflow": {
                        "parent_run": True,
                        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                        "experiment": "e",
                        "artifact_location": None,
                        "register": None,
                        "alias": "champion",
                    },
                },
            }
        }
    )
    original, made, guard = MlflowClient.create_run, [], threading.Lock()

    def create_run(self, experiment_id, start_time=None, **kwargs):
        with guard:
            made.append(time.time())
            second = len(made) == 2
        if second:  # after the first sweep has searched for parents; 1000 s behind
            time.sleep(1)
            start_time = int((made[0] - 1000) * 1000)
        return original(self, experiment_id, start_time=start_time, **kwargs)

    uri = config.hydra.sweeper.mlflow.tracking_uri
    MlflowClient(uri).create_experiment("e")  # made once, as the sweeps' first step does
    monkeypatch.setattr(MlflowClient, "create_run", create_run)
    start, opened = threading.Barrier(2), []

    def sweep():
        start.wait()
        opened.append(ParentRun.open(config, study, storage, {}).run_id)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = MlflowClient(uri)
    parents = client.search_runs(
        [client.get_experiment_by_name("e").experiment_id],
        filter_string="tags.`lit_tune.role` = 'sweep'",
    )
    assert len(parents) == 1 and opened == [parents[0].info.run_id] * 2
