"""`lit-tune best STUDY`: a study's best trial, and the command line that trains it again."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.lit_tune_sweeper.storage import mask, open_storage
from lit_tune.config import ConfigError

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"  # conf/hydra/sweeper/lit_tune.yaml, from here


def best_trial(study_name: str, storage: str) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    """The study and its best trial; ConfigError when there is none to give."""
    rdb = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
    if study_name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"study {study_name}: not in {mask(storage)}; studies there: {known}")
    study = optuna.load_study(study_name=study_name, storage=rdb)
    if len(study.directions) > 1:
        raise ConfigError(
            f"study {study_name}: multi-objective, no single best; see its Pareto front "
            "(plots/pareto_front.png of the sweep's MLflow run)"
        )
    try:
        return study, study.best_trial
    except ValueError:
        counts: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        raise ConfigError(f"study {study_name}: no trial has completed ({states})") from None


def retrain_overrides(trial: optuna.trial.FrozenTrial) -> list[str]:
    """The trial's command line (the sweeper records it), else its params as overrides."""
    recorded = trial.user_attrs.get("overrides")
    if recorded:
        return [str(o) for o in recorded]
    return [f"{key}={value}" for key, value in trial.params.items()]


def experiment_yaml(overrides: list[str], conf_dirs: list[Path], header: str) -> str:
    """The overrides as an `experiment=` config: a group choice as a defaults-list override,
    a key as its value (a group is a folder of one of `conf_dirs`)."""
    defaults, values = [], OmegaConf.create()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if any((d / key).is_dir() for d in conf_dirs):
            defaults.append(f"  - override /{key}: {override.value()}")
        else:
            OmegaConf.update(values, key, override.value(), force_add=True)
    body = OmegaConf.to_yaml(values) if len(values) else ""
    listed = "defaults:\n" + "\n".join(defaults) + "\n" if defaults else ""
    return f"# @package _global_\n{header}{listed}{body}"


def main(argv: list[str], program: str, conf_dirs: list[Path]) -> None:
    """Print the best trial of a study and the command that retrains it; `--save NAME`
    also writes that config as `experiment/NAME.yaml` under the first of `conf_dirs`."""
    parser = argparse.ArgumentParser(prog=f"{program} best", description=main.__doc__)
    parser.add_argument("study", help="the study's name (hydra.sweeper.study_name)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL")
    parser.add_argument("--save", metavar="NAME", help="write experiment/NAME.yaml")
    args = parser.parse_args(argv)
    study, trial = best_trial(args.study, args.storage)
    direction = study.direction.name.lower()
    done = len(study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]))
    print(
        f"study {study.study_name}: best trial {trial.number} of {done} completed, "
        f"value {trial.values[0]:.6g} ({direction})"
    )
    for key, value in trial.params.items():
        print(f"  {key} = {value}")
    overrides = retrain_overrides(trial)
    print(f"retrain: {program} {shlex.join(overrides)}")
    if args.save:
        path = conf_dirs[0] / "experiment" / f"{args.save}.yaml"
        if path.exists():
            raise ConfigError(f"--save {args.save}: {path} exists; pick another name")
        header = (
            f"# Trial {trial.number} of study {study.study_name}: value {trial.values[0]:.6g}."
            f"\n# Retrain: {program} experiment={args.save}\n"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(experiment_yaml(overrides, conf_dirs, header))
        print(f"saved: {path} (retrain: {program} experiment={args.save})")
