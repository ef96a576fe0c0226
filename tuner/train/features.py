"""The frozen backbone's features, cached per node: a bank per split, its batches, and the probe's features.

While the backbone is frozen (unfreeze_depth 0, or before gradual unfreezing reaches a stage) only the
head trains, on features computed once per node and shared by every trial with the same backbone, data,
size and views (cache.feature_bank). A bank holds `views` augmented views of every image; view v is
seeded by v alone, so every trial computes (and shares) the same bank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import cache
from .augment import BatchAugment
from .augment_policy import NO_AUGMENTATION, AugmentPolicy
from .config import TrainConfig
from .evaluation import autocast
from .loading import crop_transforms, image_loader
from .model import TransferResNet

Samples = list[tuple[str, int]]


@dataclass(frozen=True)
class FeatureExtractor:
    """The backbone as it runs on this node: computes a bank of features and names what it depends on."""

    model: TransferResNet  # its backbone is frozen while banks are read; its head is not used here
    weights: dict[str, Any]  # provenance of the starting weights (name, sha256)
    config: TrainConfig
    normalization: dict[str, list[float]]
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    num_workers: int = 0

    def bank_key(self, samples: Samples, policy: AugmentPolicy, views: int) -> str:
        """The node-cache key of a bank: a hash of everything its features depend on."""
        config = self.config
        # The files, the decoding, the model and its exact weights (random init depends on the seed),
        # the view transforms and the precision they ran in.
        weights = {k: self.weights.get(k) for k in ("name", "sha256")}
        return cache.key_of(cache.FEATURES_FORMAT, cache.file_identity([p for p, _ in samples]), config.image_cache,
                            config.model, weights, config.seed if config.weights == "none" else None,
                            config.image_size, policy.strength, views, str(self.amp_dtype), self.normalization)

    def bank(self, samples: Samples, policy: AugmentPolicy, views: int) -> cache.FeatureBank:
        """The node's bank of `views` views of `samples` augmented by `policy`, computed on first use."""
        shape = (len(samples), views, self.model.fc.in_features)
        return cache.feature_bank(self.bank_key(samples, policy, views), shape,
                                  lambda array: self.fill(samples, policy, array))

    def probe_key(self, samples: Samples, classes: int, l2: float | None, seed: int) -> str:
        """The node-cache key of the probe fitted on probe_features(samples): their features' key, the
        labels, and the probe's settings (the seed draws the cross-validation folds, so only with l2 None)."""
        labels = [label for _, label in samples]
        return cache.key_of(cache.PROBES_FORMAT, self.bank_key(samples, NO_AUGMENTATION, 1), labels, classes, l2,
                            seed if l2 is None else None)

    @torch.no_grad()
    def fill(self, samples: Samples, policy: AugmentPolicy, array) -> None:
        """Fill array[i, v] with the backbone's features of view v of image i (view v is seeded by v alone)."""
        crop = crop_transforms(image_size=self.config.image_size, policy=policy)
        augment = BatchAugment(policy, **self.normalization)
        was_training = self.model.training
        self.model.eval()  # the frozen backbone is in eval mode in training too: the same features
        for view in range(array.shape[1]):
            # Seeded by the view alone, so every trial on the node computes (and shares) the same bank;
            # fork_rng keeps the caller's own random state untouched, as exact resume needs.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view)
                generator = torch.Generator().manual_seed(view)
                loader = image_loader(samples, crop, self.config, device=self.device, num_workers=self.num_workers,
                                      shuffle=False, generator=generator)
                first = 0
                for images, _ in loader:
                    images = images.to(self.device, non_blocking=True)
                    inputs = augment(images, generator).contiguous(memory_format=self.memory_format)
                    with autocast(self.device, self.amp_dtype):
                        features = self.model.features(inputs)
                    array[first:first + len(features), view] = features.float().cpu().numpy()
                    first += len(features)
        self.model.train(was_training)

    def probe_features(self, samples: Samples) -> torch.Tensor:
        """(images, dim) float32 features of one centre crop of each image: what the linear probe is fitted
        on; from the node's bank (shared with every trial of this backbone and size) when feature_cache is on."""
        if self.config.feature_cache:
            array = self.bank(samples, NO_AUGMENTATION, 1).array
        else:
            array = np.zeros((len(samples), 1, self.model.fc.in_features), dtype=np.float32)
            self.fill(samples, NO_AUGMENTATION, array)
        return torch.from_numpy(np.array(array[:, 0]))


class SplitFeatures:
    """The training and validation features of a run, as banks read (built, the first time) on first use.

    The training bank holds `views` views under the training `policy` (one when it does not augment);
    the validation bank the centre crops. `batches` mixes training batches with `mix` (MixUp, or None).
    """

    def __init__(self, extractor: FeatureExtractor, *, train: Samples, val: Samples, policy: AugmentPolicy,
                 views: int, batch_size: int, mix: Callable | None = None):
        self.extractor, self.samples, self.policy = extractor, {"train": train, "val": val}, policy
        self.views, self.batch_size, self.mix = 1 if policy.strength == 0 else views, batch_size, mix
        self.built: dict[str, cache.FeatureBank] | None = None  # both banks, once first read

    def banks(self) -> dict[str, cache.FeatureBank]:
        """{"train": the training views' bank, "val": the validation bank}."""
        if self.built is None:
            self.built = {"train": self.extractor.bank(self.samples["train"], self.policy, self.views),
                          "val": self.extractor.bank(self.samples["val"], NO_AUGMENTATION, 1)}
        return self.built

    def batches(self, split: str, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """feature_batches of `split`'s bank; the banks are read when the first batch is asked for."""
        yield from feature_batches(self.banks()[split], self.samples[split], batch_size=self.batch_size,
                                   device=self.extractor.device, generator=generator, mix=self.mix)


def feature_batches(bank: cache.FeatureBank, samples: Samples, *, batch_size: int, device: torch.device,
                    generator: torch.Generator | None = None,
                    mix: Callable | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features, targets) batches of `bank` on `device`: with a `generator` (training) shuffled, one random
    view of each image, and mixed by `mix`; without one in order, the first view, class-index targets."""
    labels = torch.tensor([label for _, label in samples])
    if generator is not None:
        order = torch.randperm(len(samples), generator=generator)
        views = torch.randint(bank.views, (len(samples),), generator=generator)
    else:
        order, views = torch.arange(len(samples)), torch.zeros(len(samples), dtype=torch.long)
    for first in range(0, len(samples), batch_size):
        chosen = order[first:first + batch_size]
        features = bank.gather(chosen, views[chosen]).to(device, non_blocking=True)
        targets = labels[chosen].to(device, non_blocking=True)
        if generator is not None and mix is not None:
            # No pixels here: MixUp of the pooled features the head sees (manifold mixup at its input),
            # handed to torchvision's MixUp as (N, D, 1, 1) images.
            mixed, targets = mix(features[:, :, None, None], targets)
            features = mixed.flatten(1)
        yield features, targets
