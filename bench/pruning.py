"""Benchmark: the same TPE sweep on MNIST with and without Hyperband pruning.

Reports, for each seed and arm, the epochs trained over all trials, the best val/acc and the
best trial's test/acc (bench/results/pruning-<trials>x<epochs>x<fraction>-seed<S>.json), and
each pruned arm pooled over the seeds (...-seeds<S-S-...>.json). A seed whose JSON exists with
the same settings is read back, not run again.
Usage: python bench/pruning.py --data-dir ../shared/data [--trials 20 --epochs 10 --seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def sweep(
    workdir: Path, name: str, pruner: str, args: argparse.Namespace, seed: int, extra: list[str]
) -> dict:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=mlp",
        "data=mnist",
        f"data.data_dir={Path(args.data_dir).resolve()}",
        f"trainer.max_epochs={args.epochs}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra/sweeper/pruner={pruner}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.sampler.seed={seed}",
        f"seed={seed}",
        "callbacks.progress_bar.refresh_rate=0",
        f"trainer.limit_train_batches={args.train_fraction}",
        # A space that fits a 2-core CPU: MNIST epochs of a few seconds.
        "data.batch_size=choice(64,128,256)",
        "model.width=tag(log, int(interval(32, 512)))",
        "model.hidden_layers=range(1, 4)",
        *extra,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return {"pruner": pruner, "overrides": extra, **results(workdir, name), "wall_seconds": wall}


def results(workdir: Path, name: str) -> dict:
    """Trials, pruned, failed, epochs trained and the best value of study `name`."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`optuna.study_name` = '{name}'",
    )
    epochs = sum(
        len(client.get_metric_history(r.info.run_id, "val/acc"))
        for r in runs
        if "optuna.trial_number" in r.data.tags
    )
    states = [t.state.name for t in study.trials]
    # The best trial's test/acc: chosen on val/acc, so free of the optimism of a maximum over
    # noisy validation scores (which grows with the number of trials trained to the end).
    best = str(study.best_trial.number)
    [best_run] = [r for r in runs if r.data.tags.get("optuna.trial_number") == best]
    return {
        "trials": len(study.trials),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "epochs_trained": epochs,
        "best_val_acc": study.best_value,
        "best_trial_test_acc": best_run.data.metrics.get("test/acc"),
        "best_params": study.best_params,
    }


SETTINGS = ("trials", "epochs", "train_fraction", "hyperband", "variant")  # same -> reusable


def one_seed(args: argparse.Namespace, seed: int, workdir: Path) -> dict:
    """The unpruned arm and each pruned arm on `seed`; read back from its JSON when a run with
    the same settings wrote it (a long benchmark resumes seed by seed)."""
    name = f"pruning-{args.trials}x{args.epochs}x{args.train_fraction:g}-seed{seed}"
    if args.hyperband:
        name += "-" + "-".join(o.rsplit(".", 1)[-1] for o in args.hyperband)
    out = ROOT / "bench" / "results" / f"{name}.json"
    settings = {**{k: getattr(args, k) for k in SETTINGS}, "seed": seed}
    if out.exists():
        done = json.loads(out.read_text())
        if all(done["settings"].get(k) == v for k, v in settings.items()):
            print(f"seed {seed}: reusing {out.relative_to(ROOT)}")
            return done
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plain = sweep(workdir, f"bench-none-{stamp}", "none", args, seed, [])
    arms = [args.hyperband, *(v.split() for v in args.variant)]
    pruned = [
        sweep(workdir, f"bench-hyperband{i or ''}-{stamp}", "hyperband", args, seed, extra)
        for i, extra in enumerate(arms)
    ]
    for arm in pruned:
        arm["epoch_ratio"] = arm["epochs_trained"] / plain["epochs_trained"]
        arm["best_difference_points"] = 100 * (arm["best_val_acc"] - plain["best_val_acc"])
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    summary = {
        "machine": f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={threads}",
        "settings": settings,
        "runs": [plain, *pruned],
        "epoch_ratio": pruned[0]["epoch_ratio"],
        "best_difference_points": pruned[0]["best_difference_points"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    return summary


def pooled(seeds: list[dict]) -> list[dict]:
    """Each pruned arm over all seeds against the unpruned one: epochs summed, the differences
    in best val/acc and in the best trial's test/acc averaged (points)."""
    plain_epochs = sum(s["runs"][0]["epochs_trained"] for s in seeds)
    arms = []
    for i in range(1, len(seeds[0]["runs"])):
        pairs = [(s["runs"][0], s["runs"][i]) for s in seeds]
        val = [100 * (a["best_val_acc"] - p["best_val_acc"]) for p, a in pairs]
        test = [100 * (a["best_trial_test_acc"] - p["best_trial_test_acc"]) for p, a in pairs]
        epochs = sum(a["epochs_trained"] for _, a in pairs)
        arms.append(
            {
                "overrides": pairs[0][1]["overrides"],
                "epochs_trained": epochs,
                "unpruned_epochs_trained": plain_epochs,
                "epoch_ratio": epochs / plain_epochs,
                "mean_best_difference_points": statistics.mean(val),
                "best_difference_points": val,
                "mean_best_trial_test_difference_points": statistics.mean(test),
                "best_trial_test_difference_points": test,
            }
        )
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--train-fraction", type=float, default=1.0, help="of the training batches per epoch"
    )
    parser.add_argument(
        "--hyperband",
        nargs="*",
        default=[],
        help="overrides for the pruned arm, e.g. hydra.sweeper.pruner.reduction_factor=4",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="another pruned arm against the same unpruned one: space-separated overrides",
    )
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "results" / "pruning"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [one_seed(args, seed, workdir) for seed in args.seeds]
    summary = {"seeds": args.seeds, "pooled": pooled(seeds), "per_seed": seeds}
    name = f"pruning-{args.trials}x{args.epochs}x{args.train_fraction:g}"
    seeds_text = "-".join(str(s) for s in args.seeds)
    out = ROOT / "bench" / "results" / f"{name}-seeds{seeds_text}.json"
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["pooled"], indent=2))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
