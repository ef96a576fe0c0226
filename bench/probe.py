"""The linear probe's cost per trial: fitted by the first trial on a node, read from the node cache after.

Trials with head_init=probe through the real Trainer path (`Trainer(...).run_round(1)`, the probe round),
one after another in this process against a fresh node cache (a temporary $TUNER_CACHE), on generated
data: the demo generator's 10 classes (8 demo and 2 transfer shapes), 135 training images a class
(1,350 images, about the 1,347 of issue 19's folder) at 32 px, ResNet-50 with random init
(weights=none: nothing can be downloaded here; the seed is fixed, so every trial has the same weights),
probe_l2 picked by cross-validation as in a search. Prints each trial's `probe_seconds` (the first one
includes computing the backbone features) and `probe_cached`, then the machine line.

    python bench/probe.py [--trials 4] [--per-class 135] [--image-size 32] [--help]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from common import data_folder, machine_line

from tuner.train import folders
from tuner.train.config import make_config
from tuner.train.demo_data import CLASSES, TRANSFER_CLASSES
from tuner.train.engine import Trainer


def probe_round(config, splits, device: str) -> dict:
    """The probe round of one new trial: its metrics (probe_seconds, probe_cached, probe_l2, ...)."""
    return Trainer(config, splits, device=device).run_round(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials in a row on the node (the first fits)")
    parser.add_argument("--per-class", type=int, default=135, help="training images a class (10 classes)")
    parser.add_argument("--image-size", type=int, default=32, help="training image size (px)")
    parser.add_argument("--model", default="resnet50", help="backbone (random init)")
    args = parser.parse_args()
    config = make_config({"model": args.model, "weights": "none", "head_init": "probe", "image_size": args.image_size,
                          "steps": 1})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    classes = CLASSES + TRANSFER_CLASSES[:2]
    with data_folder(None, train_per_class=args.per_class, val_per_class=10, test_per_class=0,
                     classes=classes) as data, tempfile.TemporaryDirectory(prefix="tuner-probe-cache-") as node:
        os.environ["TUNER_CACHE"] = node  # a fresh node: the first trial fits the probe
        splits = folders.load_splits(Path(data))
        print(f"{len(splits.train)} training images, {len(splits.classes)} classes, {args.image_size} px, "
              f"{args.model} random init (seed {config.seed}), probe_l2 by cross-validation, "
              f"torch threads {torch.get_num_threads()}")
        for trial in range(args.trials):
            metrics = probe_round(config, splits, device)
            print(f"trial {trial + 1}: probe_seconds {metrics['probe_seconds']:7.2f}  "
                  f"probe_cached {metrics['probe_cached']!s:<5}  probe_l2 {metrics['probe_l2']:g}  "
                  f"probe_cv_acc {metrics['probe_cv_acc']:.3f}  round seconds {metrics['epoch_seconds']:.2f}",
                  flush=True)
    print(machine_line(device))


if __name__ == "__main__":
    main()
