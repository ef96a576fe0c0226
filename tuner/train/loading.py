"""From (path, label) lists to uint8 batches: the loader's transforms, the dataset, and the one loader
every caller builds, which is where the node's decoded-image cache is used or not.

Augmentation has one knob, `aug_strength` s in [0, 1], whose numbers are augment_policy.AugmentPolicy's.
It is split between the loader (crop_transforms: random crop and flip, per image, uint8) and the
training device (augment.BatchAugment: rotation, colour jitter and RandAugment, vectorised over the batch);
both are handed the same policy.

With the image cache on (`image_cache`, the default) the loader crops from each image as decoded once
and resized to a shorter side of size*256/224 (cache.decoded_images), not from the full-size file: the
same pixels for evaluation, slightly softer large zooms for training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..errors import UserError
from . import cache
from .augment_policy import NO_AUGMENTATION, AugmentPolicy
from .cache import DecodedImages
from .config import TrainConfig

# --- what the loader does to each image ---------------------------------------------------------


def resize_size(image_size: int) -> int:
    """The shorter side images are resized to before a centre crop of `image_size` (ImageNet's ratio)."""
    return round(image_size * 256 / 224)


def crop_transforms(*, image_size: int, policy: AugmentPolicy) -> Callable:
    """PIL image or uint8 tensor -> uint8 tensor (3, image_size, image_size): the loader's share of the work.

    A policy without a crop scale (strength 0, the eval transform) resizes and centre-crops; otherwise a
    random crop and flip as the policy says. The rest of the augmentation runs on whole batches on
    the training device (augment.BatchAugment), from the same policy.
    """
    if policy.crop_scale is None:
        steps = [v2.Resize(resize_size(image_size)), v2.CenterCrop(image_size)]
    else:
        steps = [v2.RandomResizedCrop(image_size, scale=policy.crop_scale), v2.RandomHorizontalFlip(policy.flip)]
    return v2.Compose([*steps, v2.ToImage(), v2.ToPureTensor()])


def eval_transforms(*, image_size: int, mean, std) -> Callable:
    """PIL image -> normalised float tensor (3, image_size, image_size): resize + centre crop.

    The same pixels as training's evaluation (the centre crop, then augment.normalize).
    """
    return v2.Compose([
        crop_transforms(image_size=image_size, policy=NO_AUGMENTATION),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


# --- datasets and loaders ----------------------------------------------------------------------


class ImageListDataset(Dataset):
    """(path, label) pairs -> (transformed image, label).

    Images come from `decoded` (the node's decoded-image cache, in the order of `samples`) when given,
    else from the files, decoded with PIL as RGB on every access.
    """

    def __init__(self, samples: list[tuple[str, int]], transform: Callable | None,
                 decoded: DecodedImages | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        if self.decoded is not None:
            image = self.decoded[index]
        else:
            with Image.open(path) as image:
                image = image.convert("RGB")  # grey, palette and RGBA files all become 3 channels
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def make_loader(
    samples: list[tuple[str, int]],
    transform: Callable,
    *,
    batch_size: int,
    decoded: DecodedImages | None = None,
    shuffle: bool,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over `samples`; pass a seeded `generator` for a reproducible shuffle."""
    if drop_last and len(samples) < batch_size:
        # Otherwise the loader is silently empty and an epoch trains on nothing.
        raise UserError(
            f"batch_size={batch_size} is larger than the {len(samples)} images and drop_last is set; "
            "lower batch_size"
        )
    return DataLoader(
        ImageListDataset(samples, transform, decoded),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # Fresh workers each epoch take their seeds from `generator`, which the trainer reseeds per
        # epoch: augmentation is then a function of (seed, epoch) and a resumed run repeats it exactly.
        persistent_workers=False,
    )


def image_loader(samples: list[tuple[str, int]], transform: Callable, config: TrainConfig, *,
                 device: torch.device, num_workers: int = 0, shuffle: bool = False,
                 generator: torch.Generator | None = None) -> DataLoader:
    """uint8 batches of config.batch_size over `samples`, pinned for a GPU: what training, validation,
    the feature banks and a saved model's evaluation all read. The one place that decides to read the
    node's decoded-image cache (config.image_cache) rather than the files."""
    decoded = (cache.decoded_images([path for path, _ in samples], resize_size(config.image_size))
               if config.image_cache else None)
    return make_loader(samples, transform, batch_size=config.batch_size, num_workers=num_workers,
                       pin_memory=device.type == "cuda", decoded=decoded, shuffle=shuffle, generator=generator)


def eval_loader(samples: list[tuple[str, int]], config: TrainConfig, *, device: torch.device,
                num_workers: int = 0) -> DataLoader:
    """uint8 centre crops of `samples`, in order: what validation and a saved model's evaluation read."""
    crop = crop_transforms(image_size=config.image_size, policy=NO_AUGMENTATION)
    return image_loader(samples, crop, config, device=device, num_workers=num_workers)
