"""Checkpoints that hold only what training changed, and still resume bit for bit."""

import pytest
import torch
import torchvision

from tuner.errors import UserError
from tuner.train import folders
from tuner.train.checkpoint import load_torch, save_torch
from tuner.train.config import make_config
from tuner.train.engine import Trainer, fit
from tuner.train.model import full_model_state, trained_keys


def lean_config(**values):
    return make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32, "epochs": 3,
                        "aug_strength": 1.0, "dropout": 0.3, "head_init": "random", **values})


@pytest.fixture(scope="module")
def small(demo_root):
    splits = folders.load_splits(demo_root)
    return folders.ImageSplits(root=splits.root, layout=splits.layout, classes=splits.classes,
                               train=splits.train[::5], val=splits.val[::5], test=[])


@pytest.mark.parametrize("training", [
    {"unfreeze_depth": 0},  # head-only, on cached features
    {"unfreeze_depth": 2},  # partial fine-tuning: layer3, layer4, head
    {"unfreeze_depth": 5},  # everything, the stem included
    {"unfreeze_depth": 2, "unfreeze_every": 1, "feature_cache": False},  # gradual: stages join mid-run
    # every regulariser: mixing and erasing draw random numbers, the moving average is state to keep
    {"unfreeze_depth": 2, "mixup": 0.2, "cutmix": 1.0, "random_erasing": 0.5, "ema_decay": 0.9},
    {"unfreeze_depth": 0, "mixup": 0.4, "ema_decay": 0.9},  # head-only: MixUp of cached features
], ids=["head-only", "partial", "full", "gradual", "regularised", "head-only-regularised"])
def test_a_lean_checkpoint_resumes_exactly(small, tmp_path, training):
    """Three epochs straight == one epoch, a lean checkpoint, a new Trainer, two epochs: bit for bit."""
    config = lean_config(**training)
    straight = Trainer(config, small)
    for _ in range(3):
        straight.run_epoch()

    first = Trainer(config, small)
    first.run_epoch()
    save_torch(first.state_dict(), tmp_path / "checkpoint.pt", checksum=True)
    state = load_torch(tmp_path / "checkpoint.pt")
    assert list(state["model"]) == trained_keys(first.model, first.depth)  # the head and trained stages only
    resumed = Trainer(config, small)
    resumed.load_state_dict(state)
    resumed.run_epoch()
    resumed.run_epoch()

    assert resumed.history[-1]["val_loss"] == straight.history[-1]["val_loss"]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for (name, a), b in zip(straight.best_state.items(), resumed.best_state.values(), strict=True):
        assert torch.equal(a, b), name
    if config.ema_decay:  # the average resumes too, and it is what a checkpoint's whole model holds
        assert state["ema_updates"] == first.step and list(state["ema"]) == list(state["model"])
        averages = straight.ema.module.state_dict(), resumed.ema.module.state_dict()
        for (name, a), b in zip(averages[0].items(), averages[1].values(), strict=True):
            assert torch.equal(a, b), name
        full = full_model_state(state, "test")
        assert all(torch.equal(full[k], v) for k, v in first.ema.module.state_dict().items())


def test_a_checkpoint_holds_the_head_and_trained_stages_only(small):
    head_only = Trainer(lean_config(unfreeze_depth=0), small).state_dict()
    assert sorted(head_only["model"]) == ["fc.bias", "fc.weight"]
    partial = Trainer(lean_config(unfreeze_depth=1), small).state_dict()
    assert {k.split(".")[0] for k in partial["model"]} == {"fc", "layer4"}
    assert any(k.endswith("running_mean") for k in partial["model"])  # trained stages' batch-norm statistics


def test_a_resnet50_head_only_checkpoint_is_under_a_megabyte(small, tmp_path):
    trainer = Trainer(lean_config(model="resnet50", unfreeze_depth=0, epochs=1), small)
    trainer.run_epoch()
    save_torch(trainer.state_dict(), tmp_path / "trainer.pt")
    size = (tmp_path / "trainer.pt").stat().st_size
    assert size < 1_000_000, size
    # The whole model (what best/ holds) is the starting weights with the trained head on top.
    full = full_model_state(load_torch(tmp_path / "trainer.pt"), "test")
    assert all(torch.equal(full[k], v) for k, v in trainer.model.state_dict().items())


def test_a_checkpoint_refuses_other_starting_weights(small, tmp_path):
    for name, seed in (("a.pt", 1), ("b.pt", 2)):
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / name)
    state = Trainer(lean_config(weights=str(tmp_path / "a.pt")), small).state_dict()
    other = Trainer(lean_config(weights=str(tmp_path / "b.pt")), small)
    with pytest.raises(UserError, match="starting weights had sha256 .* restore the weights file"):
        other.load_state_dict(state)


def test_fit_keeps_a_lean_checkpoint_and_a_whole_best_model(small, tmp_path):
    trainer = Trainer(lean_config(unfreeze_depth=1, epochs=2), small)
    fit(trainer, tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    best = torch.load(tmp_path / "best" / "model.pt", weights_only=True)
    assert set(state["model"]) < set(best["model"]) and set(state["best_state"]) == set(state["model"])
    assert all(torch.equal(best["model"][k], v) for k, v in trainer.best_state.items())
