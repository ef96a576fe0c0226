"""What ASHA saves: the same seeded search with ASHA and without early stopping, side by side.

Both runs use the same space file, data, Optuna seed and number of trials; the only difference is
`--no-early-stopping`. Printed for each: trial-epochs spent, best val_acc, wall time; then the ratio
ASHA / no early stopping. With one trial at a time (`--max-concurrent 1`, the default here) TPE sees
the same history in both runs until ASHA first stops a trial, so the comparison is as fair as a
sequential search allows.

Run from the repository root:  python bench/search.py [--space demo] [--trials 6] [--help]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def run_search(args, storage: Path, name: str, early_stopping: bool) -> dict:
    command = [sys.executable, "-m", "tuner", "search", "--space", args.space, "--storage", str(storage),
               "--name", name, "--trials", str(args.trials), "--max-epochs", str(args.max_epochs),
               "--grace-period", str(args.grace_period), "--reduction-factor", str(args.reduction_factor),
               "--max-concurrent", str(args.max_concurrent), "--cpus-per-trial", str(args.cpus_per_trial),
               "--seed", str(args.seed)]
    if args.data:
        command += ["--data", args.data]
    if not early_stopping:
        command.append("--no-early-stopping")
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    trials = pq.read_table(storage / name / "trials.parquet").to_pylist()
    return {
        "trial_epochs": sum(row["epochs"] for row in trials),
        "best_val_acc": max(row["val_acc"] for row in trials if row["val_acc"] is not None),
        "seconds": seconds,
        "trials": len(trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--space", default="demo", help="space file or name")
    parser.add_argument("--data", help="image folder (default: the space's demo data)")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--cpus-per-trial", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tuner-bench-search-") as folder:
        storage = Path(folder)
        asha = run_search(args, storage, "asha", early_stopping=True)
        full = run_search(args, storage, "full", early_stopping=False)

    print(f"space {args.space}: {args.trials} trials, max {args.max_epochs} epochs, seed {args.seed}, "
          f"ASHA grace {args.grace_period} reduction {args.reduction_factor}, {args.max_concurrent} at a time")
    print(f"{'':22}{'trial-epochs':>14}{'best val_acc':>14}{'seconds':>10}")
    for label, result in (("ASHA", asha), ("no early stopping", full)):
        print(f"{label:22}{result['trial_epochs']:>14}{result['best_val_acc']:>14.4f}{result['seconds']:>10.0f}")
    print(f"ratio ASHA / none: trial-epochs {asha['trial_epochs'] / full['trial_epochs']:.2f}, "
          f"seconds {asha['seconds'] / full['seconds']:.2f}, "
          f"best val_acc difference {100 * (asha['best_val_acc'] - full['best_val_acc']):+.1f} points")


if __name__ == "__main__":
    main()
