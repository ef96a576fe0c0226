"""What the benches share: the seed tutorial's loop, ours on the seed's recipe, the machine, timing, data, runs.

The seed loop is the baseline every speed figure is measured against, so every bench uses this one.
Imports only torch, torchvision, pillow, pyarrow and tuner.train: bench/gpu.py runs through it on a bare
GPU machine (no Ray, Optuna or tensorboardX; tests/test_bench_gpu.py holds that).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
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

from tuner.train.config import SEED_RECIPE, make_config
from tuner.train.demo_data import write_demo_data
from tuner.train.engine import Trainer
from tuner.train.loading import image_loader
from tuner.train.precision import cpu_model, describe_machine

BATCH_SIZE = 32  # the seed's batch size
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # the tutorial's Normalize
IMAGENET_STD = [0.229, 0.224, 0.225]


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


def seed_groups(model: nn.Module) -> list[dict]:
    """The tutorial's Adam groups: layer4 at 1e-4, layer3 at 5e-5, the head at 1e-3."""
    return [
        {"params": list(model.layer4.parameters()), "lr": 1e-4},
        {"params": list(model.layer3.parameters()), "lr": 5e-5},
        {"params": list(model.fc.parameters()), "lr": 1e-3},
    ]


def build_seed(num_classes: int, device: torch.device, freeze_stem: bool, train_all: bool = False):
    """The tutorial's fine-tuning model and optimizer (with weights=None instead of pretrained=True).

    `train_all` trains every stage (stem, layer1 and layer2 join with one more Adam group at 1e-5),
    so that the loop can be set against tuner's full fine-tuning (unfreeze_depth=5) like for like.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    model = model.to(device)
    groups = seed_groups(model)
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


def sample_images(train, n: int, seed: int = 0):
    """`n` training samples in a fixed random order (the list repeats when it is shorter than `n`)."""
    shuffled = list(train)
    random.Random(seed).shuffle(shuffled)
    return (shuffled * (n // len(shuffled) + 1))[:n]


# --- ours on the seed's recipe -----------------------------------------------------------------


def seed_recipe(**overrides) -> dict:
    """Our config values for the seed's own recipe (layer3, layer4 and the head at its rates, batch 32),
    random init (no download); `overrides` change or add values."""
    return {**SEED_RECIPE, "weights": "none", "batch_size": BATCH_SIZE, **overrides}


def seed_recipe_trainer(splits, size: int, args, epochs: int = 1) -> Trainer:
    """Our Trainer on the seed's recipe at `size` px, on `args.device` with `args.workers` and `args.compile`."""
    config = make_config(seed_recipe(image_size=size, epochs=epochs, compile=args.compile))
    return Trainer(config, splits, device=args.device, num_workers=args.workers)


def train_loader_of(trainer: Trainer, samples):
    """The trainer's own kind of training loader over `samples`: its crop transform, shuffling and
    pinning, and the node's decoded-image cache (built here, once, outside any timing: the cache is
    built once per node and dataset and then serves every epoch of every trial)."""
    return image_loader(samples, trainer.train_loader.dataset.transform, trainer.config, device=trainer.device,
                        num_workers=trainer.num_workers, shuffle=True, generator=trainer.loader_generator)


def batch_augment(trainer: Trainer):
    """A function of a loader's images that moves them to the trainer's device and augments them as a
    training step does (labels untouched: the images stand in for them)."""
    return lambda images: trainer.train_batches(images, images)


# --- the machine -------------------------------------------------------------------------------


def machine_line(device: torch.device | str = "cpu") -> str:
    """The line every bench prints with its figures: CPU model and bf16 units, or the GPU."""
    return f"machine: {describe_machine(device)}"


def machine_lines(device: torch.device, workers: int | None = None) -> list[str]:
    """The machine, software and load a run starts on; `workers` adds the loader workers."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cuda = f" (cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()})" if torch.version.cuda else ""
    lines = [
        machine_line(device),
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), "
        f"torch threads {torch.get_num_threads()}" + (f", loader workers {workers}" if workers is not None else ""),
        f"torch {torch.__version__}{cuda}, torchvision {torchvision.__version__}, python {platform.python_version()}",
        f"device: {device}" + (f" = {gpu_name(device)}" if device.type == "cuda" else ""),
    ]
    return lines + [load_average("at the start")] if hasattr(os, "getloadavg") else lines


def gpu_name(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"


def load_average(when: str) -> str:
    """The 1, 5 and 15 minute load averages: cores another process was using around the figures."""
    return f"load average {when} (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


# --- timing ------------------------------------------------------------------------------------


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_seconds(run, device: torch.device) -> float:
    """Wall seconds of `run()`, with the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def timed_process(command: list[str], env: dict) -> tuple[float, str]:
    """Wall seconds and stdout of a whole process; a failed one stops the bench with its output."""
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds, result.stdout


def median_of(ratios: list[float], spec: str = ".2f") -> str:
    """`x (a, b, c)`: the median, then every round's figure (a median hides a disturbed round)."""
    return f"{statistics.median(ratios):{spec}} ({', '.join(f'{r:{spec}}' for r in ratios)})"


def fmt(value: float | None, spec: str = ">9.1f") -> str:
    """`value` formatted with `spec`, or "n/a" in the same width for a figure that was not measured."""
    if value is None or math.isnan(value):
        return format("n/a", spec[:-2].rstrip("."))
    return format(value, spec)


# --- data --------------------------------------------------------------------------------------


@contextlib.contextmanager
def data_folder(data: Path | None, prefix: str = "tuner-bench-", **demo):
    """`data` when given, else the demo data (`demo`: write_demo_data's sizes) in a temporary folder
    that lasts the block."""
    if data is not None:
        yield Path(data)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        write_demo_data(folder, **demo)
        yield Path(folder)


# --- runs of `python -m tuner` -----------------------------------------------------------------


def tuner_command(verb: str, *flags: str, settings=()) -> list[str]:
    """`python -m tuner VERB FLAGS --set=...`: `settings` is a {name: value} dict or "name=value" strings."""
    items = [f"{k}={v}" for k, v in settings.items()] if isinstance(settings, dict) else list(settings)
    return [sys.executable, "-m", "tuner", verb, *flags, *[f"--set={item}" for item in items]]


def best_metrics(run: Path) -> dict:
    """The metrics of a run's best model (RUN/best/metrics.json), from `tuner train` or `tuner search`."""
    return json.loads((Path(run) / "best" / "metrics.json").read_text())


def search_tables(run: Path) -> tuple[list[dict], list[dict], dict]:
    """A search's trials and epochs tables (one row a trial, one an epoch) and its record (tuner.json)."""
    run = Path(run)
    return (pq.read_table(run / "trials.parquet").to_pylist(), pq.read_table(run / "epochs.parquet").to_pylist(),
            json.loads((run / "tuner.json").read_text()))
