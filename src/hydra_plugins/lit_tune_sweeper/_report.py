"""The sweep's MLflow parent run: opened before the first trial, summarised after the last."""

from __future__ import annotations

import html
import logging
import random
import re
import time
import warnings
from typing import Any

import optuna
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution

from lit_tune.config import first_line
from lit_tune.trial import PARENT_RUN_ATTR, sqlite_lock

log = logging.getLogger(__name__)
MLFLOW_LOGGER = "lit_tune.tracking.mlflow_logger"


class ParentRun:
    """One MLflow run per study; its trials' runs nest under it, in any process."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(
        cls, config: DictConfig, study: optuna.Study, space: dict[str, BaseDistribution]
    ) -> ParentRun | None:
        """Create the parent run, or reopen the one a resumed study already has; None when
        the runs are not logged to MLflow."""
        logger = OmegaConf.select(config, "logger")
        if not logger or logger.get("_target_") != MLFLOW_LOGGER:
            return None
        from lit_tune.tracking import mlflow_experiment

        # The same store and experiment the trials' MLFlowLogger will use, made before any
        # trial starts (processes that create one experiment at once race).
        client, experiment_id = mlflow_experiment(**logger)
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            log.info("MLflow parent run %s reopened", run_id)
            return cls(client, run_id)
        return cls(client, cls._create(client, experiment_id, config, study, space))

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
        # Sweeps started at once on one study each made a parent: all keep the first one.
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
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        return list(
            self.client.search_runs(
                [experiment_id],
                filter_string=(
                    f"tags.mlflow.parentRunId = '{self.run_id}' "
                    f"and tags.`optuna.trial_number` = '{number}'"
                ),
            )
        )

    def close(self, study: optuna.Study, status: str) -> None:
        """Log the best trial, the trials table and Optuna's plots; register the best model.
        Every worker of a shared study does this as it ends. On SQLite they take turns
        through the store's lock file; elsewhere MLflow's tag insert can race another
        worker's (UNIQUE constraint), and a second try updates what the first inserted."""
        try:
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
        completed = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
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
        """Register the best trial's best checkpoint as a version of model `<study name>`."""
        runs = self._trial_runs(best.number)
        if not runs:
            return
        run = runs[0]
        name = re.sub(r"[^\w.-]", "_", study.study_name)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        versions = self.client.search_model_versions(
            f"name = '{name}' and run_id = '{run.info.run_id}'"
        )
        if not versions:
            version = self.client.create_model_version(
                name, source=f"{run.info.artifact_uri}/best", run_id=run.info.run_id
            )
            log.info(
                "Registered model %s version %s (trial %d)", name, version.version, best.number
            )
