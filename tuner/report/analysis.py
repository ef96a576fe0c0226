"""The best model looked at again: RUN/best/model.pt evaluated on the run's validation images."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import UserError, first_line
from .run import RunData


class NotAvailable(Exception):
    """The best-model figures cannot be made; the message says why (shown on the page)."""


@dataclass
class BestModelAnalysis:
    trial_id: str | None
    epoch: int | None
    classes: list[str]
    matrix: list[list[int]]  # matrix[true][predicted]: counts of validation images
    per_class: list[float | None]  # accuracy of each true class (None: no image of it)
    accuracy: float
    recorded: float | None  # the val_acc the search recorded for this epoch
    mistakes: list[dict[str, Any]]  # most confident first: path, true, predicted, probability


def best_model_analysis(run: RunData, *, mistakes: int = 12, device: str = "cpu") -> BestModelAnalysis:
    """Evaluate RUN/best/model.pt on the run's validation images; NotAvailable says why it cannot."""
    from ..runs.storage import local_data
    from ..train import folders
    from ..train.checkpoint import load_checkpoint
    from ..train.engine import resolve_device
    from ..train.evaluation import confusion_matrix, load_trained

    # A refit model (best/) learnt from the validation images: look again at the search's checkpoint instead.
    best = "best/search" if run.fetch("best/search/model.pt") else "best"
    model_file = run.fetch(f"{best}/model.pt")
    if model_file is None:
        raise NotAvailable("there is no best/model.pt yet: the search writes it when it ends")
    try:  # in the precision and layout the search evaluated in, so the accuracy here is its val_acc
        trained = load_trained(load_checkpoint(model_file), resolve_device(device), as_trained=True)
    except UserError as err:
        raise NotAvailable(str(err)) from None
    config_file = run.fetch(f"{best}/config.json")
    config = json.loads(config_file.read_text()) if config_file else {}
    location = run.record["settings"].get("data")
    try:  # the same validation split the search used (a URI is fetched into this node's cache)
        splits = folders.load_splits(local_data(location), val_fraction=config.get("val_fraction", 0.2),
                                  seed=config.get("seed", 0),
                                  skip_bad_images=run.record["settings"].get("skip_bad_images", False))
    except (UserError, OSError) as err:
        raise NotAvailable(f"the run's data {location!r} cannot be read ({first_line(err)}); "
                           f"restore it there to see the best model's errors") from None
    if splits.classes != trained.classes:
        raise NotAvailable(f"the data at {location!r} now has classes {splits.classes}, the model "
                           f"{trained.classes}; the data changed since the search")
    logits = trained.evaluate(splits.val, prefix="val", keep_logits=True).logits  # rows in splits.val order
    confidence, predicted = logits.softmax(1).max(1)
    labels = [label for _, label in splits.val]
    n = len(splits.classes)
    guesses = predicted.tolist()
    matrix = confusion_matrix(labels, guesses, n)
    wrong = sorted((i for i, (t, p) in enumerate(zip(labels, guesses, strict=True)) if t != p),
                   key=lambda i: -float(confidence[i]))
    metrics_file = run.fetch(f"{best}/metrics.json")
    metrics = json.loads(metrics_file.read_text()) if metrics_file else {}
    return BestModelAnalysis(
        trial_id=metrics.get("trial_id"), epoch=metrics.get("epoch"), classes=list(splits.classes),
        matrix=matrix,
        per_class=[row[i] / sum(row) if sum(row) else None for i, row in enumerate(matrix)],
        accuracy=sum(matrix[i][i] for i in range(n)) / max(len(labels), 1),
        recorded=metrics.get("val_acc"),
        mistakes=[{"path": splits.val[i][0], "true": splits.classes[labels[i]],
                   "predicted": splits.classes[int(predicted[i])], "probability": float(confidence[i])}
                  for i in wrong[:mistakes]],
    )
