"""Benchmark: how fast each sampler (and TPE with pruning) finds a good MLP, on digits or MNIST.

Arms: random search, TPE, TPE with successive halving, and Optuna's GP sampler, each on the
search space of conf/hparams_search/mlp.yaml (on MNIST cut to fit a CPU, as bench/pruning.py).
Each trial's start and end come from the Optuna study, the epochs it trained (val/acc points)
and its test/acc from its MLflow run. From those, per arm and seed: the best val/acc so far (the
objective) and the test/acc of that best trial, against the wall time since the sweep's first
trial started and against the epochs trained so far. TPE and GP start with random trials
(n_startup_trials, 10) drawn as the random arm draws them on the same seed: the arms part after.

Writes bench/results/search-<dataset>-<trials>x<epochs>x<fraction>-<arm>-seed<S>.json (a sweep
already measured with the same settings is read back, so an interrupted benchmark resumes),
docs/img/search-<dataset>.png (medians over the seeds, interquartile bands) and prints a
Markdown table. Usage: python bench/search.py [--dataset mnist --trials 40 --seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a benchmark machine
import matplotlib.pyplot as plt
import numpy as np
import optuna
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "random": ["hydra/sweeper/sampler=random", "hydra/sweeper/pruner=none"],
    "tpe": ["hydra/sweeper/sampler=tpe", "hydra/sweeper/pruner=none"],
    "tpe-sh": ["hydra/sweeper/sampler=tpe", "hydra/sweeper/pruner=successive_halving"],
    "gp": ["hydra/sweeper/sampler=gp", "hydra/sweeper/pruner=none"],
}
# A space that fits a 2-core CPU: MNIST epochs of a few seconds. Digits keeps mlp.yaml's.
MNIST_SPACE = [
    "data.batch_size=choice(64,128,256)",
    "model.width=tag(log, int(interval(32, 512)))",
    "model.hidden_layers=range(1, 4)",
]
SETTINGS = ("dataset", "trials", "epochs", "train_fraction")  # with arm and seed: what compares


def sweep(workdir: Path, study: str, arm: str, args: argparse.Namespace, seed: int) -> float:
    """Run one sweep of `arm` as its own process; its wall time in seconds."""
    data = []
    if args.dataset == "mnist":
        data = ["data=mnist", f"data.data_dir={Path(args.data_dir).resolve()}", *MNIST_SPACE]
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=mlp",
        *ARMS[arm],
        *data,
        f"trainer.max_epochs={args.epochs}",
        f"trainer.limit_train_batches={args.train_fraction}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.sampler.seed={seed}",
        f"seed={seed}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    log = workdir / f"{study}.log"  # the sweep's output, for its warnings or its failure
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{arm}, seed {seed} failed ({done.returncode}): see {log}")
    return time.perf_counter() - started


def trials(workdir: Path, study_name: str) -> list[dict]:
    """Study `study_name`'s trials in the order they ended: state, value, seconds since the
    first trial started, the epochs its MLflow run validated and its test/acc."""
    study = optuna.load_study(
        study_name=study_name, storage=f"sqlite:///{workdir}/mlruns/optuna.db"
    )
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`optuna.study_name` = '{study_name}'",
    )
    by_number = {
        int(r.data.tags["optuna.trial_number"]): r
        for r in runs
        if "optuna.trial_number" in r.data.tags
    }
    first = min(t.datetime_start for t in study.trials if t.datetime_start)
    rows = []
    for t in study.trials:
        run = by_number.get(t.number)
        epochs = len(client.get_metric_history(run.info.run_id, "val/acc")) if run else 0
        end = t.datetime_complete or t.datetime_start or first
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "start_s": ((t.datetime_start or first) - first).total_seconds(),
                "end_s": (end - first).total_seconds(),
                "epochs": epochs,
                "test_acc": run.data.metrics.get("test/acc") if run else None,
            }
        )
    return sorted(rows, key=lambda row: row["end_s"])


def measured(args: argparse.Namespace, arm: str, seed: int, workdir: Path) -> dict:
    """The trials of `arm` on `seed`: read back from its JSON if measured with the same
    settings, else swept now and stored."""
    name = f"search-{args.dataset}-{args.trials}x{args.epochs}x{args.train_fraction:g}"
    out = ROOT / "bench" / "results" / f"{name}-{arm}-seed{seed}.json"
    settings = {**{k: getattr(args, k) for k in SETTINGS}, "arm": arm, "seed": seed}
    if out.exists():
        stored = json.loads(out.read_text())
        if stored["settings"] == settings and stored["overrides"] == ARMS[arm]:
            print(f"{arm}, seed {seed}: read back from {out.name}")
            return stored
    print(f"{arm}, seed {seed}: sweeping", flush=True)
    study = f"bench-search-{arm}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    wall = sweep(workdir, study, arm, args, seed)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    result = {
        "machine": f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={threads}",
        "settings": settings,
        "overrides": ARMS[arm],
        "study": study,
        "wall_seconds": wall,  # the whole process: start-up and the sweep's own end too
        "trials": trials(workdir, study),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def curve(rows: list[dict]) -> np.ndarray:
    """Rows of (seconds, epochs so far, best val/acc so far, that trial's test/acc, trials
    pruned so far), one per ended trial. Only completed trials count towards the best, as in
    Optuna's best_value; NaN before the first."""
    points, epochs, pruned, best, test = [], 0, 0, np.nan, np.nan
    for row in rows:
        epochs += row["epochs"]
        pruned += row["state"] == "PRUNED"
        if row["state"] == "COMPLETE" and not row["value"] <= best:  # `not`: NaN at first
            best, test = row["value"], row["test_acc"] if row["test_acc"] is not None else np.nan
        points.append((row["end_s"], epochs, best, test, pruned))
    return np.array(points, dtype=float)


def at(points: np.ndarray, axis: int, grid: np.ndarray, column: int = 2) -> np.ndarray:
    """`column` of the last point with x (`axis`: 0 seconds, 1 epochs) <= each grid value:
    NaN before the first point, the final value after the last (the sweep has ended)."""
    index = np.searchsorted(points[:, axis], grid, side="right") - 1
    return np.where(index >= 0, points[np.maximum(index, 0), column], np.nan)


def to_reach(points: np.ndarray, target: float, axis: int) -> float:
    """Seconds (axis 0) or epochs (1) until best val/acc >= target; inf if never."""
    reached = np.nonzero(points[:, 2] >= target)[0]
    return points[reached[0], axis] if len(reached) else np.inf


def median(values: list[float], spec: str) -> str:
    """The median of `values` formatted by `spec`; "-" where it is NaN or infinite."""
    value = float(np.median(values))
    return format(value, spec) if np.isfinite(value) else "-"


def table(curves: dict[str, list[np.ndarray]], budget: int) -> str:
    """Medians over the seeds, per arm, as a Markdown table: at the end, at a quarter and a
    half of the epoch budget, and the cost of coming within 1 pt of the best arm."""
    final = {arm: np.median([c[-1, 2] for c in cs]) for arm, cs in curves.items()}
    target = max(final.values()) - 0.01
    seeds = len(next(iter(curves.values())))
    rows = [
        f"Medians over {seeds} seed(s); budget: {budget} epochs (trials x max epochs); "
        f"target: val/acc {target:.4f} (1 pt below the best arm's final median).",
        "",
        "| arm | best val/acc | its test/acc | at 25 % of budget: val / test | at 50 % "
        "| wall s | epochs | pruned | s to target | epochs to target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, cs in curves.items():
        early = []
        for fraction in (0.25, 0.5):
            x = np.array([fraction * budget])
            val = median([at(c, 1, x)[0] for c in cs], ".4f")
            early.append(f"{val} / {median([at(c, 1, x, column=3)[0] for c in cs], '.4f')}")
        seconds = [to_reach(c, target, 0) for c in cs]
        hits = f" ({np.isfinite(seconds).sum()}/{seeds})"
        rows.append(
            f"| {arm} | {median([c[-1, 2] for c in cs], '.4f')} "
            f"| {median([c[-1, 3] for c in cs], '.4f')} | {early[0]} | {early[1]} "
            f"| {median([c[-1, 0] for c in cs], '.0f')} | {median([c[-1, 1] for c in cs], '.0f')} "
            f"| {median([c[-1, 4] for c in cs], '.0f')} "
            f"| {median(seconds, '.0f')}{hits} "
            f"| {median([to_reach(c, target, 1) for c in cs], '.0f')}{hits} |"
        )
    return "\n".join(rows)


def plot(curves: dict[str, list[np.ndarray]], dataset: str, out: Path) -> None:
    """Best val/acc so far against wall time and against epochs: per arm the median over the
    seeds and the band between the quartiles."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    low = []
    for axis, ax, label in [
        (0, axes[0], "wall time since the first trial started (s)"),
        (1, axes[1], "epochs trained"),
    ]:
        for arm, cs in curves.items():
            grid = np.linspace(0, max(c[-1, axis] for c in cs), 400)
            # NaN until every seed has a completed trial: the median of the seeds that have one
            # would look better than the arm is.
            values = np.array([at(c, axis, grid) for c in cs])
            q1, middle, q3 = np.percentile(values, [25, 50, 75], axis=0)
            (line,) = ax.plot(grid, middle, label=arm)
            ax.fill_between(grid, q1, q3, color=line.get_color(), alpha=0.2, linewidth=0)
            low.extend(middle[len(grid) // 5 :])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    # The first trials' scores would squeeze the part worth reading: from where the medians are
    # after a fifth of their run.
    if np.isfinite(low).any():
        axes[0].set_ylim(bottom=np.nanmin(low) - 0.005)
    axes[0].set_ylabel("best val/acc so far")
    axes[1].legend(loc="lower right")
    figure.suptitle(
        f"{dataset}: median over {len(next(iter(curves.values())))} seeds, quartile bands"
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    parser.add_argument(
        "--data-dir", default=str(ROOT.parent / "shared" / "data"), help="folder holding MNIST/raw"
    )
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--train-fraction", type=float, default=1.0, help="of the training batches per epoch"
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--workdir", default=None, help="default: bench/results/search-<dataset>")
    args = parser.parse_args()
    workdir = Path(args.workdir or ROOT / "bench" / "results" / f"search-{args.dataset}")
    workdir.mkdir(parents=True, exist_ok=True)
    # Seed by seed, so that an interrupted run leaves every arm measured on the same seeds.
    results = {
        (arm, seed): measured(args, arm, seed, workdir) for seed in args.seeds for arm in args.arms
    }
    curves = {
        arm: [curve(results[arm, seed]["trials"]) for seed in args.seeds] for arm in args.arms
    }
    out = ROOT / "docs" / "img" / f"search-{args.dataset}.png"
    plot(curves, args.dataset, out)
    print(table(curves, args.trials * args.epochs))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
