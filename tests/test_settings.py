"""Run settings of a search: types and ranges checked before Ray starts, one list for flags and space files."""

from dataclasses import asdict, fields

import pytest

from tuner.errors import UserError
from tuner.runs.settings import RunSettings, flag, old_flag, recorded_settings, space_file_names, with_new_names


@pytest.mark.parametrize("values, fragment", [
    ({"trials": "6"}, "trials must be int, but got '6'"),
    ({"gpus_per_trial": "1"}, "gpus_per_trial must be float"),
    ({"loader_workers": -1}, "loader_workers must be >= 0"),
    ({"time_budget": 0}, "time_budget must be > 0"),
    ({"grace_period": 5, "max_epochs": 3}, "grace_period (5) must be <= max_epochs (3)"),
    ({"metric": "train_acc"}, "choose one of val_acc, val_loss"),
    ({"reduction_factor": 1}, "reduction_factor must be >= 2"),
    ({"cpus_per_trial": 0}, "cpus_per_trial must be > 0.0, but got 0.0"),
    ({"keep_checkpoints": "some"}, "keep_checkpoints 'some' is not allowed; choose one of best, all"),
    ({"sampler_seed": -1}, "sampler_seed must be >= 0, but got -1"),
    ({"max_steps": 1.5}, "max_steps must be int or None, but got 1.5"),
    ({"time_budget": float("nan")}, "time_budget must be a finite number"),
])
def test_bad_settings_name_the_value(values, fragment):
    with pytest.raises(UserError) as caught:
        RunSettings(**values).check()
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_defaults_are_valid_and_metric_sets_the_mode():
    RunSettings().check()
    assert RunSettings(metric="val_loss").mode == "min"


def test_check_makes_an_int_given_for_a_float_a_float():
    settings = RunSettings(cpus_per_trial=2)
    settings.check()
    assert isinstance(settings.cpus_per_trial, float)


def test_every_setting_but_demo_data_has_its_flag_and_help():
    flags = {item.name: flag(item) for item in fields(RunSettings)}
    assert flags["max_steps"] == "--max-steps" and flags["sampler_seed"] == "--sampler-seed"
    assert flags["early_stopping"] == "--no-early-stopping" and flags["autoscaling"] == "--autoscaling"
    assert flags["loader_workers"] == "--loader-workers" and flags["demo_data"] is None
    assert all(item.metadata["help"] for item in fields(RunSettings) if flag(item))


def test_renamed_settings_keep_their_old_flags():
    old = {item.name: old_flag(item) for item in fields(RunSettings) if old_flag(item)}
    assert old == {"sampler_seed": "--seed", "loader_workers": "--workers"}


def test_space_files_may_set_the_search_recipe_not_where_it_runs():
    allowed = set(space_file_names())
    assert {"trials", "max_epochs", "sampler_seed", "early_stopping", "demo_data", "metric"} <= allowed
    assert not allowed & {"storage", "name", "address", "loader_workers", "keep_checkpoints", "seed", "workers"}


def test_old_names_are_read_as_the_new_ones():
    values, renamed = with_new_names({"seed": 3, "workers": 1, "trials": 4})
    assert values == {"sampler_seed": 3, "loader_workers": 1, "trials": 4}
    assert renamed == [("seed", "sampler_seed"), ("workers", "loader_workers")]
    with pytest.raises(UserError, match="both 'seed' and 'sampler_seed' are given"):
        with_new_names({"seed": 3, "sampler_seed": 4})


def test_a_run_recorded_before_the_renames_still_reads():
    old = {("seed" if k == "sampler_seed" else "workers" if k == "loader_workers" else k): v
           for k, v in asdict(RunSettings(sampler_seed=7, loader_workers=2)).items()}
    assert "seed" in old and "sampler_seed" not in old
    settings = recorded_settings(old, "runs/old")
    assert (settings.sampler_seed, settings.loader_workers) == (7, 2)


def test_a_run_recorded_before_the_refit_resumes_without_one():
    old = {k: v for k, v in asdict(RunSettings()).items() if k != "refit"}
    assert recorded_settings(old, "runs/old").refit == "off"
    assert recorded_settings(asdict(RunSettings()), "runs/new").refit == RunSettings().refit == "auto"


@pytest.mark.parametrize("change, fragment", [
    ({"colour": "red"}, "has settings this tuner does not know (colour)"),
    ({"trials": 0}, "holds a bad setting: trials must be >= 1, but got 0"),
])
def test_a_recorded_setting_is_checked_on_resume(change, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        recorded_settings({**asdict(RunSettings()), **change}, "runs/x")


@pytest.mark.parametrize(("values", "steps", "rungs"), [
    ({"max_steps": 15, "grace_period": 5, "reduction_factor": 2}, 15, [5, 10]),
    ({"max_epochs": 6, "grace_period": 1, "reduction_factor": 3}, 24, [4, 12]),  # 100 images of 32: 4 steps an epoch
    ({"max_steps": 15, "grace_period": 5, "early_stopping": False}, 15, []),  # no ASHA: no rungs
])
def test_the_settings_give_the_budget_and_ashas_rungs(values, steps, rungs):
    settings = RunSettings(**values)
    budget = settings.search_budget(100, 32)
    assert budget.steps == steps and settings.asha_rungs(budget) == rungs
