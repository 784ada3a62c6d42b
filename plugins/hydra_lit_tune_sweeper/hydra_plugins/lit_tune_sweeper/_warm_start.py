"""Warm start (`hydra.sweeper.warm_start`): a new study first tries configurations the user
names (`points`) and the best ones of another study (`from_study`, `top_k`), and its sampler
may learn from that study's completed trials (`as_prior`).

A value outside this search space is never run. A point the user wrote that names a value
outside the space, or a key that is not searched, is refused: it is a typo or a stale config,
and clipping it would run a configuration nobody chose. A trial of another study that does not
fit is left out with a warning: that study may have searched a wider space.

The prior trials are shown to the sampler only (`_diverged.SeesDiverged`), not copied into the
study (Optuna's `add_trials`): a copy would count against n_trials, could become this study's
best with no run or model of its own, and would mix two studies in one history plot.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ._errors import ConfigError

log = logging.getLogger(__name__)

KEY = "hydra.sweeper.warm_start"
ORIGIN = "warm_start"  # user attr of an enqueued trial: where its parameters came from


def _space(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"one of {', '.join(map(str, dist.choices))}"
    numeric: Any = dist  # an Int- or FloatDistribution
    kind = "integers" if isinstance(dist, IntDistribution) else "values"
    scale = ", log scale" if numeric.log else ""
    every = f" in steps of {numeric.step}" if numeric.step not in (None, 1) else ""
    return f"{kind} in [{numeric.low}, {numeric.high}]{every}{scale}"


def inside(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one that `dist` could have sampled."""
    if isinstance(dist, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    numeric: Any = dist  # an Int- or FloatDistribution
    low, high = numeric.low, numeric.high
    if not low <= value <= high:
        return False
    step = numeric.step
    if isinstance(dist, IntDistribution):
        return float(value).is_integer() and (int(value) - low) % dist.step == 0
    if step is None:
        return True
    steps = (value - low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-8)


def points(
    settings: DictConfig, distributions: dict[str, BaseDistribution]
) -> list[dict[str, Any]]:
    """The user's `points`, each a (partial) parameter set of this space; a ConfigError naming
    the first key or value that is not."""
    given = OmegaConf.to_container(settings.points, resolve=True) or []
    checked = []
    for i, point in enumerate(given):  # type: ignore[arg-type]
        if not isinstance(point, dict):
            raise ConfigError(f"{KEY}.points[{i}]={point}: a mapping of parameter to value")
        for name, value in point.items():
            where = f"{KEY}.points[{i}].{name}"
            if name not in distributions:
                searched = ", ".join(sorted(distributions))
                raise ConfigError(f"{where}: not a searched parameter; one of {searched}")
            if not inside(distributions[name], value):
                space = _space(distributions[name])
                raise ConfigError(f"{where}={value}: outside the search space ({space})")
        checked.append(dict(point))
    return checked


def _fits(trial: FrozenTrial, distributions: dict[str, BaseDistribution]) -> str | None:
    """None if `trial` has a value inside this space for each of its parameters; else why not."""
    for name, dist in distributions.items():
        if name not in trial.params:
            return f"it has no {name}"
        if not inside(dist, trial.params[name]):
            return f"{name}={trial.params[name]} is outside {_space(dist)}"
    return None


def source_trials(
    settings: DictConfig, storage: Any, distributions: dict[str, BaseDistribution]
) -> tuple[list[dict[str, Any]], list[FrozenTrial]]:
    """(the top_k parameter sets of study `from_study` that fit this space, best first; with
    `as_prior`, its completed trials that fit, for the sampler); both empty without it."""
    name = settings.from_study
    if not name:
        return [], []
    if settings.top_k < 0:
        raise ConfigError(f"{KEY}.top_k={settings.top_k}: must be >= 0")
    try:
        source = optuna.load_study(study_name=str(name), storage=storage)
    except KeyError:
        raise ConfigError(f"{KEY}.from_study={name}: no such study in this storage") from None
    if len(source.directions) > 1:
        raise ConfigError(f"{KEY}.from_study={name}: a multi-objective study has no top k")
    fitting = []
    for trial in source.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        why = _fits(trial, distributions)
        if why is None:
            fitting.append(trial)
        else:
            log.warning("warm start: trial %d of %s left out: %s", trial.number, name, why)
    maximize = source.direction == optuna.study.StudyDirection.MAXIMIZE
    best = sorted(fitting, key=lambda t: t.values[0], reverse=maximize)[: settings.top_k]
    top = [{k: t.params[k] for k in distributions} for t in best]
    prior = []
    for i, t in enumerate(fitting):
        copy = optuna.trial.create_trial(
            params={k: t.params[k] for k in distributions},
            distributions=distributions,
            values=t.values,
            intermediate_values=t.intermediate_values,
        )
        copy.number = i - len(fitting)  # before this study's own: the oldest, to TPE
        prior.append(copy)
    return top, prior if settings.as_prior else []


def enqueue(
    study: optuna.Study, given: list[dict[str, Any]], top: list[dict[str, Any]], source: str
) -> None:
    """Queue the user's points, then the best of study `source`, in that order (each once)."""
    origins = [f"points[{i}]" for i in range(len(given))]
    origins += [f"top {i + 1} of study {source}" for i in range(len(top))]
    for params, origin in zip([*given, *top], origins, strict=True):
        study.enqueue_trial(params, user_attrs={ORIGIN: origin}, skip_if_exists=True)
    if origins:
        parts = [f"{len(given)} given"] if given else []
        parts += [f"{len(top)} from study {source}"] if top else []
        log.info(
            "Warm start: %d configuration(s) queued first (%s)", len(origins), ", ".join(parts)
        )
