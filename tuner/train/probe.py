"""The linear probe: a new head fitted to convergence on frozen backbone features, in plain PyTorch.

Multinomial logistic regression, full batch, L-BFGS with a strong-Wolfe line search, in float32:
minimise mean cross-entropy + l2/2 * ||W||^2 (the bias is not penalised). That is scikit-learn's
LogisticRegression(C) with l2 = 1 / (C * n). Unless given, l2 is picked by k-fold cross-validation on
the training features over L2_GRID. Used to start fine-tuning from a fitted head (LP-FT, Kumar et al.
2022): a random head's large early gradients would otherwise flow into the pretrained stages.

Its cost grows no worse than linearly with the images: an L-BFGS step costs one pass over the features,
cross-validation runs on at most MAX_CV_IMAGES of them, with fewer folds on large sets, and each fold's
fits warm-start along the L2 path. A node fits it once per key (node_probe and cache.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import cache

L2_GRID = tuple(10.0 ** k for k in range(-5, 1))  # sklearn's C from about 1e5/n down to 1/n
FOLDS = 5
LARGE_FOLDS, LARGE_SET = 3, 2000  # 3 folds of a sample over 2,000 images still train each fit on >= 1,333
MAX_CV_IMAGES = 3000  # cross-validation on a sample of large sets: the choice of l2 needs no more
MAX_ITERATIONS = 300  # L-BFGS iterations of one fit; a warm start along the L2 grid needs far fewer
CV_ITERATIONS = 100  # a held-out fit only ranks the l2 values: its accuracy has settled long before
# float32 picked the same l2 as float64 at a fraction of the time (bench/README.md, "The linear probe"):
# the gradient of a mean loss of O(1) is resolved to 1e-5 in float32, not to float64's 1e-7.
TOLERANCE_GRAD = 1e-5


@dataclass(frozen=True)
class Probe:
    weight: torch.Tensor  # (classes, dim), float32
    bias: torch.Tensor  # (classes,)
    l2: float
    cv_acc: float | None  # mean held-out accuracy of the chosen l2; None when l2 was given


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float | None = None,
              *, seed: int = 0) -> Probe:
    """Fit the probe on (n, dim) `features`; `l2` None picks it by cross-validation (seeded folds)."""
    features, labels = features.float(), labels.long()
    cv_acc = None
    if l2 is None:
        l2, cv_acc = _cross_validated_l2(features, labels, classes, seed)
    weight, bias = _fit(features, labels, classes, l2)
    return Probe(weight, bias, l2, cv_acc)


def node_probe(key: str, features: Callable[[], torch.Tensor], labels: torch.Tensor, classes: int,
               l2: float | None = None, *, seed: int = 0) -> tuple[Probe, bool]:
    """(the probe stored in the node cache under `key`, whether this call fitted it).

    Fitted by fit_probe on `features()` only when the node has no entry for `key` (the first trial of
    a node); later trials read the same tensors back, so their heads equal a fresh fit exactly.
    """
    def fit() -> dict:
        return asdict(fit_probe(features(), labels, classes, l2, seed=seed))

    entry, fitted = cache.cached_tensors("probes", key, fit)
    return Probe(**entry), fitted


def probe_head(head: torch.nn.Linear, extractor, samples, config, classes: int) -> dict[str, Any]:
    """Fit `head` to convergence on the frozen backbone's features of `samples` (no augmentation, one view)
    as a logistic regression, once per node and key: later trials read it from the node cache (node_probe).

    `extractor` is the trainer's features.FeatureExtractor. Returns how the head was fitted: probe_l2,
    probe_cv_acc, probe_cached (read from the cache, not fitted) and probe_seconds.
    """
    start = time.perf_counter()
    labels = torch.tensor([label for _, label in samples])
    key = extractor.probe_key(samples, classes, config.probe_l2, config.seed)
    fitted, computed = node_probe(key, lambda: extractor.probe_features(samples), labels, classes,
                                  config.probe_l2, seed=config.seed)
    with torch.no_grad():
        head.weight.copy_(fitted.weight)
        head.bias.copy_(fitted.bias)
    return {"probe_l2": fitted.l2, "probe_cv_acc": fitted.cv_acc, "probe_cached": not computed,
            "probe_seconds": time.perf_counter() - start}


def _fit(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float, start=None,
         iterations: int = MAX_ITERATIONS):
    """(weight, bias) minimising the probe's loss; `start` is a warm start (weight, bias)."""
    weight = torch.zeros(classes, features.shape[1])
    bias = torch.zeros(classes)
    if start is not None:
        weight, bias = start[0].clone(), start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, history_size=20,
                                  tolerance_grad=TOLERANCE_GRAD, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _cross_validated_l2(features, labels, classes: int, seed: int) -> tuple[float, float]:
    """The l2 of L2_GRID with the best mean held-out accuracy (ties: the stronger l2), and that accuracy."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)[:MAX_CV_IMAGES]
    # Folds interleave each class's images, so every fold holds every class that has enough of them.
    order = order[torch.argsort(labels[order], stable=True)]
    count = LARGE_FOLDS if len(labels) > LARGE_SET else FOLDS
    folds = [order[k::count] for k in range(min(count, len(order)))]
    kept = [torch.cat([fold for j, fold in enumerate(folds) if j != k]) for k in range(len(folds))]
    kept = [(features[rows], labels[rows]) for rows in kept]  # gathered once, not once per l2
    best = (-1.0, 0.0)
    starts: list = [None] * len(folds)
    for l2 in sorted(L2_GRID, reverse=True):  # strong to weak: each fold's fit warm-starts the next
        correct = 0
        for k, held_out in enumerate(folds):
            weight, bias = starts[k] = _fit(*kept[k], classes, l2, starts[k], CV_ITERATIONS)
            predicted = (features[held_out] @ weight.T + bias).argmax(1)
            correct += int((predicted == labels[held_out]).sum())
        accuracy = correct / sum(len(fold) for fold in folds)
        if accuracy > best[0]:
            best = (accuracy, l2)
    return best[1], best[0]
