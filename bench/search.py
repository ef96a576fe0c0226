"""Whole searches side by side: what ASHA saves, what the feature cache saves, how fast trials turn over.

Each mode runs the same seeded search twice through `python -m tuner search`, changing one thing, and
prints both results and their ratio:

  asha        ASHA against --no-early-stopping (trial-epochs, best val_acc, seconds)
  features    the feature cache on against `--set feature_cache=false` (seconds, best val_acc)
  turnover    reused Ray workers against --no-reuse-workers (median seconds from one trial's last
              report to the next trial's first training step, one trial at a time)
  selection   from scratch: the finetune space from random init (ResNet-18, 32 px) on the demo data,
              delivered by --selection within_noise (the default) against highest, the same trials
              (test_acc of best/ on 50 test images a class, which no search selects on)

Every run also prints its trial turnover. Run from the repository root on an idle machine:
    python bench/search.py asha        [--space demo] [--trials 12] [--help]
    python bench/search.py features
    python bench/search.py turnover
    python bench/search.py selection
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import best_metrics, machine_line, search_tables, tuner_command

from tuner.train.demo_data import write_demo_data

# Per mode: the space and the flags both runs share, then (label, extra flags) of the two variants.
MODES = {
    "asha": ("demo", [], [("ASHA", []), ("no early stopping", ["--no-early-stopping"])]),
    # Random init (no download here) at 64 px keeps the uncached side to minutes on a CPU.
    "features": ("feature_extract", ["--set", "weights=none", "--set", "image_size=64"],
                 [("feature cache", []), ("no feature cache", ["--set", "feature_cache=false"])]),
    "turnover": ("demo", ["--max-epochs", "1", "--grace-period", "1", "--set", "image_size=32"],
                 [("reused workers", []), ("a worker per trial", ["--no-reuse-workers"])]),
    "selection": ("finetune", ["--set", "weights=none", "--set", "model=resnet18", "--set", "image_size=32"],
                  [("within_noise", []), ("highest", ["--selection", "highest"])]),
}
SPACES_WITHOUT_DEMO_DATA = ("features", "selection")


def run_search(args, space: str, flags: list[str], storage: Path, name: str) -> dict:
    command = tuner_command("search", "--space", space, "--storage", str(storage), "--name", name, "--max-concurrent",
                            "1", "--cpus-per-trial", str(args.cpus_per_trial), "--sampler-seed", str(args.seed), *flags)
    if args.trials:
        command += ["--trials", str(args.trials)]
    if args.data:
        command += ["--data", args.data]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    trials, epochs, record = search_tables(storage / name)
    chosen = {e["compute"] for e in epochs if e.get("compute")}
    return {
        "trials": len(trials),
        "compute": ", ".join(sorted(chosen)) or "?",  # what the trials ran in, as chosen on this node
        "compute_reason": (record.get("compute") or {}).get("reason", "chosen by each trial"),
        "trial_epochs": sum(row["epochs_run"] for row in trials),
        "best_val_acc": max(row["val_acc"] for row in trials if row["val_acc"] is not None),
        "delivered_test_acc": best_metrics(storage / name).get("test_acc"),
        "seconds": seconds,
        "turnover": median_turnover(epochs),
    }


def median_turnover(epochs: list[dict]) -> float:
    """Median gap between a trial's last report and the next trial's first training step (sequential trials)."""
    spans = {}
    for row in epochs:
        start, end = spans.get(row["trial_id"], (float("inf"), 0.0))
        first = row["first_step_at"] if row["first_step_at"] is not None else float("inf")
        spans[row["trial_id"]] = (min(start, first), max(end, row["reported_at"]))
    ordered = sorted(spans.values())
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(ordered)]
    return statistics.median(gaps) if gaps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("mode", choices=MODES, nargs="?", default="asha")
    parser.add_argument("--space", help="space file or name (default: the mode's)")
    parser.add_argument("--data", help="image folder (default: the demo data)")
    parser.add_argument("--trials", type=int, help="trials per search (default: the space's)")
    parser.add_argument("--cpus-per-trial", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    space, shared, variants = MODES[args.mode]
    space = args.space or space
    results = []
    with tempfile.TemporaryDirectory(prefix="tuner-bench-search-") as folder:
        if args.data is None and args.mode in SPACES_WITHOUT_DEMO_DATA:
            args.data = str(Path(folder) / "demo-data")
            # The selection's test_acc on 50 images a class (400): one image is 0.25 points, not 1.25.
            write_demo_data(args.data, **({"test_per_class": 50} if args.mode == "selection" else {}))
        for i, (label, extra) in enumerate(variants):
            results.append((label, run_search(args, space, [*shared, *extra], Path(folder), f"run{i}")))

    print(f"{args.mode}: space {space}, {results[0][1]['trials']} trials one at a time, seed {args.seed}, "
          f"flags {' '.join(shared) or '-'}")
    print(machine_line())
    print(f"{'':22}{'trial-epochs':>14}{'best val_acc':>14}{'test_acc':>10}{'seconds':>10}{'turnover s':>12}  compute")
    for label, r in results:
        test_acc = "-" if r["delivered_test_acc"] is None else f"{r['delivered_test_acc']:.4f}"
        print(f"{label:22}{r['trial_epochs']:>14}{r['best_val_acc']:>14.4f}{test_acc:>10}{r['seconds']:>10.0f}"
              f"{r['turnover']:>12.2f}  {r['compute']} ({r['compute_reason']})")
    (a_label, a), (b_label, b) = results
    print(f"ratio {a_label} / {b_label}: trial-epochs {a['trial_epochs'] / b['trial_epochs']:.2f}, "
          f"seconds {a['seconds'] / b['seconds']:.2f}, turnover {a['turnover'] / b['turnover']:.2f}, "
          f"best val_acc difference {100 * (a['best_val_acc'] - b['best_val_acc']):+.1f} points")
    if a["delivered_test_acc"] is not None and b["delivered_test_acc"] is not None:
        print(f"delivered test_acc (best/, on the test split): {a_label} - {b_label} "
              f"{100 * (a['delivered_test_acc'] - b['delivered_test_acc']):+.1f} points")


if __name__ == "__main__":
    main()
