"""What a search checks and settles before Ray starts (tuner.search.driver.prepare): no Ray needed."""

import textwrap
from pathlib import Path

import torch
import torchvision

from tuner.search.driver import prepare

SPACE = """
SETTINGS = {"model": "resnet18", "image_size": 32, "batch_size": 32}

def space(trial):
    trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
"""


def test_a_relative_weights_path_is_made_absolute_for_the_trials(demo_root, tmp_path, monkeypatch):
    """Trials run in their own folders: a path that worked here must still name the same file there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.py").write_text(textwrap.dedent(SPACE))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "backbone.pt")
    space, settings, splits, _, budget = prepare("space.py", {"data": str(demo_root)}, {"weights": "backbone.pt"})
    assert space.fixed["weights"] == str(tmp_path / "backbone.pt") and Path(space.fixed["weights"]).is_absolute()
    # The budget is sized by the data and said why: 640 images of batch 32 are BiT's 500-step tier.
    assert (budget.steps, budget.grace_steps) == (500, 500 // 9) and "BiT's tier" in budget.reason
    assert len(splits.train) == 640 and settings.data == str(demo_root)
