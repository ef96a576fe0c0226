"""What the tests that stop and resume real searches share: a tiny space, its data, and `tuner` run as the
leader of a session of its own (so a fault can signal or kill its whole process group)."""

import os
import signal
import subprocess
import sys
import textwrap

from tuner.train.demo_data import write_demo_data

# resnet18 at 32 px, 3 trials of 3 epochs of 2 steps, one at a time; best/ is the search's choice (no refit).
TINY_SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16, "trials": 3,
            "max_epochs": 3, "grace_period": 3, "max_concurrent": 1, "refit": "off"}

def space(trial):
    trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
"""


def write_tiny_search(root, space: str = TINY_SPACE):
    """ROOT/data (demo data, 4 train and 2 val images a class: 2 steps an epoch) and ROOT/space.py."""
    write_demo_data(root / "data", train_per_class=4, val_per_class=2, test_per_class=0)
    (root / "space.py").write_text(textwrap.dedent(space))
    return root


def tuner_in_session(*args, env=None, pgid_file=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run `tuner ARGS` (in `cwd`) as the leader of a session of its own; its id goes to `pgid_file` for the
    faults that signal or kill the search (tuner/testing/faults.py), long before any of them can fire."""
    process = subprocess.Popen([sys.executable, "-m", "tuner", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, cwd=cwd)
    if pgid_file is not None:
        pgid_file.write_text(str(process.pid))
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
