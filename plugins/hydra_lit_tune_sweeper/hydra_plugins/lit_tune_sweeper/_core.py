"""The sweep loop: ask Optuna for a trial, launch it as one Hydra job, tell Optuna the outcome.

Up to n_jobs trials run at once and a new one starts as soon as any ends (no batches). The
study is persistent: n_trials is the budget of the whole study, so a re-run resumes it.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException

# hydra-optuna-sweeper's implementation: the drop-in reads its config language (params,
# custom_search_space, the grid) with its own code; neither is public (the plugin's README,
# tests/test_private_apis.py).
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from . import _launchers, _resources, _warm_start
from ._diverged import SeesDiverged
from ._errors import ConfigError, SweepError, first_line
from ._quiet import quiet
from ._refine import refined_params
from ._report import ParentRun, tracking_uri
from ._signals import STOP, interrupt_on_sigterm, stop_signal, stopped_by
from ._stopping import Stopping
from ._study import (
    FAIL_REASON,
    INTERRUPTED,
    ask,
    budget_used,
    log_progress,
    log_summary,
    tell,
    write_results,
)
from ._trial import OVERRIDES_ATTR, STOP_ATTR
from .storage import SQLITE, check_parallel_sqlite, mask, open_storage

log = logging.getLogger(__name__)


class LitTuneSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
        heartbeat_interval: int,
        grace_period: int,
        refine: DictConfig,
        metric: str | None,
        max_resource: Any,
        gpu_override: str | None,
        resources: DictConfig,
        stop: DictConfig,
        warm_start: DictConfig,
        mlflow: DictConfig,
        verbose: bool = False,
    ) -> None:
        from hydra.utils import instantiate

        def build(node: Any, **kwargs: Any) -> Any:
            allowed = ["optuna.samplers.*", "optuna.pruners.*", "hydra_plugins.*"]
            return instantiate(node, _execution_whitelist_=allowed, **kwargs)

        self._build_sampler = functools.partial(build, sampler)
        self._seed = sampler.get("seed")

        if n_trials < 1 or n_jobs < 1:
            raise ConfigError(
                f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: both must be integers > 0"
            )
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate={max_failure_rate}: must be in [0, 1]"
            )
        super().__init__(
            build(sampler),
            direction,
            storage,
            study_name,
            n_trials,
            n_jobs,
            max_failure_rate,
            custom_search_space,
            params,
        )
        self.pruner = build(pruner)
        self.stopping = Stopping(stop, self._get_directions())
        self.warm_start = warm_start
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.refine = refine
        self.metric = metric
        self.gpu_override = gpu_override
        _resources.check(resources)
        self.resources = resources
        self.verbose = verbose
        self.lock = threading.Lock()
        self.parent: ParentRun | None = None
        self.rdb: RDBStorage | None = None  # the study's storage, once open
        self.gpus = 0  # the GPUs this machine's trial slots spread over (_resources)

    @property
    def cfg(self) -> DictConfig:
        assert self.config is not None, "Hydra calls setup() before sweep()"
        return self.config

    # -- the study ---------------------------------------------------------------------------

    def _interrupted(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial whose sweep died (no heartbeat): Optuna has failed it; queue its parameters
        again, once, and close its MLflow run."""
        RetryFailedTrialCallback(max_retry=1)(study, trial)
        log.warning(
            "trial %d was left running by a killed sweep: failed, queued again", trial.number
        )
        if self.parent is not None:
            self.parent.fail_interrupted(trial.number, also_ended=True)

    def _check_objective(self) -> None:
        if len(self._get_directions()) > 1 and not isinstance(
            self.pruner, optuna.pruners.NopPruner
        ):
            raise ConfigError(
                "hydra/sweeper/pruner: Optuna cannot prune a multi-objective study; use none"
            )

    def _storage_url(self) -> str:
        """The study's storage URL; a relative SQLite path (the default: optuna.db) taken from
        the directory the sweep started in, since jobs may run in folders of their own."""
        url = str(self.storage or f"{SQLITE}optuna.db")
        if url.startswith(SQLITE):
            path = Path(self.cfg.hydra.runtime.cwd, url.removeprefix(SQLITE)).resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"{SQLITE}{path}"
        return url

    def _study_name(self) -> str:
        if self.study_name:
            if not re.fullmatch(r"[\w.-]+", str(self.study_name)):
                raise ConfigError(
                    f"hydra.sweeper.study_name={self.study_name}: use letters, digits, _ . - only"
                )
            return str(self.study_name)
        prefix = self.cfg.hydra.sweeper.mlflow.experiment or self.cfg.hydra.job.name
        return f"{prefix}-{datetime.now():%Y-%m-%d_%H-%M-%S}"

    def _open_study(
        self, url: str, name: str, prior: list[FrozenTrial] | None = None
    ) -> optuna.Study:
        self.rdb = storage = open_storage(
            url,
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace_period,
            heartbeat_stale_trial_callback=self._interrupted,
        )
        directions = self._get_directions()
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=self.sampler,
            pruner=self.pruner,
            directions=directions,  # type: ignore[arg-type]
            load_if_exists=True,
        )
        if (
            study.trials
            and self._seed is not None
            and not isinstance(self.sampler, functools.partial | optuna.samplers.GridSampler)
        ):
            # A resumed (or shared) study must not replay the random draws its first run made.
            study.sampler = self.sampler = self._build_sampler(seed=self._seed + len(study.trials))
        study.sampler = SeesDiverged(study.sampler, prior or [])
        stored = [d.name.lower() for d in study.directions]
        if stored != [d.lower() for d in directions]:
            raise ConfigError(
                f"hydra.sweeper.direction={directions}: study '{name}' was created with {stored}"
            )
        return study

    def _search_space(
        self, arguments: list[str]
    ) -> tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]:
        self._process_searchspace_config()
        params = self._parse_sweeper_params_config()
        if self.refine.from_study:
            coarse = optuna.load_study(
                study_name=self.refine.from_study, storage=open_storage(self._storage_url())
            )
            refined = refined_params(coarse, self.refine.top_k)
            log.info("Refined search space from study '%s': %s", coarse.study_name, refined)
            params = [f"{k}={v}" for k, v in refined.items()]
        try:
            distributions, fixed, fixed_overrides = create_params_from_overrides(params + arguments)
        except (HydraException, ValueError, AssertionError):
            for one in params + arguments:  # name the override at fault
                try:
                    create_params_from_overrides([one])
                except (HydraException, ValueError, AssertionError) as error:
                    raise ConfigError(f"{one}: {first_line(error)}") from error
            raise
        for name in fixed:
            distributions.pop(name, None)
        if isinstance(self.sampler, functools.partial):  # GridSampler needs the grid
            grid = {k: self._to_grid_sampler_choices(d) for k, d in distributions.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        return distributions, fixed, fixed_overrides

    def _warm_start_from(
        self, url: str, distributions: dict[str, BaseDistribution]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[FrozenTrial]]:
        """(the user's points, the other study's top k, its trials for the sampler), checked
        against the search space before the study is opened."""
        settings = self.warm_start
        if not (settings.points or settings.from_study):
            return [], [], []
        if isinstance(self.sampler, optuna.samplers.GridSampler):
            raise ConfigError(f"{_warm_start.KEY}: the grid sampler runs every point anyway")
        given = _warm_start.points(settings, distributions)
        storage = open_storage(url) if settings.from_study else None
        top, prior = _warm_start.source_trials(settings, storage, distributions)
        return given, top, prior

    # -- one trial ---------------------------------------------------------------------------

    def _launch(self, overrides: Sequence[str], number: int) -> JobReturn:
        assert self.launcher is not None
        return self.launcher.launch([overrides], initial_job_idx=number)[0]

    # -- the sweep ---------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        try:
            distributions, fixed, fixed_overrides = self._search_space(arguments)
        except ConfigError:
            raise
        except (HydraException, ValueError, AssertionError) as error:
            raise ConfigError(f"hydra.sweeper.params: {first_line(error)}") from error
        self._check_objective()
        if not self.verbose:
            quiet(self.launcher)
        parallel = self.launcher.__class__.__name__ != "BasicLauncher"  # in-process: one at a time
        slots = self.n_jobs if parallel else 1
        if self.n_jobs > 1 and not parallel:
            log.warning(
                "n_jobs=%d needs a parallel launcher (hydra/launcher=joblib); running "
                "one trial at a time",
                self.n_jobs,
            )
        url, name = self._storage_url(), self._study_name()
        stores = {"hydra.sweeper.storage": url}
        settings = self.cfg.hydra.sweeper.mlflow
        if settings.parent_run:
            uri = tracking_uri(settings.tracking_uri, self.cfg.hydra.runtime.cwd)
            stores["hydra.sweeper.mlflow.tracking_uri"] = uri
        check_parallel_sqlite(stores, slots > 1)
        self.gpus = _resources.gpus_to_share(
            self.launcher, self.gpu_override, slots, self.resources.trials_per_gpu
        )
        given, top, prior = self._warm_start_from(url, distributions)
        study = self._open_study(url, name, prior)
        if not study.trials:  # a new study: a resumed one has had its warm start
            _warm_start.enqueue(study, given, top, str(self.warm_start.from_study))
        log.info(
            "Study '%s' in %s: %d trials in all, %d at a time, sampler %s, pruner %s",
            name,
            mask(url),
            self.n_trials,
            self.n_jobs,
            type(self.sampler).__name__,
            type(self.pruner).__name__,
        )
        _launchers.start(self.launcher)
        self.parent = parent = ParentRun.open(self.cfg, study, url, distributions)
        self._pin("sweeper", study_name=name, storage=url)
        if parent is not None:  # through Hydra's own hydra.job.env_set
            self._pin("job.env_set", **parent.job_env(study.study_name))
        status, started = "FAILED", time.monotonic()
        try:
            threads = _resources.threads_per_trial(self.resources.threads, slots, self.launcher)
            with interrupt_on_sigterm(), _resources.thread_limit(threads):
                self._run(study, slots, distributions, fixed, fixed_overrides)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            log.error(
                "Interrupted by %s. Resume with the same command and hydra.sweeper.study_name=%s",
                stopped_by(),
                name,
            )
        finally:
            stopped = self.stopping.why
            log_summary(study, time.monotonic() - started)
            write_results(study, str(self.cfg.hydra.sweep.dir), stopped)
            if parent is not None:
                parent.close(study, status, stopped)
        if status == "KILLED":
            raise SystemExit(128 + stop_signal())  # as a shell reports a signal: 130, 143

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        # Launchers resolve their own config in a copy (submitit: its job folders under
        # ${hydra.sweep.dir}), where ${now:} reads the clock again: the sweep dir, as a value.
        self._pin("sweep", dir=str(config.hydra.sweep.dir))
        if "n_jobs" in config.hydra.launcher:  # joblib: one worker process per trial slot
            self._pin("launcher", n_jobs=self.n_jobs)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def _pin(self, node: str, **values: Any) -> None:
        """Set hydra.<node> values in the config every job is composed from, as if given on the
        command line: Hydra requires a job's hydra.sweeper and hydra.launcher to equal the
        sweep's, and a run finds its trial through hydra.sweeper."""
        target = OmegaConf.select(self.cfg.hydra, node)
        recorded = self.cfg.hydra.overrides.hydra
        with read_write(target), open_dict(target), read_write(recorded):
            for key, value in values.items():
                new = key not in target  # env_set: a key to add
                target[key] = value
                text = _quote(value) if isinstance(value, str) else value
                recorded.append(f"{'++' if new else ''}hydra.{node}.{key}={text}")

    def _run(
        self,
        study: optuna.Study,
        slots: int,
        distributions: dict[str, BaseDistribution],
        fixed: dict[str, Any],
        fixed_overrides: list[str],
    ) -> None:
        running: dict[Future[JobReturn], tuple[optuna.Trial, int]] = {}
        stop = threading.Event()
        beating = threading.Thread(target=self._heartbeat, args=(study, running, stop), daemon=True)
        beating.start()
        try:
            with ThreadPoolExecutor(max_workers=slots) as pool:
                try:  # inside the pool: leaving it waits for the running trials
                    self._trials(study, pool, running, slots, distributions, fixed, fixed_overrides)
                except KeyboardInterrupt:
                    self._stop_running(study, running)
                    raise
        finally:
            stop.set()
        _, _, failed = budget_used(study)
        if failed > self.max_failure_rate * self.n_trials:
            first = next(t for t in study.trials if FAIL_REASON in t.user_attrs)
            raise SweepError(
                f"{failed} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate} of n_trials={self.n_trials}; the first, trial "
                f"{first.number}: {first.user_attrs[FAIL_REASON]}"
            )

    def _trials(
        self,
        study: optuna.Study,
        pool: ThreadPoolExecutor,
        running: dict[Future[JobReturn], tuple[optuna.Trial, int]],
        slots: int,
        distributions: dict[str, BaseDistribution],
        fixed: dict[str, Any],
        fixed_overrides: list[str],
    ) -> None:
        """Keep `slots` trials running, a new one as soon as one ends, until the budget is
        used or too many have failed."""
        started = time.monotonic()
        too_many_failures = False
        free, taken = list(range(slots)), dict[Future[JobReturn], int]()  # slot of each trial
        self.stopping.begin(study)
        assert self.rdb is not None
        while True:
            while len(running) < slots and not too_many_failures and not self._stops(study):
                asked = ask(study, self.rdb, self.n_trials)
                if asked is None:
                    break
                trial, trial_id = asked
                (overrides,) = self._configure_trials(
                    [trial], distributions, fixed, fixed_overrides
                )
                # The trial's whole command line, for rerunning it (`python app.py <these>`).
                trial.set_user_attr(OVERRIDES_ATTR, [mask(str(o)) for o in overrides])
                slot = free.pop(0)
                gpu = _resources.gpu_override(slot, self.gpus, self.gpu_override)
                overrides = [*overrides, *gpu]
                with self.lock:
                    future = pool.submit(self._launch, overrides, trial.number)
                    running[future], taken[future] = (trial, trial_id), slot
            if not running:
                done, others, _ = budget_used(study)
                if too_many_failures or self.stopping.why or not others or done >= self.n_trials:
                    return
                time.sleep(self.heartbeat_interval)  # another worker's trials, or stale
                continue
            finished: set[Future[JobReturn]] = set()
            while not finished:  # in steps, so that Ctrl-C is seen at once
                finished, _ = wait(list(running), 1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                # Told before it leaves `running`: a Ctrl-C in between finds it there.
                trial, trial_id = running[future]
                tell(study, trial, _launchers.job_return(future))
                with self.lock:
                    running.pop(future)
                free.append(taken.pop(future))
                frozen = self.rdb.get_trial(trial_id)
                self.stopping.saw(frozen)
                if self.parent is not None:
                    self._record(study, frozen)
                log_progress(study, frozen, self.n_trials, started)
            _, _, failed = budget_used(study)
            too_many_failures = failed > self.max_failure_rate * self.n_trials

    def _stops(self, study: optuna.Study) -> bool:
        """Whether this run launches no more trials (hydra.sweeper.stop); said once."""
        if self.stopping.why is not None:
            return True
        why = self.stopping.reason(study)
        if why is not None:
            log.info("Stopping early, %s: %s; the running trials finish", *why)
        return why is not None

    def _stop_running(
        self, study: optuna.Study, running: dict[Future[JobReturn], tuple[optuna.Trial, int]]
    ) -> None:
        """Ctrl-C or SIGTERM: stop the running trials at their next batch (STOP for those in
        this process; those elsewhere read the request from the study within
        heartbeat_interval), wait for them, and record each: one that finished meanwhile as
        usual, the others FAIL (not counted against the budget), their parameters queued
        again for the resume, their MLflow runs closed."""
        STOP.set()
        log.warning(
            "%s: stopping %d running trial(s) at their next batch", stopped_by(), len(running)
        )
        assert self.rdb is not None
        for trial, trial_id in running.values():
            try:
                self.rdb.set_trial_system_attr(trial_id, STOP_ATTR, stop_signal())
            except Exception as error:  # those with the signal stop anyway
                log.warning("cannot ask trial %d to stop: %s", trial.number, first_line(error))
        wait(list(running))
        for future, (trial, trial_id) in running.items():
            if self.rdb.get_trial(trial_id).state.is_finished():
                continue  # told just before the signal
            ret = _launchers.job_return(future)
            if ret.status == JobStatus.COMPLETED:
                tell(study, trial, ret)
                if self.parent is not None:
                    self._record(study, self.rdb.get_trial(trial_id))
                continue
            params = trial.params
            trial.set_user_attr(INTERRUPTED, stopped_by())
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(params)
            if self.parent is not None:
                self.parent.fail_interrupted(trial.number)

    def _heartbeat(
        self,
        study: optuna.Study,
        running: dict[Future[JobReturn], tuple[optuna.Trial, int]],
        stop: threading.Event,
    ) -> None:
        storage = self.rdb
        assert storage is not None
        while not stop.wait(self.heartbeat_interval):
            with self.lock:
                trial_ids = [trial_id for _, trial_id in running.values()]
            for trial_id in trial_ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as error:  # a missed beat must not end the sweep
                    log.debug("heartbeat failed: %s", error)

    def _record(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        """The trial's outcome in MLflow; a failure there must not end the sweep."""
        assert self.parent is not None and self.rdb is not None
        try:
            self.parent.record_trial(study, frozen, self.metric)
        except Exception as error:
            log.warning("trial %d: MLflow: %s", frozen.number, first_line(error))


def _quote(value: str) -> str:
    """A Hydra override value that survives the override grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
