"""The progress lines a search prints (driven with plain trial records, as Ray passes them)."""

import io
from types import SimpleNamespace

from tuner.progress import ProgressPrinter


def trial(trial_id, status="RUNNING", epochs=0):
    return SimpleNamespace(trial_id=trial_id, status=status, last_result={"training_iteration": epochs},
                           error_file=None)


def test_one_line_per_result_with_bests_and_counts():
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", max_epochs=3, trials=2, stream=out)
    a, b = trial("a", epochs=1), trial("b", status="TERMINATED", epochs=1)
    printer.on_trial_result(0, [a, b], a, {"val_acc": 0.5, "training_iteration": 1})
    printer.on_trial_result(0, [a, b], a, {"val_acc": 0.4, "training_iteration": 2})
    lines = out.getvalue().splitlines()
    assert "trial   1 epoch   2: val_acc 0.4000 (trial best 0.5000, search best 0.5000)" in lines[1]
    assert "running 1, stopped early 1, done 0 of 2" in lines[1]


def test_a_nan_or_missing_metric_does_not_crash_the_search():
    out = io.StringIO()
    printer = ProgressPrinter("val_loss", "min", max_epochs=3, trials=1, stream=out)
    a = trial("a", epochs=1)
    printer.on_trial_result(0, [a], a, {"val_loss": float("nan"), "training_iteration": 1})
    printer.on_trial_result(0, [a], a, {"training_iteration": 2})
    assert "val_loss nan (trial best -, search best -)" in out.getvalue()
