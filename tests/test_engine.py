import json

import pytest
import torch

from tuner.train import folders
from tuner.train.augment_policy import AugmentPolicy
from tuner.train.checkpoint import load_checkpoint
from tuner.train.config import make_config
from tuner.train.engine import Diverged, Trainer, fit, lr_factor


def tiny_config(**values):
    """resnet18 at 32 px: the code paths of the real thing in about a second per epoch."""
    return make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 64,
                        "epochs": 2, **values})


@pytest.fixture(scope="module")
def splits(demo_root):
    return folders.load_splits(demo_root)


@pytest.fixture(scope="module")
def small_splits(splits):
    """Every fifth image: enough for mechanics tests, five times faster."""
    return folders.ImageSplits(root=splits.root, layout=splits.layout, classes=splits.classes,
                               train=splits.train[::5], val=splits.val[::5], test=[])


def test_gradual_unfreezing_switches_at_the_right_epochs(small_splits):
    trainer = Trainer(tiny_config(unfreeze_depth=2, unfreeze_every=2, epochs=5), small_splits)
    stages_per_epoch = []
    for _ in range(5):
        metrics = trainer.run_epoch()
        stages_per_epoch.append(sorted({k for k in metrics if k.startswith("lr/")}))
        assert metrics["unfrozen_stages"] == trainer.depth
    assert [len(s) for s in stages_per_epoch] == [1, 1, 2, 2, 3]
    assert stages_per_epoch[4] == ["lr/head", "lr/layer3", "lr/layer4"]
    trained = {n.split(".")[0] for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained == {"fc", "layer3", "layer4"}


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = tiny_config(warmup_steps=20, schedule="cosine")
    assert lr_factor(config, 0, 100, 10) == pytest.approx(0.05)
    assert lr_factor(config, 19, 100, 10) == pytest.approx(1.0)
    assert lr_factor(config, 20, 100, 10) == pytest.approx(1.0)
    assert lr_factor(config, 60, 100, 10) == pytest.approx(0.5)
    assert lr_factor(config, 99, 100, 10) < 0.01


def test_step_schedule_matches_the_seeds_steplr():
    config = tiny_config(schedule="step", step_size=7, gamma=0.1)
    steps = [e * 5 for e in (0, 6, 7, 13, 14)]  # the first step of those epochs, 5 steps an epoch
    assert [lr_factor(config, s, 100, 5) for s in steps] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_resume_from_a_checkpoint_continues_exactly(small_splits, tmp_path):
    # Gradual, with every regulariser: epoch 1 is head-only (MixUp of cached features), then images (all four),
    # and the moving average gains layer4 when it unfreezes.
    config = tiny_config(epochs=3, unfreeze_depth=1, unfreeze_every=1, aug_strength=1.0, dropout=0.3,
                         mixup=0.2, cutmix=1.0, random_erasing=0.3, ema_decay=0.9)
    straight = Trainer(config, small_splits)
    for _ in range(3):
        straight.run_epoch()

    first = Trainer(config, small_splits)
    first.run_epoch()
    fit_path = tmp_path / "checkpoint.pt"
    torch.save(first.state_dict(), fit_path)
    resumed = Trainer(config, small_splits)
    resumed.load_state_dict(torch.load(fit_path, weights_only=True))
    resumed.run_epoch()
    resumed.run_epoch()

    assert resumed.history[-1]["val_loss"] == straight.history[-1]["val_loss"]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    averages = straight.ema.module.state_dict(), resumed.ema.module.state_dict()
    for (name, a), b in zip(averages[0].items(), averages[1].values(), strict=True):
        assert torch.equal(a, b), name


def test_training_on_demo_data_gets_well_above_chance(splits, tmp_path):
    # From random init (no ImageNet weights offline) the demo data is hard: ~40% after 8 epochs.
    config = tiny_config(image_size=64, unfreeze_depth=5, epochs=5, lr_decay=1.0, aug_strength=0.2, batch_size=32)
    best = fit(Trainer(config, splits), tmp_path)
    chance = 1 / len(splits.classes)
    assert best["val_acc"] >= 2.4 * chance, best


def test_fit_keeps_the_best_epoch_and_a_loadable_checkpoint(small_splits, tmp_path):
    trainer = Trainer(tiny_config(epochs=3), small_splits)
    best = fit(trainer, tmp_path)
    history = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    best_epoch = max(history, key=lambda m: m["val_acc"])  # the first of equals wins
    assert best["epoch"] == best_epoch["epoch"]
    saved = load_checkpoint(tmp_path / "best")
    assert saved["epoch"] == best_epoch["epoch"] and saved["classes"] == small_splits.classes
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert metrics["val_acc"] == best_epoch["val_acc"] and metrics["weights"]["name"] == "none"
    assert json.loads((tmp_path / "best" / "config.json").read_text()) == trainer.config.to_dict()


def test_a_test_split_is_evaluated_once_with_the_best_weights(splits, tmp_path):
    subset = folders.ImageSplits(root=splits.root, layout=splits.layout, classes=splits.classes,
                                 train=splits.train[::5], val=splits.val[::5], test=splits.test[::2])
    best = fit(Trainer(tiny_config(epochs=1), subset), tmp_path)
    assert 0.0 <= best["test_acc"] <= 1.0 and "test_loss" in best
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["test_acc"] == best["test_acc"]


def test_non_finite_loss_ends_as_diverged_and_keeps_the_best_checkpoint(small_splits, tmp_path):
    trainer = Trainer(tiny_config(epochs=3, precision="fp32"), small_splits)

    def explode(metrics):  # after a healthy first epoch, make the next one blow up
        for group in trainer.optimizer.param_groups:
            group["base_lr"] = 1e30

    with pytest.raises(Diverged, match="epoch 2"):
        fit(trainer, tmp_path, on_epoch=explode)
    assert load_checkpoint(tmp_path / "best")["epoch"] == 1


def test_top5_is_reported_with_ten_or_more_classes(small_splits):
    many = folders.ImageSplits(root=small_splits.root, layout="", classes=[f"c{i}" for i in range(10)],
                               train=small_splits.train, val=small_splits.val, test=[])
    metrics = Trainer(tiny_config(epochs=1), many).evaluate(Trainer(tiny_config(), many).val_loader)
    assert 0.0 <= metrics["val_acc"] <= metrics["val_top5"] <= 1.0


def test_warmup_never_goes_above_the_base_rate():
    config = tiny_config(warmup_steps=2)
    factors = [lr_factor(config, step, 12, 3) for step in range(3)]
    assert max(factors) == 1.0 and factors[0] < 1.0


def test_a_run_of_steps_stops_inside_an_epoch_and_its_schedule_ends_there(small_splits):
    trainer = Trainer(tiny_config(steps=5, batch_size=16, schedule="cosine"), small_splits)
    assert trainer.epoch_steps == 8  # 128 images of batch 16
    metrics = trainer.run_round(3)
    assert (trainer.step, trainer.epoch, metrics["step"]) == (5, 1, 5)
    assert metrics["lr/head"] == pytest.approx(trainer.config.lr_head * lr_factor(trainer.config, 4, 5, 8))
    assert trainer.run_round(1)["step"] == 5  # the budget is spent: nothing more trains


def test_a_round_of_epochs_reports_once_with_the_steps_it_took(small_splits):
    trainer = Trainer(tiny_config(epochs=4), small_splits)
    first = trainer.run_round(2)
    assert (first["epoch"], first["step"], len(trainer.history)) == (2, 2 * trainer.epoch_steps, 1)
    assert trainer.run_round(2)["step"] == trainer.total_steps == 4 * trainer.epoch_steps


def test_one_augmentation_policy_feeds_the_crops_the_batches_and_the_feature_views(small_splits):
    trainer = Trainer(tiny_config(aug_strength=0.7), small_splits)
    assert trainer.policy == AugmentPolicy.from_strength(0.7)
    assert trainer.train_batches.augment.policy is trainer.policy and trainer.features.policy is trainer.policy
    crop = trainer.train_loader.dataset.transform.transforms[0]
    assert crop.scale == trainer.policy.crop_scale
