"""Diverged trials, shown to the sampler as bad results.

A trial whose loss or objective was not finite is FAIL in Optuna and MLflow, with its reason.
Optuna's samplers ignore FAIL trials (optuna/optuna#5664), so TPE never learns that a region
diverges: where its good trials lie next to one (SGD with momentum at lr 0.5-1, say), it keeps
proposing it, since that region holds none of the trials it sees. One benchmark sweep lost 21
of 22 trials that way and stopped at `max_failure_rate` (docs/benchmarks.md).

`SeesDiverged` wraps the configured sampler. When it samples, TPE sees each diverged trial as
PRUNED before its first report: the worst kind of trial TPE knows, which it counts among the
bad ones. Every other sampler sees it COMPLETE with the worst value of the study's completed
trials: Optuna's GP sampler reads only COMPLETE trials, and in the search benchmark it
proposed diverging learning rates until 16 of 26 trials had failed and the sweep stopped at
`max_failure_rate`, on one seed of digits and one of MNIST (docs/benchmarks.md).
Everything else (the study, its plots, MLflow) still sees FAIL.

The sampler also sees the prior trials of a warm start (`_warm_start`), as if they were the
study's own; nothing else does.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

DIVERGED = "diverged"  # user attr (true) of a FAIL trial whose loss or objective was not finite


class _StudyView:
    """The study as the sampler sees it: diverged FAIL trials are PRUNED, or with `worst`
    COMPLETE with the worst completed values; `prior` trials (completed, of another study)
    come first."""

    def __init__(
        self, study: optuna.Study, prior: Sequence[FrozenTrial] = (), worst: bool = False
    ) -> None:
        self._study = study
        self._prior = prior
        self._worst = worst

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        shown_as = TrialState.COMPLETE if self._worst else TrialState.PRUNED
        asked = states
        if states is not None and shown_as in states:
            asked = (*[s for s in TrialState if s in states], TrialState.COMPLETE, TrialState.FAIL)
        found = self._study._get_trials(deepcopy=deepcopy, states=asked, use_cache=use_cache)
        worst = self._worst_values(found) if self._worst else None
        shown = [t for t in self._prior if states is None or t.state in states]
        for trial in found:
            if trial.state == TrialState.FAIL and trial.user_attrs.get(DIVERGED):
                if self._worst and worst is None:
                    continue  # nothing completed yet to call it as bad as
                trial = copy.copy(trial)
                trial.state = shown_as
                if worst is not None:
                    trial.values = worst
            if states is None or trial.state in states:
                shown.append(trial)
        return shown

    def _worst_values(self, trials: list[FrozenTrial]) -> list[float] | None:
        """Each objective's worst value over the completed `trials`; None if there is none."""
        done = [t.values for t in trials if t.state == TrialState.COMPLETE and t.values]
        if not done:
            return None
        directions = self._study.directions
        return [
            (min if d == optuna.study.StudyDirection.MAXIMIZE else max)(v[i] for v in done)
            for i, d in enumerate(directions)
        ]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class SeesDiverged(BaseSampler):
    """`sampler`, sampling as if each diverged trial had been pruned and the `prior` trials
    were the study's own (see the module)."""

    def __init__(self, sampler: BaseSampler, prior: Sequence[FrozenTrial] = ()) -> None:
        self.sampler = sampler
        self.prior = list(prior)
        # TPE counts PRUNED trials among the bad ones; GP (and others) read COMPLETE only.
        self.worst = not isinstance(sampler, optuna.samplers.TPESampler)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        view: Any = _StudyView(study, self.prior, self.worst)
        return self.sampler.infer_relative_search_space(view, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        view: Any = _StudyView(study, self.prior, self.worst)
        return self.sampler.sample_relative(view, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        view: Any = _StudyView(study, self.prior, self.worst)
        return self.sampler.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        view: Any = _StudyView(study, self.prior, self.worst)
        self.sampler.before_trial(view, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(
            study, trial, state, values
        )  # the real study: GridSampler stops it

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
