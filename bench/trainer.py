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

`--memory on` also prints the peak resident memory of one CPU training trial of ours (224 px, batch
32, ResNet-50, seed recipe stages, workers 0) at precision fp32 and bf16, each in a fresh process
(ru_maxrss after `--memory-steps` steps, and its increase over the process right after the model was
built); `--memory only` prints just that. A search runs several such trials per node, so this bounds
how many fit in a node's memory.

`--process` times whole processes instead, A B A B after a warm-up pair: `tuner train` with the seed's
own recipe against the seed tutorial's whole program (its model, transforms, train and val phases, best
weights kept), 64 px, 1,280 demo training images, 2 epochs; `--process-precision fp32` fixes ours to fp32.

The loader check (`--loader-sizes`) times only the training batches' preparation on one core:
the seed's PIL pipeline, ours decoding the files every epoch (`image_cache=false`) and ours from the
cache, first on the demo PNGs and then on the same images saved as 500 px JPEG photos.

Run from the repository root:  python bench/trainer.py [--help]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

try:
    import tuner  # noqa: F401
except ImportError:  # not installed: run from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.errors import UserError
from tuner.train import data
from tuner.train.config import SEED_RECIPE, make_config
from tuner.train.demo_data import write_demo_data
from tuner.train.engine import Trainer, resolve_device
from tuner.train.precision import cpu_has_native_bf16, cpu_model, describe_machine

BATCH_SIZE = 32  # the seed's batch size
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # the tutorial's Normalize
IMAGENET_STD = [0.229, 0.224, 0.225]
ACCURACY_SIZE = 64  # image size of the accuracy check: keeps N epochs of both sides to minutes on a CPU
MEMORY_SIZE = 224  # image size of the memory check: the product's default, where activations are largest
MEMORY_PRECISIONS = ("fp32", "bf16")
PROCESS_IMAGES_PER_CLASS = 160  # x 8 classes: about the 1,300 images of the held-out check


# --- the seed tutorial's loop ------------------------------------------------------------------


def seed_train_transform(size: int):
    """The tutorial's training augmentation, with its 224 replaced by `size`."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(15),
        transforms.ColorJitter(brightness=0.2, contrast=0.2),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def seed_eval_transform(size: int):
    """The tutorial's Resize(256) + CenterCrop(224), scaled to `size`."""
    return transforms.Compose([
        transforms.Resize(round(size * 256 / 224)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class SeedDataset(Dataset):
    """What the tutorial's ImageFolder does, over a (path, label) list: PIL RGB image, transform."""

    def __init__(self, samples, transform):
        self.samples, self.transform = list(samples), transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with open(path, "rb") as handle:  # torchvision's pil_loader
            image = Image.open(handle).convert("RGB")
        return self.transform(image), label


def seed_loader(samples, transform, workers: int, batch_size: int = BATCH_SIZE) -> DataLoader:
    """The tutorial's DataLoader; `batch_size` other than 32 lets a GPU comparison use ours' batch."""
    return DataLoader(SeedDataset(samples, transform), batch_size=batch_size, shuffle=True, num_workers=workers)


def build_seed(num_classes: int, device: torch.device, freeze_stem: bool, train_all: bool = False):
    """The tutorial's fine-tuning model and optimizer (with weights=None instead of pretrained=True).

    `train_all` trains every stage (stem, layer1 and layer2 join with one more Adam group at 1e-5),
    so that the loop can be set against tuner's full fine-tuning (unfreeze_depth=5) like for like.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    model = model.to(device)
    groups = [
        {"params": model.layer4.parameters(), "lr": 1e-4},
        {"params": model.layer3.parameters(), "lr": 5e-5},
        {"params": model.fc.parameters(), "lr": 1e-3},
    ]
    if train_all:
        lower = [model.conv1, model.bn1, model.layer1, model.layer2]
        groups.append({"params": [p for m in lower for p in m.parameters()], "lr": 1e-5})
    optimizer = torch.optim.Adam(groups)
    frozen = [] if train_all else [model.layer1, model.layer2] + ([model.conv1, model.bn1] if freeze_stem else [])
    for module in frozen:
        for param in module.parameters():
            param.requires_grad = False
    return model, optimizer


def seed_train(model, optimizer, loader, device) -> tuple[float, float]:
    """The train phase of the tutorial's train_model, for one pass over `loader`: (loss, accuracy)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    running_loss, running_corrects, seen = 0.0, 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        with torch.set_grad_enabled(True):
            outputs = model(inputs)
            _, preds = torch.max(outputs, 1)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
        running_loss += loss.item() * inputs.size(0)
        running_corrects += torch.sum(preds == labels.data)
        seen += inputs.size(0)
    return running_loss / seen, (running_corrects.double() / seen).item()


@torch.no_grad()
def seed_val_acc(model, loader, device) -> float:
    model.eval()
    correct = seen = 0
    for inputs, labels in loader:
        _, preds = torch.max(model(inputs.to(device)), 1)
        correct += torch.sum(preds == labels.to(device)).item()
        seen += inputs.size(0)
    return correct / seen


# --- ours --------------------------------------------------------------------------------------


def build_ours(splits, size: int, args, epochs: int = 1) -> Trainer:
    config = make_config({**SEED_RECIPE, "weights": "none", "image_size": size, "batch_size": BATCH_SIZE,
                          "epochs": epochs, "compile": args.compile})
    return Trainer(config, splits, device=args.device, num_workers=args.workers)


def train_loader_of(trainer: Trainer, samples):
    """The trainer's own kind of training loader over `samples`: its crop transform, shuffling and
    pinning, and the node's decoded-image cache (built here, once, outside any timing: the cache is
    built once per node and dataset and then serves every epoch of every trial)."""
    return trainer._loader(samples, trainer.train_loader.dataset.transform, shuffle=True,
                           generator=trainer.loader_generator)


# --- measuring ---------------------------------------------------------------------------------


class Timer:
    """Wall seconds of a block, and the share of torch's threads' cores this process got meanwhile.

    A share well under 1 (with no DataLoader workers) means another process was using the cores.
    """

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.share = (time.process_time() - self.cpu) / (self.wall * torch.get_num_threads())


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


def sample_images(train, n: int, seed: int = 0):
    """`n` training samples in a fixed random order (the list repeats when it is shorter than `n`)."""
    shuffled = list(train)
    random.Random(seed).shuffle(shuffled)
    return (shuffled * (n // len(shuffled) + 1))[:n]


def measure_size(splits, size: int, batches: int, args) -> dict:
    """Per-round images/s of both sides at `size`; prints each round as it finishes."""
    trainer = build_ours(splits, size, args)
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
    trainer = build_ours(splits, size, args, epochs=epochs)
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


# --- loader throughput ------------------------------------------------------------------------


def loader_rate(loader, prepare) -> float:
    """Images/s of iterating `loader` and preparing each batch as training would (no model)."""
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        prepare(images)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def as_photos(samples, folder: Path, width: int):
    """The samples re-saved as JPEG photos `width` px wide (4:3), the size of typical datasets' files."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for i, (path, label) in enumerate(samples):
        target = folder / f"{i}.jpg"
        with Image.open(path) as image:
            image.convert("RGB").resize((width, width * 3 // 4)).save(target, quality=90)
        photos.append((str(target), label))
    return photos


def compare_loaders(splits, size: int, args, photo_folder: Path | None = None) -> None:
    """Training-batch images/s on one core: decoding files every epoch vs the decoded-image cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    samples = sample_images(splits.train, args.loader_images)
    if photo_folder is not None:
        samples = as_photos(samples, photo_folder, args.loader_photo_width)
        splits = dataclasses.replace(splits, train=samples)
    cached = build_ours(splits, size, args)
    uncached = Trainer(make_config({**cached.config.to_dict(), "image_cache": False}), splits,
                       device=args.device, num_workers=0)
    seed = seed_loader(samples, seed_train_transform(size), 0)
    def augmented(trainer):
        return lambda images: trainer._batch_to_device(images, images, augment=True)

    uncached_loader, cached_loader = train_loader_of(uncached, samples), train_loader_of(cached, samples)
    # The loader's own work (uint8 crops, as a GPU trial receives them) and, on a CPU trial, the batch
    # augmentation that follows it in the training process.
    variants = {
        "seed: PIL decode + PIL transforms per image": (seed, lambda images: None),
        "ours, no cache: PIL decode + crop": (uncached_loader, lambda images: None),
        "ours, cache: decoded once + crop": (cached_loader, lambda images: None),
        "ours, no cache: PIL decode + crop, batch augment": (uncached_loader, augmented(uncached)),
        "ours, cache: decoded once + crop, batch augment": (cached_loader, augmented(cached)),
    }
    rates = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (loader, prepare) in variants.items():
            rates[name].append(loader_rate(loader, prepare))
    torch.set_num_threads(threads)
    files = f"{args.loader_photo_width} px JPEG photos" if photo_folder else "the demo PNGs (64-96 px)"
    print(f"\nloader images/s on 1 core from {files}, {size} px, aug_strength {cached.config.aug_strength} "
          f"(median of {args.rounds} rounds of {len(samples)} images)")
    base = statistics.median(rates[next(iter(rates))])
    for name, values in rates.items():
        rate = statistics.median(values)
        line = f"  {name:<52}{rate:>8.0f}   x{rate / base:.2f} vs seed"
        if name.startswith("ours, cache"):
            uncached = name.replace("ours, cache: decoded once", "ours, no cache: PIL decode")
            uncached_rate = statistics.median(rates[uncached])
            line += f"   x{rate / uncached_rate:.2f} vs no cache"
        print(line)


# --- peak memory ---------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident set so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def memory_trial(data_dir: Path, precision: str, steps: int) -> dict:
    """One CPU trial of ours in this (fresh) process: peak RSS after model build and after `steps` steps.

    Run in a child process so that neither the parent's nor the other precision's allocations count.
    """
    splits = data.load_splits(data_dir)
    splits = dataclasses.replace(splits, train=sample_images(splits.train, steps * BATCH_SIZE))
    config = make_config({**SEED_RECIPE, "weights": "none", "image_size": MEMORY_SIZE,
                          "batch_size": BATCH_SIZE, "precision": precision})
    trainer = Trainer(config, splits, device="cpu", num_workers=0)
    after_build = peak_rss_mib()
    start = time.perf_counter()
    trainer.train_one_epoch()  # `steps` batches: the subset holds exactly steps x BATCH_SIZE images
    return {"precision": precision, "after_build_mib": after_build, "peak_mib": peak_rss_mib(),
            "seconds": time.perf_counter() - start}


def measure_memory_in_child(data_dir: Path, precision: str, steps: int) -> dict:
    """`memory_trial` in a fresh Python process (this script with --memory-child); its JSON result.

    Each child gets its own empty node cache ($TUNER_CACHE), so both precisions pay for building the
    image cache alike and nothing is written to the user's cache.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", precision,
               "--data", str(data_dir), "--memory-steps", str(steps)]
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


# --- whole processes: `tuner train` against the seed tutorial's program ---------------------------


def seed_program(data_dir: Path, size: int, epochs: int) -> dict:
    """The seed tutorial's whole program: its model, transforms and train_model loop (a train and a val
    phase every epoch, the best weights kept), at `size`; what --process times as one process."""
    splits = data.load_splits(data_dir)
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
    recipe = {**SEED_RECIPE, "weights": "none", "image_size": size, "batch_size": BATCH_SIZE, "epochs": epochs,
              "precision": precision}
    return [sys.executable, "-m", "tuner", "train", "--data", str(data_dir), "--out", str(out),
            *[f"--set={k}={v}" for k, v in recipe.items()]]


def compare_processes(data_dir: Path, args) -> None:
    """Whole-process seconds, alternating tuner train and the seed program; ratios pair by pair."""
    images = len(data.load_splits(data_dir).train)
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
            ours_s, ours_out = _timed_process(tuner_train_command(data_dir, out, args.process_size, args.process_epochs,
                                                                  args.process_precision), env)
            seed_s, seed_out = _timed_process(seed, env)
            compute = next((line for line in ours_out.splitlines() if line.startswith("compute:")), "compute: ?")
            ours_acc = json.loads((out / "best" / "metrics.json").read_text())["val_acc"]
            label = "warm-up" if round_ == 0 else f"pair {round_}"
            seed_acc = json.loads(seed_out.splitlines()[-1])["val_acc"]
            print(f"  {label}: tuner train {ours_s:6.1f} s (val_acc {ours_acc:.3f}), seed {seed_s:6.1f} s "
                  f"(val_acc {seed_acc:.3f}), seed / tuner {seed_s / ours_s:.2f}"
                  f"; {compute}", flush=True)
            if round_:
                ratios.append(seed_s / ours_s)
    print(f"whole process, seed seconds / tuner train seconds: median {statistics.median(ratios):.2f} "
          f"({', '.join(f'{r:.2f}' for r in ratios)}) on {describe_machine()}")


def _timed_process(command: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds, result.stdout


# --- reporting ---------------------------------------------------------------------------------


def machine_lines(device: torch.device) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"machine: {describe_machine(device)}",
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), "
        f"torch threads {torch.get_num_threads()}",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}",
        f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
    ]
    if hasattr(os, "getloadavg"):
        lines.append("load average at the start (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    return lines


def summary_table(results: list[dict]) -> list[str]:
    rows = [f"machine: {describe_machine()}",
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
    parser.add_argument("--memory-child", choices=MEMORY_PRECISIONS, default=None, help=argparse.SUPPRESS)
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
    if args.memory_child and args.data is None:
        parser.error("--memory-child needs --data")
    return args


def run(args: argparse.Namespace, data_dir: Path) -> None:
    splits = data.load_splits(data_dir)
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
            print("load average at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
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
    if args.memory_child:  # one trial of the memory check, in the fresh process compare_memory started
        print(json.dumps(memory_trial(args.data, args.memory_child, args.memory_steps)))
        return
    if args.seed_child:  # the seed program, in the fresh process compare_processes started
        torch.manual_seed(0)
        print(json.dumps(seed_program(args.data, args.process_size, args.process_epochs)))
        return
    start = time.perf_counter()
    try:
        if args.process:
            print(f"machine: {describe_machine()}")
            with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
                write_demo_data(folder, train_per_class=PROCESS_IMAGES_PER_CLASS)
                compare_processes(Path(folder), args)
        elif args.data is not None:
            run(args, args.data)
        else:
            with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
                write_demo_data(folder)
                run(args, Path(folder))
    except UserError as err:
        sys.exit(f"error: {err}")
    print(f"\nwall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
