"""bench/gpu.py's measurements: images/s of each variant (seed loop, ours eager and compiled, model-only,
loader-only, forward-only) and its peak GPU memory, CUDA synchronised around every timing.

"epoch" images/s is over the whole epoch call, including the start of the loader's worker processes;
"steady" starts when the first batch reaches the loop, i.e. what a long epoch approaches.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from dataclasses import dataclass

import torch
from common import (
    build_seed,
    sample_images,
    seed_loader,
    seed_recipe,
    seed_train,
    seed_train_transform,
    synchronize,
    timed_seconds,
)

from tuner.train.config import field_names, make_config
from tuner.train.engine import Trainer

OURS = "ours bf16"


# --- timing ------------------------------------------------------------------------------------


class TimedLoader:
    """Wraps a loader (or a list of batches) and notes when the first batch reaches the training loop.

    That moment separates the loader's start-up (worker processes, first batch) from the steady
    rate, and `images` shows whether the loop really iterated this loader.
    """

    def __init__(self, loader):
        self.loader = loader
        self.first: float | None = None  # when batch 0 reached the loop
        self.first_images = 0  # its size
        self.images = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.first, self.images = None, 0
        for batch in self.loader:
            if self.first is None:
                self.first, self.first_images = time.perf_counter(), len(batch[1])
            self.images += len(batch[1])
            yield batch

    def __getattr__(self, name):  # dataset, batch_size, pin_memory...: for code that inspects its loader
        return getattr(self.loader, name)


def timed(run, loader: TimedLoader, device: torch.device, *, consumer: bool = True) -> tuple[float, float | None]:
    """(epoch images/s, steady images/s) of `run()`, which iterates `loader`; steady is None if it did not.

    Steady time starts when batch 0 arrives: a `consumer` (training, evaluation) still processes
    batch 0 after that, so it counts; a bare loader has delivered it by then, so it does not.
    """
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    end = time.perf_counter()
    if loader.images == 0:
        return float("nan"), None
    steady_images = loader.images if consumer else loader.images - loader.first_images
    steady = steady_images / (end - loader.first) if steady_images else None
    return loader.images / (end - start), steady


def repeat_timed(run, loader: TimedLoader, device: torch.device, repeats: int,
                 *, consumer: bool = True) -> tuple[float, float | None]:
    """Median epoch and steady images/s over `repeats` runs."""
    results = [timed(run, loader, device, consumer=consumer) for _ in range(repeats)]
    steady = [s for _, s in results if s is not None]
    return statistics.median(e for e, _ in results), statistics.median(steady) if steady else None


def reset_peak(device: torch.device) -> None:
    """Free what earlier variants left behind, so each variant's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


@dataclass
class Result:
    name: str
    batch: int
    epoch_rate: float
    steady_rate: float | None
    warmup_s: float
    build_s: float
    peak_mib: float | None
    note: str = ""


# --- ours and device batches -------------------------------------------------------------------


def on_device(batch, device: torch.device, size: int):
    """A loader batch with every tensor tiled to `size` rows and moved to `device`."""
    def move(tensor):
        if not isinstance(tensor, torch.Tensor):
            return tensor
        reps = math.ceil(size / len(tensor))
        return tensor.repeat(reps, *[1] * (tensor.dim() - 1))[:size].to(device)
    return type(batch)(move(t) for t in batch)


def device_batches(loader, device: torch.device, size: int, count: int) -> list:
    """`count` references to one real batch of `loader` on `device`: model work without loader work.

    Taken from the Trainer's own loader so it has whatever form (float or uint8) the Trainer expects.
    """
    batch = on_device(next(iter(loader)), device, size)
    return [batch] * count


def ours_config(args, compile_model: bool):
    values = seed_recipe(unfreeze_depth=5, image_size=args.image_size, batch_size=args.batch_size, precision="bf16")
    if "compile" in field_names():
        values["compile"] = compile_model
    return make_config(values)


def is_compiled(model) -> bool:
    """torch.compile(model) wraps it (_orig_mod); model.compile() sets _compiled_call_impl."""
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


def build_ours(args, splits, compile_model: bool) -> tuple[Trainer, str]:
    """The Trainer on exactly `--batches` batches per epoch, and a note on who compiled it."""
    subset = dataclasses.replace(splits, train=sample_images(splits.train, args.batches * args.batch_size))
    trainer = Trainer(ours_config(args, compile_model), subset, device=args.device, num_workers=args.workers)
    if not compile_model:
        return trainer, ""
    # The Trainer steps `trainer.forward` (torch.compile(model) when config.compile is set) where it
    # has one, else `trainer.model`. For a Trainer that ignores config.compile, compile that callable
    # here as it would; the parameters, and so the optimizer, stay the same.
    attribute = "forward" if hasattr(trainer, "forward") else "model"
    if is_compiled(getattr(trainer, attribute)):
        return trainer, "compiled by the Trainer"
    setattr(trainer, attribute, torch.compile(trainer.model))
    return trainer, f"compiled by bench as trainer.{attribute}: the Trainer ignored config.compile"


# --- the measurements --------------------------------------------------------------------------


def measure_seed(args, splits, device, batch: int, compile_model: bool = False) -> Result:
    """The tutorial's loop (training every stage) on as many images as one timed epoch of ours;
    `compile_model` runs it through torch.compile(model), the loop otherwise as written."""
    reset_peak(device)
    images = args.batches * args.batch_size
    samples = sample_images(splits.train, math.ceil(images / batch) * batch)
    start = time.perf_counter()
    model, optimizer = build_seed(len(splits.classes), device, freeze_stem=False, train_all=True)
    if compile_model:
        model = torch.compile(model)  # same parameters, so the optimizer is unchanged
    loader = TimedLoader(seed_loader(samples, seed_train_transform(args.image_size), args.workers, batch))
    build_s = time.perf_counter() - start

    def run():
        seed_train(model, optimizer, loader, device)

    warmup_s = timed_seconds(run, device)
    epoch_rate, steady = repeat_timed(run, loader, device, args.repeats)
    return Result(f"seed loop fp32 NCHW{' compiled' if compile_model else ''} (batch {batch})", batch, epoch_rate,
                  steady, warmup_s, build_s, peak_mib(device))


def measure_ours(args, splits, device, compile_model: bool) -> tuple[Result, Trainer]:
    reset_peak(device)
    start = time.perf_counter()
    trainer, note = build_ours(args, splits, compile_model)
    synchronize(device)
    build_s = time.perf_counter() - start
    loader = trainer.train_loader = TimedLoader(trainer.train_loader)
    warmup_s = timed_seconds(trainer.train_one_epoch, device)
    epoch_rate, steady = repeat_timed(trainer.train_one_epoch, loader, device, args.repeats)
    if loader.images == 0:
        note += "; Trainer did not iterate train_loader: images/s not measured"
    name = OURS + (" compiled" if compile_model else " eager")
    return Result(name, args.batch_size, epoch_rate, steady, warmup_s, build_s, peak_mib(device),
                  note.strip("; ")), trainer


def measure_model_only(args, trainer: Trainer, device) -> float | None:
    """Steady training images/s of an already warm trainer on device batches (no loader work)."""
    real = trainer.train_loader.loader if isinstance(trainer.train_loader, TimedLoader) else trainer.train_loader
    batches = TimedLoader(device_batches(real, device, args.batch_size, args.batches))
    trainer.train_loader = batches
    try:
        timed(trainer.train_one_epoch, batches, device)  # first steps on the new input: allocator, cuDNN plans
        return repeat_timed(trainer.train_one_epoch, batches, device, args.repeats)[1]
    finally:
        trainer.train_loader = TimedLoader(real)


def measure_loader_only(args, trainer: Trainer, device) -> tuple[float, float | None]:
    """Epoch and steady images/s of the Trainer's train_loader alone (its workers, no model)."""
    real = trainer.train_loader.loader if isinstance(trainer.train_loader, TimedLoader) else trainer.train_loader
    loader = TimedLoader(real)

    def run():
        for _ in loader:
            pass

    return repeat_timed(run, loader, device, args.repeats, consumer=False)


def measure_forward(args, trainer: Trainer, device) -> tuple[float | None, float | None]:
    """Steady images/s of Trainer.evaluate on device batches (eval, no grad, its autocast, channels_last)."""
    batches = TimedLoader(device_batches(trainer.val_loader, device, args.batch_size, args.batches))
    reset_peak(device)
    timed(lambda: trainer.evaluate(batches), batches, device)  # warm-up: eval-mode kernels
    steady = repeat_timed(lambda: trainer.evaluate(batches), batches, device, args.repeats)[1]
    return steady, peak_mib(device)
