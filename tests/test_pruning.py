"""Weights no trial will be delivered or resumed from are deleted while the search runs (search/pruning.py):
the rule on planted checkpoints, then a real search stopped by SIGINT, whose folders show what went when."""

import json
import os

import numpy as np
import pytest
from stopped_searches import tuner_in_session, write_tiny_search

from tuner.runs.selection import (
    ALPHA,
    MOST_COMPARISONS,
    Candidate,
    may_be_within_noise_of_a_better,
    mcnemar_p_of_counts,
    select,
)
from tuner.runs.selection import CANDIDATES as SELECTION_CANDIDATES
from tuner.search.pruning import Kept, weights_to_delete
from tuner.search.trainable import PREDICTIONS, TRAINER_STATE, WEIGHTS_DELETED


def kept(path, trial, score, *, best=True, latest=False, ended=True, correct=None, steps=10):
    candidate = None if correct is None else Candidate(trial, np.array(correct, dtype=bool), stages=1, steps=steps)
    return Kept(path, trial, score, best, latest, ended, candidate)


def deleted(checkpoints, selection="highest", mode="max", metric="val_acc"):
    return sorted(k.path for k, _ in weights_to_delete(checkpoints, metric, mode, selection))


def reasons(checkpoints, selection="highest"):
    return {k.path: why for k, why in weights_to_delete(checkpoints, "val_acc", "max", selection)}


def test_only_the_search_best_and_unfinished_trials_latest_checkpoints_keep_their_weights():
    checkpoints = [
        kept("a/1", "a", 0.9),  # the search's best (an ended trial's)
        kept("a/2", "a", 0.7, best=False, latest=True),  # its latest: the trial has ended, nothing resumes it
        kept("b/1", "b", 0.8),  # an ended trial below the best
        kept("c/1", "c", 0.6),  # a running trial's best below the search's best, not its latest
        kept("c/3", "c", 0.5, best=False, latest=True, ended=False),  # ... its latest, which resume needs
        kept("d/2", "d", 0.4, latest=True, ended=False),  # a running trial's best and latest: kept
    ]
    assert deleted(checkpoints) == ["a/2", "b/1", "c/1"]
    why = reasons(checkpoints)
    assert why["b/1"] == "below the search's best (0.9000, trial a)"
    assert why["a/2"] == "the trial has ended, and this is not its best"


def test_the_best_is_found_as_the_export_ranks_ties_by_trial_id_and_by_the_mode():
    tied = [kept("b/1", "b", 0.8), kept("a/1", "a", 0.8)]
    assert deleted(tied) == ["b/1"]
    losses = [kept("a/1", "a", 0.3), kept("b/1", "b", 0.2)]  # val_loss: lower is better
    assert deleted(losses, mode="min") == ["a/1"]


def test_nothing_is_deleted_before_any_checkpoint_has_a_score():
    assert deleted([kept("a/1", "a", float("nan")), kept("b/1", "b", float("nan"))]) == []


def test_within_noise_keeps_every_trial_that_some_later_best_could_be_within_noise_of():
    best = [True] * 18 + [False] * 2  # 0.90 on 20 images
    close = [True] * 17 + [False] * 3  # 0.85: one discordant image, McNemar p = 1
    # 0.60, right only where the best is: McNemar p = 0.031 against it (6 discordant images, all the best's),
    # but a later trial as good, wrong on 2 of these 12, right on the other 18, has p = 0.11 against it.
    lower = [True] * 12 + [False] * 8
    # 0.10: a trial as good as the best has McNemar p 2 (1 + 20 + 190) / 2**20 = 4e-4 against it at most, below
    # 0.05 / MOST_COMPARISONS, which Holm's adjustment rejects however many trials are compared.
    apart = [False] * 18 + [True] * 2
    checkpoints = [kept("a/1", "a", 0.9, correct=best), kept("b/1", "b", 0.85, correct=close),
                   kept("c/1", "c", 0.1, correct=apart), kept("d/1", "d", 0.5),  # d: no predictions, kept
                   kept("e/1", "e", 0.6, correct=lower)]
    assert deleted(checkpoints, selection="within_noise") == ["c/1"]
    # At 0.40 the largest p is 0.013: Holm over 10 comparisons might keep it within noise, so it stays.
    nearer = [*checkpoints[:2], kept("c/1", "c", 0.4, correct=[False] * 10 + [True] * 8 + [False] * 2),
              *checkpoints[3:]]
    assert deleted(nearer, selection="within_noise") == []
    assert reasons(checkpoints, "within_noise")["c/1"].startswith("apart from any trial as good as the search's best")
    assert deleted(checkpoints, selection="highest") == ["b/1", "c/1", "d/1", "e/1"]
    # Ranked by val_loss, a better trial may be less accurate: no accuracy bound, only the rank and the probe.
    assert deleted(checkpoints, selection="within_noise", metric="val_loss", mode="min") == []


def test_within_noise_deletes_what_ranks_below_the_compared_trials_or_below_an_ended_probe_head():
    top = [kept(f"{n}/1", f"t{n:02d}", 0.9 - n / 100) for n in range(SELECTION_CANDIDATES)]  # no predictions
    eleventh = kept("x/1", "x", 0.5)
    assert deleted([*top, eleventh], selection="within_noise") == ["x/1"]
    assert deleted([*top[:-1], eleventh], selection="within_noise") == []  # 9 above it: it may be compared
    # The best probe head is compared wherever it ranks, unless an ended trial's probe head ranks above it.
    head = [True] * 10 + [False] * 10
    probe = kept("p/1", "p", 0.5, correct=head, steps=0)
    assert deleted([*top, probe], selection="within_noise") == []
    above = kept("o/1", "o", 0.5, correct=head, steps=0)  # the same probe head, earlier by trial id
    assert deleted([*top, above, probe], selection="within_noise") == ["p/1"]
    running = kept("o/1", "o", 0.5, correct=head, steps=0, ended=False)  # its best may move past the probe round
    assert deleted([*top, running, probe], selection="within_noise") == []
    best = [True] * 18 + [False] * 2
    probe = [True] * 16 + [False] * 4  # 0.80 at step 0: the rule delivers nothing less accurate
    below = [True] * 15 + [False] * 5  # 0.75: within noise of the best, but below the probe head
    checkpoints = [kept("a/1", "a", 0.9, correct=best), kept("p/1", "p", 0.8, correct=probe, steps=0),
                   kept("b/1", "b", 0.75, correct=below)]
    assert deleted(checkpoints, selection="within_noise") == ["b/1"]
    assert reasons(checkpoints, "within_noise")["b/1"] == (
        "below the probe head of trial p, under which the rule delivers nothing")
    running_probe = [*checkpoints[:1], kept("p/1", "p", 0.8, correct=probe, steps=0, ended=False),
                     checkpoints[2]]  # its best may become a later round, no longer a probe head: b may be compared
    assert deleted(running_probe, selection="within_noise") == []


@pytest.mark.parametrize("images", [6, 9, 14])
def test_the_bound_on_mcnemar_is_the_largest_p_of_any_better_classifier(images):
    # Every classifier with at least `at_least` right, by its discordant counts against `other`, enumerated.
    for right in range(images + 1):
        other = Candidate("o", np.array([True] * right + [False] * (images - right)), stages=1, steps=1)
        for at_least in range(images + 1):
            possible = any(mcnemar_p_of_counts(b, c) >= ALPHA / MOST_COMPARISONS
                           for b in range(right + 1) for c in range(images - right + 1)
                           if right - b + c >= at_least)
            assert may_be_within_noise_of_a_better(other, at_least) == possible, (right, at_least)


def test_a_trial_whose_weights_are_gone_is_compared_but_never_delivered():
    best = Candidate("a", np.array([True] * 18 + [False] * 2), stages=3, steps=100)
    cheapest = Candidate("b", np.array([True] * 17 + [False] * 3), stages=1, steps=20)
    cheaper = Candidate("c", np.array([True] * 17 + [False] * 3), stages=2, steps=40)
    assert select([best, cheapest, cheaper]).delivered == "b"
    chosen = select([best, cheapest, cheaper], deliverable={"a", "c"})
    assert chosen.delivered == "c" and [c.within_noise for c in chosen.comparisons] == [True, True, True]
    assert chosen.reason.endswith("; left out, their weights deleted during the search: b")


@pytest.mark.slow
def test_a_search_deletes_what_no_trial_needs_as_it_goes_and_still_resumes(tmp_path):
    # 4 trials one at a time, none stopped early; SIGINT in the 4th trial's 2nd epoch: no export deletes anything
    # after a signal, so the folders show what went while the search ran.
    root = write_tiny_search(tmp_path)
    markers = root / "markers"
    markers.mkdir()
    env = {**os.environ, "TUNER_FAULT": "sigint@epoch=2,step=1,after=3", "TUNER_FAULT_DIR": str(markers)}
    args = ("--space", str(root / "space.py"), "--data", str(root / "data"), "--storage", str(root / "runs"),
            "--name", "pruned", "--trials", "4", "--selection", "highest")  # under highest: every trial below goes
    stopped = tuner_in_session("search", *args, env=env, pgid_file=markers / "search.pgid")
    assert stopped.returncode == 130, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    run = root / "runs" / "pruned"
    texts = {folder.name: (folder / "result.json").read_text() for folder in run.glob("trial_*")}
    reports = {name: [json.loads(line) for line in text.splitlines()] for name, text in texts.items()}
    ended = {name for name, rows in reports.items() if len(rows) == 3}
    (running,) = set(reports) - ended
    assert len(ended) == 3
    # The search's best checkpoint, as the export ranks them: the highest val_acc, ties by trial id.
    best = min(reports, key=lambda name: (-max(r["val_acc"] for r in reports[name]), name))

    def holds(folder):
        weights, marker = (folder / TRAINER_STATE).is_file(), (folder / WEIGHTS_DELETED).is_file()
        assert weights != marker and (folder / PREDICTIONS).is_file()  # one or the other, predictions always
        return weights

    for name in ended:
        holding = [f for f in sorted((run / name).glob("checkpoint_*")) if holds(f)]
        if name != best:  # below the search's best: every checkpoint lost its weights when the trial ended
            assert holding == [], name
            record = json.loads((next((run / name).glob("checkpoint_*")) / WEIGHTS_DELETED).read_text())
            assert record["bytes"] > 0 and record["why"].startswith("below the search's best")
            continue
        (kept,) = holding  # its best epoch's (what best/ delivers); its later latest lost its weights
        epoch = int(kept.name.removeprefix("checkpoint_")) + 1
        assert reports[name][epoch - 1]["val_acc"] == max(r["val_acc"] for r in reports[name])
    assert holds(max((run / running).glob("checkpoint_*")))  # the interrupted trial resumes from its latest

    resumed = tuner_in_session("resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Could not recover" not in resumed.stdout + resumed.stderr
    after = {folder.name: (folder / "result.json").read_text() for folder in run.glob("trial_*")}
    assert all(after[name] == texts[name] for name in ended)  # finished trials neither lost nor trained again
    steps = [json.loads(line)["budget_steps"] for line in after[running].splitlines()]
    assert len(steps) == 3 and len(set(steps)) == 3  # the interrupted trial went on: no round trained twice


def test_a_storage_error_while_deleting_warns_and_the_next_event_deletes(tmp_path, capsys):
    # Two ended trials' checkpoints on a file system whose deletes fail once with EIO (pyarrow over fsspec's
    # local one): the callback must not raise, since Ray would end the search on a callback's error.
    import errno
    from types import SimpleNamespace

    import pyarrow.fs as pafs
    from fsspec.implementations.local import LocalFileSystem
    from ray import tune
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    from tuner.search.pruning import CheckpointPruner

    class FailingOnce(LocalFileSystem):
        failures = 1

        def rm(self, path, *args, **kwargs):
            if FailingOnce.failures:
                FailingOnce.failures -= 1
                raise OSError(errno.EIO, "Input/output error", path)
            super().rm(path, *args, **kwargs)

    fs = pafs.PyFileSystem(pafs.FSSpecHandler(FailingOnce()))
    trials = []
    for trial_id, score in (("a", 0.9), ("b", 0.5)):
        folder = tmp_path / trial_id / "checkpoint_000000"
        folder.mkdir(parents=True)
        (folder / TRAINER_STATE).write_bytes(b"x" * 1000)
        manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_acc"))
        manager.register_checkpoint(_TrainingResult(tune.Checkpoint(str(folder), filesystem=fs), {"val_acc": score}))
        trials.append(SimpleNamespace(trial_id=trial_id, status="TERMINATED",
                                      run_metadata=SimpleNamespace(checkpoint_manager=manager)))
    pruner = CheckpointPruner("val_acc", "max", "highest")
    pruner.on_trial_complete(0, trials, trials[1])
    assert "warning: could not delete unneeded checkpoint weights" in capsys.readouterr().err
    assert (tmp_path / "b" / "checkpoint_000000" / TRAINER_STATE).is_file()
    pruner.on_trial_complete(0, trials, trials[1])
    assert not (tmp_path / "b" / "checkpoint_000000" / TRAINER_STATE).exists()  # the next event deleted it
    assert (tmp_path / "a" / "checkpoint_000000" / TRAINER_STATE).is_file()  # the search's best keeps its own
