"""The study's side of a sweep: what counts against the budget, asking for a trial within it,
telling a trial's outcome, the progress line and the results file.

Several sweeps may share one study, so everything here reads the budget from the study itself.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ._diverged import DIVERGED

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

log = logging.getLogger(__name__)

FAIL_REASON = "fail_reason"  # user attr of a trial that failed on its own (counts)
INTERRUPTED = "interrupted"  # user attr of a trial stopped by a signal (re-queued, not counted)
SKIPPED = "skipped"  # user attr of a trial asked beyond the budget by a racing worker


def counts(trial: FrozenTrial) -> bool:
    """Whether a finished trial used up budget: a stale trial failed by the heartbeat
    (re-queued instead) or a skipped one did not."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs


def budget_used(study: optuna.Study) -> tuple[int, int, int]:
    """(trials that count, trials running anywhere, failures that count)."""
    trials = study.get_trials(deepcopy=False)
    done = sum(counts(t) for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    failed = sum(counts(t) and t.state == TrialState.FAIL for t in trials)
    return done, running, failed


def trial_id(storage: RDBStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` (Optuna keeps the id of a Trial private)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def ask(study: optuna.Study, storage: RDBStorage, n_trials: int) -> tuple[optuna.Trial, int] | None:
    """A new trial and its id if the budget of `n_trials` allows one, else None. Several
    processes may share the study: the trial's number decides, and one asked beyond the
    budget is closed."""
    optuna.storages.fail_stale_trials(study)
    done, running, _ = budget_used(study)
    if done + running >= n_trials:
        return None
    trial = study.ask()
    tid = trial_id(storage, study, trial.number)
    # A first beat now, not after heartbeat_interval: a trial whose sweep dies before it
    # has one is never found stale, and every later sweep would wait for it.
    storage.record_heartbeat(tid)
    earlier = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < trial.number and (counts(t) or t.state == TrialState.RUNNING)
    ]
    if len(earlier) < n_trials:
        return trial, tid
    trial.set_user_attr(SKIPPED, "over budget")
    study.tell(trial, state=TrialState.FAIL)
    return None


def failure(ret: JobReturn) -> BaseException | None:
    """The error a failed job raised; None for a job that returned. Read from the private
    field: the public `return_value` logs "Error executing job" and raises it, which for a
    pruned trial is noise (tests/test_private_apis.py)."""
    if ret.status != JobStatus.FAILED:
        return None
    error = ret._return_value
    return error if isinstance(error, BaseException) else RuntimeError("the job failed")


def tell(study: optuna.Study, trial: optuna.Trial, ret: JobReturn) -> TrialState:
    """Record the job's outcome in the study and return the trial's state: PRUNED, FAIL (with
    its reason; a non-finite result also marked diverged) or COMPLETE."""
    error, values = failure(ret), None
    if error is None:
        raw = ret.return_value
        values = [float(v) for v in (raw if isinstance(raw, list | tuple) else [raw])]
        if len(values) != len(study.directions):
            error = ValueError(
                f"got {len(values)} objective values for {len(study.directions)} directions"
            )
        elif not all(math.isfinite(v) for v in values):
            error = FloatingPointError(f"objective is not finite: {values}")
    if isinstance(error, optuna.TrialPruned):
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if error is not None:
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        trial.set_user_attr(FAIL_REASON, reason)
        if isinstance(error, FloatingPointError):  # the sampler learns from it (_diverged)
            trial.set_user_attr(DIVERGED, True)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    try:
        study.tell(trial, values=values)
    except RuntimeError as grid_done:  # GridSampler calls Study.stop() after the last point
        if "Study.stop" not in str(grid_done):
            raise
    return TrialState.COMPLETE


def _tally(study: optuna.Study) -> dict[str, int]:
    """Trials that count, by outcome, and those running anywhere."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if counts(t)]
    return {
        "done": len(finished),
        "complete": sum(t.state == TrialState.COMPLETE for t in finished),
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "failed": sum(t.state == TrialState.FAIL for t in finished),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
    }


def _best(study: optuna.Study) -> str:
    try:
        if len(study.directions) > 1:
            return f"{len(study.best_trials)} on the Pareto front"
        return f"{study.best_value:.4g} (trial {study.best_trial.number})"
    except ValueError:
        return "-"


def log_progress(study: optuna.Study, frozen: FrozenTrial, n_trials: int, started: float) -> None:
    """Log one line: the trial's outcome, the budget used, the best so far, how many trials
    run, were pruned and failed, and the time to go."""
    tally = _tally(study)
    state = frozen.state
    if state == TrialState.FAIL:
        outcome = f"FAIL ({frozen.user_attrs.get(FAIL_REASON, '?')})"
    else:
        outcome = f"{state.name} {', '.join(f'{v:.4g}' for v in frozen.values or [])}"
    elapsed = time.monotonic() - started
    remaining = elapsed / max(tally["done"], 1) * max(n_trials - tally["done"], 0)
    log.info(
        "trial %d (%d/%d done): %s; best %s; %d running, %d pruned, %d failed; "
        "%.0fs elapsed, about %.0fs to go",
        frozen.number,
        tally["done"],
        n_trials,
        outcome,
        _best(study),
        tally["running"],
        tally["pruned"],
        tally["failed"],
        elapsed,
        remaining,
    )


def log_summary(study: optuna.Study, elapsed: float) -> None:
    """Log the sweep's last line: the trials by outcome, the time, the best and its params."""
    tally = _tally(study)
    params = ""
    if len(study.directions) == 1 and tally["complete"]:
        params = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in study.best_trial.params.items()
        )
    log.info(
        "Study '%s': %d trials done (%d complete, %d pruned, %d failed) in %.0fs; best %s%s",
        study.study_name,
        tally["done"],
        tally["complete"],
        tally["pruned"],
        tally["failed"],
        elapsed,
        _best(study),
        f": {params}" if params else "",
    )


def write_results(
    study: optuna.Study, sweep_dir: str, stopped: tuple[str, str] | None = None
) -> None:
    """`optimization_results.yaml` in `sweep_dir`, as the stock sweeper writes it: the best
    params and value, or the Pareto front of a multi-objective study; and, for a run that
    stopped early (hydra.sweeper.stop), `stopped: {by: <setting>, reason: <in words>}`."""
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
    if stopped is not None:
        results["stopped"] = {"by": stopped[0], "reason": stopped[1]}
    try:
        if len(study.directions) == 1:
            results |= {"best_params": study.best_trial.params, "best_value": study.best_value}
        else:
            results["solutions"] = [
                {"params": t.params, "values": t.values} for t in study.best_trials
            ]
    except ValueError:
        results["best_params"] = None  # no trial completed
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), f"{sweep_dir}/optimization_results.yaml")
    log.info("Results: %s/optimization_results.yaml", sweep_dir)
