"""Nests every MLflow run a trial's job starts under the sweep's parent run.

An MLflow run-context provider (entry point `mlflow.run_context_provider`): MLflow asks it for
tags whenever a run is created through `mlflow.start_run()` or Lightning's `MLFlowLogger`, in
any process. In a job the sweeper launched, it adds the parent run, the study and the trial's
number, which the sweeper set as the job's environment (`hydra.job.env_set`), so that it also
holds in the processes a job starts (DDP). Tags the app gives itself win.
"""

from __future__ import annotations

import os

from mlflow.tracking.context.abstract_context import RunContextProvider

PARENT_RUN_ENV = "LIT_TUNE_PARENT_RUN_ID"
STUDY_ENV = "LIT_TUNE_STUDY_NAME"
TRIAL_ENV = "LIT_TUNE_TRIAL_NUMBER"


class TrialRunContext(RunContextProvider):
    """The tags that put a trial's runs under its sweep's parent run."""

    def in_context(self) -> bool:
        return all(os.environ.get(k) for k in (PARENT_RUN_ENV, STUDY_ENV, TRIAL_ENV))

    def tags(self) -> dict[str, str]:
        study, number = os.environ[STUDY_ENV], os.environ[TRIAL_ENV]
        return {
            "mlflow.parentRunId": os.environ[PARENT_RUN_ENV],
            "mlflow.runName": f"{study}-{number}",
            "optuna.study_name": study,
            "optuna.trial_number": number,
        }
