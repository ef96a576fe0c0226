"""The refit on train+val (train/refit.py) and its place at the end of a search (search/refit.py)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from tuner.report.analysis import best_model_analysis
from tuner.report.run import open_run
from tuner.runs.settings import RunSettings
from tuner.search.refit import SEARCH_BEST, refit_best
from tuner.train import folders
from tuner.train.checkpoint import load_checkpoint, write_best
from tuner.train.config import make_config
from tuner.train.demo_data import write_demo_data
from tuner.train.engine import Trainer, fit, resolve_device
from tuner.train.evaluation import load_trained
from tuner.train.plan import steps_per_epoch
from tuner.train.refit import refit, refit_splits


def tiny_config(**values):
    """resnet18 at 32 px, batch 16: a trial's 20-step schedule with warm-up, in seconds."""
    return make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16,
                        "steps": 20, "warmup_steps": 3, "schedule": "cosine", **values})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("refit") / "data"
    write_demo_data(root, train_per_class=10, val_per_class=5, test_per_class=3)
    return root


@pytest.fixture(scope="module")
def splits(data):
    return folders.load_splits(data)


class StepLog:
    """A step hook: the LR each optimizer step was taken at (the hook runs before the step sets it,
    so it reads the previous step's), and how many steps there were."""

    def __init__(self):
        self.lrs = []

    def __call__(self, trainer, step):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def test_refit_trains_on_train_and_val_for_the_chosen_steps(splits):
    merged = len(splits.train) + len(splits.val)
    epoch_steps = steps_per_epoch(merged, 16)
    chosen = epoch_steps + 2  # a whole epoch over train+val, then two steps into the next
    log = StepLog()
    result = refit(tiny_config(), splits, chosen, device="cpu", step_hook=log)
    assert len(log.lrs) == chosen
    assert result.epoch_images == [merged, 2 * 16]  # every train+val image once, then the chosen step's batches
    metrics = result.payload["metrics"]
    assert (metrics["refit"], metrics["refit_steps"], metrics["refit_images"]) == (True, chosen, merged)
    assert metrics["refit_epochs"] == result.payload["epoch"] == 2
    assert not any(k.startswith("val_") for k in metrics)  # it learnt from them: nothing to say there


@pytest.mark.parametrize("schedule", [{"schedule": "cosine"}, {"schedule": "step", "step_size": 1, "gamma": 0.5}])
def test_refit_follows_the_trials_lr_schedule_to_the_chosen_step(splits, schedule):
    """The LR at every step is the trial's (same schedule length; the step schedule's epochs in the trial's
    batches), up to the chosen step; at the trial's last step the cosine ends where the trial's did."""
    trial_log = StepLog()
    trial = Trainer(tiny_config(**schedule), splits, device="cpu")
    trial.step_hook = trial_log
    while trial.step < trial.total_steps:
        trial.run_round(1)
    assert len(set(trial_log.lrs)) > 5  # a schedule that moves, so matching it means something
    for chosen in (8, 20):
        log = StepLog()
        refit(tiny_config(**schedule), splits, chosen, device="cpu", step_hook=log)
        assert log.lrs == pytest.approx(trial_log.lrs[:chosen])


def test_a_probe_round_refits_the_probe_on_train_and_val(splits):
    config = tiny_config(head_init="probe", probe_l2=0.01)
    log = StepLog()
    result = refit(config, splits, 0, device="cpu", step_hook=log)
    assert log.lrs == [] and result.epoch_images == []
    on_both = Trainer(config, refit_splits(splits), device="cpu")
    on_both.run_round(1)  # the probe round: the head fitted on the training images it was given
    on_train = Trainer(config, splits, device="cpu")
    on_train.run_round(1)
    weight = result.payload["model"]["fc.weight"]
    assert torch.equal(weight, on_both.best_state["fc.weight"])
    assert not torch.equal(weight, on_train.best_state["fc.weight"])
    assert result.payload["metrics"]["probe_l2"] == 0.01 and result.payload["metrics"]["refit_steps"] == 0


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    """OUT of `tuner train` (best/ as a search leaves it, with the step it was taken at)."""
    out = tmp_path_factory.mktemp("train")
    fit(Trainer(tiny_config(steps=10), splits, device="cpu"), out)
    return out


def best_files(best):
    return {p.name: p.read_bytes() for p in best.iterdir() if p.is_file()}


def test_refit_off_leaves_best_as_the_search_left_it(trained, splits, tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    write_best(run / "best", load_checkpoint(trained / "best"))
    before = best_files(run / "best")
    assert refit_best(run, RunSettings(refit="off"), splits) is None
    assert best_files(run / "best") == before and not (run / "best" / SEARCH_BEST).exists()


def test_refit_on_puts_the_refit_model_in_best_and_the_searchs_beside_it(trained, splits, tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    searched = load_checkpoint(trained / "best")
    searched["metrics"]["selection"] = "the highest val_acc"  # why the search chose it, as results.py says
    write_best(run / "best", searched)
    before = best_files(run / "best")
    chosen = json.loads((run / "best" / "metrics.json").read_text())
    line = refit_best(run, RunSettings(refit="auto"), splits)  # auto: 50 training images are small data
    assert best_files(run / "best" / SEARCH_BEST) == before
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert metrics["refit"] and metrics["refit_steps"] == chosen["step"]
    assert (metrics["chosen_epoch"], metrics["selection"]) == (chosen["epoch"], "the highest val_acc")
    assert metrics["refit_images"] == len(splits.train) + len(splits.val)
    assert f"on {metrics['refit_images']} train+val images" in line and f"{chosen['step']} steps" in line
    # What best/ holds loads through the normal load path, and its test metrics are that model's.
    payload = load_checkpoint(run / "best")
    assert payload["metrics"]["refit"]
    model = load_trained(payload, resolve_device("cpu"), as_trained=True)
    assert model.evaluate(splits.test, prefix="test").metrics["test_acc"] == pytest.approx(metrics["test_acc"])
    assert f"test_acc {metrics['test_acc']:.4f}" in line


def test_auto_refits_small_data_only():
    assert RunSettings(refit="auto").refits(9_999) and not RunSettings(refit="auto").refits(10_000)
    assert RunSettings(refit="on").refits(10**6) and not RunSettings(refit="off").refits(10)


REFIT_SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32, "trials": 2,
            "max_steps": 4, "max_concurrent": 2, "early_stopping": False, "refit": "on"}

def space(trial):
    trial.suggest_int("unfreeze_depth", 1, 2)
    trial.suggest_float("lr_head", 1e-3, 1e-2, log=True)
"""


@pytest.mark.slow
def test_a_search_with_refit_on_delivers_the_refit_model_with_test_metrics(tmp_path):
    write_demo_data(tmp_path / "data", train_per_class=10, val_per_class=5, test_per_class=3)
    (tmp_path / "space.py").write_text(textwrap.dedent(REFIT_SPACE))
    result = subprocess.run(
        [sys.executable, "-m", "tuner", "search", "--space", str(tmp_path / "space.py"), "--data",
         str(tmp_path / "data"), "--storage", str(tmp_path / "runs"), "--name", "refit"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    best = tmp_path / "runs" / "refit" / "best"
    metrics = json.loads((best / "metrics.json").read_text())
    chosen = json.loads((best / SEARCH_BEST / "metrics.json").read_text())
    splits = folders.load_splits(tmp_path / "data")
    assert metrics["refit"] and "test_acc" in metrics and "test_acc" in chosen
    assert metrics["trial_id"] == chosen["trial_id"] and metrics["refit_steps"] == chosen["step"]
    assert metrics["refit_images"] == len(splits.train) + len(splits.val)
    configs = [json.loads((folder / "config.json").read_text()) for folder in (best, best / SEARCH_BEST)]
    assert configs[0] == configs[1]  # the chosen configuration, refit
    assert metrics["number"] == chosen["number"]
    assert f"refit: trial {chosen['number']} ({chosen['trial_id']})'s configuration on {metrics['refit_images']} " \
           f"train+val images" in result.stdout
    # The report looks again at the search's checkpoint on the validation images, not at the refit model.
    with open_run(str(best.parent)) as run:
        analysis = best_model_analysis(run)
    assert analysis.recorded == chosen["val_acc"] and analysis.accuracy == pytest.approx(chosen["val_acc"])
    predicted = subprocess.run([sys.executable, "-m", "tuner", "predict", "--model", str(best), splits.test[0][0]],
                               capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
