"""The one value checker behind TrainConfig and RunSettings: type, choices, range, one-line errors."""

import pytest

from tuner.errors import UserError
from tuner.train.checks import Bounds, check_value


@pytest.mark.parametrize("value, annotation, kwargs, fragment", [
    ("6", "int", {}, "x must be int, but got '6'"),
    (True, "int", {}, "x must be int, but got True"),
    (1.5, "int | None", {}, "x must be int or None, but got 1.5"),
    (float("inf"), "float", {}, "x must be a finite number, but got inf"),
    ("c", "str", {"choices": ("a", "b")}, "x 'c' is not allowed; choose one of a, b"),
    (0, "int", {"bounds": Bounds(1)}, "x must be >= 1, but got 0"),
    (1.0, "float", {"bounds": Bounds(0.0, 1.0, high_inclusive=False)}, "x must be >= 0.0 and < 1.0, but got 1.0"),
])
def test_a_bad_value_is_named_with_what_is_allowed(value, annotation, kwargs, fragment):
    with pytest.raises(UserError) as caught:
        check_value("x", value, annotation, **kwargs)
    assert str(caught.value) == fragment


def test_good_values_pass_and_an_int_for_a_float_becomes_one():
    assert check_value("x", None, "float | None", bounds=Bounds(1)) is None
    assert isinstance(check_value("x", 2, "float"), float)
    assert check_value("x", "a", "str", choices=("a",)) == "a"
