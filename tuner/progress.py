"""One readable line per trial result while a search runs, instead of Ray's log flood."""

from __future__ import annotations

import sys
import time

from ray import tune

from .config import is_better


class ProgressPrinter(tune.Callback):
    """Prints `trial N epoch E: val_acc x (trial best y, search best z) | running, stopped early, done`."""

    def __init__(self, metric: str, mode: str, max_epochs: int, trials: int, stream=None):
        self.metric, self.mode, self.max_epochs, self.trials = metric, mode, max_epochs, trials
        self.stream = stream
        self.best: float | None = None
        self.numbers: dict[str, int] = {}  # Ray's trial id -> 1, 2, 3 in start order
        self.trial_best: dict[str, float] = {}
        self.started = time.monotonic()

    def __getstate__(self):  # Ray pickles callbacks with the run; a stream cannot travel
        return {k: v for k, v in self.__dict__.items() if k != "stream"} | {"stream": None}

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _counts(self, trials) -> str:
        running = sum(t.status == "RUNNING" for t in trials)
        finished = [t for t in trials if t.status == "TERMINATED"]
        early = sum(self._epochs(t) < self.max_epochs for t in finished)
        errored = sum(t.status == "ERROR" for t in trials)
        text = f"running {running}, stopped early {early}, done {len(finished) - early}"
        return text + (f", errored {errored}" if errored else "") + f" of {self.trials}"

    @staticmethod
    def _epochs(trial) -> int:
        return int((trial.last_result or {}).get("training_iteration", 0))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        number = self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)
        value = result.get(self.metric)
        if is_better(self.mode, value, self.trial_best.get(trial.trial_id)):  # NaN and None never win
            self.trial_best[trial.trial_id] = value
        if is_better(self.mode, value, self.best):
            self.best = value
        minutes = (time.monotonic() - self.started) / 60
        self._print(f"[{minutes:5.1f} min] trial {number:>3} epoch {result['training_iteration']:>3}: "
                    f"{self.metric} {_number(value)} (trial best {_number(self.trial_best.get(trial.trial_id))}, "
                    f"search best {_number(self.best)}) | {self._counts(trials)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        number = self.numbers.get(trial.trial_id, "?")
        how = "stopped early by ASHA" if self._epochs(trial) < self.max_epochs else "completed"
        self._print(f"trial {number} {how} after {self._epochs(trial)} epochs | {self._counts(trials)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        number = self.numbers.get(trial.trial_id, "?")
        self._print(f"trial {number} failed after {self._epochs(trial)} epochs: {trial.error_file or ''}")


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
