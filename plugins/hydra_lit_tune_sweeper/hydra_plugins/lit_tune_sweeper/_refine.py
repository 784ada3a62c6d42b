"""Coarse-to-fine: a narrower search space around the best trials of a finished study.

Numbers get the range the top-k trials span, widened by a quarter of that span on each side
(in log space for log-scaled parameters) and clipped to the coarse bounds; categories keep
the values that won. The result is written in the sweeper's own `params` language.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ._errors import ConfigError

MARGIN = 0.25


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best completed trials (the Pareto front for several objectives)."""
    completed = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    if not completed:
        raise ConfigError(
            f"hydra.sweeper.refine.from_study={study.study_name}: it has no completed trial"
        )
    if len(study.directions) > 1:
        return study.best_trials
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(completed, key=lambda t: t.values[0], reverse=reverse)[:k]


def _widen(values: list[float], low: float, high: float, log: bool) -> tuple[float, float]:
    f, inv = (math.log, math.exp) if log else ((lambda x: x), (lambda x: x))
    lo, hi = f(min(values)), f(max(values))
    span = (hi - lo) or (f(high) - f(low)) * 0.1
    return max(low, inv(lo - MARGIN * span)), min(high, inv(hi + MARGIN * span))


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def refined_params(study: optuna.Study, k: int) -> dict[str, str]:
    """{param: sweep expression} around the top-k trials of `study`."""
    best = top_trials(study, k)
    params: dict[str, str] = {}
    for name, dist in best[0].distributions.items():
        values = [t.params[name] for t in best if name in t.params]
        if isinstance(dist, CategoricalDistribution):
            kept = [c for c in dist.choices if c in values]
            params[name] = (
                _literal(kept[0])
                if len(kept) == 1
                else f"choice({', '.join(_literal(c) for c in kept)})"
            )
        elif isinstance(dist, IntDistribution):
            lo, hi = _widen(values, dist.low, dist.high, dist.log)
            step = dist.step
            lo_i = dist.low + math.floor((lo - dist.low) / step) * step
            hi_i = dist.low + math.ceil((hi - dist.low) / step) * step
            if step > 1:
                params[name] = f"range({lo_i}, {hi_i + step}, {step})"
            else:
                expr = f"int(interval({lo_i}, {hi_i}))"
                params[name] = f"tag(log, {expr})" if dist.log else expr
        elif isinstance(dist, FloatDistribution):
            lo, hi = _widen(values, dist.low, dist.high, dist.log)
            expr = f"interval({lo!r}, {hi!r})"
            params[name] = f"tag(log, {expr})" if dist.log else expr
    return params
