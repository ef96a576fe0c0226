"""The linear-probe head (head_init=probe): agrees with scikit-learn, starts fine-tuning, is fitted once per
node and key, resumes exactly."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tuner.train import cache, folders
from tuner.train.augment_policy import NO_AUGMENTATION
from tuner.train.config import make_config
from tuner.train.engine import Trainer
from tuner.train.probe import L2_GRID, fit_probe


def probe_config(**values):
    return make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32,
                        "head_init": "probe", "steps": 12, **values})


@pytest.fixture(scope="module")
def splits(demo_root):
    return folders.load_splits(demo_root)


@pytest.fixture(scope="module")
def features(splits):
    """Centre-crop backbone features of the demo images' train and val splits (the probe's own bank)."""
    trainer = Trainer(probe_config(), splits)
    banks = [trainer.extractor.bank(samples, NO_AUGMENTATION, 1) for samples in (splits.train, splits.val)]
    labels = [torch.tensor([label for _, label in samples]) for samples in (splits.train, splits.val)]
    return [(torch.from_numpy(np.array(bank.array[:, 0])), y) for bank, y in zip(banks, labels, strict=True)]


def accuracy(weight, bias, x, y):
    return ((x @ weight.T + bias).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("c", [1.0, 0.01])
def test_the_probe_matches_scikit_learns_logistic_regression(features, c):
    (x, y), (xv, yv) = features
    # sklearn minimises sum CE + ||W||^2 / (2C); ours mean CE + l2/2 ||W||^2: the same for l2 = 1/(C n).
    ours = fit_probe(x, y, 8, l2=1 / (c * len(y)))
    reference = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(x.numpy(), y.numpy())
    assert abs(accuracy(ours.weight, ours.bias, xv, yv) - reference.score(xv.numpy(), yv.numpy())) <= 0.01
    agree = (xv @ ours.weight.T + ours.bias).argmax(1).numpy() == reference.predict(xv.numpy())
    assert agree.mean() >= 0.97


def test_cross_validation_picks_an_l2_of_the_grid_that_beats_chance(features):
    (x, y), (xv, yv) = features
    probe = fit_probe(x, y, 8)
    assert probe.l2 in L2_GRID and probe.cv_acc > 1.5 / 8
    assert fit_probe(x, y, 8).l2 == probe.l2  # seeded folds: the same choice every time


def test_a_probe_head_is_the_fitted_probe_before_the_first_step(splits, features):
    (x, y), _ = features
    trainer = Trainer(probe_config(probe_l2=0.01, steps=1), splits)
    trainer.fit_probe_head()
    expected = fit_probe(x, y, 8, l2=0.01)
    assert torch.equal(trainer.model.fc.weight.data, expected.weight)
    assert trainer.probe["probe_l2"] == 0.01
    # The head alone, on the features it was fitted to, classifies as the probe does.
    logits = trainer.model.fc(x)
    assert torch.equal(logits.argmax(1), (x @ expected.weight.T + expected.bias).argmax(1))
    # The first round is the probe itself, validated before any step: a candidate for the best checkpoint.
    trainer = Trainer(probe_config(probe_l2=0.01, steps=1), splits)
    probe_round = trainer.run_round(1)
    assert (probe_round["probe_l2"], probe_round["step"], probe_round["epoch"]) == (0.01, 0, 0)
    assert "train_loss" not in probe_round and probe_round["improved"]
    _, (xv, yv) = features
    assert probe_round["val_acc"] == pytest.approx(accuracy(expected.weight, expected.bias, xv, yv), abs=0.01)
    assert torch.equal(trainer.best_state["fc.weight"], expected.weight)
    after = trainer.run_round(1)
    assert after["step"] == 1 and "probe_l2" not in after


def fitted_head(config, splits):
    """(the trainer after fitting its probe head, the node-cache entry file of that probe)."""
    trainer = Trainer(config, splits)
    trainer.fit_probe_head()
    key = trainer.extractor.probe_key(splits.train, len(splits.classes), config.probe_l2, config.seed)
    return trainer, cache.cache_root() / "probes" / key / "entry.pt"


def test_the_probe_is_fitted_once_per_node_and_key(splits):
    small = folders.ImageSplits(root=splits.root, layout=splits.layout, classes=splits.classes,
                                train=splits.train[::4], val=splits.val[::4], test=[])
    config = probe_config(probe_l2=0.02, seed=5)  # a key no other test uses
    first, entry = fitted_head(config, small)
    written, entries = entry.stat().st_mtime_ns, cache.cache_usage()["probes"][0]
    second, same_entry = fitted_head(config, small)
    assert (first.probe["probe_cached"], second.probe["probe_cached"]) == (False, True)
    # Not fitted again: the entry is the same file, untouched, and no entry was added.
    assert same_entry == entry and entry.stat().st_mtime_ns == written
    assert cache.cache_usage()["probes"][0] == entries
    # The cached head is a fresh fit's, tensor for tensor.
    features = second.extractor.probe_features(small.train)
    fresh = fit_probe(features, torch.tensor([label for _, label in small.train]), 8, l2=0.02)
    for trainer in (first, second):
        assert torch.equal(trainer.model.fc.weight.data, fresh.weight)
        assert torch.equal(trainer.model.fc.bias.data, fresh.bias)
    # A changed key fits again: other l2, other seed (random init: other features), other data.
    other_data = folders.ImageSplits(root=small.root, layout=small.layout, classes=small.classes,
                                     train=small.train[1:], val=small.val, test=[])
    for changed, data in ((probe_config(probe_l2=0.03, seed=5), small), (probe_config(probe_l2=0.02, seed=6), small),
                          (config, other_data)):
        trainer, other_entry = fitted_head(changed, data)
        assert not trainer.probe["probe_cached"] and other_entry != entry and other_entry.is_file()
    assert cache.cache_usage()["probes"][0] == entries + 3


def test_random_head_init_and_random_weights_skip_the_probe(splits):
    assert not make_config({"weights": "none"}).probes_head()
    assert make_config({"weights": "none", "head_init": "probe"}).probes_head()
    assert not make_config({"head_init": "random"}).probes_head()
    trainer = Trainer(probe_config(head_init="random", steps=1), splits)
    trainer.run_round(1)
    assert trainer.probe is None


def test_resume_in_the_middle_of_a_step_budget_is_exact(splits, tmp_path):
    """Three rounds straight == two rounds, checkpoint, a new Trainer, one round: bit for bit."""
    small = folders.ImageSplits(root=splits.root, layout=splits.layout, classes=splits.classes,
                                train=splits.train[::4], val=splits.val[::4], test=[])
    config = probe_config(steps=11, batch_size=16, unfreeze_depth=1, aug_strength=1.0, dropout=0.3)
    straight = Trainer(config, small)
    for _ in range(3):  # the probe, an epoch of 10 steps, the last step
        straight.run_round(1)

    first = Trainer(config, small)
    first.run_round(1)
    first.run_round(1)
    torch.save(first.state_dict(), tmp_path / "checkpoint.pt")
    resumed = Trainer(config, small)
    resumed.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True))
    last = resumed.run_round(1)
    assert resumed.step == straight.step == 11 and last["step"] == 11  # 10 steps an epoch: stops inside epoch 2
    assert last["train_loss"] == straight.history[-1]["train_loss"]
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
