"""The demo search stopped with Ctrl-C at random moments, resumed after each, against the same search run
without a stop: does every stop cost at most the round each running trial was in?

    python bench/interrupts.py [--stops 5] [--seed 0] [--work DIR]

Runs `tuner search --space demo` (the quickstart) once straight through, then once with `--stops` SIGINTs,
each at a random moment (uniform over 10-90 s after the search or its resume started), resuming after
each with `tuner resume RUN` until the search ends. Prints, for both: trials, errored trials, trials that
trained their first round twice (a restart from scratch), rounds reported twice, and trial-steps; then the
interrupted search's extra trial-steps against the bound of one round per running trial per stop.
Takes about 10 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, search_tables  # noqa: E402


def run_tuner(args: list[str], stop_after: float | None) -> tuple[int, float]:
    """`python -m tuner ARGS`, sent SIGINT after `stop_after` seconds (None: never); (exit code, seconds)."""
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "tuner", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=stop_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=600)
    return process.returncode, time.time() - started


def tally(run: Path) -> dict:
    """What the run's trials reported (result.json: every report, retries and resumes included)."""
    trials = []
    for folder in sorted(run.glob("trial_*")):
        text = (folder / "result.json").read_text() if (folder / "result.json").is_file() else ""
        trials.append([json.loads(line) for line in text.splitlines()])
    gaps = sorted(b["step"] - a["step"] for r in trials for a, b in zip(r, r[1:], strict=False)
                  if b["step"] > a["step"])
    return {"trials": len(trials),
            "restarted from scratch": sum(sum(x["epoch"] == 1 for x in r) > 1 for r in trials),
            "rounds reported twice": sum(len(r) - len({x["budget_steps"] for x in r}) for r in trials),
            "trial-steps": sum(r[-1]["step"] for r in trials if r),
            "steps a round": gaps[len(gaps) // 2] if gaps else 0}


def statuses(run: Path) -> dict:
    """Trials by status, from trials.parquet."""
    return dict(Counter(row["status"] for row in search_tables(run)[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=5, help="SIGINTs sent to the interrupted search")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stop times")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tuner-bench-interrupts-"))
    os.chdir(work)  # the demo data is written here
    print(machine_line())
    search = ["search", "--space", "demo", "--storage", str(work / "runs")]

    code, seconds = run_tuner([*search, "--name", "straight"], None)
    assert code == 0, f"the straight search exited {code}"
    straight = work / "runs" / "straight"
    print(f"straight through: {seconds:.0f} s, {statuses(straight)}")

    draw = random.Random(args.seed)
    run = work / "runs" / "stopped"
    command, stops, running_at_stops = [*search, "--name", "stopped"], 0, 0
    while True:
        stop_after = draw.uniform(10, 90) if stops < args.stops else None
        code, seconds = run_tuner(command, stop_after)
        command = ["resume", str(run)]
        if code == 0:
            break
        assert code == 130, f"exit {code} after SIGINT"
        stops += 1
        # No tables: stopped before any trial ran (a graceful stop in the search writes them).
        interrupted = statuses(run).get("interrupted", 0) if (run / "trials.parquet").is_file() else 0
        running_at_stops += interrupted
        print(f"stop {stops}: SIGINT after {stop_after:.0f} s, {interrupted} trials interrupted")
    print(f"stopped {stops} times, then finished: {statuses(run)}")

    found = {"straight": tally(straight), "stopped": tally(run)}
    for name, folder in (("straight", straight), ("stopped", run)):
        print(f"  {name:>8}: {found[name]['trials']} trials, {statuses(folder)}, restarted from scratch "
              f"{found[name]['restarted from scratch']}, rounds reported twice "
              f"{found[name]['rounds reported twice']}, trial-steps {found[name]['trial-steps']}")
    stopped, a_round = found["stopped"]["trial-steps"], found["stopped"]["steps a round"]
    bound = found["straight"]["trial-steps"] + running_at_stops * a_round
    print(f"trial-steps of the stopped search {stopped} against the bound {bound} (straight + one round of "
          f"{a_round} steps for each of the {running_at_stops} trials running at a stop; ASHA's choices may "
          f"differ between the two searches)")


if __name__ == "__main__":
    main()
