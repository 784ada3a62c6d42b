"""Benchmark: the same TPE sweep on MNIST with and without pruning (Hyperband and others).

Reports, for each seed and arm, the epochs trained over all trials, the best val/acc and the
best trial's test/acc (bench/results/pruning-<trials>x<epochs>x<fraction>-seed<S>.json), and
each pruned arm pooled over the seeds (...-seeds<S-S-...>.json). An arm already in a seed's
JSON (same budget, seed and overrides) is read back, not run again.
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


BUDGET = ("trials", "epochs", "train_fraction")  # with the seed: which sweeps compare


def pruner_of(overrides: list[str]) -> tuple[str, list[str]]:
    """(the arm's pruner, its other overrides): Hyperband unless hydra/sweeper/pruner= says."""
    key = "hydra/sweeper/pruner="
    named = [o.removeprefix(key) for o in overrides if o.startswith(key)]
    return (named[-1] if named else "hyperband"), [o for o in overrides if not o.startswith(key)]


def one_seed(args: argparse.Namespace, seed: int, workdir: Path) -> dict:
    """The unpruned arm and the pruned arms asked for, on `seed`. An arm already measured on
    the same budget and seed is read back from the seed's JSON, so a long benchmark resumes
    and a new pruned arm is compared with the unpruned sweep already run."""
    name = f"pruning-{args.trials}x{args.epochs}x{args.train_fraction:g}-seed{seed}"
    out = ROOT / "bench" / "results" / f"{name}.json"
    settings = {**{k: getattr(args, k) for k in BUDGET}, "seed": seed}
    stored = json.loads(out.read_text()) if out.exists() else {}
    same = all(stored.get("settings", {}).get(k) == v for k, v in settings.items())
    runs: list[dict] = stored["runs"] if same else []
    threads = os.environ.get("OMP_NUM_THREADS", "unset")

    def arm(pruner: str, extra: list[str]) -> dict:
        for run in runs:
            if run["pruner"] == pruner and run["overrides"] == extra:
                print(f"seed {seed}, {pruner} {' '.join(extra)}: read back from {out.name}")
                return dict(run)
        study = f"bench-{pruner}-{time.strftime('%Y%m%d-%H%M%S')}"
        runs.append(sweep(workdir, study, pruner, args, seed, extra))
        machine = f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={threads}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps({"machine": machine, "settings": settings, "runs": runs}, indent=2)
        )
        return dict(runs[-1])

    plain = arm("none", [])
    pruned = [arm(*pruner_of(extra)) for extra in [args.hyperband, *map(str.split, args.variant)]]
    for run in pruned:
        run["epoch_ratio"] = run["epochs_trained"] / plain["epochs_trained"]
        run["best_difference_points"] = 100 * (run["best_val_acc"] - plain["best_val_acc"])
    return {"seed": seed, "runs": [plain, *pruned]}


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
                "pruner": pairs[0][1]["pruner"],
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


def table(seeds: list[dict], arms: list[dict]) -> str:
    """The per-seed and pooled figures as a Markdown table (docs/benchmarks.md)."""
    rows = [
        "| seed | arm | pruned / failed | epochs (ratio) | best val/acc (Δ pt) | its test/acc |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        for run in seed["runs"]:
            ratio = f" ({run['epoch_ratio']:.0%})" if "epoch_ratio" in run else ""
            delta = f" ({run['best_difference_points']:+.2f})" if ratio else ""
            rows.append(
                f"| {seed['seed']} | {run['pruner']} {' '.join(run['overrides'])} "
                f"| {run['pruned']} / {run['failed']} | {run['epochs_trained']}{ratio} "
                f"| {run['best_val_acc']:.4f}{delta} | {run['best_trial_test_acc']:.4f} |"
            )
    for arm in arms:
        rows.append(
            f"| pooled | {arm['pruner']} {' '.join(arm['overrides'])} | "
            f"| {arm['epochs_trained']} of {arm['unpruned_epochs_trained']} "
            f"({arm['epoch_ratio']:.0%}) "
            f"| mean {arm['mean_best_difference_points']:+.2f} "
            f"| mean {arm['mean_best_trial_test_difference_points']:+.2f} |"
        )
    return "\n".join(rows)


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
        help="another pruned arm against the same unpruned one: space-separated overrides "
        "(hydra/sweeper/pruner=NAME for a pruner other than Hyperband)",
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
    print(table(seeds, summary["pooled"]))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
