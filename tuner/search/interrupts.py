"""Ctrl-C and SIGTERM during a search: the first stops it gracefully, a second at once; both can resume.

Ray Tune stops a search gracefully on SIGINT (it saves the search state and returns from fit() as if the
search had ended) and SIGUSR1, and not at all on SIGTERM, which a batch scheduler or `docker stop` sends
before SIGKILL. Here both signals take one path: the first, while trials run, asks Ray for its graceful
stop through SIGUSR1 and is remembered, so the driver knows that fit() returned from an interruption, not
from the end of the search; a second, or one outside fit() (preparing, exporting), raises
KeyboardInterrupt at once. Either way the trials' checkpoints stay and `tuner resume RUN` goes on.
"""

from __future__ import annotations

import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A search stopped by a signal, named in the message; the CLI exits with 128 + its number."""

    @property
    def exit_code(self) -> int:
        return 128 + signal.Signals[str(self)].value


class Interrupts:
    """Signal handling for one search in the main thread: `with Interrupts() as interrupts:` then
    `interrupts.fit(tuner)`; afterwards `interrupts.signal` names the first signal (None: none came)."""

    def __init__(self):
        self.signal: str | None = None
        self._in_fit = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours replaces Ray's, which would replace ours
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def fit(self, tuner):
        """tuner.fit(), during which the first signal is Ray's graceful stop."""
        self._in_fit = True
        try:
            return tuner.fit()
        finally:
            self._in_fit = False

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        first = self.signal is None
        self.signal = self.signal or name
        # Ray installs its SIGUSR1 handler when fit() starts its loop; before that SIGUSR1 would kill us.
        if first and self._in_fit and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
            print(f"\n{name}: stopping the search; the running trials keep their checkpoints and "
                  f"`tuner resume` goes on from them (again to stop at once)", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        raise Interrupted(name)
