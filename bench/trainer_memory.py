"""bench/trainer.py --memory: the peak resident memory of one CPU training trial of ours, fp32 next to bf16.

One trial: 224 px, batch 32, ResNet-50, seed recipe stages, workers 0, at precision fp32 and bf16, each
in a fresh process (ru_maxrss after `--memory-steps` steps, and its increase over the process right
after the model was built). A search runs several such trials per node, so this bounds how many fit in
a node's memory. Run as a script, this file is that fresh process:
    python bench/trainer_memory.py PRECISION DATA_DIR STEPS   (prints one JSON object)
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BATCH_SIZE, sample_images, seed_recipe

from tuner.train.config import make_config
from tuner.train.engine import Trainer
from tuner.train.folders import load_splits
from tuner.train.precision import cpu_has_native_bf16

MEMORY_SIZE = 224  # image size of the memory check: the product's default, where activations are largest
MEMORY_PRECISIONS = ("fp32", "bf16")


def peak_rss_mib() -> float:
    """This process's peak resident set so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def memory_trial(data_dir: Path, precision: str, steps: int) -> dict:
    """One CPU trial of ours in this (fresh) process: peak RSS after model build and after `steps` steps.

    Run in a child process so that neither the parent's nor the other precision's allocations count.
    """
    splits = load_splits(data_dir)
    splits = dataclasses.replace(splits, train=sample_images(splits.train, steps * BATCH_SIZE))
    config = make_config(seed_recipe(image_size=MEMORY_SIZE, precision=precision))
    trainer = Trainer(config, splits, device="cpu", num_workers=0)
    after_build = peak_rss_mib()
    start = time.perf_counter()
    trainer.train_one_epoch()  # `steps` batches: the subset holds exactly steps x BATCH_SIZE images
    return {"precision": precision, "after_build_mib": after_build, "peak_mib": peak_rss_mib(),
            "seconds": time.perf_counter() - start}


def measure_memory_in_child(data_dir: Path, precision: str, steps: int) -> dict:
    """`memory_trial` in a fresh Python process (this file as a script); its JSON result.

    Each child gets its own empty node cache ($TUNER_CACHE), so both precisions pay for building the
    image cache alike and nothing is written to the user's cache.
    """
    command = [sys.executable, str(Path(__file__).resolve()), precision, str(data_dir), str(steps)]
    with tempfile.TemporaryDirectory(prefix="tuner-bench-cache-") as cache_dir:
        env = {**os.environ, "TUNER_CACHE": cache_dir}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory trial ({precision}) failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_table(trials: list[dict]) -> list[str]:
    """fp32 and bf16 side by side, and bf16 / fp32 for the peak and for the increase over the build."""
    rows = ["precision  after build MiB  peak MiB  increase MiB  train s"]
    for t in trials:
        rows.append(f"{t['precision']:<9}  {t['after_build_mib']:>14.0f}  {t['peak_mib']:>8.0f}"
                    f"  {t['peak_mib'] - t['after_build_mib']:>12.0f}  {t['seconds']:>7.1f}")
    by = {t["precision"]: t for t in trials}
    if {"fp32", "bf16"} <= by.keys():
        fp32, bf16 = by["fp32"], by["bf16"]
        increase = (bf16["peak_mib"] - bf16["after_build_mib"]) / max(fp32["peak_mib"] - fp32["after_build_mib"], 1e-9)
        rows.append(f"bf16 / fp32: peak {bf16['peak_mib'] / fp32['peak_mib']:.2f}, increase {increase:.2f}")
    return rows


def compare_memory(data_dir: Path, steps: int) -> None:
    print(f"\npeak resident memory of one CPU training trial of ours: ResNet-50, {MEMORY_SIZE} px, batch "
          f"{BATCH_SIZE}, seed recipe stages (layer3 + layer4 + head), workers 0, {steps} steps; "
          f"each precision in a fresh process", flush=True)
    trials = [measure_memory_in_child(data_dir, precision, steps) for precision in MEMORY_PRECISIONS]
    print("\n".join(memory_table(trials)))
    if not cpu_has_native_bf16():
        print("(this CPU has no bf16 units: precision auto would train in fp32 here)")


if __name__ == "__main__":  # one trial, in the fresh process measure_memory_in_child started
    precision, data_dir, steps = sys.argv[1:]
    if precision not in MEMORY_PRECISIONS:
        sys.exit(f"error: precision must be one of {MEMORY_PRECISIONS}, but got {precision!r}")
    print(json.dumps(memory_trial(Path(data_dir), precision, int(steps))))
