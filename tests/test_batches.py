"""Batches on the device: evaluation only normalises; training augments, erases and mixes from its generator."""

import pytest
import torch
from torchvision.transforms import v2

from tuner.train.augment import normalize
from tuner.train.augment_policy import NO_AUGMENTATION, AugmentPolicy
from tuner.train.batches import TrainBatches, batch_mixer, eval_batch, eval_batches
from tuner.train.config import make_config

NORMALIZATION = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
ON_CPU = {"device": torch.device("cpu"), "normalization": NORMALIZATION, "memory_format": torch.channels_last}


def uint8_batch(n=8, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.arange(n) % 4


def config(**values):
    return make_config({"model": "resnet18", "weights": "none", "image_size": 32, **values})


def train_batches(values, policy, seed=0):
    return TrainBatches(config(**values), policy, num_classes=4, generator=torch.Generator().manual_seed(seed),
                        **ON_CPU)


def test_an_eval_batch_is_normalised_in_the_models_layout_with_its_labels():
    images, labels = uint8_batch()
    inputs, targets = eval_batch(images, labels, **ON_CPU)
    assert torch.equal(inputs, normalize(images, **NORMALIZATION))
    assert inputs.is_contiguous(memory_format=torch.channels_last) and torch.equal(targets, labels)
    assert [torch.equal(a, b) for (a, _), b in zip(eval_batches([(images, labels)] * 2, **ON_CPU),
                                                   [inputs] * 2, strict=True)] == [True, True]


def test_training_without_augmentation_or_regularisers_is_the_eval_batch():
    images, labels = uint8_batch()
    inputs, targets = train_batches({}, NO_AUGMENTATION)(images, labels)
    expected, _ = eval_batch(images, labels, **ON_CPU)
    assert torch.equal(inputs, expected) and torch.equal(targets, labels)


def test_training_augmentation_follows_its_generator():
    images, labels = uint8_batch()
    strong = AugmentPolicy.from_strength(1.0)
    values = {"random_erasing": 0.5}
    first, again, other = (train_batches(values, strong, seed)(images, labels)[0] for seed in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_mixed_targets_are_class_probabilities():
    images, labels = uint8_batch()
    torch.manual_seed(0)
    _, targets = train_batches({"mixup": 0.4}, NO_AUGMENTATION)(images, labels)
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))


@pytest.mark.parametrize("values, images, expected", [
    ({}, True, type(None)),
    ({"mixup": 0.4}, True, v2.MixUp),
    ({"cutmix": 1.0}, True, v2.CutMix),
    ({"mixup": 0.4, "cutmix": 1.0}, True, v2.RandomChoice),  # one of the two per batch
    ({"mixup": 0.4, "cutmix": 1.0}, False, v2.MixUp),  # cached features: only MixUp means anything
])
def test_the_mixer_is_mixup_cutmix_or_one_of_them(values, images, expected):
    assert type(batch_mixer(config(**values), 4, images=images)) is expected
