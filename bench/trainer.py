"""Training images/s of tuner's Trainer against the seed tutorial's loop, measured side by side.

Both sides train the same thing: torchvision's ResNet-50 (random init, no download), a new head for
the demo data's 8 classes, layer3 + layer4 + head trained with Adam at head 1e-3 / layer4 1e-4 /
layer3 5e-5, batch 32, the same training images, the same `--device` and `--workers`.

  seed  the tutorial's loop as written: torchvision.transforms (v1) PIL augmentation, fp32, NCHW,
        torch.optim.Adam, loss.item() every batch. Like the tutorial it freezes only layer1 and
        layer2, so the stem (conv1, bn1) still gets gradients that no optimizer group uses
        (`--freeze-seed-stem` freezes it too, to see how much of the ratio that is).
  ours  tuner.train.engine.Trainer.train_one_epoch from make_config({**SEED_RECIPE, weights none}):
        its own loader (the node's decoded-image cache, crop and flip per image), the rest of
        aug_strength 0.5 on whole batches (augment.BatchAugment), and the precision and memory layout
        that precision=auto and memory_format=auto choose on this machine (measured: tuner/train/precision.py),
        printed beside every ratio with the CPU model and its bf16 units.

Images/s counts everything one training batch costs: decoding and augmenting the images, the
forward and backward pass and the optimizer step. Each side first trains one warm-up batch (not
counted), then `--batches` batches per round. Rounds alternate seed, ours, seed, ours...; the
machine may be shared, so read the per-round ratios (ours / seed, > 1 means ours is faster) and
quote the median ratio of the final table. "cpu share" (seed / ours) is the CPU time this process
got over wall time x torch threads (with --workers 0): well under 1 means something else was using
the cores then, and that round's figures are not to be quoted.

`--accuracy-epochs N` also trains each side for N full epochs at 64 px and prints the validation
accuracy after every epoch, side by side (the speed-up must not cost accuracy).

`--memory on` also prints the peak resident memory of one CPU training trial of ours, fp32 next
to bf16 (bench/trainer_memory.py); `--memory only` prints just that.

`--process` times whole processes instead, A B A B after a warm-up pair: `tuner train` with the seed's
own recipe against the seed tutorial's whole program (its model, transforms, train and val phases, best
weights kept), 64 px, 1,280 demo training images, 2 epochs; `--process-precision fp32` fixes ours to fp32.

The loader check (`--loader-sizes`, bench/trainer_loaders.py) times only the training batches'
preparation on one core, from the demo PNGs and from the same images as JPEG photos.

Run from the repository root:  python bench/trainer.py [--help]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    BATCH_SIZE,
    Timer,
    build_seed,
    data_folder,
    load_average,
    machine_line,
    machine_lines,
    median_of,
    sample_images,
    seed_eval_transform,
    seed_loader,
    seed_recipe,
    seed_recipe_trainer,
    seed_train,
    seed_train_transform,
    seed_val_acc,
    timed_process,
    train_loader_of,
    tuner_command,
)
from trainer_loaders import compare_loaders
from trainer_memory import MEMORY_SIZE, compare_memory

from tuner.errors import UserError
from tuner.train.engine import Trainer, resolve_device
from tuner.train.folders import load_splits
from tuner.train.precision import describe_machine

ACCURACY_SIZE = 64  # image size of the accuracy check: keeps N epochs of both sides to minutes on a CPU
PROCESS_IMAGES_PER_CLASS = 160  # x 8 classes: about the 1,300 images of the held-out check


# --- the speed rounds --------------------------------------------------------------------------


def time_seed(seed, samples, size: int, args, device) -> Timer:
    loader = seed_loader(samples, seed_train_transform(size), args.workers)
    with Timer() as timer:
        seed_train(*seed, loader, device)
    return timer


def time_ours(trainer: Trainer, loader) -> Timer:
    trainer.train_loader = loader
    with Timer() as timer:
        trainer.train_one_epoch()
    return timer


def measure_size(splits, size: int, batches: int, args) -> dict:
    """Per-round images/s of both sides at `size`; prints each round as it finishes."""
    trainer = seed_recipe_trainer(splits, size, args)
    print(f"  ours computes in {trainer.compute.describe()}", flush=True)
    seed = build_seed(len(splits.classes), trainer.device, args.freeze_seed_stem)
    samples = sample_images(splits.train, batches * BATCH_SIZE)
    warmup = samples[:BATCH_SIZE]
    time_seed(seed, warmup, size, args, trainer.device)  # first-call costs: allocator, oneDNN primitives
    time_ours(trainer, train_loader_of(trainer, warmup))
    loader = train_loader_of(trainer, samples)
    seed_rates, our_rates, shares = [], [], []
    for round_ in range(1, args.rounds + 1):
        seed_time = time_seed(seed, samples, size, args, trainer.device)
        our_time = time_ours(trainer, loader)
        seed_rates.append(len(samples) / seed_time.wall)
        our_rates.append(len(samples) / our_time.wall)
        shares += [seed_time.share, our_time.share]
        print(f"  {size:>4} px  round {round_}: seed {seed_rates[-1]:7.1f} img/s   ours {our_rates[-1]:7.1f} img/s"
              f"   ratio {our_rates[-1] / seed_rates[-1]:.2f}   cpu share {seed_time.share:.2f} / {our_time.share:.2f}",
              flush=True)
    return {"size": size, "seed": seed_rates, "ours": our_rates, "min_share": min(shares),
            "compute": f"{trainer.compute.precision}/{trainer.compute.memory_format}"}


def compare_accuracy(splits, epochs: int, args) -> None:
    """Validation accuracy of both sides after each of `epochs` full epochs at ACCURACY_SIZE px."""
    size = ACCURACY_SIZE
    trainer = seed_recipe_trainer(splits, size, args, epochs=epochs)
    model, optimizer = build_seed(len(splits.classes), trainer.device, args.freeze_seed_stem)
    train_loader = seed_loader(splits.train, seed_train_transform(size), args.workers)
    val_loader = seed_loader(splits.val, seed_eval_transform(size), args.workers)
    print(f"\nvalidation accuracy, {size} px, weights none, {len(splits.train)} train / {len(splits.val)} val images")
    print("epoch  seed val_acc  ours val_acc")
    for epoch in range(1, epochs + 1):
        seed_train(model, optimizer, train_loader, trainer.device)
        seed_acc = seed_val_acc(model, val_loader, trainer.device)
        ours_acc = trainer.run_epoch()["val_acc"]
        print(f"{epoch:>5}  {seed_acc:>12.3f}  {ours_acc:>12.3f}", flush=True)


# --- whole processes: `tuner train` against the seed tutorial's program ------------------------


def seed_program(data_dir: Path, size: int, epochs: int) -> dict:
    """The seed tutorial's whole program: its model, transforms and train_model loop (a train and a val
    phase every epoch, the best weights kept), at `size`; what --process times as one process."""
    splits = load_splits(data_dir)
    device = torch.device("cpu")
    model, optimizer = build_seed(len(splits.classes), device, freeze_stem=False)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    train = seed_loader(splits.train, seed_train_transform(size), workers=0)
    val = seed_loader(splits.val, seed_eval_transform(size), workers=0)
    best_acc, best_weights = -1.0, None
    for _ in range(epochs):
        seed_train(model, optimizer, train, device)
        scheduler.step()
        accuracy = seed_val_acc(model, val, device)
        if accuracy > best_acc:
            best_acc, best_weights = accuracy, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_weights)  # as the tutorial ends: its best weights back in the model
    return {"val_acc": best_acc}


def tuner_train_command(data_dir: Path, out: Path, size: int, epochs: int, precision: str) -> list[str]:
    """`tuner train` with the seed's own recipe (layer3, layer4 and the head at its rates), random init."""
    recipe = seed_recipe(image_size=size, epochs=epochs, precision=precision)
    return tuner_command("train", "--data", str(data_dir), "--out", str(out), settings=recipe)


def compare_processes(data_dir: Path, args) -> None:
    """Whole-process seconds, alternating tuner train and the seed program; ratios pair by pair."""
    images = len(load_splits(data_dir).train)
    print(f"\nwhole processes: `tuner train` (seed recipe, precision {args.process_precision}) against the seed "
          f"tutorial's program, {args.process_size} px, {images} training images, {args.process_epochs} epochs, "
          f"one warm-up pair then {args.rounds} pairs; the node cache (decoded images, the compute probe) is "
          f"built in the warm-up, as on a node that has run the data once", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    seed = [sys.executable, __file__, "--seed-child", "--data", str(data_dir), "--process-size", str(args.process_size),
            "--process-epochs", str(args.process_epochs)]
    ratios = []
    with tempfile.TemporaryDirectory(prefix="tuner-bench-process-") as folder:
        env["TUNER_CACHE"] = str(Path(folder) / "cache")
        for round_ in range(args.rounds + 1):
            out = Path(folder) / f"train-{round_}"
            ours_s, ours_out = timed_process(tuner_train_command(data_dir, out, args.process_size, args.process_epochs,
                                                                  args.process_precision), env)
            seed_s, seed_out = timed_process(seed, env)
            compute = next((line for line in ours_out.splitlines() if line.startswith("compute:")), "compute: ?")
            ours_acc = json.loads((out / "best" / "metrics.json").read_text())["val_acc"]
            label = "warm-up" if round_ == 0 else f"pair {round_}"
            seed_acc = json.loads(seed_out.splitlines()[-1])["val_acc"]
            print(f"  {label}: tuner train {ours_s:6.1f} s (val_acc {ours_acc:.3f}), seed {seed_s:6.1f} s "
                  f"(val_acc {seed_acc:.3f}), seed / tuner {seed_s / ours_s:.2f}"
                  f"; {compute}", flush=True)
            if round_:
                ratios.append(seed_s / ours_s)
    print(f"whole process, seed seconds / tuner train seconds: median {median_of(ratios)} "
          f"on {describe_machine()}")


# --- reporting ---------------------------------------------------------------------------------


def summary_table(results: list[dict]) -> list[str]:
    rows = [machine_line(),
            "size  seed img/s  ours img/s  ratio  min cpu share  ours computes in  "
            "(medians over rounds; per-round ratios)"]
    for r in results:
        ratios = [o / s for s, o in zip(r["seed"], r["ours"], strict=True)]
        rows.append(
            f"{r['size']:<4}  {statistics.median(r['seed']):>10.1f}  {statistics.median(r['ours']):>10.1f}"
            f"  {statistics.median(ratios):>5.2f}  {r['min_share']:>13.2f}  {r['compute']:<16}"
            f"  ({', '.join(f'{x:.2f}' for x in ratios)})"
        )
    return rows


# --- main --------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training images/s of tuner's Trainer vs the seed tutorial's loop (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="image folder to train on (None: the demo data, written to a temporary folder)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 224],
                        help="image sizes in px of the training rounds (none: skip them)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="timed batches of 32 per round, one per size or one for all sizes "
                             "(default: 12 at 64 px and below, else 3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating seed/ours rounds per size")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers, the same for both sides (0: the cores go to the model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N; the same for both sides")
    parser.add_argument("--accuracy-epochs", type=int, default=0,
                        help=f"also train each side N full epochs at {ACCURACY_SIZE} px and compare val accuracy; "
                             "0 skips it")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile our model (the first warm-up batch then takes a minute or more)")
    parser.add_argument("--freeze-seed-stem", action="store_true",
                        help="freeze conv1/bn1 in the seed loop too (the tutorial leaves them trainable)")
    parser.add_argument("--loader-sizes", type=int, nargs="*", default=[64, 224],
                        help="image sizes of the loader-throughput check (none: skip it)")
    parser.add_argument("--loader-images", type=int, default=256, help="images per round of the loader check")
    parser.add_argument("--loader-photo-width", type=int, default=500,
                        help="the loader check also runs on the same images saved as JPEGs this wide")
    parser.add_argument("--memory", choices=("off", "on", "only"), default="off",
                        help=f"peak RSS of one CPU trial of ours, fp32 vs bf16 at {MEMORY_SIZE} px "
                             "(about 1.5 minutes on 2 cores); on: after the speed rounds, only: instead of them")
    parser.add_argument("--memory-steps", type=int, default=2,
                        help="training steps of the memory check (from the second on, Adam's state is held "
                             "through the step)")
    parser.add_argument("--process", action="store_true",
                        help="instead of the rounds above: whole `tuner train` processes against the seed "
                             f"tutorial's program, on {PROCESS_IMAGES_PER_CLASS} training images a class of the "
                             "demo data")
    parser.add_argument("--process-size", type=int, default=64, help="image size of --process")
    parser.add_argument("--process-epochs", type=int, default=2, help="epochs of --process")
    parser.add_argument("--process-precision", default="auto", help="tuner train's precision in --process")
    parser.add_argument("--seed-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = [12 if size <= 64 else 3 for size in args.sizes]
    if len(args.batches) == 1:
        args.batches *= len(args.sizes)
    if len(args.batches) != len(args.sizes):
        parser.error(f"--batches takes one value or one per size, but got {args.batches} for sizes {args.sizes}")
    if min(args.batches, default=1) < 1 or args.rounds < 1:
        parser.error(f"--batches and --rounds must be >= 1, but got {args.batches} and {args.rounds}")
    if args.workers < 0 or args.accuracy_epochs < 0:
        parser.error(f"--workers and --accuracy-epochs must be >= 0, but got {args.workers} and {args.accuracy_epochs}")
    if args.memory_steps < 1:
        parser.error(f"--memory-steps must be >= 1, but got {args.memory_steps}")
    return args


def run(args: argparse.Namespace, data_dir: Path) -> None:
    splits = load_splits(data_dir)
    device = resolve_device(args.device)
    print("\n".join(machine_lines(device)))
    print(f"data: {data_dir} ({len(splits.classes)} classes, {len(splits.train)} train images)", flush=True)
    if args.memory == "only":
        compare_memory(data_dir, args.memory_steps)
        return
    print(f"ours: precision and layout as precision=auto and memory_format=auto choose them (printed per size)"
          f"{', torch.compile' if args.compile else ''}; seed: fp32, NCHW; workers {args.workers}; "
          f"seed stem {'frozen' if args.freeze_seed_stem else 'trainable (as in the tutorial)'}\n", flush=True)
    results = []
    for size, batches in zip(args.sizes, args.batches, strict=True):
        print(f"{size} px: {args.rounds} rounds of {batches} batches x {BATCH_SIZE} images per side", flush=True)
        results.append(measure_size(splits, size, batches, args))
    if results:
        print()
        print("\n".join(summary_table(results)))
        if hasattr(os, "getloadavg"):
            print(load_average("at the end"))
    for size in args.loader_sizes:
        compare_loaders(splits, size, args)
        with tempfile.TemporaryDirectory(prefix="tuner-bench-photos-") as folder:
            compare_loaders(splits, size, args, Path(folder))
    if args.accuracy_epochs:
        compare_accuracy(splits, args.accuracy_epochs, args)
    if args.memory == "on":
        compare_memory(data_dir, args.memory_steps)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.seed_child:  # the seed program, in the fresh process compare_processes started
        torch.manual_seed(0)
        print(json.dumps(seed_program(args.data, args.process_size, args.process_epochs)))
        return
    start = time.perf_counter()
    try:
        if args.process:
            print(machine_line())
            with data_folder(None, train_per_class=PROCESS_IMAGES_PER_CLASS) as folder:  # always the demo data
                compare_processes(folder, args)
        else:
            with data_folder(args.data) as folder:
                run(args, folder)
    except UserError as err:
        sys.exit(f"error: {err}")
    print(f"\nwall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
