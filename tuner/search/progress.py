"""One readable line per trial result while a search runs, instead of Ray's log flood."""

from __future__ import annotations

import sys
import time

from ray import tune

from ..runs.outcomes import NUMBER, last_error_line, trial_status
from ..train.config import is_better

_LONGEST = 300  # characters of an error message shown on a progress line


class ProgressPrinter(tune.Callback):
    """Prints `trial N step S (epoch E): val_acc x (trial best y, search best z) | running, stopped early, done`.

    N is the trial's number (runs/outcomes.NUMBER, from its config): 1, 2, 3 in the order the search created
    its trials, the same after `tuner resume`. A trial's first line names its id too, `trial N (id) started`;
    the lines after say `trial N`. S is the trial's budget spent (runs/budget.py: optimizer steps, or a tenth
    of them for head-only trials). The counts after `|` include the event of their own line.

    Besides: a line per warning a trial reports (it resumed from an older checkpoint), per retry of a
    failed trial, and per trial that ends (completed, stopped early, diverged, or failed with its error).
    """

    def __init__(self, metric: str, mode: str, budget_steps: int, trials: int, stream=None):
        self.metric, self.mode, self.budget_steps, self.trials = metric, mode, budget_steps, trials
        self.stream = stream
        self.best: float | None = None
        self.named: set[str] = set()  # the trials whose id a line has given in this process
        self.trial_best: dict[str, float] = {}
        self.started = time.monotonic()

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        if total_num_samples:  # a resumed search's total: `tuner resume --trials N` raises it
            self.trials = total_num_samples
        self.named = set()  # Ray restores this callback as pickled when the search began: ids not yet shown

    def __getstate__(self):  # Ray pickles callbacks with the run; a stream cannot travel
        return {k: v for k, v in self.__dict__.items() if k != "stream"} | {"stream": None}

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _label(self, trial) -> str:
        """The trial's NUMBER from its config; its id for a trial without one (a run made before)."""
        number = (getattr(trial, "config", None) or {}).get(NUMBER)
        return trial.trial_id if number is None else str(number)

    def _name(self, trial) -> str:
        """`trial N (id)` the first time this process names the trial, `trial N` after."""
        label = self._label(trial)
        if trial.trial_id in self.named or label == trial.trial_id:
            return f"trial {label}"
        self.named.add(trial.trial_id)
        return f"trial {label} ({trial.trial_id})"

    def _counts(self, trials, now=None, status: str | None = None) -> str:
        """The trials by state; `now` is counted as `status`: Ray calls on_trial_complete before it marks the
        trial TERMINATED, and on_trial_start before RUNNING."""
        def state(t):
            return status if now is not None and t.trial_id == now.trial_id else t.status

        running = sum(state(t) == "RUNNING" for t in trials)
        ended = [self._outcome(t) for t in trials if state(t) == "TERMINATED"]
        early, done, diverged_trials = (ended.count(s) for s in ("stopped_early", "completed", "diverged"))
        errored = sum(state(t) == "ERROR" for t in trials)
        text = f"running {running}, stopped early {early}, done {done}"
        return (text + (f", diverged {diverged_trials}" if diverged_trials else "")
                + (f", errored {errored}" if errored else "") + f" of {self.trials}")

    def _outcome(self, trial) -> str:
        """completed, stopped_early or diverged: the status of a trial Ray has TERMINATED (ended, not failed)."""
        return trial_status(trial.last_result or {}, self.budget_steps, failed=False, ended=True)

    @staticmethod
    def _spent(trial) -> int:
        return int((trial.last_result or {}).get("budget_steps", 0))

    def _minutes(self) -> str:
        return f"[{(time.monotonic() - self.started) / 60:5.1f} min]"

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.named:  # a retry after a failure: on_trial_recover said so
            return
        self.named.add(trial.trial_id)
        spent = self._spent(trial)
        how = f"resumed at step {spent}" if spent else "started"  # `tuner resume` restored the trial
        self._print(f"{self._minutes()} trial {self._label(trial):>3} ({trial.trial_id}) {how} | "
                    f"{self._counts(trials, trial, 'RUNNING')}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        label = self._label(trial)
        if result.get("warning"):  # resumed from an older checkpoint than Ray's latest (a damaged one)
            self._print(f"trial {label} warning: {result['warning']}")
        value = result.get(self.metric)
        if is_better(self.mode, value, self.trial_best.get(trial.trial_id)):  # NaN and None never win
            self.trial_best[trial.trial_id] = value
        if is_better(self.mode, value, self.best):
            self.best = value
        self._print(f"{self._minutes()} trial {label:>3} step {result['budget_steps']:>5} "
                    f"(epoch {result['epoch']:>3}): "
                    f"{self.metric} {_number(value)} (trial best {_number(self.trial_best.get(trial.trial_id))}, "
                    f"search best {_number(self.best)}) | {self._counts(trials)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        spent, outcome = self._spent(trial), self._outcome(trial)
        if outcome == "diverged":
            loss = (trial.last_result or {}).get("train_loss")
            how = f"diverged (training loss {loss})" if loss is not None else "diverged"
        else:
            how = "stopped early by ASHA" if outcome == "stopped_early" else "completed"
        self._print(f"{self._name(trial)} {how} after {spent} steps | {self._counts(trials, trial, 'TERMINATED')}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Ray retries a failed trial (up to --max-failures times) from its latest checkpoint."""
        failures, most = getattr(trial, "num_failures", None), getattr(trial, "max_failures", None)
        of = "" if failures is None else f" (failure {failures}" + (
            ", no limit)" if most is None or most < 0 else f" of {most})")
        where = ("its last checkpoint" if getattr(trial, "checkpoint", True) is not None
                 else "the start, no checkpoint yet")
        reason = error_text(trial)
        self._print(f"{self._name(trial)} failed, restarting from {where}{of}" + (f": {reason}" if reason else ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = error_text(trial) or "no error message recorded"
        self._print(f"{self._name(trial)} failed after {self._spent(trial)} steps: {reason} | "
                    f"{self._counts(trials, trial, 'ERROR')}")


def error_text(trial) -> str:
    """The last meaningful line of a trial's latest error ('' when there is none): the exception line
    that ends Ray's trace, read from the trial's error file (error.txt), else from its storage."""
    text = None
    path = getattr(trial, "error_file", None)
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            text = None
    if text is None and callable(getattr(trial, "get_error", None)):
        try:
            text = trial.get_error()  # Ray's text trace in the trial's storage (a string, despite its hint)
        except Exception:  # noqa: BLE001 - storage unreachable: fall back to the path
            text = None
    if text is None:
        return str(path or "")
    line = last_error_line(str(text))
    return line if len(line) <= _LONGEST else line[:_LONGEST - 3] + "..."


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
