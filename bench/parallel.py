"""Benchmark: trials per hour of the default digits sweep with one trial at a time and with two,
with and without sharing the CPU between them (`hydra.sweeper.resources.threads`).

Arms, run in turn (A B C A B C ...) so that a drift of the machine's speed hits each alike:
- `n_jobs=1`: one joblib worker, every core to it;
- `n_jobs=2, shared`: two workers, CPUs // 2 threads each (the default);
- `n_jobs=2, every core`: two workers, each with as many threads as there are CPUs.

Per run: the whole command's wall time, and trials per hour once trials run (the trials that
ended after the first, over the time from its end to the last one's, in the study): the second
leaves out the sweep's start-up (Python, Hydra, the study, MLflow, the workers importing
Lightning) and its summary, which no n_jobs shortens. Prints a Markdown table of the medians.
Usage: python bench/parallel.py [--trials 12 --epochs 10 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
CPUS = len(os.sched_getaffinity(0))
ARMS = {
    "n_jobs=1": ["hydra.sweeper.n_jobs=1"],
    "n_jobs=2, shared": ["hydra.sweeper.n_jobs=2"],
    "n_jobs=2, every core": ["hydra.sweeper.n_jobs=2", f"hydra.sweeper.resources.threads={CPUS}"],
}


def sweep(workdir: Path, name: str, args: argparse.Namespace, extra: list[str]) -> dict:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=mlp",
        f"hydra.sweeper.n_trials={args.trials}",
        "hydra/sweeper/sampler=random",  # the same draws in every arm
        "hydra/sweeper/pruner=none",
        f"trainer.max_epochs={args.epochs}",
        f"hydra.sweeper.study_name={name}",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONWARNINGS"] = "ignore"
    started = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    ends = sorted(t.datetime_complete for t in study.trials if t.datetime_complete)
    steady = (ends[-1] - ends[0]).total_seconds()
    return {"wall": wall, "trials_per_hour": 3600 * (len(ends) - 1) / steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="lit-tune-parallel-") as tmp:
        for repeat in range(args.repeats):
            for i, (arm, extra) in enumerate(ARMS.items()):
                runs[arm].append(sweep(Path(tmp), f"parallel-{repeat}-{i}", args, extra))
                print(f"repeat {repeat}, {arm}: {runs[arm][-1]}", flush=True)
    base = {k: statistics.median(r[k] for r in runs["n_jobs=1"]) for k in runs["n_jobs=1"][0]}
    print(
        f"\n{CPUS} CPUs; {args.trials} trials of up to {args.epochs} epochs; medians of "
        f"{args.repeats} runs\n"
    )
    print("| arm | wall s | speed-up | trials per hour once trials run | speed-up |")
    print("|---|---|---|---|---|")
    for arm, measured in runs.items():
        wall = statistics.median(r["wall"] for r in measured)
        rate = statistics.median(r["trials_per_hour"] for r in measured)
        print(
            f"| {arm} | {wall:.1f} | {base['wall'] / wall:.2f}x | {rate:.0f} | "
            f"{rate / base['trials_per_hour']:.2f}x |"
        )


if __name__ == "__main__":
    main()
