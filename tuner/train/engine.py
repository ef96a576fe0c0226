"""The training loop: plain PyTorch, no Ray. `Trainer` runs one epoch at a time so that both
`tuner train` and a Ray Tune trial can drive it, checkpoint it and resume it exactly."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import UserError
from .augment_policy import AugmentPolicy
from .batches import TrainBatches, batch_mixer, eval_batches
from .checkpoint import save_text, save_torch, write_best
from .config import METRICS, TrainConfig, is_better
from .ema import ModelEMA, evaluated_model
from .evaluation import Evaluation, ImagePredictions, autocast, evaluate
from .features import FeatureExtractor, SplitFeatures
from .folders import ImageSplits
from .loading import crop_transforms, eval_loader, image_loader
from .model import build_model, build_optimizer, normalization, param_groups, set_trained_depth, trained_stages
from .precision import choose_compute
from .probe import probe_head
from .trainer_state import best_payload, restore_trainer, trainer_state


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


@contextlib.contextmanager
def out_of_memory_named(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Turns a batch that did not fit (is_out_of_memory) into OutOfMemory, naming the sizes to lower."""
    try:
        yield
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        raise OutOfMemory(f"out of memory at batch_size={config.batch_size}, image_size={config.image_size} "
                          f"on {device}; lower batch_size or image_size") from err


def round_training_metrics(epochs: list[dict[str, float]]) -> dict[str, float]:
    """Training loss, accuracy and speed over a round's epochs (train_one_epoch's), weighted by their images."""
    images, seconds = sum(e["images"] for e in epochs), sum(e["seconds"] for e in epochs)
    seen = max(images, 1)
    return {"train_loss": sum(e["train_loss"] * e["images"] for e in epochs) / seen,
            "train_acc": sum(e["train_acc"] * e["images"] for e in epochs) / seen,
            "images_per_second": images / seconds if seconds else 0.0}


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


class Trainer:
    """Owns the model, optimizer, schedule and random state of one run; `run_round()` advances it.

    The loop is handed its parts, each with its own module: the loaders (loading.py), the training
    batches (batches.py), the frozen-feature banks (features.py) and the weights' moving average
    (ema.py). Its checkpoint state is trainer_state.py's.
    """

    def __init__(self, config: TrainConfig, splits: ImageSplits, *, device: str = "auto",
                 num_workers: int | None = None, progress: bool = False):
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
        self.num_workers = default_workers(self.device) if num_workers is None else num_workers
        # One policy for the loader's crops, the batch augmentation and the training views' features.
        self.policy = AugmentPolicy.from_strength(config.aug_strength)
        # Generators reseeded every epoch make shuffling, worker seeds and the batch augmentation a
        # function of (seed, epoch), so a resumed run repeats them exactly.
        self.loader_generator = torch.Generator()
        self.augment_generator = torch.Generator()
        self.train_samples, self.val_samples = splits.train, splits.val
        # uint8 crops (and flips) from the loader; self.train_batches does the rest on the device.
        crop = crop_transforms(image_size=config.image_size, policy=self.policy)
        self.train_loader = image_loader(splits.train, crop, config, device=self.device, num_workers=self.num_workers,
                                         shuffle=True, generator=self.loader_generator)
        # The loaders that evaluation.py reads a saved model's splits with: the same images, batches and order.
        self.val_loader = eval_loader(splits.val, config, device=self.device, num_workers=self.num_workers)
        self.test_loader = (eval_loader(splits.test, config, device=self.device, num_workers=self.num_workers)
                            if splits.test else None)
        self.depth = self.target_depth(0)
        set_trained_depth(self.model, self.depth, config.bn_mode)
        self.optimizer = build_optimizer(param_groups(self.model, config, group_stages(self.depth)), config)
        # Regularisers on the training batch: augmenting, erasing and mixing images (or MixUp of cached
        # features), and the weights' moving average, which is then the model validated and kept as best.
        self.train_batches = TrainBatches(config, self.policy, normalization=self.normalization,
                                          num_classes=len(self.classes), device=self.device,
                                          memory_format=self.memory_format, generator=self.augment_generator)
        self.ema = ModelEMA(self.model, config.ema_decay, self.depth) if config.ema_decay else None
        self.extractor = FeatureExtractor(self.model, self.weights, config, self.normalization, self.device,
                                          self.amp_dtype, self.memory_format, self.num_workers)
        self.features = SplitFeatures(self.extractor, train=splits.train, val=splits.val, policy=self.policy,
                                      views=config.feature_views, batch_size=config.batch_size,
                                      mix=batch_mixer(config, len(self.classes), images=False))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.epoch_steps = len(self.train_loader)
        # The run's length, and the LR schedule's: config.steps, else whole epochs.
        self.total_steps = config.steps or config.epochs * self.epoch_steps
        # A refit (refit.py) stops at the chosen step of a schedule this long, so the two can differ.
        self.schedule_steps = self.total_steps
        self.probe: dict[str, Any] | None = None  # how the head was fitted (head_init=probe), once fitted
        self.best_metrics: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.val_predictions: ImagePredictions | None = None  # the last validation's, per image (validate)
        self.first_step_at: float | None = None  # wall-clock time the first training step began
        # Called with (trainer, step) before every training step. A test hook: tuner/testing/faults.py
        # injects faults through it when TUNER_FAULT is set; None (nothing called) otherwise.
        self.step_hook: Callable[[Trainer, int], None] | None = None

    def target_depth(self, epoch: int) -> int:
        """How many stages train in 0-based `epoch` (gradual unfreezing adds one every k epochs)."""
        every = self.config.unfreeze_every
        return self.config.unfreeze_depth if every == 0 else min(self.config.unfreeze_depth, epoch // every)

    def unfreeze_to(self, depth: int) -> None:
        """Unfreeze stages down to `depth` and give the newly trained ones their optimizer groups."""
        new_stages = group_stages(depth)[len(group_stages(self.depth)):]
        set_trained_depth(self.model, depth, self.config.bn_mode)
        for group in param_groups(self.model, self.config, new_stages):
            self.optimizer.add_param_group(group)
        self.depth = depth
        if self.ema is not None:
            self.ema.track(depth)

    def head_only(self) -> bool:
        """Whether this epoch trains the head alone on cached backbone features (frozen backbone)."""
        return self.config.feature_cache and self.depth == 0

    def train_one_epoch(self) -> dict[str, float]:
        """One epoch, or its part before the run's last step: mean loss, accuracy, images and seconds."""
        config, epoch = self.config, self.epoch
        self.model.train()
        self.loader_generator.manual_seed(config.seed * 1_000_003 + epoch)
        self.augment_generator.manual_seed(config.seed * 1_000_003 + epoch)
        head_only = self.head_only()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        batches = (self.features.batches("train", self.loader_generator) if head_only else
                   self.train_batches.batches(tqdm(self.train_loader, desc=f"epoch {epoch + 1}", leave=False,
                                                   disable=not self.progress, file=sys.stderr)))
        start = time.perf_counter()
        for step, (inputs, targets) in enumerate(batches):
            if self.step >= self.total_steps:  # a budget that ends inside an epoch
                break
            if self.first_step_at is None:
                self.first_step_at = time.time()  # the first batch is on the device: training starts
            if self.step_hook is not None:
                self.step_hook(self, step)
            factor = lr_factor(config, self.step, self.schedule_steps, self.epoch_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with autocast(self.device, self.amp_dtype):
                logits = self.model.fc(inputs) if head_only else self.forward(inputs)
                loss = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.step)
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
        batches = eval_batches(loader, device=self.device, normalization=self.normalization,
                               memory_format=self.memory_format)
        return self._evaluation(batches, prefix, model=model).metrics

    def _evaluation(self, batches, prefix: str, head_only: bool = False, model: nn.Module | None = None,
                    keep_predictions: bool = False) -> Evaluation:
        model = evaluated_model(self.model, self.ema) if model is None else model
        model.eval()  # the whole model, also when only its head runs on cached features
        forward = model.fc if head_only else self.forward if model is self.model else model
        return evaluate(forward, batches, num_classes=len(self.classes), device=self.device, dtype=self.amp_dtype,
                        prefix=prefix, keep_predictions=keep_predictions)

    def validate(self) -> dict[str, float]:
        """Validation metrics, from cached features when the backbone is frozen; `self.val_predictions`
        then holds each validation image's prediction, in the order of the split's samples."""
        head_only = self.head_only()
        batches = (self.features.batches("val") if head_only else eval_batches(
            self.val_loader, device=self.device, normalization=self.normalization, memory_format=self.memory_format))
        evaluation = self._evaluation(batches, "val", head_only=head_only, keep_predictions=True)
        self.val_predictions = evaluation.predictions
        return evaluation.metrics

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
        epochs_trained = []
        probe_round = self.step == 0 and self.config.probes_head() and self.probe is None
        with out_of_memory_named(self.config, self.device):
            if probe_round:
                self.fit_probe_head()
            for _ in range(0 if probe_round else epochs):
                if self.step >= self.total_steps:
                    break
                if self.target_depth(self.epoch) > self.depth:
                    self.unfreeze_to(self.target_depth(self.epoch))
                epochs_trained.append(self.train_one_epoch())
            metrics: dict[str, Any] = {"epoch": self.epoch, "step": self.step}
            if not probe_round:
                metrics.update(round_training_metrics(epochs_trained))
            metrics.update(self.validate())
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
            self.best_state = copy.deepcopy(evaluated_model(self.model, self.ema).state_dict())
        self.history.append(metrics)
        return metrics

    def fit_probe_head(self) -> None:
        """Fit the head as a linear probe on the training images, once per node and key (probe.probe_head)."""
        self.probe = probe_head(self.model.fc, self.extractor, self.train_samples, self.config, len(self.classes))

    def state_dict(self, include_best: bool = True) -> dict[str, Any]:
        """trainer_state.trainer_state: everything needed to continue this run exactly, lean."""
        return trainer_state(self, include_best)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """trainer_state.restore_trainer: continue where `state` stopped (the same data's classes)."""
        restore_trainer(self, state)


def fit(trainer: Trainer, out_dir, *, on_epoch=None) -> dict[str, Any]:
    """Run `trainer` to its last epoch, keeping OUT/checkpoint.pt (resume) and OUT/best/ (best epoch).

    `on_epoch(metrics)` is called after each epoch. Returns the best epoch's metrics (with test_*
    when the data has a test split). A Diverged run leaves OUT/best/ as the best epoch before it.
    """
    out_dir = Path(out_dir)
    while trainer.step < trainer.total_steps:
        metrics = trainer.run_epoch()  # with head_init=probe the first "epoch" is the probe (epoch 0)
        if metrics["improved"]:
            write_best(out_dir / "best", best_payload(trainer))
        save_torch(trainer.state_dict(), out_dir / "checkpoint.pt")
        # Rewritten whole from the trainer's history, so it always agrees with checkpoint.pt.
        save_text("".join(json.dumps(m) + "\n" for m in trainer.history), out_dir / "epochs.jsonl")
        if on_epoch is not None:
            on_epoch(metrics)
    best = dict(trainer.best_metrics or {})
    test = evaluate_best_on_test(trainer)
    if test:
        best.update(test)
        write_best(out_dir / "best", best_payload(trainer, test))
    return best


def evaluate_best_on_test(trainer: Trainer) -> dict[str, float] | None:
    """Evaluate the best weights once on the test split (never used for selection)."""
    if trainer.test_loader is None or trainer.best_state is None:
        return None
    current = copy.deepcopy(trainer.model.state_dict())
    trainer.model.load_state_dict(trainer.best_state)
    metrics = trainer.evaluate(trainer.test_loader, prefix="test", model=trainer.model)
    trainer.model.load_state_dict(current)
    return metrics
