"""A loader's uint8 batches -> the model's inputs on the device, in its memory layout.

Evaluation only normalises (`eval_batches`, shared by the trainer and evaluation.TrainedModel); training
also augments, erases and mixes (`TrainBatches`), with the parameters drawn from a seeded CPU generator
so that a resumed run repeats them exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torchvision.transforms import v2

from .augment import BatchAugment, normalize, random_erase
from .augment_policy import AugmentPolicy
from .config import TrainConfig


def batch_mixer(config: TrainConfig, num_classes: int, *, images: bool = True) -> Callable | None:
    """torchvision's MixUp and/or CutMix (one of the two per batch when both are on, as torchvision's
    recipes do), or None. `images=False`: for cached features, where only MixUp means anything."""
    mixers = [v2.MixUp(alpha=config.mixup, num_classes=num_classes)] if config.mixup else []
    if config.cutmix and images:
        mixers.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def eval_batch(images: torch.Tensor, labels: torch.Tensor, *, device: torch.device, normalization: dict,
               memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch -> (normalised float batch, class-index labels) on `device`."""
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    return normalize(images, **normalization).contiguous(memory_format=memory_format), labels


def eval_batches(loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: torch.device,
                 normalization: dict, memory_format: torch.memory_format) -> Iterator[tuple[torch.Tensor, ...]]:
    """eval_batch of every batch of `loader`: what every evaluation of images reads."""
    for images, labels in loader:
        yield eval_batch(images, labels, device=device, normalization=normalization, memory_format=memory_format)


class TrainBatches:
    """A uint8 training batch -> (augmented, erased and mixed float batch, targets) on the device.

    Targets are class probabilities when a mixer is on, else class indices. The augmentation and the
    erasing draw from `generator` (the caller reseeds it each epoch); the mixers draw from torch's
    global generator, as torchvision's do.
    """

    def __init__(self, config: TrainConfig, policy: AugmentPolicy, *, normalization: dict, num_classes: int,
                 device: torch.device, memory_format: torch.memory_format, generator: torch.Generator):
        self.augment = BatchAugment(policy, **normalization)
        self.random_erasing = config.random_erasing
        self.mix = batch_mixer(config, num_classes)
        self.device, self.memory_format, self.generator = device, memory_format, generator

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        images = self.augment(images, self.generator)
        if self.random_erasing:
            images = random_erase(images, self.random_erasing, self.generator)
        if self.mix is not None:
            images, labels = self.mix(images, labels)
        return images.contiguous(memory_format=self.memory_format), labels

    def batches(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, ...]]:
        for images, labels in loader:
            yield self(images, labels)
