"""Run settings of a search: types and ranges checked before Ray starts."""

import pytest

from tuner.errors import UserError
from tuner.search.settings import RunSettings


@pytest.mark.parametrize("values, fragment", [
    ({"trials": "6"}, "trials must be int, but got '6'"),
    ({"gpus_per_trial": "1"}, "gpus_per_trial must be float"),
    ({"workers": -1}, "workers must be >= 0"),
    ({"time_budget": 0}, "time_budget must be > 0"),
    ({"grace_period": 5, "max_epochs": 3}, "grace_period (5) must be <= max_epochs (3)"),
    ({"metric": "train_acc"}, "choose one of val_acc, val_loss"),
    ({"reduction_factor": 1}, "reduction_factor must be >= 2"),
])
def test_bad_settings_name_the_value(values, fragment):
    with pytest.raises(UserError) as caught:
        RunSettings(**values).check()
    assert fragment in str(caught.value)


def test_defaults_are_valid_and_metric_sets_the_mode():
    RunSettings().check()
    assert RunSettings(metric="val_loss").mode == "min"
