"""One-shot GPU benchmark of tuner's Trainer: full fine-tuning images/s against the seed tutorial's loop.

Everything runs at `--image-size` (224) on torchvision's ResNet-50 with random init (no download),
a new head for the demo data's 8 classes, every stage trained (unfreeze_depth=5), on one device:

  1. training images/s, data loading included:
       seed loop   the tutorial's loop from bench/common.py (transforms v1 PIL augmentation, fp32,
                   NCHW, Adam, loss.item() every batch), made to train every stage like ours; at the
                   tutorial's batch 32 and at ours' batch (the fair comparison), and at batch 32
                   through torch.compile (CUDA only)
       ours        tuner.train.engine.Trainer.train_one_epoch, bf16 autocast, the layout memory_format=auto
                   picks (channels_last on CUDA), eager and with torch.compile (CUDA only); the compile
                   warm-up is reported on its own
  2. forward-only images/s (Trainer.evaluate: eval mode, no grad, bf16, channels_last) on device batches
  3. whether the loader keeps up: loader-only images/s (iterating the Trainer's train_loader with its
     default workers, no model) against model-only images/s (train_one_epoch over a real batch copied
     to the device and repeated, so any on-device augmentation counts as model work)

Each training variant trains one warm-up epoch (not counted), then `--repeats` timed epochs of
`--batches` batches (ours) or the same number of images (seed); CUDA is synchronised around every
timing. "epoch" images/s is over the whole epoch call, including the start of the loader's worker
processes; "steady" starts when the first batch reaches the loop, i.e. what a long epoch approaches.
The goal line is judged on the steady figures. Peak GPU memory is torch.cuda.max_memory_allocated
per variant (reset between variants). The image cache, if the Trainer builds one, goes to a fresh
temporary $TUNER_CACHE, so its one-off cost falls into "build s" or the warm-up epoch.

Needs only torch, torchvision, numpy, pillow, pyarrow and tqdm: nothing on this path imports Ray, Optuna
or tensorboardX (tests/test_bench_gpu.py runs it with those made unimportable), so it runs on a bare GPU
machine from the checkout (bench/gpu.sh puts the checkout on PYTHONPATH; no install, no network).
The last line printed is one JSON object with every figure.
A CPU smoke test (under a minute on 2 cores, even shared):
    bash bench/gpu.sh --device cpu --image-size 32 --batch-size 4 --seed-batch-size 2 --batches 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from common import BATCH_SIZE, fmt, machine_lines
from gpu_measure import (
    OURS,
    Result,
    measure_forward,
    measure_loader_only,
    measure_model_only,
    measure_ours,
    measure_seed,
)

from tuner.train.demo_data import CLASSES, write_demo_data
from tuner.train.engine import default_workers, resolve_device
from tuner.train.folders import ImageSplits, load_splits
from tuner.train.precision import describe_machine

GOAL_RATIO, GOAL_RATE = 3.0, 3000.0
GOAL_LINE = "goal on one H100: >= 3x the seed loop and >= 3000 images/s full fine-tuning"
MAX_PER_CLASS = 600  # demo images written per class at most; longer epochs repeat them


# --- reporting ---------------------------------------------------------------------------------


def environment_lines(device: torch.device, workers: int) -> list[str]:
    smoke = [] if device.type == "cuda" else ["(a smoke test on a CPU: the figures say nothing about a GPU)"]
    return machine_lines(device, workers) + smoke + [backend_flags()]


def backend_flags() -> str:
    """Global flags that change conv/matmul speed (printed at the start and end: did anything set them?)."""
    return (f"flags: cudnn.benchmark {torch.backends.cudnn.benchmark}, cudnn.allow_tf32 "
            f"{torch.backends.cudnn.allow_tf32}, matmul.allow_tf32 {torch.backends.cuda.matmul.allow_tf32}")


def training_table(results: list[Result]) -> list[str]:
    rows = [(f"{'variant':<44} {'batch':>5} {'img/s epoch':>11} {'img/s steady':>12} {'build s':>7} "
             f"{'warm-up s':>9} {'peak GPU MiB':>12}")]
    for r in results:
        rows.append(f"{r.name:<44} {r.batch:>5} {fmt(r.epoch_rate, '>11.1f')} {fmt(r.steady_rate, '>12.1f')} "
                    f"{r.build_s:>7.1f} {r.warmup_s:>9.1f} {fmt(r.peak_mib, '>12.0f')}"
                    + (f"  ({r.note})" if r.note else ""))
    return rows


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratio_lines(seeds: list[Result], ours: list[Result]) -> list[str]:
    rows = []
    for o in ours:
        parts = [f"{fmt(ratio(o.steady_rate, s.steady_rate), '.2f')}x seed at batch {s.batch}" for s in seeds]
        rows.append(f"ours/seed (steady) {o.name.removeprefix(OURS + ' ')}: " + ", ".join(parts))
    return rows


def loader_line(loader_rates, model_only: dict[str, float | None], workers: int) -> str:
    epoch_rate, steady = loader_rates
    fastest = max((v for v in model_only.values() if v), default=None)
    models = ", ".join(f"{k} {fmt(v, '.1f')}" for k, v in model_only.items())
    verdict = "n/a"
    if steady and fastest:
        verdict = (f"the loader keeps up (loader/model {steady / fastest:.2f})" if steady >= fastest
                   else f"the loader is the bottleneck (loader/model {steady / fastest:.2f})")
    return (f"loader-only ({workers} workers): {fmt(steady, '.1f')} img/s steady ({fmt(epoch_rate, '.1f')} per epoch) "
            f"vs model-only on device batches: {models} img/s -> {verdict}")


def goal_lines(seeds: list[Result], ours: list[Result]) -> list[str]:
    """The goal, judged on steady images/s: best ours against the tutorial's loop at batch 32."""
    seed = next((s for s in seeds if s.batch == BATCH_SIZE), seeds[0])
    best = max(ours, key=lambda r: r.steady_rate or 0.0)
    speedup = ratio(best.steady_rate, seed.steady_rate)
    met = bool(speedup and speedup >= GOAL_RATIO and (best.steady_rate or 0) >= GOAL_RATE)
    return [GOAL_LINE,
            (f"  best: {best.name} {fmt(best.steady_rate, '.1f')} img/s = {fmt(speedup, '.2f')}x the seed loop "
             f"at batch {seed.batch} -> {'met' if met else 'NOT met'}")]


# --- main --------------------------------------------------------------------------------------


def _failure(err: Exception) -> str:
    """A failed variant's error in one short line: its type and the first line of its message."""
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Full fine-tuning images/s of tuner's Trainer vs the seed loop on one GPU "
                    "(see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke test")
    parser.add_argument("--image-size", type=int, default=224, help="training image size in px")
    parser.add_argument("--batch-size", type=int, default=128, help="ours' batch size (and the seed loop's second run)")
    parser.add_argument("--seed-batch-size", type=int, default=BATCH_SIZE, help="the seed loop's own batch size")
    parser.add_argument("--batches", type=int, default=32,
                        help="batches of ours per timed epoch (seed: as many images)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed epochs per variant after the warm-up; medians are shown")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers, both sides (None: the Trainer's default for the device)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="also time ours with torch.compile; auto: on CUDA only")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="image folder (None: demo data written to a temporary folder)")
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "seed_batch_size", "batches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, but got {getattr(args, name)}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, but got {args.workers}")
    return args


def progress(start: float, text: str) -> None:
    """A progress line with the seconds elapsed: shows where the time goes if a run is cut short."""
    print(f"[{time.perf_counter() - start:5.0f} s] {text}", flush=True)


def prepare_splits(args, folder: Path) -> ImageSplits:
    """The demo data (or --data), with enough distinct training images for one timed epoch of ours."""
    if args.data is not None:
        return load_splits(args.data)
    per_class = min(MAX_PER_CLASS, math.ceil(args.batches * args.batch_size / len(CLASSES)))
    write_demo_data(folder, train_per_class=per_class, val_per_class=2, test_per_class=0)
    return load_splits(folder)


def run(args, device: torch.device, folder: Path) -> dict:
    start = time.perf_counter()
    print("\n".join(environment_lines(device, args.workers)), flush=True)
    splits = prepare_splits(args, folder / "data")  # written inside the run: its seconds count in wall_s
    print(f"data: {splits.root} ({len(splits.classes)} classes, {len(splits.train)} train images); ResNet-50 "
          f"random init, unfreeze_depth 5, {args.image_size} px, {args.batches} batches of {args.batch_size} "
          f"per timed epoch, {args.repeats} timed epochs per variant\n", flush=True)
    compile_on = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")

    seeds = []
    for batch in dict.fromkeys((args.seed_batch_size, args.batch_size)):  # once if they are equal
        progress(start, f"1. seed loop, batch {batch}")
        seeds.append(measure_seed(args, splits, device, batch))
    ours, model_only = [], {}
    progress(start, "1. ours eager")
    result, trainer = measure_ours(args, splits, device, compile_model=False)
    ours.append(result)
    progress(start, "3. model-only (eager)")
    model_only["eager"] = measure_model_only(args, trainer, device)
    progress(start, "3. loader-only")
    loader_rates = measure_loader_only(args, trainer, device)
    progress(start, "2. forward-only")
    forward, forward_peak = measure_forward(args, trainer, device)
    del trainer
    if compile_on:
        progress(start, "1. ours compiled (the warm-up epoch includes compilation), then 3. model-only (compiled)")
        try:
            result, trainer = measure_ours(args, splits, device, compile_model=True)
            ours.append(result)
            model_only["compiled"] = measure_model_only(args, trainer, device)
            del trainer
        except Exception as err:  # noqa: BLE001  (a one-shot run must still print the other figures)
            progress(start, f"1. ours compiled: FAILED ({_failure(err)})")
        progress(start, f"1. seed loop compiled, batch {args.seed_batch_size}")
        try:
            seeds.append(measure_seed(args, splits, device, args.seed_batch_size, compile_model=True))
        except Exception as err:  # noqa: BLE001  (as above)
            progress(start, f"1. seed loop compiled: FAILED ({_failure(err)})")
    else:
        progress(start, "1. compiled variants: skipped (torch.compile of ResNet-50 takes minutes on a CPU; "
                        "--compile on forces it)")

    progress(start, "done")
    print("\n1. full fine-tuning, training images/s (data loading included)")
    print("\n".join(training_table(seeds + ours)))
    print("\n".join(ratio_lines(seeds, ours)))
    print(f"\n2. forward-only (Trainer.evaluate, eager, bf16, channels_last, device batches of {args.batch_size}): "
          f"{fmt(forward, '.1f')} img/s, peak GPU MiB {fmt(forward_peak, '.0f')}")
    print(f"\n3. {loader_line(loader_rates, model_only, args.workers)}")
    print("\n" + "\n".join(goal_lines(seeds, ours)))
    print(backend_flags() + " (at the end)")
    return summary(args, device, seeds, ours, forward, forward_peak, loader_rates, model_only, start)


def summary(args, device, seeds, ours, forward, forward_peak, loader_rates, model_only, start: float) -> dict:
    """Every figure of the run in one JSON object (the last line printed), steady images/s."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else describe_machine(device),
            "torch": torch.__version__, "image_size": args.image_size, "batch_size": args.batch_size,
            "train_img_s": {r.name: r.steady_rate for r in seeds + ours},
            "forward_img_s": forward, "loader_img_s": loader_rates[1], "model_only_img_s": model_only,
            "peak_gpu_mib": {**{r.name: r.peak_mib for r in seeds + ours}, "forward": forward_peak},
            "wall_s": round(time.perf_counter() - start, 1)}


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    device = resolve_device(args.device)
    args.device = str(device)
    if args.workers is None:
        args.workers = default_workers(device)
    with tempfile.TemporaryDirectory(prefix="tuner-gpu-bench-") as folder:
        os.environ["TUNER_CACHE"] = str(Path(folder) / "cache")  # a fresh node cache: its cost shows here
        figures = run(args, device, Path(folder))
    print(f"\nwall time: {time.perf_counter() - start:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
