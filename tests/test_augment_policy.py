import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.errors import UserError
from tuner.train.augment import BatchAugment
from tuner.train.augment_policy import AugmentPolicy
from tuner.train.loading import crop_transforms

ROOT = Path(__file__).resolve().parents[1]


def test_strength_zero_is_the_eval_transform_with_nothing_random():
    policy = AugmentPolicy.from_strength(0.0)
    assert policy.crop_scale is None and policy.flip == 0
    assert (policy.rotation_degrees, policy.brightness, policy.contrast, policy.saturation, policy.hue) == (0,) * 5
    assert policy.randaugment_ops == 0 and policy.randaugment_magnitude == 0


@pytest.mark.parametrize("s", [0.1, 0.25, 0.5, 0.75])
def test_every_range_grows_linearly_with_strength(s):
    full, policy = AugmentPolicy.from_strength(1.0), AugmentPolicy.from_strength(s)
    assert full.crop_scale == pytest.approx((0.08, 1.0))  # torchvision's RandomResizedCrop default
    assert policy.crop_scale == pytest.approx((1 - s * (1 - full.crop_scale[0]), 1.0))
    for name in ("rotation_degrees", "brightness", "contrast", "saturation", "hue"):
        assert getattr(policy, name) == pytest.approx(s * getattr(full, name)), name
    assert policy.flip == full.flip == 0.5


@pytest.mark.parametrize("s, ops, magnitude", [(0.49, 0, 0), (0.5, 2, 5), (0.61, 2, 5), (0.75, 2, 7),
                                               (0.95, 2, 9), (1.0, 2, 9)])
def test_randaugment_joins_at_one_half_and_its_magnitude_rounds_halves_up(s, ops, magnitude):
    policy = AugmentPolicy.from_strength(s)
    assert (policy.randaugment_ops, policy.randaugment_magnitude) == (ops, magnitude)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_a_strength_outside_zero_to_one_is_refused_by_name(bad):
    with pytest.raises(UserError, match=rf"aug_strength must be >= 0 and <= 1, but got {bad!r}"):
        AugmentPolicy.from_strength(bad)


def test_a_policy_cannot_be_changed_after_it_is_made():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AugmentPolicy.from_strength(0.5).hue = 0.3


@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_the_loader_and_the_batch_augmenter_read_the_same_policy(s):
    policy = AugmentPolicy.from_strength(s)
    assert BatchAugment(policy, mean=(0.5,) * 3, std=(0.2,) * 3).policy == policy
    steps = crop_transforms(image_size=32, policy=policy).transforms
    if policy.crop_scale is None:
        assert type(steps[0]).__name__ == "Resize"
    else:
        assert steps[0].scale == policy.crop_scale and steps[1].p == policy.flip


def test_the_policy_needs_no_torch():
    code = "import sys, tuner.train.augment_policy; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
