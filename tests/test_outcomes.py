"""A trial's outcome, said once (tuner/runs/outcomes.py) for the finished tables, a running search's report
and the progress lines."""

import json
import math
import os

import pytest

from tuner.runs.budget import SearchBudget
from tuner.runs.outcomes import (
    TRIAL_COLUMNS,
    best_report,
    diverged_error,
    last_error_line,
    trial_row,
    trial_status,
    with_current_names,
)
from tuner.train.engine import Diverged

BUDGET = 3  # budget steps a trial that ASHA never stops spends


@pytest.mark.parametrize("last, failed, ended, status", [
    ({"budget_steps": 2, "diverged": True}, True, True, "diverged"),  # a NaN loss ends a trial cleanly: no retry
    ({"budget_steps": 1}, True, True, "errored"),
    ({"budget_steps": 3}, True, True, "errored"),  # Ray gave up on it: errored, however far it got
    ({"budget_steps": 3}, False, True, "completed"),
    ({"budget_steps": 3}, False, False, "completed"),  # no later report can change a whole budget's outcome
    ({"budget_steps": 1}, False, True, "stopped_early"),
    ({"budget_steps": 1}, False, False, "running"),
    ({}, False, False, "running"),  # no report yet
    ({}, False, True, "stopped_early"),
])
def test_one_status_rule(last, failed, ended, status):
    assert trial_status(last, BUDGET, failed=failed, ended=ended) == status


def test_the_best_epoch_of_a_tie_is_the_later_one_as_ray_keeps_its_checkpoint(tmp_path):
    """Ray's own checkpoint manager, configured as the search configures it (driver.py: num_to_keep=1),
    keeps the later of two epochs with equal scores; best/ is made from that checkpoint."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager, _TrainingResult

    reports = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "val_acc": 0.7},
               {"epoch": 4, "val_acc": 0.6}, {"epoch": 5, "val_acc": math.nan}]
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_acc",
                                                  checkpoint_score_order="max"))
    for report in reports:
        folder = tmp_path / f"checkpoint_{report['epoch']:06d}"
        folder.mkdir()
        manager.register_checkpoint(_TrainingResult(Checkpoint(str(folder)), report))
    [kept] = manager.best_checkpoint_results
    assert kept.metrics["epoch"] == best_report(reports, "val_acc", "max")["epoch"] == 3
    losses = [{"epoch": 1, "val_loss": 0.4}, {"epoch": 2, "val_loss": 0.4}, {"epoch": 3, "val_loss": 0.5}]
    assert best_report(losses, "val_loss", "min")["epoch"] == 2
    assert best_report([{"epoch": 1, "val_acc": math.nan}], "val_acc", "max") is None


def _trial_folder(run, trial_id, number, accuracies, **last):
    """RUN/trial_<id>/ as Ray writes it while the search runs: result.json (one line a report), params.json;
    `number` in the config as the searcher puts it there, and in each report as the trainable does."""
    folder = run / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    config = {"lr_head": 1e-3, "aug_strength": 0.1, "number": number}
    lines = [{"trial_id": trial_id, "number": number, "training_iteration": i, "epoch": i, "step": i, "budget_steps": i,
              "val_acc": acc, "val_loss": 1 - acc, "train_loss": 1.0, "time_total_s": 10.0 * i,
              "reported_at": 1000.0 + i, "diverged": False, "done": False, "config": config}
             for i, acc in enumerate(accuracies, 1)]
    lines[-1].update(last)
    (folder / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "params.json").write_text(json.dumps(config))
    return folder


RECORD = {"space": "space.py", "fixed": {"weights": "none"}, "searched": ["lr_head", "aug_strength"],
          "settings": {"metric": "val_acc", "data": "/nowhere"},
          "budget": {"steps": BUDGET, "round_steps": 1, "grace_steps": 1, "reason": "test"}}


def test_a_running_report_and_the_finished_table_agree_on_a_trials_row(tmp_path):
    """The same trial folders read twice: by `tuner report` while the search runs, and by Ray's
    Result.from_path into the finished search's trials.parquet rows (results.trial_rows)."""
    from ray.tune import Result

    from tuner.report.run import open_run
    from tuner.runs.settings import RunSettings
    from tuner.search.results import trial_rows

    run = tmp_path / "run"
    folders = [_trial_folder(run, "tie", 1, [0.5, 0.7, 0.7]),  # a tie: the later epoch is the best
               _trial_folder(run, "early", 2, [0.2, 0.3], done=True),
               _trial_folder(run, "nan", 3, [0.4, math.nan], diverged=True, train_loss=math.nan, done=True)]
    (run / "tuner.json").write_text(json.dumps(RECORD))
    with open_run(str(run)) as running:
        assert not running.finished
        reported = {row["trial_id"]: row for row in running.trials}
    grid = [Result.from_path(os.fspath(folder)) for folder in folders]
    finished = {row["trial_id"]: row for row in trial_rows(grid, RunSettings(), RECORD["searched"],
                                                           SearchBudget(**RECORD["budget"]))}
    assert set(reported) == set(finished) == {"tie", "early", "nan"}
    for trial_id, row in finished.items():
        assert list(row)[:len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS)
        assert {k: reported[trial_id][k] for k in row} == row, trial_id
    assert [finished[trial_id]["number"] for trial_id in ("tie", "early", "nan")] == [1, 2, 3]
    assert (finished["tie"]["best_epoch"], finished["tie"]["status"]) == (3, "completed")
    assert (finished["early"]["best_epoch"], finished["early"]["status"]) == (2, "stopped_early")
    assert (finished["nan"]["best_epoch"], finished["nan"]["status"]) == (1, "diverged")
    assert finished["nan"]["error"] == "training diverged in epoch 2: loss is nan; lower the learning rates"


def test_a_trial_row_before_the_first_report():
    row = trial_row("a", {}, [], number=7, status="running", error=None, metric="val_acc", mode="max")
    assert list(row) == list(TRIAL_COLUMNS)
    assert (row["number"], row["epochs_run"], row["steps"], row["best_epoch"], row["val_acc"], row["warning"]) == (
        7, 0, 0, None, None, None)


def test_the_divergence_text_is_the_trainers():
    assert diverged_error({"epoch": 2, "train_loss": math.inf}) == str(Diverged(2, math.inf))


def test_the_last_error_line_skips_rays_failure_headers_and_blank_lines():
    text = ("Failure # 1 (occurred at 2025-01-01_10-00-00)\nray::ImplicitFunc.train() (pid=1)\n"
            "RuntimeError: first\nFailure # 2 (occurred at 2025-01-01_10-01-00)\n  RuntimeError: second  \n\n")
    assert last_error_line(text) == "RuntimeError: second"
    assert last_error_line("Failure # 1 (occurred at 2025-01-01_10-00-00)\n\n") == ""


def test_a_table_written_before_epochs_run_reads_under_todays_names():
    assert with_current_names({"trial_id": "a", "epochs": 3, "steps": 9}) == {"trial_id": "a", "epochs_run": 3,
                                                                              "steps": 9}
    today = {"trial_id": "a", "epochs_run": 3}
    assert with_current_names(today) == today
