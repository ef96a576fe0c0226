"""The linear probe: a new head fitted to convergence on frozen backbone features, in plain PyTorch.

Multinomial logistic regression, full batch, L-BFGS with a strong-Wolfe line search, in float64:
minimise mean cross-entropy + l2/2 * ||W||^2 (the bias is not penalised). That is scikit-learn's
LogisticRegression(C) with l2 = 1 / (C * n). Unless given, l2 is picked by k-fold cross-validation on
the training features over L2_GRID. Used to start fine-tuning from a fitted head (LP-FT, Kumar et al.
2022): a random head's large early gradients would otherwise flow into the pretrained stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

L2_GRID = tuple(10.0 ** k for k in range(-5, 1))  # sklearn's C from about 1e5/n down to 1/n
FOLDS = 5
MAX_CV_IMAGES = 5000  # cross-validation on a sample of large sets: the choice of l2 needs no more
MAX_ITERATIONS = 300  # L-BFGS iterations of one fit; a warm start along the L2 grid needs far fewer


@dataclass(frozen=True)
class Probe:
    weight: torch.Tensor  # (classes, dim), float32
    bias: torch.Tensor  # (classes,)
    l2: float
    cv_acc: float | None  # mean held-out accuracy of the chosen l2; None when l2 was given


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float | None = None,
              *, seed: int = 0) -> Probe:
    """Fit the probe on (n, dim) `features`; `l2` None picks it by cross-validation (seeded folds)."""
    features, labels = features.double(), labels.long()
    cv_acc = None
    if l2 is None:
        l2, cv_acc = _cross_validated_l2(features, labels, classes, seed)
    weight, bias = _fit(features, labels, classes, l2)
    return Probe(weight.float(), bias.float(), l2, cv_acc)


def _fit(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float, start=None):
    """(weight, bias) minimising the probe's loss; `start` is a warm start (weight, bias)."""
    weight = torch.zeros(classes, features.shape[1], dtype=torch.float64)
    bias = torch.zeros(classes, dtype=torch.float64)
    if start is not None:
        weight, bias = start[0].clone(), start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=MAX_ITERATIONS, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

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
    folds = [order[k::FOLDS] for k in range(min(FOLDS, len(order)))]
    best = (-1.0, 0.0)
    starts: list = [None] * len(folds)
    for l2 in sorted(L2_GRID, reverse=True):  # strong to weak: each fold's fit warm-starts the next
        correct = 0
        for k, held_out in enumerate(folds):
            kept = torch.cat([fold for j, fold in enumerate(folds) if j != k])
            weight, bias = starts[k] = _fit(features[kept], labels[kept], classes, l2, starts[k])
            predicted = (features[held_out] @ weight.T + bias).argmax(1)
            correct += int((predicted == labels[held_out]).sum())
        accuracy = correct / sum(len(fold) for fold in folds)
        if accuracy > best[0]:
            best = (accuracy, l2)
    return best[1], best[0]
