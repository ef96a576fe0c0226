"""The trainer's checkpoint state: its keys are the checkpoint format, and best/model.pt is self-contained."""

import dataclasses

import pytest

from tuner.errors import UserError
from tuner.train import folders
from tuner.train.config import make_config
from tuner.train.engine import Trainer
from tuner.train.model import CHECKPOINT_FORMAT
from tuner.train.trainer_state import best_payload, description, restore_trainer, trainer_state

# checkpoint.pt's keys: old checkpoints must keep loading, so a key is added, never renamed or dropped.
STATE_KEYS = {"format", "model", "base_sha256", "optimizer", "scaler", "depth", "epoch", "step", "probe", "ema",
              "ema_updates", "rng", "cuda_rng", "config", "classes", "weights", "normalization", "compute",
              "best_metrics", "best_state", "history"}


@pytest.fixture(scope="module")
def trained(demo_root):
    splits = folders.load_splits(demo_root)
    small = dataclasses.replace(splits, train=splits.train[::10], val=splits.val[::10], test=[])
    trainer = Trainer(make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32,
                                   "epochs": 1, "head_init": "random", "ema_decay": 0.9}), small)
    trainer.run_epoch()
    return trainer


def test_the_state_holds_the_checkpoint_formats_keys(trained):
    state = trainer_state(trained)
    assert set(state) == STATE_KEYS and state["format"] == CHECKPOINT_FORMAT
    assert all(state[k] == v for k, v in description(trained).items())
    assert trainer_state(trained, include_best=False)["best_state"] is None
    assert set(trained.state_dict()) == STATE_KEYS  # the Trainer's state_dict is this state


def test_the_best_payload_is_the_best_round_with_its_description(trained):
    payload = best_payload(trained, {"test_acc": 0.5})
    assert payload["metrics"]["test_acc"] == 0.5 and payload["epoch"] == trained.best_metrics["epoch"]
    assert all(payload[k] == v for k, v in description(trained).items())
    assert set(payload["model"]) == set(trained.best_state)


def test_restoring_onto_other_classes_is_refused_by_name(trained):
    state = {**trainer_state(trained), "classes": ["a", "b"]}
    with pytest.raises(UserError, match=r"trained on classes \['a', 'b'\] but the data has"):
        restore_trainer(trained, state)
