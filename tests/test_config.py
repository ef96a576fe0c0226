import json

import pytest

from tuner.errors import UserError
from tuner.train.config import SEED_RECIPE, TrainConfig, load_config_file, make_config, parse_assignments


def test_defaults_are_valid_and_round_trip_through_dict():
    config = TrainConfig()
    assert make_config(config.to_dict()) == config


def test_stage_lrs_use_decay_below_explicit_rates():
    config = make_config({"lr_head": 1e-2, "lr_decay": 0.5, "lr_layer3": 1e-4})
    rates = config.stage_lrs()
    assert rates["head"] == 1e-2
    assert rates["layer4"] == pytest.approx(5e-3)  # head x decay
    assert rates["layer3"] == 1e-4  # explicit wins
    assert rates["layer2"] == pytest.approx(5e-5)  # decays from the explicit rate above
    assert rates["stem"] == pytest.approx(1.25e-5)


def test_seed_recipe_is_a_valid_config_with_the_tutorial_rates():
    rates = make_config(SEED_RECIPE).stage_lrs()
    assert (rates["head"], rates["layer4"], rates["layer3"]) == (1e-3, 1e-4, 5e-5)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"lr_hed": 0.1}, "did you mean lr_head"),
        ({"unfreeze_depth": 6}, "unfreeze_depth must be >= 0 and <= 5, but got 6"),
        ({"lr_head": 0.0}, "lr_head must be > 0.0"),
        ({"optimizer": "adam"}, "optimizer 'adam' is not allowed; choose one of adamw, sgd"),
        ({"batch_size": 3.5}, "batch_size must be int"),
        ({"aug_strength": 1.5}, "aug_strength must be >= 0.0 and <= 1.0"),
        ({"model": "vgg16"}, "choose one of resnet18, resnet34, resnet50, resnet101, resnet152"),
        ({"nesterov": 1}, "nesterov must be bool"),
    ],
)
def test_bad_values_name_the_value_and_what_is_allowed(values, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace("?", r"\?")):
        make_config(values)


def test_int_given_for_float_field_becomes_float():
    assert make_config({"lr_head": 1}).lr_head == 1.0
    assert isinstance(make_config({"lr_head": 1}).lr_head, float)


def test_parse_assignments_types_values_by_field():
    values = parse_assignments(
        ["lr_head=0.01", "unfreeze_depth=3", "nesterov=true", "lr_layer4=none", "model=resnet18"])
    assert values == {"lr_head": 0.01, "unfreeze_depth": 3, "nesterov": True, "lr_layer4": None, "model": "resnet18"}


@pytest.mark.parametrize("item, fragment", [("lr_head", "expects key=value"), ("epochs=two", "not a valid int"),
                                            ("colour=red", "unknown hyperparameter 'colour'")])
def test_parse_assignments_rejects_bad_items(item, fragment):
    with pytest.raises(UserError, match=fragment):
        parse_assignments([item])


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_config_file(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"epochs": 3}))
    assert load_config_file(good) == {"epochs": 3}


@pytest.mark.parametrize("name", ["probe_l2", "lr_head", "lr_decay", "weight_decay"])
def test_infinite_values_are_refused(name):
    with pytest.raises(UserError, match=f"{name} must be a finite number"):
        make_config({name: float("inf")})


def test_lr_decay_defaults_to_one_from_random_init_and_to_the_seeds_tenth_with_pretrained_weights():
    random_init = make_config({"weights": "none", "lr_head": 1e-3}).stage_lrs()
    assert set(random_init.values()) == {1e-3}  # layer1 would get 1e-7 with 0.1: nothing to keep there
    pretrained = make_config({"lr_head": 1e-3}).stage_lrs()
    assert pretrained["layer4"] == pytest.approx(1e-4) and pretrained["layer1"] == pytest.approx(1e-7)
    assert make_config({"weights": "none", "lr_decay": 0.5}).stage_lrs()["layer4"] == pytest.approx(5e-4)


def test_head_init_names_its_choices():
    with pytest.raises(UserError, match="head_init 'linear' is not allowed; choose one of auto, probe, random"):
        make_config({"head_init": "linear"})
