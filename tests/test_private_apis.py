"""The private APIs of Optuna, Hydra and its plugins that the sweeper still uses, each held to
what the sweeper needs of it: an upgrade that breaks one fails here, by name, before it breaks
a sweep (the plugin's README, "Private APIs")."""

from __future__ import annotations

import inspect
import logging

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper._diverged import DIVERGED, SeesDiverged
from hydra_plugins.lit_tune_sweeper._study import failure


def test_hydra_optuna_sweeper_parses_the_override_grammar():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    space, fixed, fixed_overrides = create_params_from_overrides(
        [
            "x=interval(0,1)",
            "n=range(1,5)",
            "y=choice(a,b)",
            "lr=tag(log, interval(1e-4, 1))",
            "z=3",
        ]
    )
    assert space["x"] == FloatDistribution(0.0, 1.0)
    assert space["n"] == IntDistribution(1, 4)
    assert space["y"] == CategoricalDistribution(["a", "b"])
    assert space["lr"] == FloatDistribution(1e-4, 1.0, log=True)
    assert fixed == {"z": "3"} and fixed_overrides == []


def test_hydra_optuna_sweeper_impl_has_what_the_sweeper_inherits():
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    init = list(inspect.signature(OptunaSweeperImpl.__init__).parameters)
    assert init == [
        "self", "sampler", "direction", "storage", "study_name", "n_trials", "n_jobs",
        "max_failure_rate", "custom_search_space", "params",
    ]  # fmt: skip
    params = OmegaConf.create({"x": "interval(0, 1)", "c": "choice(1, 2)"})
    impl = OptunaSweeperImpl(
        optuna.samplers.RandomSampler(), "maximize", None, "s", 3, 1, 0.5, None, params
    )
    assert impl._get_directions() == ["maximize"]
    impl._process_searchspace_config()  # no custom_search_space: nothing to do
    assert sorted(impl._parse_sweeper_params_config()) == ["c=choice(1, 2)", "x=interval(0, 1)"]
    assert list(impl._to_grid_sampler_choices(CategoricalDistribution([1, 2]))) == [1, 2]
    study = optuna.create_study()
    trial = study.ask()
    space = {"x": FloatDistribution(0.0, 1.0)}
    ((x, z, w),) = impl._configure_trials([trial], space, {"z": "3"}, ["+w=1"])
    assert x.startswith("x=") and 0.0 <= float(x.removeprefix("x=")) <= 1.0
    assert (z, w) == ("z=3", "+w=1")


def test_a_failed_job_return_holds_its_error_where_the_sweeper_reads_it(
    caplog: pytest.LogCaptureFixture,
):
    ret = JobReturn(status=JobStatus.FAILED)
    ret.return_value = optuna.TrialPruned("at step 2")
    with caplog.at_level(logging.ERROR):
        error = failure(ret)
    assert isinstance(error, optuna.TrialPruned)
    assert "Error executing job" not in caplog.text  # what the public getter would log
    assert failure(JobReturn(status=JobStatus.COMPLETED, _return_value=1.0)) is None


def test_a_trial_reopened_by_its_id_reports_and_reads_its_params():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, pruner=optuna.pruners.NopPruner())
    asked = study.ask({"lr": FloatDistribution(1e-3, 1.0)})
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, asked.number)
    reopened = optuna.trial.Trial(study, trial_id)  # what a job does in its own process
    assert reopened.number == asked.number and reopened.params == asked.params
    reopened.report(0.5, step=1)
    assert storage.get_trial(trial_id).intermediate_values == {1: 0.5}
    assert reopened.should_prune() is False


def test_samplers_read_trials_through_study_get_trials():
    """SeesDiverged shows samplers a study whose `_get_trials` turns diverged trials PRUNED;
    that works only while samplers read trials through that method."""
    assert list(inspect.signature(optuna.Study._get_trials).parameters) == [
        "self", "deepcopy", "states", "use_cache",
    ]  # fmt: skip
    calls = []
    original = optuna.Study._get_trials

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("states"))
        return original(self, *args, **kwargs)

    study = optuna.create_study(sampler=SeesDiverged(optuna.samplers.TPESampler(seed=0)))
    for _ in range(3):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr(DIVERGED, True)
        study.tell(trial, state=TrialState.FAIL)
    optuna.Study._get_trials = counting  # type: ignore[method-assign]
    try:
        study.ask().suggest_float("x", 0, 1)
    finally:
        optuna.Study._get_trials = original  # type: ignore[method-assign]
    assert calls, "TPE no longer reads trials through Study._get_trials"


def test_the_ray_launcher_starts_ray_through_the_function_the_sweeper_calls():
    """The sweeper starts Ray once, as the launcher's own launch() does each time."""
    from hydra_plugins.hydra_ray_launcher import _core
    from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

    assert list(inspect.signature(start_ray).parameters) == ["init_cfg"]
    assert "start_ray(launcher.ray_cfg.init)" in inspect.getsource(_core.launch)
