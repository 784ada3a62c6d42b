"""The sweep's MLflow parent run: opened before the first trial, given each trial's outcome
as it ends (a run of its own where the app logged none), summarised after the last."""

from __future__ import annotations

import html
import logging
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from ._errors import ConfigError, first_line
from ._study import FAIL_REASON
from ._trial import PARENT_RUN_ATTR
from .storage import SQLITE, mask, sqlite_lock, store_lock

log = logging.getLogger(__name__)

# How each outcome ends a trial's MLflow run; its tag `outcome` is the Optuna state.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def tracking_uri(setting: str | None, start_dir: str) -> str:
    """The sweep's MLflow store: `setting`, else MLflow's default; a relative SQLite path
    taken from `start_dir` (jobs may run in folders of their own)."""
    import mlflow

    uri = setting or mlflow.get_tracking_uri()
    if uri.startswith(SQLITE):
        path = Path(start_dir, uri.removeprefix(SQLITE)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"{SQLITE}{path}"
    if "://" not in uri:  # a folder: MLflow's file store
        return str(Path(start_dir, uri).resolve())
    return uri


def experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created if new (under the store's lock: processes that
    create one experiment at once race). A local `artifact_location` is a folder; a tracking
    server keeps artifacts where it was told to (`mlflow server --artifacts-destination`)
    unless given a URI, so that trials on other machines can write them."""
    if artifact_location and "://" not in artifact_location:
        remote = client.tracking_uri.startswith(("http://", "https://"))
        artifact_location = None if remote else Path(artifact_location).resolve().as_uri()
    with store_lock(client.tracking_uri):
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(client.create_experiment(name, artifact_location))


class ParentRun:
    """One MLflow run per study; its trials' runs nest under it, in any process."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        experiment_id: str,
        register: str | None = None,
        alias: str = "champion",
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.register = register  # the name of the MLflow model a trial logs, if any
        self.alias = alias

    @classmethod
    def open(
        cls,
        config: DictConfig,
        study: optuna.Study,
        storage_url: str,
        space: dict[str, BaseDistribution],
    ) -> ParentRun | None:
        """Create the parent run, or reopen the one the study (in `storage_url`) already has;
        None when `hydra.sweeper.mlflow.parent_run` is false."""
        settings = config.hydra.sweeper.mlflow
        if not settings.parent_run:
            return None
        from mlflow import MlflowClient

        uri = tracking_uri(settings.tracking_uri, config.hydra.runtime.cwd)
        try:
            with store_lock(uri):  # making a client may create the store's tables
                client = MlflowClient(uri)
            experiment = experiment_id(
                client, settings.experiment or config.hydra.job.name, settings.artifact_location
            )
        except MlflowException as error:
            raise ConfigError(
                f"hydra.sweeper.mlflow.tracking_uri={mask(uri)}: {mask(first_line(error))}"
            ) from None
        # Sweeps started at once on one study (workers sharing it) each find no parent: the
        # study storage's lock lets one make it and the others find it. Not nested in the
        # MLflow store's lock above, which may be the same database (the same lock).
        with store_lock(storage_url):
            run_id = study.user_attrs.get(PARENT_RUN_ATTR)
            if run_id is not None:
                client.update_run(run_id, status="RUNNING")
                log.info("MLflow parent run %s reopened", run_id)
            else:
                run_id = cls._create(client, experiment, config, study, space)
        return cls(client, run_id, experiment, settings.register, settings.alias)

    def job_env(self, study_name: str) -> dict[str, str]:
        """The environment of a trial's job: MLflow's fluent API logs to the sweep's store and
        experiment, and every run it starts nests here (_mlflow_context). The trial's number
        is its job's, resolved in each job."""
        from ._mlflow_context import PARENT_RUN_ENV, STUDY_ENV, TRIAL_ENV

        return {
            "MLFLOW_TRACKING_URI": self.client.tracking_uri,
            "MLFLOW_EXPERIMENT_ID": self.experiment_id,
            PARENT_RUN_ENV: self.run_id,
            STUDY_ENV: study_name,
            TRIAL_ENV: "${hydra.job.num}",
        }

    def record_trial(self, study: optuna.Study, trial: FrozenTrial, metric: str | None) -> None:
        """Give trial `trial` its outcome in MLflow: its runs (those the app started) get the
        tag `outcome` (the Optuna state), the matching status and the trial's params where
        they lack them; an app that logged no run gets one, with the params and value."""
        state = trial.state.name
        reason = trial.user_attrs.get(FAIL_REASON)
        runs = self._trial_runs(trial.number)
        if not runs:
            tags = {
                "mlflow.parentRunId": self.run_id,
                "mlflow.runName": f"{study.study_name}-{trial.number}",
                "optuna.study_name": study.study_name,
                "optuna.trial_number": str(trial.number),
            }
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            for key, value in trial.params.items():
                self.client.log_param(run_id, key, str(value)[:6000])
            names = [metric or "objective"]
            names += [f"{names[0]}_{i}" for i in range(1, len(trial.values or []))]
            for name, value in zip(names, trial.values or [], strict=False):
                self.client.log_metric(run_id, name, value)
            for step, value in sorted(trial.intermediate_values.items()):
                self.client.log_metric(run_id, f"{names[0]}_reported", value, step=step)
            runs = [self.client.get_run(run_id)]
        for run in runs:
            for key, value in trial.params.items():  # comparable in the UI, however it logged
                if key not in run.data.params:
                    self.client.log_param(run.info.run_id, key, str(value)[:6000])
            self.client.set_tag(run.info.run_id, "outcome", state)
            if reason and state == "FAIL":
                self.client.set_tag(run.info.run_id, "fail_reason", reason[:5000])
            if run.info.status != RUN_STATUS[state]:
                self.client.set_terminated(run.info.run_id, RUN_STATUS[state])

    @staticmethod
    def _create(
        client: Any,
        experiment_id: str,
        config: DictConfig,
        study: optuna.Study,
        space: dict[str, BaseDistribution],
    ) -> str:
        name = study.study_name
        tags = {"lit_tune.role": "sweep", "optuna.study_name": name}
        mine = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        # Where the study's storage has no lock (MySQL), sweeps started at once on one study
        # may each make a parent: all keep the first one that they see.
        # (Study names are checked at sweep start: no quotes.)
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`optuna.study_name` = '{name}' and tags.`lit_tune.role` = 'sweep'",
        )
        first = min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        if first != mine:
            client.delete_run(mine)
            return str(first)
        sweeper = config.hydra.sweeper
        params: dict[str, Any] = {
            "study_name": name,
            "sampler": type(getattr(study.sampler, "sampler", study.sampler)).__name__,
            "pruner": type(study.pruner).__name__,
            "directions": ",".join(d.name.lower() for d in study.directions),
            "n_trials": sweeper.n_trials,
            "n_jobs": sweeper.n_jobs,
            **{f"space.{key}": repr(dist) for key, dist in space.items()},
        }
        for group in ("sampler", "pruner"):  # their settings, as resolved: max_resource, seed...
            settings = OmegaConf.to_container(sweeper[group], resolve=True)
            assert isinstance(settings, dict)
            params.update({f"{group}.{k!s}": v for k, v in settings.items() if k != "_target_"})
        for key, value in params.items():
            client.log_param(mine, key, str(value)[:6000])
        study.set_user_attr(PARENT_RUN_ATTR, mine)
        log.info("MLflow parent run %s (experiment %s)", mine, experiment_id)
        return str(mine)

    def fail_interrupted(self, number: int, *, also_ended: bool = False) -> None:
        """Close the MLflow run of trial `number` FAILED where it is still RUNNING; with
        `also_ended`, also where the trial ended it but its sweep was killed before telling the
        study, which has failed the trial and queued its parameters again."""
        for run in self._trial_runs(number):
            if run.info.status == "RUNNING" or (also_ended and run.info.status != "FAILED"):
                self.client.set_tag(run.info.run_id, "outcome", "FAIL")
                self.client.set_tag(
                    run.info.run_id, "fail_reason", "interrupted: the sweep running it was killed"
                )
                self.client.set_terminated(run.info.run_id, "FAILED")

    def _trial_runs(self, number: int) -> list[Any]:
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=(
                    f"tags.mlflow.parentRunId = '{self.run_id}' "
                    f"and tags.`optuna.trial_number` = '{number}'"
                ),
            )
        )

    def close(
        self, study: optuna.Study, status: str, stopped: tuple[str, str] | None = None
    ) -> None:
        """Log the best trial, the trials table and Optuna's plots; register the best model;
        tag why the run stopped early (`stopped_by`, `stop_reason`), if it did.
        Every worker of a shared study does this as it ends. On SQLite they take turns
        through the store's lock file; elsewhere MLflow's tag insert can race another
        worker's (UNIQUE constraint), and a second try updates what the first inserted."""
        try:
            if stopped is not None:
                self.client.set_tag(self.run_id, "stopped_by", stopped[0])
                self.client.set_tag(self.run_id, "stop_reason", stopped[1])
            for attempt in (1, 2, 3):
                try:
                    with sqlite_lock(self.client.tracking_uri):
                        self._summarise(study)
                    break
                except MlflowException as error:
                    if attempt == 3:
                        raise
                    log.info("Parent run summary raced another worker (%s)", first_line(error))
                    time.sleep(random.uniform(0.5, 2.0))
        finally:
            self.client.set_terminated(self.run_id, status)

    def _summarise(self, study: optuna.Study) -> None:
        frame = study.trials_dataframe()
        self.client.log_text(self.run_id, frame.to_csv(index=False), "trials.csv")
        completed = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
        if not completed:
            return
        if len(study.directions) == 1:
            best = study.best_trial
            self.client.log_metric(self.run_id, "best_value", best.values[0])
            self.client.set_tag(self.run_id, "best_trial", str(best.number))
            for name, value in best.params.items():
                self.client.set_tag(self.run_id, f"best.{name}", str(value))
            self._register(study, best)
        self._plots(study)

    def _plots(self, study: optuna.Study) -> None:
        """Optuna's plots: each as a PNG, and all in one interactive page, plots/optuna.html
        (plotly.js inlined once, so that it opens offline and inside the MLflow UI)."""
        import matplotlib.pyplot as plt
        from optuna import visualization as interactive
        from optuna.visualization import matplotlib as static

        names = ["optimization_history", "param_importances", "parallel_coordinate"]
        if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            names.append("intermediate_values")
        if len(study.directions) > 1:
            names = ["pareto_front"]
        pages: list[str] = []
        for name in names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna marks these experimental
                    axes = getattr(static, f"plot_{name}")(study)
                    page = getattr(interactive, f"plot_{name}")(study)
                figure = getattr(axes, "figure", None) or axes.flat[0].figure
                self.client.log_figure(self.run_id, figure, f"plots/{name}.png")
                pages.append(page.to_html(full_html=False, include_plotlyjs=not pages))
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                log.info("No %s plot: %s", name, error)  # e.g. too few trials yet
            finally:
                plt.close("all")
        if pages:
            title = f"<title>{html.escape(study.study_name)}</title>"
            body = "\n".join(pages)
            self.client.log_text(
                self.run_id,
                f'<!DOCTYPE html><html><head><meta charset="utf-8">{title}</head>'
                f"<body>{body}</body></html>",
                "plots/optuna.html",
            )

    def _register(self, study: optuna.Study, best: optuna.trial.FrozenTrial) -> None:
        """Register the MLflow model named `register` that the best trial's run logged as a
        version of the model named after the study (once), and point `alias` at it."""
        runs = self._trial_runs(best.number)
        if self.register is None or not runs:
            return
        run_id = runs[0].info.run_id
        logged = self.client.search_logged_models(
            experiment_ids=[self.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{self.register}'",
        )
        if not logged:
            log.info(
                "No model registered: trial %d logged none named %r", best.number, self.register
            )
            return
        name = re.sub(r"[^\w.-]", "_", study.study_name)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        versions = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if versions:
            version = versions[0]
        else:
            model = logged[0]
            # MLflow's registry resolves a models:/ source through the fluent API's tracking
            # URI, not this client's: in a sweep whose jobs ran in other processes (joblib,
            # Ray, SLURM) this process has none set, and the logged model is "not found".
            import mlflow

            previous = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(self.client.tracking_uri)
            try:
                version = self.client.create_model_version(
                    name,
                    source=model.model_uri,
                    run_id=run_id,
                    tags={"optuna.trial_number": str(best.number), "value": str(best.values[0])},
                    model_id=model.model_id,
                )
            finally:
                mlflow.set_tracking_uri(previous)
            log.info(
                "Registered model %s version %s (trial %d)", name, version.version, best.number
            )
        self.client.set_registered_model_alias(name, self.alias, version.version)
