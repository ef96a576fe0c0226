"""The regularisers side by side: `tuner train` with each of mixup, cutmix, random_erasing and ema_decay
off and on, on the built-in demo data, same seeds, data, model and budget for every row.

Each row is a fresh `python -m tuner train` process per seed; the table gives each seed's best-epoch
val_acc (what a run keeps), their mean, the mean test_acc of that best model (the demo data's test split,
evaluated once) and the seconds per run, with the machine it ran on. Two settings:

  scratch   (default) the demo data, ResNet-18 from random init, every stage trained
  transfer  (--weights W --data D) fine-tuning as the product is mostly used: a ResNet-50 from pretrained
            weights W (e.g. bench/transfer.py's WORK/pretrained/best/model.pt) on a small folder D (its
            WORK/target-50), the seed tutorial's recipe (layer3, layer4 and a new head, Adam 1e-3 / 1e-4 /
            5e-5) with a cosine schedule over --steps optimizer steps

Run from the repository root:

    python bench/regularisers.py                         # scratch: 6 rows x 2 seeds, ~8 minutes on 2 idle cores
    python bench/regularisers.py --epochs 6 --seeds 0    # quicker, noisier
    python bench/regularisers.py --weights bench-transfer/pretrained/best/model.pt --data bench-transfer/target-50
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import best_metrics, data_folder, machine_line, tuner_command

# (label, --set values): torchvision's recipe values for the mixers; an EMA horizon of ~100 steps,
# half of the default run's 200 (20 steps an epoch, 10 epochs).
ROWS = [
    ("none", []),
    ("mixup 0.2", ["mixup=0.2"]),
    ("cutmix 1.0", ["cutmix=1.0"]),
    ("random_erasing 0.25", ["random_erasing=0.25"]),
    ("ema_decay 0.99", ["ema_decay=0.99"]),
    ("all four", ["mixup=0.2", "cutmix=1.0", "random_erasing=0.25", "ema_decay=0.99"]),
]
# Random init (no download here), every stage trained, as the demo search's start: the regularisers act
# on the images and the whole network.
SCRATCH = ["model=resnet18", "weights=none", "image_size=32", "batch_size=32", "unfreeze_depth=5", "lr_decay=1.0",
           "lr_head=0.001", "aug_strength=0.2"]
# The seed tutorial's fine-tuning from pretrained weights, at bench/transfer.py's image size; a random head as
# the seed's (a probe head would leave the mixers little to change in the head).
TRANSFER = ["model=resnet50", "image_size=32", "batch_size=32", "unfreeze_depth=2", "lr_head=0.001",
            "lr_layer4=0.0001", "lr_layer3=0.00005", "head_init=random", "schedule=cosine", "aug_strength=0.2"]


def train(data: Path, out: Path, base: list[str], values: list[str], seed: int, length: str) -> dict:
    command = tuner_command("train", "--data", str(data), "--out", str(out), "--loader-workers", "0",
                            settings=[*base, *values, f"seed={seed}", length])
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return {**best_metrics(out), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every run (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every row (default 0 1)")
    parser.add_argument("--data", type=Path, help="an image folder (default: the demo data, written to a temp folder)")
    parser.add_argument("--weights", type=Path, help="pretrained ResNet-50 weights: the transfer setting")
    parser.add_argument("--rows", nargs="+", choices=[label for label, _ in ROWS], metavar="ROW",
                        help="only these rows (default all): " + ", ".join(repr(label) for label, _ in ROWS))
    parser.add_argument("--steps", type=int, default=240, help="optimizer steps of a transfer run (default 240)")
    args = parser.parse_args()
    if args.weights and not args.data:
        parser.error("--weights needs --data, the folder to transfer to")
    base = [*TRANSFER, f"weights={args.weights.resolve()}"] if args.weights else SCRATCH
    length = f"steps={args.steps}" if args.weights else f"epochs={args.epochs}"
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp, data_folder(args.data) as data:
        print(f"data: {data}; {' '.join(base)}, {length}, seeds {args.seeds}")
        header = ["regulariser", *(f"val_acc seed {s}" for s in args.seeds), "mean val_acc", "mean test_acc", "s a run"]
        print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header), flush=True)
        for label, values in ROWS:
            if args.rows and label not in args.rows:
                continue
            runs = [train(data, Path(tmp) / f"{label}-{seed}".replace(" ", "_"), base, values, seed, length)
                    for seed in args.seeds]
            val = [r["val_acc"] for r in runs]
            test = [r.get("test_acc", float("nan")) for r in runs]
            cells = [label, *(f"{v:.3f}" for v in val), f"{statistics.mean(val):.3f}", f"{statistics.mean(test):.3f}",
                     f"{statistics.mean(r['seconds'] for r in runs):.0f}"]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
