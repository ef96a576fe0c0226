"""bench/trainer.py --loader-sizes: the training batches' preparation alone, on one core, no model.

The seed's PIL pipeline, ours decoding the files every epoch (`image_cache=false`) and ours from the
cache, each with and without the batch augmentation that follows the loader on a CPU trial; first on
the demo PNGs and then on the same images saved as `--loader-photo-width` px JPEG photos.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import torch
from common import batch_augment, sample_images, seed_loader, seed_recipe_trainer, seed_train_transform, train_loader_of
from PIL import Image

from tuner.train.config import make_config
from tuner.train.engine import Trainer


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
    cached = seed_recipe_trainer(splits, size, args)
    uncached = Trainer(make_config({**cached.config.to_dict(), "image_cache": False}), splits,
                       device=args.device, num_workers=0)
    seed = seed_loader(samples, seed_train_transform(size), 0)
    uncached_loader, cached_loader = train_loader_of(uncached, samples), train_loader_of(cached, samples)
    # The loader's own work (uint8 crops, as a GPU trial receives them) and, on a CPU trial, the batch
    # augmentation that follows it in the training process.
    variants = {
        "seed: PIL decode + PIL transforms per image": (seed, lambda images: None),
        "ours, no cache: PIL decode + crop": (uncached_loader, lambda images: None),
        "ours, cache: decoded once + crop": (cached_loader, lambda images: None),
        "ours, no cache: PIL decode + crop, batch augment": (uncached_loader, batch_augment(uncached)),
        "ours, cache: decoded once + crop, batch augment": (cached_loader, batch_augment(cached)),
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
