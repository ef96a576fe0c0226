"""The progress lines a search prints (driven with plain trial records, as Ray passes them)."""

import io
from types import SimpleNamespace

from tuner.search.progress import ProgressPrinter


def trial(trial_id, status="RUNNING", spent=0, number=None):
    """A Ray Trial as the printer reads it; `number` in its config as the searcher puts it there."""
    return SimpleNamespace(trial_id=trial_id, status=status, last_result={"budget_steps": spent},
                           error_file=None, config={} if number is None else {"number": number, "lr_head": 0.01})


def test_one_line_per_result_with_bests_and_counts():
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=3, trials=2, stream=out)
    a, b = trial("a", spent=1, number=1), trial("b", status="TERMINATED", spent=1, number=2)
    printer.on_trial_result(0, [a, b], a, {"val_acc": 0.5, "budget_steps": 1, "epoch": 1})
    printer.on_trial_result(0, [a, b], a, {"val_acc": 0.4, "budget_steps": 2, "epoch": 2})
    lines = out.getvalue().splitlines()
    assert "trial   1 step     2 (epoch   2): val_acc 0.4000 (trial best 0.5000, search best 0.5000)" in lines[1]
    assert "running 1, stopped early 1, done 0 of 2" in lines[1]


def test_a_nan_or_missing_metric_does_not_crash_the_search():
    out = io.StringIO()
    printer = ProgressPrinter("val_loss", "min", budget_steps=3, trials=1, stream=out)
    a = trial("a", spent=1)
    printer.on_trial_result(0, [a], a, {"val_loss": float("nan"), "budget_steps": 1, "epoch": 1})
    printer.on_trial_result(0, [a], a, {"budget_steps": 2, "epoch": 2})
    assert "val_loss nan (trial best -, search best -)" in out.getvalue()


def test_a_diverged_trial_is_reported_and_counted_as_diverged_not_stopped_early():
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=3, trials=3, stream=out)
    a, b = trial("a", status="TERMINATED", spent=2, number=1), trial("b", status="TERMINATED", spent=1, number=2)
    c = trial("c", status="TERMINATED", spent=3, number=3)
    a.last_result.update(diverged=True, train_loss=float("nan"))
    b.last_result.update(diverged=False)
    for t in (a, b, c):
        printer.on_trial_start(0, [a, b, c], t)
    printer.on_trial_complete(0, [a, b, c], a)
    printer.on_trial_complete(0, [a, b, c], b)
    lines = out.getvalue().splitlines()[3:]  # after the start lines
    assert lines[0].startswith("trial 1 diverged (training loss nan) after 2 steps")
    assert "ASHA" not in lines[0]
    assert lines[0].endswith("| running 0, stopped early 1, done 1, diverged 1 of 3")
    assert lines[1].startswith("trial 2 stopped early by ASHA after 1 steps")


def test_no_diverged_count_while_no_trial_diverged():
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=3, trials=1, stream=out)
    a = trial("a", status="TERMINATED", spent=3, number=1)
    printer.on_trial_complete(0, [a], a)
    assert out.getvalue().strip().endswith(
        "trial 1 (a) completed after 3 steps | running 0, stopped early 0, done 1 of 1")


def test_a_warning_in_a_result_gets_its_own_line():
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=3, trials=1, stream=out)
    a = trial("a", spent=2, number=1)
    warning = "checkpoint /x/checkpoint_000001/trainer.pt is damaged; resumed from epoch 1"
    printer.on_trial_result(0, [a], a, {"val_acc": 0.5, "budget_steps": 2, "epoch": 2, "warning": warning})
    printer.on_trial_result(0, [a], a, {"val_acc": 0.6, "budget_steps": 3, "epoch": 3})
    lines = out.getvalue().splitlines()
    assert lines[0] == f"trial 1 warning: {warning}"
    assert "step     2" in lines[1] and "step     3" in lines[2] and len(lines) == 3


# What Ray writes to a trial's error.txt (Trial.handle_error): a header per failure, then the trace.
ERROR_TXT = """Failure # 1 (occurred at 2025-01-01_10-00-00)
ray::ImplicitFunc.train() (pid=123, ip=127.0.0.1, actor_id=abc, repr=train_trial)
  File "/x/tuner/search/trainable.py", line 80, in train_trial
    metrics = trainer.run_epoch()
RuntimeError: injected fault (TUNER_FAULT) at epoch 2, step 1
Failure # 2 (occurred at 2025-01-01_10-01-00)
ray::ImplicitFunc.train() (pid=124, ip=127.0.0.1, actor_id=abd, repr=train_trial)
  File "/x/tuner/search/trainable.py", line 80, in train_trial
    metrics = trainer.run_epoch()
RuntimeError: injected fault (TUNER_FAULT) at epoch 2, step 2

"""


def test_a_failed_trial_prints_its_error_not_a_path(tmp_path):
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=3, trials=1, stream=out)
    a = trial("a", status="ERROR", spent=1, number=1)
    a.error_file = str(tmp_path / "error.txt")
    (tmp_path / "error.txt").write_text(ERROR_TXT)
    printer.on_trial_start(0, [a], a)
    printer.on_trial_error(0, [a], a)
    assert out.getvalue().strip().splitlines()[1] == (
        "trial 1 failed after 1 steps: RuntimeError: injected fault (TUNER_FAULT) at epoch 2, step 2 | running 0, "
        "stopped early 0, done 0, errored 1 of 1")


def test_the_error_comes_from_ray_storage_when_there_is_no_local_file(tmp_path):
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=3, trials=1, stream=out)
    a = trial("a", status="ERROR", spent=0)
    a.error_file = str(tmp_path / "gone.txt")
    a.get_error = lambda: ERROR_TXT.split("Failure # 2")[0]
    printer.on_trial_error(0, [a], a)
    assert "failed after 0 steps: RuntimeError: injected fault (TUNER_FAULT) at epoch 2, step 1 |" in out.getvalue()
    b = trial("b", status="ERROR")
    printer.on_trial_error(0, [b], b)
    assert "failed after 0 steps: no error message recorded |" in out.getvalue()


def test_a_retried_trial_says_so_with_its_failure_count(tmp_path):
    from ray import tune

    assert hasattr(tune.Callback, "on_trial_recover")  # the hook Ray calls before it retries a trial
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=3, trials=2, stream=out)
    a, b = trial("a", status="PENDING", spent=1, number=1), trial("b", status="PENDING", number=2)
    a.error_file = str(tmp_path / "error.txt")
    (tmp_path / "error.txt").write_text(ERROR_TXT.split("Failure # 2")[0])
    a.num_failures, a.max_failures, a.checkpoint = 1, 2, object()
    b.num_failures, b.max_failures, b.checkpoint = 3, -1, None
    for t in (a, b):
        printer.on_trial_start(0, [a, b], t)
        printer.on_trial_recover(0, [a, b], t)
        printer.on_trial_start(0, [a, b], t)  # the retry: no second start line
    lines = out.getvalue().splitlines()[1::2]  # after each start line
    assert lines[0] == ("trial 1 failed, restarting from its last checkpoint (failure 1 of 2): "
                        "RuntimeError: injected fault (TUNER_FAULT) at epoch 2, step 1")
    assert lines[1] == "trial 2 failed, restarting from the start, no checkpoint yet (failure 3, no limit)"


def test_the_error_of_a_real_ray_trial_is_read_from_the_file_ray_writes(tmp_path):
    """Ray's own Trial records two failures (as Trial.handle_error does in a search); the line is the last one's."""
    import traceback

    from ray.exceptions import RayTaskError
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    class LocalTrial(Trial):  # the driver's staging folder, without starting Ray
        local_path = property(lambda self: str(tmp_path / "staging"))

    storage = StorageContext(storage_path=str(tmp_path / "runs"), experiment_dir_name="x", trial_dir_name="trial_a")
    real = LocalTrial("train_trial", stub=True, storage=storage, max_failures=1)
    (tmp_path / "staging").mkdir()
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=3, trials=1, stream=out)
    for step, hook in ((1, printer.on_trial_recover), (2, printer.on_trial_error)):
        try:
            raise RuntimeError(f"injected fault (TUNER_FAULT) at epoch 2, step {step}")
        except RuntimeError as err:
            real.handle_error(RayTaskError("ImplicitFunc.train", traceback.format_exc(), err, pid=1, ip="127.0.0.1"))
        hook(0, [real], real)
    lines = out.getvalue().splitlines()
    # A trial without a number (a run made before trials were numbered) is named by its id.
    assert lines[0].startswith(f"trial {real.trial_id} failed, restarting from the start, no checkpoint yet "
                               "(failure 1 of 1): RuntimeError: injected fault (TUNER_FAULT) at epoch 2, step 1")
    assert lines[1].startswith(f"trial {real.trial_id} failed after 0 steps: RuntimeError: injected fault "
                               "(TUNER_FAULT) at epoch 2, step 2 |")
    assert real.error_file not in out.getvalue()


def test_the_counts_agree_with_the_event_on_their_line():
    """Ray calls on_trial_start before it marks a trial RUNNING and on_trial_complete before TERMINATED."""
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=40, trials=4, stream=out)
    a, b = trial("a", status="PENDING", number=1), trial("b", status="RUNNING", spent=20, number=2)
    printer.on_trial_start(0, [a, b], a)  # a is still PENDING to Ray
    a.status = "RUNNING"  # as Ray marks it next
    printer.on_trial_complete(0, [a, b], b)  # b is still RUNNING to Ray: ASHA stopped it at 20 of 40 steps
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("trial   1 (a) started | running 2, stopped early 0, done 0 of 4")
    assert lines[1] == "trial 2 (b) stopped early by ASHA after 20 steps | running 1, stopped early 1, done 0 of 4"


def test_a_trial_is_named_by_the_number_in_its_config_with_its_id_once():
    out = io.StringIO()
    printer = ProgressPrinter("val_acc", "max", budget_steps=40, trials=5, stream=out)
    d = trial("d", number=4)  # numbers are the searcher's (creation order), not the order trials start in
    printer.on_trial_start(0, [d], d)
    printer.on_trial_result(0, [d], d, {"val_acc": 0.5, "budget_steps": 20, "epoch": 1})
    d.status, d.last_result = "TERMINATED", {"budget_steps": 40}
    printer.on_trial_complete(0, [d], d)
    lines = out.getvalue().splitlines()
    assert "] trial   4 (d) started | running 1" in lines[0]
    assert "] trial   4 step    20 (epoch   1): val_acc 0.5000" in lines[1]
    assert lines[2].startswith("trial 4 completed after 40 steps")
    assert all("(d)" not in line for line in lines[1:])


def test_a_resumed_search_names_its_restored_trials_again_and_says_where_they_resume():
    import pickle

    printer = ProgressPrinter("val_acc", "max", budget_steps=40, trials=3)
    first = trial("c", number=3)
    printer.on_trial_start(0, [first], first)
    restored = pickle.loads(pickle.dumps(printer))  # Ray restores callbacks from the pickled run
    restored.stream = out = io.StringIO()
    restored.setup(total_num_samples=5)  # `tuner resume --trials 2`
    c = trial("c", status="PENDING", spent=20, number=3)
    e = trial("e", status="PENDING", number=5)
    restored.on_trial_start(0, [c, e], c)
    c.status = "RUNNING"
    restored.on_trial_start(0, [c, e], e)
    lines = out.getvalue().splitlines()
    assert "] trial   3 (c) resumed at step 20 | running 1, stopped early 0, done 0 of 5" in lines[0]
    assert "] trial   5 (e) started | running 2, stopped early 0, done 0 of 5" in lines[1]
