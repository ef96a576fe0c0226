import os
import subprocess
import sys
import textwrap

import pytest

from tuner.train.demo_data import write_demo_data


@pytest.fixture(scope="session", autouse=True)
def node_cache(tmp_path_factory):
    """A fresh node cache for the session (inherited by Ray workers and CLI subprocesses)."""
    folder = tmp_path_factory.mktemp("node-cache")
    previous = os.environ.get("TUNER_CACHE")
    os.environ["TUNER_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("TUNER_CACHE", None)
    else:
        os.environ["TUNER_CACHE"] = previous


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The default demo dataset, written once per test session; treat it as read-only."""
    root = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(root)
    return root


# A small real search (resnet18 at 32 px, 6 trials, ASHA): shared by the tests of the search and of its report.
# 160 training images of batch 32: 5 steps an epoch, a report every epoch, ASHA's rungs at 5 and 10 steps.
SEARCH_SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32, "trials": 6,
            "max_steps": 15, "grace_period": 5, "reduction_factor": 2, "max_concurrent": 2,
            # best/ stays the search's own choice, which these tests check (test_refit.py refits), chosen by
            # the within-noise rule, which test_search.py checks against runs/selection.py on this run
            "refit": "off", "selection": "within_noise"}

def space(trial):
    depth = trial.suggest_int("unfreeze_depth", 0, 2)
    trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
    for stage in ("layer4", "layer3")[:depth]:
        trial.suggest_float(f"lr_{stage}", 1e-5, 1e-3, log=True)
    trial.suggest_float("aug_strength", 0.0, 0.5)
"""


@pytest.fixture(scope="session")
def search_root(tmp_path_factory):
    """ROOT/data (small demo data with a test split) and ROOT/space.py (SEARCH_SPACE); runs go to ROOT/runs."""
    root = tmp_path_factory.mktemp("search")
    write_demo_data(root / "data", train_per_class=20, val_per_class=8, test_per_class=4)
    (root / "space.py").write_text(textwrap.dedent(SEARCH_SPACE))
    return root


@pytest.fixture(scope="session")
def finished_search(search_root):
    """(RUN, stdout) of SEARCH_SPACE searched to the end through the command line, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "tuner", "search", "--space", str(search_root / "space.py"),
         "--data", str(search_root / "data"), "--storage", str(search_root / "runs"), "--name", "full"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return search_root / "runs" / "full", result.stdout
