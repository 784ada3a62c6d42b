"""Benchmark: what an epoch and a trial cost, against the loop one would write by hand.

MNIST, MLP 784-256-256-10, batch 128, Adam, no LR schedule. Each figure is min/median/max over
--repeats runs, each run the median of its epochs after the first (the first pays warm-up):

  a. seconds per epoch of the full pipeline (`python train.py`: MLflow logging, progress bar,
     checkpoints, early stopping) and of a plain PyTorch loop over the same tensors, same model,
     batch size and number of steps, with the same validation pass, in the same run;
  b. a plain loop over torchvision MNIST + ToTensor + DataLoader (the usual recipe), and the
     pipeline with `data.loader=dataloader`;
  c. the per-trial overhead of a sweep, from sweeps of two sizes: the extra wall time of each
     further trial beyond the trial itself (Optuna's ask to tell: what the sweeper and the
     launcher add), beyond its MLflow run, and beyond its epochs (train + validation);
  d. the peak RSS of a sweep;
  e. on a GPU (or with --time-to-accuracy): seconds until a CNN reaches 99 % val/acc, and the
     test/acc of its best checkpoint;
  f. a user's own LightningModule (tests/userproj: lightning-hydra-template's style, automatic
     optimisation, self.log at every step, its own net 784-256-10) run by `lit-tune` from its
     project, against the plain loop of the same net, optimizer and batches.

--against DIR measures (a)'s pipeline of another checkout too (e.g. a `git worktree` of an older
commit), interleaved with this one's, so that the two ratios are measured side by side.
--parts picks figures (e.g. --parts af).

Writes bench/results/speed-<device>.json. Usage: python bench/speed.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F
import torchvision
from mlflow import MlflowClient

from lit_tune.data import MNIST
from lit_tune.models import MLP

ROOT = Path(__file__).resolve().parents[1]
USERPROJ = ROOT / "tests" / "userproj"
MODEL = ["model=mlp", "model.hidden_layers=2", "model.width=256", "model.dropout=0.0"]
COMMON = [*MODEL, "data=mnist", "data.batch_size=128", "optimizer=adam", "scheduler=none"]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def run(
    args: list[str], workdir: Path, root: Path = ROOT, command: list[str] | None = None
) -> tuple[float, float]:
    """Run `root`'s train.py (or `command`) with `args` in `workdir`; return its wall seconds
    and peak RSS (MiB). Another checkout's `root` runs its own package (PYTHONPATH)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if root != ROOT:
        env["PYTHONPATH"] = str(root / "src")
    if command:
        env["PYTHONPATH"] = str(workdir)  # the user's project, as `pip install -e .` makes it
    started = time.perf_counter()
    process = subprocess.Popen(
        [*(command or [sys.executable, str(root / "train.py")]), *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)  # the rusage of this command alone
    wall = time.perf_counter() - started
    if status:
        raise RuntimeError(f"train.py {' '.join(args)} failed: {process.stderr.read()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def child_runs(workdir: Path) -> list:
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [(client, r) for r in runs if r.data.tags.get("lit_tune.role") != "sweep"]


def epoch_seconds(workdir: Path) -> float:
    """The median seconds per epoch of the one run in `workdir`'s mlruns/, from the times
    MLflow logged val/acc (each epoch's end), after the first epoch."""
    [(client, found)] = child_runs(workdir)
    stamps = [m.timestamp for m in client.get_metric_history(found.info.run_id, "val/acc")]
    return statistics.median((b - a) / 1000 for a, b in itertools.pairwise(stamps[1:]))


def pipeline_epoch(data_dir: str, epochs: int, loader: str, root: Path = ROOT) -> float:
    """Median seconds per epoch of `python train.py` (of checkout `root`)."""
    with tempfile.TemporaryDirectory() as tmp:
        run(
            [
                *COMMON,
                f"data.data_dir={data_dir}",
                f"data.loader={loader}",
                f"trainer.max_epochs={epochs}",
                f"callbacks.early_stopping.patience={epochs}",
            ],
            Path(tmp),
            root,
        )
        return epoch_seconds(Path(tmp))


def user_module_epoch(data_dir: str, epochs: int) -> float:
    """(f) Median seconds per epoch of the user's template-style module, run by `lit-tune`
    in a copy of its project: automatic optimisation, one optimizer step per batch."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "userproj"
        shutil.copytree(USERPROJ, project)
        run(
            [
                "module=lit",
                "data=mnist",
                f"data.data_dir={data_dir}",
                "data.batch_size=128",
                "module.net.hidden=256",
                "module.optimizer.lr=0.001",
                f"trainer.max_epochs={epochs}",
                f"callbacks.early_stopping.patience={epochs}",
            ],
            project,
            command=[str(Path(sys.executable).parent / "lit-tune")],
        )
        return epoch_seconds(project)


def mlp() -> torch.nn.Module:
    """The built-in MLP the pipeline's figures train."""
    return MLP(input_shape=(1, 28, 28), num_outputs=10, hidden_layers=2, width=256)


def user_net() -> torch.nn.Module:
    """(f) The user's own net, as tests/userproj's module=lit builds it for MNIST."""
    sys.path.insert(0, str(USERPROJ))
    from userproj.nets import TinyNet

    return TinyNet(784, 10, hidden=256)


def plain_loop_epoch(batches, val_batches, epochs: int, device: torch.device, net=mlp) -> float:
    """Median seconds per epoch of the loop one writes by hand: train, then validate."""
    torch.manual_seed(0)
    model = net().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        for x, y in batches(epoch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            for x, y in val_batches():
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                correct += (model(x).argmax(1) == y).sum()
        float(correct)  # one sync per epoch, as the pipeline's epoch-end metrics
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def tensor_loop(data_dir: str, epochs: int, device: torch.device, net=mlp) -> float:
    dm = MNIST(data_dir, batch_size=128, val_fraction=0.1, seed=0, download=False)
    dm.setup()
    (x, y), (vx, vy) = ((t.to(device) for t in dm.splits[s]) for s in ("train", "val"))

    def batches(epoch: int):
        order = torch.randperm(len(x), device=device)
        return ((x[i], y[i]) for i in order.split(128))

    def val_batches():
        return zip(vx.split(128), vy.split(128), strict=True)

    return plain_loop_epoch(batches, val_batches, epochs, device, net)


def torchvision_loop(data_dir: str, epochs: int, device: torch.device) -> float:
    transform = torchvision.transforms.ToTensor()
    train = torchvision.datasets.MNIST(data_dir, train=True, transform=transform)
    generator = torch.Generator().manual_seed(0)
    train_set, val_set = torch.utils.data.random_split(train, [54000, 6000], generator)
    loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=128)
    return plain_loop_epoch(lambda _: loader, lambda: val_loader, epochs, device)


def sweep_cost(data_dir: str, trials: int) -> dict[str, float]:
    """Wall seconds of a sweep, the seconds its trials spent in epochs (sum of epoch_time) and
    in their MLflow runs (start to end), and its peak RSS (MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, rss = run(
            [
                "-m",
                "hydra/sweeper=lit_tune",
                "hydra/launcher=joblib",
                "callbacks=sweep",
                "hydra.sweeper.direction=maximize",
                f"hydra.sweeper.n_trials={trials}",
                *COMMON,
                f"data.data_dir={data_dir}",
                # One point, searched again and again: every trial does the same work.
                "optimizer.lr=choice(0.001)",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=0.1",
                "trainer.num_sanity_val_steps=0",
                "callbacks.progress_bar.refresh_rate=0",
            ],
            Path(tmp),
        )
        runs = child_runs(Path(tmp))
        epochs = sum(
            m.value
            for client, r in runs
            for m in client.get_metric_history(r.info.run_id, "epoch_time")
        )
        in_runs = sum((r.info.end_time - r.info.start_time) / 1000 for _, r in runs)
        storage = f"sqlite:///{tmp}/mlruns/optuna.db"
        [name] = optuna.get_all_study_names(storage)
        in_trials = sum(  # from ask to tell: the Hydra job and all of train()
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in optuna.load_study(study_name=name, storage=storage).trials
        )
    return {"wall": wall, "epochs": epochs, "runs": in_runs, "trials": in_trials, "rss": rss}


# (e): a CNN recipe for 99 %: 3 conv blocks, shifted batches, one-cycle Adam.
CNN = [
    "data=mnist",
    "model=cnn",
    "model.depth=3",
    "data.shift=2",
    "data.batch_size=256",
    "optimizer=adam",
    "scheduler=one_cycle",
    "scheduler.max_lr=0.01",
]


def time_to_accuracy(data_dir: str, target: float, epochs: int) -> dict[str, float | None]:
    """Seconds from the start of the CNN's MLflow run to the end of the first epoch whose
    val/acc reaches `target`, and the run's test/acc (of its best checkpoint) at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        run(
            [
                *CNN,
                f"data.data_dir={data_dir}",
                f"trainer.max_epochs={epochs}",
                f"callbacks.early_stopping.patience={epochs}",
            ],
            Path(tmp),
        )
        [(client, found)] = child_runs(Path(tmp))
        history = client.get_metric_history(found.info.run_id, "val/acc")
        reached = [m.timestamp for m in history if m.value >= target]
        seconds = (min(reached) - found.info.start_time) / 1000 if reached else None
        return {"seconds": seconds, "test_acc": found.data.metrics.get("test/acc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--trials", type=int, nargs=2, default=[2, 12], metavar=("FEW", "MANY"))
    parser.add_argument("--parts", default="abcdef", help="which figures (letters) to measure")
    parser.add_argument(
        "--against", type=Path, help="another checkout whose pipeline (a) to measure alongside"
    )
    parser.add_argument(
        "--time-to-accuracy",
        type=float,
        nargs=2,
        metavar=("TARGET", "EPOCHS"),
        help="(e) seconds until the CNN's val/acc reaches TARGET, within EPOCHS (default on a "
        "GPU: 0.99 within 15)",
    )
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs: at least 3 (the first epoch is warm-up; then two to time)")
    data_dir = str(Path(args.data_dir).resolve())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    epochs, parts = args.epochs, args.parts
    measures = {
        "plain_loop_tensors": ("a", lambda: tensor_loop(data_dir, epochs, device)),
        "pipeline": ("a", lambda: pipeline_epoch(data_dir, epochs, "device")),
        "pipeline_against": (
            "a" if args.against else "",
            lambda: pipeline_epoch(data_dir, epochs, "device", args.against.resolve()),
        ),
        "plain_loop_torchvision": ("b", lambda: torchvision_loop(data_dir, epochs, device)),
        "pipeline_dataloader": ("b", lambda: pipeline_epoch(data_dir, epochs, "dataloader")),
        "plain_loop_user_net": ("f", lambda: tensor_loop(data_dir, epochs, device, user_net)),
        "user_module": ("f", lambda: user_module_epoch(data_dir, epochs)),
    }
    figures: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so that a slow spell hits every figure
        for name, (part, measure) in measures.items():
            if part and part in parts:
                figures.setdefault(name, []).append(measure())
                print(name, round(figures[name][-1], 3), flush=True)

    # Per-trial overhead: the slope, over two sweep sizes, of wall time minus time inside.
    # Sweeps of both sizes pay the same start-up (imports, stores, the closing report) once.
    few, many = args.trials
    overhead: dict[str, list[float]] = {"beyond_epochs": [], "beyond_runs": [], "sweeper": []}
    rss = []
    for _ in range(args.repeats if "c" in parts or "d" in parts else 0):
        small, large = sweep_cost(data_dir, few), sweep_cost(data_dir, many)
        inside_of = {"beyond_epochs": "epochs", "beyond_runs": "runs", "sweeper": "trials"}
        for name, inside in inside_of.items():
            extra = (large["wall"] - large[inside]) - (small["wall"] - small[inside])
            overhead[name].append(extra / (many - few))
        rss.append(large["rss"])
        print("overhead per trial", overhead, "peak MiB", round(rss[-1]), flush=True)

    to_accuracy = args.time_to_accuracy or ((0.99, 15) if device.type == "cuda" else None)
    to_accuracy = to_accuracy if "e" in parts else None
    reached = []
    if to_accuracy:
        target, epochs = to_accuracy
        for _ in range(args.repeats):
            reached.append(time_to_accuracy(data_dir, target, int(epochs)))
            print("time to accuracy", reached[-1], flush=True)

    median = {name: statistics.median(values) for name, values in figures.items()}

    def ratio(top: str, bottom: str, digits: int = 3) -> float | None:
        return round(median[top] / median[bottom], digits) if {top, bottom} <= set(median) else None

    summary = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds_per_epoch": {name: spread(values) for name, values in figures.items()},
        "a_pipeline_over_plain_loop": ratio("pipeline", "plain_loop_tensors"),
        "a_against_over_plain_loop": ratio("pipeline_against", "plain_loop_tensors"),
        "b_torchvision_over_pipeline": ratio("plain_loop_torchvision", "pipeline", 2),
        "f_user_module_over_its_plain_loop": ratio("user_module", "plain_loop_user_net"),
    }
    if overhead["sweeper"]:
        summary["c_overhead_seconds_per_trial"] = {k: spread(v) for k, v in overhead.items()}
        summary["d_sweep_peak_rss_mib"] = spread(rss)
    # Pair by pair (the figures of one repeat ran one after another), so that the machine's
    # drift between repeats cancels out of the ratios.
    for top, bottom in [
        ("pipeline", "plain_loop_tensors"),
        ("pipeline_against", "plain_loop_tensors"),
        ("pipeline", "pipeline_against"),
        ("user_module", "plain_loop_user_net"),
    ]:
        if top in figures and bottom in figures:
            pairs = [a / b for a, b in zip(figures[top], figures[bottom], strict=True)]
            summary[f"paired_{top}_over_{bottom}"] = spread(pairs)
    if "f" in parts:
        per_epoch = median["user_module"] - median["plain_loop_user_net"]
        summary["f_user_module_overhead_seconds_per_epoch"] = round(per_epoch, 3)
    if to_accuracy:
        seconds = [r["seconds"] for r in reached if r["seconds"] is not None]
        summary["e_time_to_accuracy"] = {
            "target": to_accuracy[0],
            "recipe": CNN,
            "reached": f"{len(seconds)} of {len(reached)} runs",
            "seconds": spread(seconds) if seconds else None,
            "test_acc": [r["test_acc"] for r in reached],
        }
    out = ROOT / "bench" / "results" / f"speed-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
