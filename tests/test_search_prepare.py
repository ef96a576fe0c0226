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


def test_selection_auto_is_within_noise_from_pretrained_weights_and_highest_from_random_init(
        demo_root, tmp_path, monkeypatch, capsys):
    """The rule is settled before the run record is written, so tuner.json and resume hold the one used."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.py").write_text(textwrap.dedent(SPACE))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "backbone.pt")
    data = {"data": str(demo_root)}
    _, settings, *_ = prepare("space.py", data, {"weights": "backbone.pt"})
    assert settings.selection == "within_noise"
    assert "selection auto -> within_noise: pretrained weights" in capsys.readouterr().out
    _, settings, *_ = prepare("space.py", data, {"weights": "none"})
    assert settings.selection == "highest"
    assert "selection auto -> highest: random init" in capsys.readouterr().out
    # A rule the user names is kept, whatever the weights.
    _, settings, *_ = prepare("space.py", {**data, "selection": "within_noise"}, {"weights": "none"})
    assert settings.selection == "within_noise" and "selection auto" not in capsys.readouterr().out
