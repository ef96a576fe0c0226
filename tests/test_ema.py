"""The weights' moving average: warmed-up decay, over the trained tensors only, and what is validated."""

import pytest
import torch

from tuner.train.config import make_config
from tuner.train.ema import ModelEMA, ema_decay_at, evaluated_model
from tuner.train.model import build_model, set_trained_depth, trained_keys


def test_the_ema_decay_warms_up_to_ema_decay():
    assert ema_decay_at(0.99, 0) == pytest.approx(0.1)  # the first update after the copy mostly replaces it
    assert ema_decay_at(0.99, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.99, 10_000) == 0.99
    assert [ema_decay_at(0.8, t) for t in (30, 40)] == [pytest.approx(31 / 40), 0.8]


@pytest.fixture
def model():
    config = make_config({"model": "resnet18", "weights": "none", "image_size": 32})
    built, _ = build_model(config, 3)
    set_trained_depth(built, 0, config.bn_mode)
    return built


def nudge(model, key, amount):
    with torch.no_grad():
        model.state_dict()[key].add_(amount)


def test_the_first_update_copies_then_each_averages_with_the_warmed_up_decay(model):
    ema = ModelEMA(model, 0.9, depth=0)
    assert evaluated_model(model, ema) is model  # nothing averaged yet: the model itself
    nudge(model, "fc.bias", 1.0)
    ema.update(0)
    assert torch.equal(ema.module.fc.bias, model.fc.bias) and evaluated_model(model, ema) is ema.module
    before = ema.module.fc.bias.clone()
    nudge(model, "fc.bias", 1.0)
    ema.update(1)
    decay = ema_decay_at(0.9, 1)
    assert torch.allclose(ema.module.fc.bias, decay * before + (1 - decay) * model.fc.bias)
    assert int(ema.n_averaged) == 2


def test_only_the_tracked_stages_are_averaged_until_more_are_tracked(model):
    ema = ModelEMA(model, 0.9, depth=0)
    key = "layer4.0.conv1.weight"
    assert key not in trained_keys(model, 0) and key in trained_keys(model, 1)
    nudge(model, key, 1.0)
    ema.update(0)
    assert not torch.equal(ema.module.state_dict()[key], model.state_dict()[key])  # frozen: the start
    start = ema.module.state_dict()[key].clone()
    ema.track(1)
    ema.update(1)
    decay = ema_decay_at(0.9, 1)
    assert torch.allclose(ema.module.state_dict()[key], decay * start + (1 - decay) * model.state_dict()[key])
