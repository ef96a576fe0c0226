"""Reload a trained model and measure it: the one way every caller does both. Plain PyTorch, no Ray.

`load_trained` rebuilds the model of a best-model payload (best/model.pt, see checkpoint.model_payload)
for `tuner predict`, `tuner export`, the search's test-split evaluation and the report. `evaluate` is
the loop they and the trainer's validation share, so a metric means the same wherever it is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batches import eval_batches
from .config import TrainConfig, make_config
from .loading import eval_loader
from .model import TransferResNet, build_model
from .precision import ComputeChoice

TOP5_MIN_CLASSES = 10  # top-5 accuracy says little with fewer classes: it is 1.0 with five or fewer


@dataclass(frozen=True)
class ImagePredictions:
    """Each image's predicted class, probability of its true class and label, on the CPU in batch order."""

    predicted: torch.Tensor  # int64
    true_prob: torch.Tensor  # float32
    label: torch.Tensor  # int64

    @property
    def correct(self) -> torch.Tensor:
        return self.predicted == self.label


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # {prefix}_loss, {prefix}_acc, and {prefix}_top5 with 10+ classes
    logits: torch.Tensor | None  # (images, classes), float32 on the CPU in batch order; with keep_logits
    predictions: ImagePredictions | None = None  # with keep_predictions


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`; no autocast (fp32) for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, num_classes: int,
             device: torch.device, dtype: torch.dtype | None = None, prefix: str = "val",
             keep_logits: bool = False, keep_predictions: bool = False) -> Evaluation:
    """Mean loss and accuracy of `model` (put in eval mode) over `batches` of (inputs, labels) on `device`.

    `dtype` is the autocast precision (None: fp32). The loss is always summed in fp32. `keep_logits`
    also returns every image's logits, e.g. for a confusion matrix; `keep_predictions` every image's
    ImagePredictions (a few numbers an image: what the search's selection compares trials by).
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    top5 = num_classes >= TOP5_MIN_CLASSES
    kept, predicted, true_prob, seen_labels = [], [], [], []
    for inputs, labels in batches:
        with autocast(device, dtype):
            logits = model(inputs)
        # Accumulated on the device: no host sync per batch.
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        if top5:
            correct5 += (logits.topk(5, dim=1).indices == labels[:, None]).any(1).sum()
        seen += labels.numel()
        if keep_logits:
            kept.append(logits.float().cpu())
        if keep_predictions:  # kept on the device: one copy to the host at the end
            predicted.append(logits.argmax(1))
            true_prob.append(logits.float().softmax(1).gather(1, labels[:, None]).squeeze(1))
            seen_labels.append(labels)
    metrics = {f"{prefix}_loss": loss_sum.item() / max(seen, 1), f"{prefix}_acc": correct.item() / max(seen, 1)}
    if top5:
        metrics[f"{prefix}_top5"] = correct5.item() / max(seen, 1)
    logits = (torch.cat(kept) if kept else torch.zeros(0, num_classes)) if keep_logits else None
    predictions = _predictions(predicted, true_prob, seen_labels) if keep_predictions else None
    return Evaluation(metrics, logits, predictions)


def _predictions(predicted: list[torch.Tensor], true_prob: list[torch.Tensor],
                 labels: list[torch.Tensor]) -> ImagePredictions:
    if not labels:
        empty = torch.zeros(0, dtype=torch.long)
        return ImagePredictions(empty, torch.zeros(0), empty)
    return ImagePredictions(torch.cat(predicted).cpu(), torch.cat(true_prob).float().cpu(), torch.cat(labels).cpu())


def confusion_matrix(labels: list[int], predicted: list[int], num_classes: int) -> list[list[int]]:
    """matrix[true][predicted]: how many images of each true class went to each predicted one."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for true, guess in zip(labels, predicted, strict=True):
        matrix[true][guess] += 1
    return matrix


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a best-model payload, in eval mode on `device`, with what it was trained with."""

    model: TransferResNet
    config: TrainConfig
    classes: list[str]
    normalization: dict[str, list[float]]  # mean and std of its inputs
    weights: dict[str, Any]  # provenance of the starting weights
    device: torch.device
    compute: ComputeChoice  # the precision and memory layout it runs in here

    def autocast(self):
        return autocast(self.device, self.compute.autocast_dtype)

    def batches(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """A uint8 loader's batches on the device, normalised and in the model's layout (the trainer's eval_batches)."""
        return eval_batches(loader, device=self.device, normalization=self.normalization,
                            memory_format=self.compute.torch_memory_format)

    def evaluate(self, samples: list[tuple[str, int]], *, prefix: str, keep_logits: bool = False) -> Evaluation:
        """Metrics on `samples` (path, label) read as validation reads them: centre crops, the run's batch size."""
        loader = eval_loader(samples, self.config, device=self.device)
        return evaluate(self.model, self.batches(loader), num_classes=len(self.classes), device=self.device,
                        dtype=self.compute.autocast_dtype, prefix=prefix, keep_logits=keep_logits)


def load_trained(payload: dict[str, Any], device: torch.device, *, as_trained: bool = False) -> TrainedModel:
    """The model of `payload` (a best/model.pt as load_checkpoint returns it), in eval mode on `device`.

    By default in fp32 and contiguous, as it is served and exported. `as_trained` runs it in the
    precision and layout its run validated in, so metrics measured again match the recorded ones; fp16
    (a GPU's choice) becomes fp32 off CUDA, as the CPU has no fp16 autocast worth using.
    """
    # The architecture comes from the checkpoint; its weights replace the random init.
    config = make_config({**payload["config"], "weights": "none"})
    model, _ = build_model(config, len(payload["classes"]))
    model.load_state_dict(payload["model"])
    compute = _compute_here(payload, device) if as_trained else ComputeChoice("fp32", "contiguous", "serving")
    model.to(device).to(memory_format=compute.torch_memory_format).eval()
    return TrainedModel(model=model, config=config, classes=list(payload["classes"]),
                        normalization=payload["normalization"], weights=payload["weights"], device=device,
                        compute=compute)


def _compute_here(payload: dict[str, Any], device: torch.device) -> ComputeChoice:
    """The payload's recorded precision and layout, usable on `device`."""
    recorded = payload.get("compute")
    if recorded is None:  # a checkpoint from before the compute choice was recorded
        return ComputeChoice("fp32", "contiguous", "no compute choice recorded: fp32")
    precision, layout = recorded["precision"], recorded["memory_format"]
    if precision == "fp16" and device.type != "cuda":
        return ComputeChoice("fp32", layout, f"trained in fp16 on a GPU; fp32 on {device.type}")
    return ComputeChoice(precision, layout, "as trained")
