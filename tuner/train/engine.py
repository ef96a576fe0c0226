"""The training loop: plain PyTorch, no Ray. `Trainer` runs one epoch at a time so that both
`tuner train` and a Ray Tune trial can drive it, checkpoint it and resume it exactly."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torchvision.transforms import v2
from tqdm import tqdm

from ..errors import UserError
from . import cache, data
from .augment import BatchAugment, normalize, random_erase
from .checkpoint import model_payload, save_text, save_torch, write_best
from .config import METRICS, TrainConfig, is_better
from .evaluation import autocast, eval_loader, evaluate
from .model import (
    CHECKPOINT_FORMAT,
    apply_trained_state,
    build_model,
    build_optimizer,
    normalization,
    param_groups,
    set_trained_depth,
    trained_keys,
    trained_stages,
)
from .precision import choose_compute
from .probe import fit_probe


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; the run stops with status `diverged`."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"training diverged in epoch {epoch}: loss is {loss}; lower the learning rates")
        self.epoch, self.loss = epoch, loss


class OutOfMemory(UserError):
    """A batch did not fit in the device's memory; the message names the sizes to lower."""


def is_out_of_memory(err: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, MPS, XPU), or the CPU allocator's RuntimeError."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"device {requested!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {requested!r} was asked for but this machine has no CUDA GPU; use --device cpu")
    return device


def default_workers(device: torch.device) -> int:
    """Loader processes: several to feed a GPU; none on a CPU, where they would take cores from the model."""
    if device.type == "cuda":
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return 0


def group_stages(depth: int) -> tuple[str, ...]:
    """Optimizer group order: head, then stages top-down, so gradual unfreezing only appends."""
    return ("head", *reversed(trained_stages(depth)))


def batch_mixer(config: TrainConfig, num_classes: int, *, images: bool = True) -> Callable | None:
    """torchvision's MixUp and/or CutMix (one of the two per batch when both are on, as torchvision's
    recipes do), or None. `images=False`: for cached features, where only MixUp means anything."""
    mixers = [v2.MixUp(alpha=config.mixup, num_classes=num_classes)] if config.mixup else []
    if config.cutmix and images:
        mixers.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def lr_factor(config: TrainConfig, step: int, total_steps: int, epoch_steps: int) -> float:
    """Multiplier of every group's base rate at 0-based optimizer `step` of `total_steps` (`epoch_steps` an epoch)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        span = max(total_steps - config.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min((step - config.warmup_steps) / span, 1.0)))
    if config.schedule == "step":
        return config.gamma ** (step // epoch_steps // config.step_size)
    return 1.0


def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA's decay after `updates` updates: `decay`, warmed up as TensorFlow's ExponentialMovingAverage
    with num_updates and diffusers' EMAModel do, min(decay, (1 + t) / (10 + t)). Without it an average with
    a longer horizon than the run so far is mostly the first, poor steps' weights (0.99 after 100 steps still
    holds 37% of the start); with it the average's reach grows with the run."""
    return min(decay, (1 + updates) / (10 + updates))


def ema_with_warmup(decay: float):
    """An AveragedModel multi_avg_fn: torch's get_ema_multi_avg_fn update with the decay of ema_decay_at."""
    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: int | torch.Tensor) -> None:
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay_at(decay, int(n_averaged)))
    return update


class Trainer:
    """Owns the model, optimizer and loaders of one run; `run_epoch()` advances it by one epoch."""

    def __init__(
        self,
        config: TrainConfig,
        splits: data.ImageSplits,
        *,
        device: str = "auto",
        num_workers: int | None = None,
        progress: bool = False,
    ):
        self.config = config
        self.classes = list(splits.classes)
        self.device = resolve_device(device)
        self.progress = progress
        self.model, self.weights = build_model(config, len(self.classes))
        self.model.to(self.device)
        # Precision and layout: as configured, or measured on this node (precision.py; cached per node).
        self.compute = choose_compute(config, self.model, self.device, num_classes=len(self.classes))
        self.amp_dtype = self.compute.autocast_dtype
        self.memory_format = self.compute.torch_memory_format
        self.model.to(memory_format=self.memory_format)
        # Compiled or not, the parameters (and state_dict keys) are self.model's.
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.normalization = normalization(config.model)
        self._build_loaders(splits, default_workers(self.device) if num_workers is None else num_workers)
        self.depth = self.target_depth(0)
        set_trained_depth(self.model, self.depth, config.bn_mode)
        self.optimizer = build_optimizer(self._groups(group_stages(self.depth)), config)
        # Regularisers on the training batch: mixing (on images, or MixUp on cached features) and the
        # weights' moving average, which is then the model that is validated and kept as best.
        self.mix = batch_mixer(config, len(self.classes))
        self.feature_mix = batch_mixer(config, len(self.classes), images=False)
        self.ema: AveragedModel | None = None
        if config.ema_decay:
            self.ema = AveragedModel(self.model, multi_avg_fn=ema_with_warmup(config.ema_decay), use_buffers=True)
            self.ema.eval().requires_grad_(False)
            self._ema_pairs = self._trained_pairs()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.epoch_steps = len(self.train_loader)
        # The run's length, and the LR schedule's: config.steps, else whole epochs.
        self.total_steps = config.steps or config.epochs * self.epoch_steps
        self.probe: dict[str, Any] | None = None  # how the head was fitted (head_init=probe), once fitted
        self.best_metrics: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.first_step_at: float | None = None  # wall-clock time the first training step began
        self._banks: dict[str, cache.FeatureBank] | None = None
        # Called with (trainer, step) before every training step. A test hook: tuner/testing/faults.py
        # injects faults through it when TUNER_FAULT is set; None (nothing called) otherwise.
        self.step_hook: Callable[[Trainer, int], None] | None = None

    def _build_loaders(self, splits: data.ImageSplits, num_workers: int) -> None:
        """uint8 loaders (crop and flip only); `_batch_to_device` does the rest on the device."""
        config = self.config
        crop = data.crop_transforms(image_size=config.image_size, aug_strength=config.aug_strength)
        self.augment = BatchAugment(aug_strength=config.aug_strength, **self.normalization)
        # Generators reseeded every epoch make shuffling, worker seeds and the batch augmentation a
        # function of (seed, epoch), so a resumed run repeats them exactly.
        self.loader_generator = torch.Generator()
        self.augment_generator = torch.Generator()
        self.num_workers = num_workers

        self.train_samples, self.val_samples = splits.train, splits.val
        self.train_loader = self._loader(splits.train, crop, shuffle=True, generator=self.loader_generator)
        # The loaders that evaluation.py reads a saved model's splits with: the same images, batches and order.
        self.val_loader = eval_loader(splits.val, config, device=self.device, num_workers=num_workers)
        self.test_loader = (eval_loader(splits.test, config, device=self.device, num_workers=num_workers)
                            if splits.test else None)

    def _loader(self, samples, transform, **kwargs):
        """A uint8 loader over `samples`, reading the node's decoded-image cache when it is on."""
        size = self.config.image_size
        decoded = (cache.decoded_images([path for path, _ in samples], data.resize_size(size))
                   if self.config.image_cache else None)
        return data.make_loader(samples, transform, batch_size=self.config.batch_size, num_workers=self.num_workers,
                                pin_memory=self.device.type == "cuda", decoded=decoded, **kwargs)

    def _groups(self, stages: tuple[str, ...]) -> list[dict]:
        return param_groups(self.model, self.config, stages)

    def target_depth(self, epoch: int) -> int:
        """How many stages train in 0-based `epoch` (gradual unfreezing adds one every k epochs)."""
        every = self.config.unfreeze_every
        return self.config.unfreeze_depth if every == 0 else min(self.config.unfreeze_depth, epoch // every)

    def _unfreeze_to(self, depth: int) -> None:
        """Unfreeze stages down to `depth` and give the newly trained ones their optimizer groups."""
        new_stages = group_stages(depth)[len(group_stages(self.depth)):]
        set_trained_depth(self.model, depth, self.config.bn_mode)
        for group in self._groups(new_stages):
            self.optimizer.add_param_group(group)
        self.depth = depth
        if self.ema is not None:
            self._ema_pairs = self._trained_pairs()

    # --- the weights' moving average (ema_decay > 0) ---

    def _trained_pairs(self) -> tuple[list[torch.Tensor], ...]:
        """The trained tensors of the EMA model and of the model, floating ones and the rest (counters)."""
        keys = trained_keys(self.model, self.depth)
        ema, own = self.ema.module.state_dict(), self.model.state_dict()  # tensors sharing their storage
        floats = [k for k in keys if own[k].is_floating_point()]
        others = [k for k in keys if not own[k].is_floating_point()]
        return [ema[k] for k in floats], [own[k] for k in floats], [ema[k] for k in others], [own[k] for k in others]

    def _update_ema(self) -> None:
        """AveragedModel.update_parameters (use_buffers) over the trained tensors only: frozen ones are the
        starting weights in both, and averaging a whole ResNet every step would cost far more than a
        head-only step on cached features. The first update copies, as AveragedModel's does."""
        ema_floats, floats, ema_others, others = self._ema_pairs
        updates = self.step  # = ema.n_averaged (one update a step, both restored together), without a device sync
        with torch.no_grad():
            if updates == 0:
                torch._foreach_copy_(ema_floats, floats)
            else:
                self.ema.multi_avg_fn(ema_floats, floats, updates)
            if others:  # batch-norm counters: an average means nothing
                torch._foreach_copy_(ema_others, others)
        self.ema.n_averaged += 1

    def evaluated_model(self) -> nn.Module:
        """The weights that are validated and kept as best: the EMA once it has averaged a step, else the model."""
        if self.ema is not None and self.ema.n_averaged > 0:
            return self.ema.module
        return self.model

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _batch_to_device(self, images: torch.Tensor, labels: torch.Tensor, *, augment: bool):
        """A uint8 batch -> (float batch, targets) on the device: for training augmented, erased and mixed
        (targets then class probabilities), else only normalised with class-index targets."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if augment:
            images = self.augment(images, self.augment_generator)
            if self.config.random_erasing:
                images = random_erase(images, self.config.random_erasing, self.augment_generator)
            if self.mix is not None:
                images, labels = self.mix(images, labels)
        else:
            images = normalize(images, **self.normalization)
        return images.contiguous(memory_format=self.memory_format), labels

    def head_only(self) -> bool:
        """Whether this epoch trains the head alone on cached backbone features (frozen backbone)."""
        return self.config.feature_cache and self.depth == 0

    def _image_batches(self, loader, *, augment: bool, desc: str | None = None):
        batches = tqdm(loader, desc=desc, leave=False, disable=not (self.progress and desc), file=sys.stderr)
        for images, labels in batches:
            yield self._batch_to_device(images, labels, augment=augment)

    def _feature_batches(self, split: str, generator: torch.Generator | None = None):
        """Batches of cached features: shuffled, one random view of each image per epoch, when training."""
        bank, samples = self.feature_banks()[split], getattr(self, f"{split}_samples")
        labels = torch.tensor([label for _, label in samples])
        if generator is not None:
            order = torch.randperm(len(samples), generator=generator)
            views = torch.randint(bank.views, (len(samples),), generator=generator)
        else:
            order, views = torch.arange(len(samples)), torch.zeros(len(samples), dtype=torch.long)
        for first in range(0, len(samples), self.config.batch_size):
            chosen = order[first:first + self.config.batch_size]
            features = bank.gather(chosen, views[chosen]).to(self.device, non_blocking=True)
            targets = labels[chosen].to(self.device, non_blocking=True)
            if generator is not None and self.feature_mix is not None:
                # No pixels here: MixUp of the pooled features the head sees (manifold mixup at its input),
                # handed to torchvision's MixUp as (N, D, 1, 1) images.
                mixed, targets = self.feature_mix(features[:, :, None, None], targets)
                features = mixed.flatten(1)
            yield features, targets

    def train_one_epoch(self) -> dict[str, float]:
        config, epoch = self.config, self.epoch
        self.model.train()
        self.loader_generator.manual_seed(config.seed * 1_000_003 + epoch)
        self.augment_generator.manual_seed(config.seed * 1_000_003 + epoch)
        head_only = self.head_only()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        batches = (self._feature_batches("train", self.loader_generator) if head_only else
                   self._image_batches(self.train_loader, augment=True, desc=f"epoch {epoch + 1}"))
        start = time.perf_counter()
        for step, (inputs, targets) in enumerate(batches):
            if self.step >= self.total_steps:  # a budget that ends inside an epoch
                break
            if self.first_step_at is None:
                self.first_step_at = time.time()  # the first batch is on the device: training starts
            if self.step_hook is not None:
                self.step_hook(self, step)
            factor = lr_factor(config, self.step, self.total_steps, self.epoch_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with self._autocast():
                logits = self.model.fc(inputs) if head_only else self.forward(inputs)
                loss = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self._update_ema()
            self.step += 1
            # A mixed batch's targets are probabilities: its accuracy counts each image's larger share.
            labels = targets if targets.ndim == 1 else targets.argmax(1)
            # Accumulate on the device: no host sync per batch.
            loss_sum += loss.detach().float() * labels.numel()
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.numel()
        seconds = time.perf_counter() - start
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            raise Diverged(epoch + 1, train_loss)
        self.epoch += 1
        return {"train_loss": train_loss, "train_acc": correct.item() / max(seen, 1), "images": seen,
                "seconds": seconds}

    def evaluate(self, loader, prefix: str = "val", model: nn.Module | None = None) -> dict[str, float]:
        """Loss, accuracy (and top-5 with 10+ classes) on `loader` of `model`, by default the evaluated one."""
        return self._evaluate(self._image_batches(loader, augment=False), prefix, model=model)

    def _evaluate(self, batches, prefix: str, head_only: bool = False,
                  model: nn.Module | None = None) -> dict[str, float]:
        model = self.evaluated_model() if model is None else model
        model.eval()  # the whole model, also when only its head runs on cached features
        forward = model.fc if head_only else self.forward if model is self.model else model
        return evaluate(forward, batches, num_classes=len(self.classes), device=self.device, dtype=self.amp_dtype,
                        prefix=prefix).metrics

    def validate(self) -> dict[str, float]:
        """Validation metrics, from cached features when the backbone is frozen."""
        if self.head_only():
            return self._evaluate(self._feature_batches("val"), "val", head_only=True)
        return self.evaluate(self.val_loader)

    # --- the frozen-feature cache ---

    def feature_banks(self) -> dict[str, cache.FeatureBank]:
        """The node's cached backbone features of the training views and of the validation images."""
        if self._banks is None:
            views = 1 if self.config.aug_strength == 0 else self.config.feature_views
            self._banks = {"train": self._feature_bank(self.train_samples, self.config.aug_strength, views),
                           "val": self._feature_bank(self.val_samples, 0.0, 1)}
        return self._banks

    def _feature_bank(self, samples, aug_strength: float, views: int) -> cache.FeatureBank:
        config = self.config
        # Everything the features depend on: the files, the decoding, the model and its exact weights
        # (random init depends on the seed), the view transforms and the precision they ran in.
        weights = {k: self.weights.get(k) for k in ("name", "sha256")}
        key = cache.key_of(cache.FEATURES_FORMAT, cache.file_identity([p for p, _ in samples]), config.image_cache,
                           config.model, weights, config.seed if config.weights == "none" else None,
                           config.image_size, aug_strength, views, str(self.amp_dtype), self.normalization)
        shape = (len(samples), views, self.model.fc.in_features)
        return cache.feature_bank(key, shape, lambda array: self._compute_features(samples, aug_strength, array))

    @torch.no_grad()
    def _compute_features(self, samples, aug_strength: float, array) -> None:
        """Fill array[i, v] with the backbone's features of view v of image i (view v is seeded by v alone)."""
        crop = data.crop_transforms(image_size=self.config.image_size, aug_strength=aug_strength)
        augment = BatchAugment(aug_strength=aug_strength, **self.normalization)
        was_training = self.model.training
        self.model.eval()  # the frozen backbone is in eval mode in training too: the same features
        for view in range(array.shape[1]):
            # Seeded by the view alone, so every trial on the node computes (and shares) the same bank;
            # fork_rng keeps the trainer's own random state untouched, as exact resume needs.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view)
                generator = torch.Generator().manual_seed(view)
                loader = self._loader(samples, crop, shuffle=False, generator=generator)
                first = 0
                for images, _ in loader:
                    images = images.to(self.device, non_blocking=True)
                    inputs = augment(images, generator).contiguous(memory_format=self.memory_format)
                    with self._autocast():
                        features = self.model.features(inputs)
                    array[first:first + len(features), view] = features.float().cpu().numpy()
                    first += len(features)
        self.model.train(was_training)

    def run_epoch(self) -> dict[str, Any]:
        """Train and validate one epoch; returns its metrics (`improved` says whether it is the new best)."""
        return self.run_round(1)

    def run_round(self, epochs: int) -> dict[str, Any]:
        """Train `epochs` epochs (fewer where the run's steps end), then validate once; returns the metrics.

        With head_init=probe the first round is the probe itself: the head is fitted and validated
        before any step (epoch 0, step 0), so the linear probe is a candidate for the best checkpoint
        and a fine-tuning run is never worse than its starting point. Training metrics are over the
        whole round. `improved` says whether the round is the new best.
        """
        start = time.perf_counter()
        totals = {"loss": 0.0, "correct": 0.0, "images": 0, "seconds": 0.0}
        probe_round = self.step == 0 and self.config.probes_head() and self.probe is None
        try:
            if probe_round:
                self.fit_probe_head()
            for _ in range(0 if probe_round else epochs):
                if self.step >= self.total_steps:
                    break
                if self.target_depth(self.epoch) > self.depth:
                    self._unfreeze_to(self.target_depth(self.epoch))
                epoch = self.train_one_epoch()
                totals["loss"] += epoch["train_loss"] * epoch["images"]
                totals["correct"] += epoch["train_acc"] * epoch["images"]
                totals["images"] += epoch["images"]
                totals["seconds"] += epoch["seconds"]
            metrics: dict[str, Any] = {"epoch": self.epoch, "step": self.step}
            if not probe_round:
                seen = max(totals["images"], 1)
                speed = totals["images"] / totals["seconds"] if totals["seconds"] else 0.0
                metrics.update({"train_loss": totals["loss"] / seen, "train_acc": totals["correct"] / seen,
                                "images_per_second": speed})
            metrics.update(self.validate())
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            raise OutOfMemory(f"out of memory at batch_size={self.config.batch_size}, "
                              f"image_size={self.config.image_size} on {self.device}; "
                              f"lower batch_size or image_size") from err
        metrics.update({f"lr/{g['stage']}": g["lr"] for g in self.optimizer.param_groups})  # at the last step
        metrics["unfrozen_stages"] = self.depth
        metrics["compute"] = f"{self.compute.precision}/{self.compute.memory_format}"  # as chosen on this node
        if probe_round:
            metrics.update(self.probe)
        metrics["epoch_seconds"] = time.perf_counter() - start
        metric = self.config.metric
        best_value = self.best_metrics[metric] if self.best_metrics else None
        metrics["improved"] = is_better(METRICS[metric], metrics[metric], best_value)
        if metrics["improved"]:
            self.best_metrics = {k: v for k, v in metrics.items() if k != "improved"}
            self.best_state = copy.deepcopy(self.evaluated_model().state_dict())
        self.history.append(metrics)
        return metrics

    # --- the linear-probe head (head_init=probe) ---

    def fit_probe_head(self) -> None:
        """Fit the head to convergence on the frozen backbone's features of the training images (no
        augmentation, one view), as a logistic regression; `self.probe` records how (see probe.py)."""
        start = time.perf_counter()
        if self.config.feature_cache:  # shared by every trial on the node with this backbone and size
            array = self._feature_bank(self.train_samples, 0.0, 1).array
        else:
            array = np.zeros((len(self.train_samples), 1, self.model.fc.in_features), dtype=np.float32)
            self._compute_features(self.train_samples, 0.0, array)
        features = torch.from_numpy(np.array(array[:, 0]))
        labels = torch.tensor([label for _, label in self.train_samples])
        fitted = fit_probe(features, labels, len(self.classes), self.config.probe_l2, seed=self.config.seed)
        with torch.no_grad():
            self.model.fc.weight.copy_(fitted.weight)
            self.model.fc.bias.copy_(fitted.bias)
        self.probe = {"probe_l2": fitted.l2, "probe_cv_acc": fitted.cv_acc,
                      "probe_seconds": time.perf_counter() - start}

    def evaluate_best_on_test(self) -> dict[str, float] | None:
        """Evaluate the best weights once on the test split (never used for selection)."""
        if self.test_loader is None or self.best_state is None:
            return None
        current = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(self.best_state)
        metrics = self.evaluate(self.test_loader, prefix="test", model=self.model)
        self.model.load_state_dict(current)
        return metrics

    # --- checkpoints ---

    def best_payload(self, extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        """The best epoch as a self-contained checkpoint (what `best/model.pt` holds)."""
        assert self.best_metrics is not None and self.best_state is not None
        return model_payload(self.best_state, self.description(), self.best_metrics["epoch"],
                             {**self.best_metrics, **(extra_metrics or {})})

    def description(self) -> dict[str, Any]:
        """Config, class names, weights provenance, normalisation and the compute choice: what a checkpoint
        needs besides tensors."""
        return {"config": self.config.to_dict(), "classes": self.classes, "weights": self.weights,
                "normalization": self.normalization, "compute": self.compute.to_dict()}

    def state_dict(self, include_best: bool = True) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it stopped, lean: of the model only the
        tensors training changed (the head and the stages trained so far; the rest is the starting
        weights, named by `base_sha256`), so a head-only checkpoint is kilobytes, not a whole ResNet.

        `include_best=False` leaves out the best weights (for callers that keep the best epoch's
        checkpoint themselves, as Ray Tune does).
        """
        # Stages not trained by now never were (depth only grows), so these keys cover the best weights too.
        keys = trained_keys(self.model, self.depth)
        best = {k: self.best_state[k] for k in keys} if include_best and self.best_state is not None else None
        return {
            "format": CHECKPOINT_FORMAT,
            "model": {k: v for k, v in self.model.state_dict().items() if k in keys},
            "base_sha256": self.weights["state_sha256"],
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "depth": self.depth,
            "epoch": self.epoch,
            "step": self.step,
            "probe": self.probe,
            # The moving average's trained tensors (the rest of it is the starting weights, as above).
            "ema": None if self.ema is None else {k: v for k, v in self.ema.module.state_dict().items() if k in keys},
            "ema_updates": 0 if self.ema is None else int(self.ema.n_averaged),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            **self.description(),
            "best_metrics": self.best_metrics,
            "best_state": best,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["classes"] != self.classes:
            raise UserError(
                f"the checkpoint was trained on classes {state['classes']} but the data has {self.classes}; "
                f"resume with the same data"
            )
        self._unfreeze_to(state["depth"])
        # The best weights are the starting weights with the checkpoint's best trained tensors on top.
        starting = copy.deepcopy(self.model.state_dict()) if state["best_state"] is not None else None
        apply_trained_state(self.model, self.weights, state["model"], state.get("base_sha256"), "the checkpoint")
        if self.ema is not None and state.get("ema") is not None:
            apply_trained_state(self.ema.module, self.weights, state["ema"], state.get("base_sha256"), "the checkpoint")
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.probe = state["epoch"], state["step"], state["probe"]
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.best_metrics = state["best_metrics"]
        self.best_state = None if starting is None else {**starting, **state["best_state"]}
        self.history = list(state["history"])


def fit(trainer: Trainer, out_dir, *, on_epoch=None) -> dict[str, Any]:
    """Run `trainer` to its last epoch, keeping OUT/checkpoint.pt (resume) and OUT/best/ (best epoch).

    `on_epoch(metrics)` is called after each epoch. Returns the best epoch's metrics (with test_*
    when the data has a test split). A Diverged run leaves OUT/best/ as the best epoch before it.
    """
    out_dir = Path(out_dir)
    while trainer.step < trainer.total_steps:
        metrics = trainer.run_epoch()  # with head_init=probe the first "epoch" is the probe (epoch 0)
        if metrics["improved"]:
            write_best(out_dir / "best", trainer.best_payload())
        save_torch(trainer.state_dict(), out_dir / "checkpoint.pt")
        # Rewritten whole from the trainer's history, so it always agrees with checkpoint.pt.
        save_text("".join(json.dumps(m) + "\n" for m in trainer.history), out_dir / "epochs.jsonl")
        if on_epoch is not None:
            on_epoch(metrics)
    best = dict(trainer.best_metrics or {})
    test = trainer.evaluate_best_on_test()
    if test:
        best.update(test)
        write_best(out_dir / "best", trainer.best_payload(test))
    return best
