"""mixup, cutmix, random_erasing and ema_decay: what each does to a training batch or to the kept weights."""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from torchvision.transforms import v2

from tuner.errors import UserError
from tuner.train import folders
from tuner.train.augment import random_erase
from tuner.train.batches import eval_batch
from tuner.train.config import make_config
from tuner.train.engine import Trainer, fit
from tuner.train.model import trained_keys


def config(**values):
    return make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32, "epochs": 1,
                        "head_init": "random", "aug_strength": 0.0, **values})


@pytest.fixture(scope="module")
def small(demo_root):
    splits = folders.load_splits(demo_root)  # a fifth of the demo data: seconds a test
    return dataclasses.replace(splits, train=splits.train[::5], val=splits.val[::5], test=[])


def first_training_batch(trainer):
    trainer.loader_generator.manual_seed(0)
    trainer.augment_generator.manual_seed(0)
    torch.manual_seed(0)
    images, labels = next(iter(trainer.train_loader))
    return images, labels, *trainer.train_batches(images, labels)


def evaluation_inputs(trainer):
    """How the trainer's evaluation puts a batch on its device (batches.eval_batch's keywords)."""
    return {"device": trainer.device, "normalization": trainer.normalization, "memory_format": trainer.memory_format}


# --- random_erasing ---

def erased_boxes(erased: torch.Tensor, original: torch.Tensor) -> list[tuple[int, int] | None]:
    """(height, width) of each image's zeroed box, None if untouched; asserts it is one full rectangle."""
    boxes = []
    for changed in (erased != original).any(1):
        if not changed.any():
            boxes.append(None)
            continue
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        assert changed[box].all() and changed.sum() == changed[box].numel()  # one solid rectangle
        boxes.append((box[0].stop - box[0].start, box[1].stop - box[1].start))
    return boxes


def test_random_erasing_erases_one_box_of_torchvisions_sizes_in_that_share_of_images():
    images = torch.rand(2000, 3, 32, 32) + 1  # never 0, so every erased pixel shows
    erased = random_erase(images.clone(), 0.25, torch.Generator().manual_seed(0))
    boxes = erased_boxes(erased, images)
    assert (erased[erased != images] == 0).all()
    share = [b is not None for b in boxes].count(True) / len(boxes)
    assert share == pytest.approx(0.25, abs=0.03)
    # torchvision's RandomErasing on the same images, one at a time: the same distribution of box areas.
    torch.manual_seed(0)
    reference = v2.RandomErasing(p=1.0, value=0)
    theirs = erased_boxes(torch.stack([reference(image) for image in images[:500]]), images[:500])
    ours = [b for b in boxes if b is not None]
    def mean_area(found):
        return sum(h * w for h, w in found) / len(found) / 32**2
    assert mean_area(ours) == pytest.approx(mean_area([b for b in theirs if b]), abs=0.02)
    assert all(h < 32 and w < 32 and 0.3 / 2 <= h / w <= 3.3 * 2 for h, w in ours)


def test_random_erasing_at_zero_and_without_a_fitting_box_changes_nothing():
    images = torch.rand(64, 3, 32, 32)
    assert torch.equal(random_erase(images, 0.0, torch.Generator().manual_seed(0)), images)
    tiny = torch.rand(64, 3, 1, 1)  # no box of at least one pixel fits under the image's size
    assert torch.equal(random_erase(tiny, 1.0, torch.Generator().manual_seed(0)), tiny)


# --- mixup and cutmix ---

def test_mixup_mixes_each_image_with_its_neighbour_and_gives_soft_targets(small):
    trainer = Trainer(config(mixup=0.4), small)
    images, labels, mixed, targets = first_training_batch(trainer)
    plain = Trainer(config(), small)
    _, _, unmixed, _ = first_training_batch(plain)
    assert targets.shape == (len(labels), len(small.classes))
    assert torch.allclose(targets.sum(1), torch.ones(len(labels)))
    first = int((labels != labels.roll(1, 0)).nonzero()[0])  # an image whose neighbour has another class
    lam = float(targets[first, labels[first]])
    assert 0 < lam < 1  # MixUp: lam x image + (1 - lam) x the batch rolled by one
    assert torch.allclose(mixed, lam * unmixed + (1 - lam) * unmixed.roll(1, 0), atol=1e-5)


def test_cutmix_pastes_a_box_of_the_neighbour_whose_area_sets_the_targets(small):
    trainer = Trainer(config(cutmix=1.0), small)
    _, labels, mixed, targets = first_training_batch(trainer)
    _, _, unmixed, _ = first_training_batch(Trainer(config(), small))
    from_self = (mixed == unmixed).all(1)
    from_neighbour = (mixed == unmixed.roll(1, 0)).all(1)
    assert (from_self | from_neighbour).all()  # every pixel is its own or its neighbour's
    pasted = (~from_self).any(0).float().mean()  # one box for the whole batch
    assert 0 < pasted < 1
    differs = labels != labels.roll(1, 0)
    share_kept = targets[differs, labels[differs]]
    assert torch.allclose(share_kept, 1 - pasted.expand_as(share_kept), atol=1 / 32)


def test_mixing_leaves_evaluation_alone(small):
    plain, mixed = Trainer(config(), small), Trainer(config(mixup=0.4, cutmix=1.0, random_erasing=1.0), small)
    assert mixed.validate() == plain.validate()
    images, labels = next(iter(mixed.val_loader))
    inputs, targets = eval_batch(images, labels, **evaluation_inputs(mixed))
    assert torch.equal(targets, labels)
    assert torch.equal(inputs, eval_batch(images, labels, **evaluation_inputs(plain))[0])


def test_mixup_trains_a_head_on_cached_features(small):
    trainer = Trainer(config(unfreeze_depth=0, mixup=0.4, aug_strength=0.5, feature_views=2), small)
    features = next(trainer.features.batches("train", torch.Generator().manual_seed(0)))
    assert features[1].ndim == 2 and torch.allclose(features[1].sum(1), torch.ones(len(features[1])))
    metrics = trainer.run_epoch()
    assert math.isfinite(metrics["train_loss"]) and 0 <= metrics["val_acc"] <= 1


@pytest.mark.parametrize("values, message", [
    ({"unfreeze_depth": 0, "cutmix": 1.0}, "cutmix=1.0 needs images, but unfreeze_depth=0 trains the head on cached"),
    ({"unfreeze_depth": 0, "random_erasing": 0.5}, "random_erasing=0.5 needs images"),
    ({"mixup": -0.1}, "mixup"),
    ({"random_erasing": 1.5}, "random_erasing"),
    ({"ema_decay": 1.0}, "ema_decay"),
])
def test_bad_regulariser_values_are_refused(values, message):
    with pytest.raises(UserError, match=message):
        config(**values)


def test_image_regularisers_are_allowed_on_a_frozen_backbone_without_the_feature_cache():
    assert config(unfreeze_depth=0, feature_cache=False, cutmix=1.0, random_erasing=0.5).cutmix == 1.0


def test_the_cli_refuses_cutmix_on_cached_features_in_one_line(demo_root, tmp_path):
    result = subprocess.run([sys.executable, "-m", "tuner", "train", "--data", str(demo_root), "--out",
                             str(tmp_path / "out"), "--set", "unfreeze_depth=0", "--set", "cutmix=1"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cutmix=1.0 needs images" in result.stderr and "feature_cache=false" in result.stderr
    assert not (tmp_path / "out").exists()


# --- ema_decay ---

def test_the_ema_is_a_warmed_up_moving_average_of_the_trained_weights_and_what_is_validated(small):
    decay = 0.8
    trainer = Trainer(config(unfreeze_depth=1, ema_decay=decay, epochs=2), small)
    seen = []  # the head's weights after every step: the hook runs before each step, the end gives the last
    trainer.step_hook = lambda t, step: seen.append(t.model.fc.weight.detach().clone())
    trainer.run_epoch()
    seen = seen[1:] + [trainer.model.fc.weight.detach().clone()]
    expected = seen[0]  # the first update copies
    for updates, weights in enumerate(seen[1:], start=1):
        d = min(decay, (1 + updates) / (10 + updates))
        expected = d * expected + (1 - d) * weights
    ema = trainer.ema.module
    assert torch.allclose(ema.fc.weight, expected, atol=1e-6)
    assert not torch.equal(ema.fc.weight, trainer.model.fc.weight)
    assert trainer.validate() == trainer.evaluate(trainer.val_loader, model=ema)
    assert trainer.validate() != trainer.evaluate(trainer.val_loader, model=trainer.model)
    # Frozen stages and the BN statistics of frozen stages stay the starting weights in the average.
    trained = set(trained_keys(trainer.model, trainer.depth))
    start = Trainer(config(unfreeze_depth=1, ema_decay=decay), small).model.state_dict()
    for key, value in ema.state_dict().items():
        if key not in trained:
            assert torch.equal(value, start[key]), key
    assert any(not torch.equal(ema.state_dict()[k], start[k]) for k in trained if "running_mean" in k)


def test_the_ema_weights_are_the_ones_kept_as_best(small, tmp_path):
    trainer = Trainer(config(unfreeze_depth=1, ema_decay=0.9, epochs=1), small)  # one epoch: it is the best
    fit(trainer, tmp_path)
    best = torch.load(tmp_path / "best" / "model.pt", weights_only=True)
    assert all(torch.equal(best["model"][k], v) for k, v in trainer.ema.module.state_dict().items())
    assert not torch.equal(best["model"]["fc.weight"], trainer.model.fc.weight)


def test_a_probe_round_is_validated_with_the_probe_head_not_an_empty_average(small):
    trainer = Trainer(config(unfreeze_depth=1, ema_decay=0.9, head_init="probe"), small)
    probe = trainer.run_round(1)
    assert probe["step"] == 0
    assert probe["val_acc"] == trainer.evaluate(trainer.val_loader, model=trainer.model)["val_acc"]
    trainer.run_round(1)
    assert torch.equal(trainer.ema.n_averaged, torch.tensor(trainer.step))


USER_SPACE = """
def space(trial):
    depth = trial.suggest_int("unfreeze_depth", 0, 2)
    trial.suggest_float("mixup", 0.0, 0.4)
    if depth:  # pixels to cut and erase only where images are trained on, not cached features
        trial.suggest_float("cutmix", 0.0, 1.0)
        trial.suggest_float("random_erasing", 0.0, 0.5)
    trial.suggest_categorical("ema_decay", [0.0, 0.9, 0.99])
"""


def test_a_space_file_can_search_the_regularisers_and_every_draw_is_a_valid_config(tmp_path):
    import optuna

    from tuner.search.space import check_space, load_space

    (tmp_path / "regularised.py").write_text(USER_SPACE)
    space = load_space(str(tmp_path / "regularised.py"))
    check_space(space)  # the same check a search makes before Ray starts
    function = space.define_by_run()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {0: set(), 1: set()}
    for _ in range(40):
        trial = study.ask()
        constants = function(trial)
        config(**{**trial.params, **(constants or {})})  # every draw is a valid configuration
        seen[min(trial.params["unfreeze_depth"], 1)] |= set(trial.params)
    assert {"mixup", "ema_decay"} <= seen[0] and not {"cutmix", "random_erasing"} & seen[0]
    assert {"mixup", "cutmix", "random_erasing", "ema_decay"} <= seen[1]
