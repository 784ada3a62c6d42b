"""Diverged trials stay FAIL but the sampler learns from them (sweeper's _diverged.py)."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper._diverged import DIVERGED, SeesDiverged


def sweep(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """40 trials of a learning-rate search whose best rate lies next to rates that diverge
    (momentum above 0.3, plain SGD above 1), as in the MLP space on MNIST."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(40):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        optimizer = trial.suggest_categorical("optimizer", ["sgd", "momentum"])
        limit = 0.3 if optimizer == "momentum" else 1.0
        if lr > limit:
            trial.set_user_attr(DIVERGED, True)
            study.tell(trial, state=TrialState.FAIL)
        else:  # best at half the limit
            value = 1 - abs(math.log10(lr / (limit / 2))) / 4 + 0.05 * (optimizer == "momentum")
            study.tell(trial, value)
    return study


def failed(study: optuna.Study) -> int:
    return sum(t.state == TrialState.FAIL for t in study.trials)


def test_tpe_stops_proposing_what_diverged_and_the_trials_stay_fail():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for seed in range(3):
        blind = sweep(optuna.samplers.TPESampler(seed=seed))
        seeing = sweep(SeesDiverged(optuna.samplers.TPESampler(seed=seed)))
        # TPE alone keeps proposing the empty (diverging) region: about 20-30 of 40 fail.
        assert failed(blind) >= 15, seed
        assert failed(seeing) <= failed(blind) / 2, seed
        assert seeing.best_value >= blind.best_value - 0.01, seed
        # The study itself still records them as FAIL, with nothing pruned.
        assert not any(t.state == TrialState.PRUNED for t in seeing.trials)


def test_gp_stops_proposing_what_diverged():
    # GP reads COMPLETE trials only: it sees a diverged one as complete with the worst value.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    blind = sweep(optuna.samplers.GPSampler(seed=0))
    seeing = sweep(SeesDiverged(optuna.samplers.GPSampler(seed=0)))
    assert failed(blind) >= 15
    assert failed(seeing) <= failed(blind) / 2
    assert seeing.best_value >= blind.best_value - 0.01
    assert not any(t.state == TrialState.PRUNED for t in seeing.trials)
