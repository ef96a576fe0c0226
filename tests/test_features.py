"""Frozen-backbone features: a bank per split, its batches, and the probe's features with or without the cache."""

import dataclasses

import numpy as np
import pytest
import torch

from tuner.train import cache, folders
from tuner.train.augment_policy import NO_AUGMENTATION, AugmentPolicy
from tuner.train.config import make_config
from tuner.train.features import FeatureExtractor, SplitFeatures, feature_batches
from tuner.train.model import build_model, normalization


def bank_of(array: np.ndarray) -> cache.FeatureBank:
    """A bank holding `array` (images, views, dim), keyed by its contents."""
    def fill(target):
        target[:] = array
    return cache.feature_bank(cache.key_of("test-bank", array.tobytes().hex()), array.shape, fill)


@pytest.fixture
def bank():
    # Feature k of image i, view v is 100 i + 10 v + k: every gathered row says where it came from.
    i, v, k = np.meshgrid(np.arange(10), np.arange(3), np.arange(4), indexing="ij")
    return bank_of((100 * i + 10 * v + k).astype(np.float32))


SAMPLES = [(f"{i}.png", i % 2) for i in range(10)]
CPU = torch.device("cpu")


def test_evaluation_batches_are_in_order_from_the_first_view(bank):
    batches = list(feature_batches(bank, SAMPLES, batch_size=4, device=CPU))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    features = torch.cat([f for f, _ in batches])
    assert torch.equal(features[:, 0], torch.arange(10) * 100.0)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(10) % 2)


def test_training_batches_are_a_seeded_shuffle_of_random_views(bank):
    def epoch(seed):
        return torch.cat([f for f, _ in feature_batches(bank, SAMPLES, batch_size=4, device=CPU,
                                                        generator=torch.Generator().manual_seed(seed))])
    features = epoch(0)
    assert sorted((features[:, 0] // 100).tolist()) == list(range(10))  # every image once
    assert set(((features[:, 0] % 100) // 10).tolist()) <= {0, 1, 2} and torch.equal(features, epoch(0))
    assert not torch.equal(features, epoch(1))


def test_mixing_applies_to_training_batches_only(bank):
    def mix(features, targets):
        return features * 0, torch.nn.functional.one_hot(targets, 2).float()
    shuffled = feature_batches(bank, SAMPLES, batch_size=4, device=CPU, generator=torch.Generator(), mix=mix)
    features, targets = next(shuffled)
    assert features.shape == (4, 4) and (features == 0).all() and targets.shape == (4, 2)
    features, targets = next(feature_batches(bank, SAMPLES, batch_size=4, device=CPU, mix=mix))
    assert features.abs().sum() > 0 and targets.ndim == 1


@pytest.fixture(scope="module")
def extractor(demo_root):
    config = make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16})
    model, weights = build_model(config, 8)
    return FeatureExtractor(model, weights, config, normalization(config.model), CPU, None, torch.contiguous_format)


def test_the_probe_features_are_the_same_with_and_without_the_cache(extractor, demo_root):
    samples = folders.find_splits(demo_root).val[::6]
    cached = extractor.probe_features(samples)
    uncached = dataclasses.replace(extractor, config=dataclasses.replace(extractor.config, feature_cache=False))
    assert cached.shape == (len(samples), extractor.model.fc.in_features)
    assert torch.equal(cached, uncached.probe_features(samples))
    assert torch.equal(cached, torch.from_numpy(np.array(extractor.bank(samples, NO_AUGMENTATION, 1).array[:, 0])))


def test_split_features_build_both_banks_on_first_use_with_one_view_when_nothing_augments(extractor, demo_root):
    splits = folders.find_splits(demo_root)
    train, val = splits.train[::20], splits.val[::20]
    plain = SplitFeatures(extractor, train=train, val=val, policy=NO_AUGMENTATION, views=3, batch_size=8)
    assert plain.built is None
    banks = plain.banks()
    assert plain.built is banks and (banks["train"].views, banks["val"].views) == (1, 1)
    augmented = SplitFeatures(extractor, train=train, val=val, policy=AugmentPolicy.from_strength(0.5), views=2,
                              batch_size=8)
    assert augmented.banks()["train"].views == 2 and augmented.banks()["val"].folder == banks["val"].folder
