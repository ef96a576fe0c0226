"""`tuner evaluate`: a trained model judged on labelled images that nothing chose it by.

A search's val_acc is how it chose, not what the user gets; this is the number to trust, on a folder
held out from the search (its test/ split, or next month's images). The model runs as `tuner predict` and
the exported file run it: fp32, centre crops of the checkpoint's image size. Accuracy comes with its 95%
Wilson interval: on a few hundred images that interval is several points wide. `--baseline` judges a second
model on the same images and tells the two apart or not as the search's selection does: McNemar's exact
test on the images only one of them gets right, and the paired bootstrap's interval of the difference.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..runs.selection import ALPHA, bootstrap_interval, mcnemar_p
from ..train import folders
from ..train.checkpoint import atomic_write, load_checkpoint
from ..train.engine import resolve_device
from ..train.evaluation import TOP5_MIN_CLASSES, TrainedModel, confusion_matrix, load_trained

Z_95 = 1.959964  # the standard normal's 97.5% quantile: a two-sided 95% interval


@dataclass(frozen=True)
class FolderEvaluation:
    """What `tuner evaluate` prints (and writes with --json and --predictions)."""

    model: str  # the checkpoint, its architecture and starting weights
    data: str  # the folder read, and how
    classes: list[str]  # the model's
    images: int
    accuracy: float
    interval: tuple[float, float]  # 95% Wilson interval of the accuracy
    loss: float
    top5: float | None  # with 10 or more classes
    matrix: list[list[int]]  # matrix[true][predicted], over the model's classes
    # per image, in folder order: path, true, predicted, probability (and baseline_predicted with a baseline)
    predictions: list[dict[str, Any]]
    comparison: dict[str, Any] | None = None  # against --baseline: see compare()
    skipped_unreadable: int = 0  # images left out by skip_bad_images
    notes: tuple[str, ...] = ()  # what the user should know about these figures (printed on stderr)

    def per_class(self) -> list[dict[str, Any]]:
        """Each class with images or predictions: its images, recall and precision (None when undefined)."""
        rows = []
        for i, name in enumerate(self.classes):
            images, predicted = sum(self.matrix[i]), sum(row[i] for row in self.matrix)
            if images or predicted:
                rows.append({"class": name, "images": images, "recall": self.matrix[i][i] / images if images else None,
                             "precision": self.matrix[i][i] / predicted if predicted else None})
        return rows

    def summary(self) -> dict[str, Any]:
        """The figures as JSON-ready values (the per-image predictions aside)."""
        return {"model": self.model, "data": self.data, "images": self.images,
                "skipped_unreadable": self.skipped_unreadable, "accuracy": self.accuracy,
                "interval_95": list(self.interval), "loss": self.loss if math.isfinite(self.loss) else None,
                "top5": self.top5,
                "per_class": self.per_class(), "classes": self.classes, "confusion_matrix": self.matrix,
                **({"baseline": self.comparison} if self.comparison else {})}


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `correct / n`: right near 0 and 1, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate_folder(model: str | Path, data: str | Path, *, split: str = "test", device: str = "auto",
                    skip_bad_images: bool = False, baseline: str | Path | None = None) -> FolderEvaluation:
    """Evaluate the checkpoint `model` (a run, best/ folder or model.pt) on the labelled images of `data`, and
    `baseline`, another checkpoint, on the same images."""
    trained = load_trained(load_checkpoint(model), resolve_device(device))
    other = load_trained(load_checkpoint(baseline), trained.device) if baseline is not None else None
    splits = folders.verify_images(folders.find_labelled(data, trained.classes, split=split),
                                   skip_bad_images=skip_bad_images)
    if not splits.test:
        raise UserError(f"every image under {data} was unreadable and skipped; nothing is left to evaluate")
    evaluation = trained.evaluate(splits.test, prefix="test", keep_logits=True)
    confidence, predicted = evaluation.logits.softmax(1).max(1)
    n, guesses = len(trained.classes), predicted.tolist()
    matrix = confusion_matrix([label for _, label in splits.test], guesses, n)
    predictions = [{"path": folders.relative_path(path, splits.root), "true": trained.classes[label],
                    "predicted": trained.classes[guess], "probability": probability}
                   for (path, label), guess, probability in zip(splits.test, guesses, confidence.tolist(), strict=True)]
    correct = sum(matrix[i][i] for i in range(n))
    images = len(splits.test)
    dropped = f", {splits.dropped} unreadable skipped" if splits.dropped else ""
    comparison = None
    if other is not None:  # right or wrong by class name: the baseline may order or name its classes otherwise
        unlabelled = [(path, 0) for path, _ in splits.test]  # its logits only: our labels may not be its
        guesses = other.evaluate(unlabelled, prefix="test", keep_logits=True).logits.argmax(1).tolist()
        for prediction, guess in zip(predictions, guesses, strict=True):
            prediction["baseline_predicted"] = other.classes[guess]
        right = np.array([p["true"] == p["predicted"] for p in predictions])
        baseline_right = np.array([p["true"] == p["baseline_predicted"] for p in predictions])
        comparison = compare(right, baseline_right, f"{baseline} ({describe(other)})")
        comparison["classes_baseline_lacks"] = sorted({p["true"] for p in predictions} - set(other.classes))
    return FolderEvaluation(
        model=f"{model} ({describe(trained)})", data=f"{data} ({splits.layout}{dropped})",
        classes=list(trained.classes), images=images, accuracy=correct / images,
        interval=wilson_interval(correct, images), loss=evaluation.metrics["test_loss"],
        top5=evaluation.metrics.get("test_top5") if n >= TOP5_MIN_CLASSES else None, matrix=matrix,
        predictions=predictions, comparison=comparison, skipped_unreadable=splits.dropped,
        notes=tuple(notes_on(splits, split)))


def notes_on(splits: folders.ImageSplits, split: str) -> list[str]:
    """What to say about the images read: the model saw them, --split did nothing, files were skipped."""
    notes = []
    if splits.layout.startswith("class folders"):
        if split != "test":
            notes.append(f"--split {split} is for folders with split folders; every image of {splits.root} was read")
    elif split == "train":
        notes.append("train/ is what the model learnt from: these figures flatter it; judge it on test/")
    elif split == "val":
        notes.append("val/ chose the model's epoch (a search's, its trial too; a refit learnt from it): these "
                     "figures flatter it; judge it on test/")
    if splits.skipped:
        notes.append(splits.skipped_note())
    return notes


def describe(trained: TrainedModel) -> str:
    """'resnet50, weights imagenet': what a model is, as evaluate names it."""
    return f"{trained.config.model}, weights {trained.weights.get('name', 'unknown')}"


def compare(right: np.ndarray, baseline_right: np.ndarray, baseline: str) -> dict[str, Any]:
    """The model against the baseline on the same images (per-image correctness, bool arrays): accuracies,
    the difference (model - baseline) with its 95% paired-bootstrap interval, McNemar's exact p, and whether
    the two are told apart at ALPHA, as the search's selection tells trials apart."""
    low, high = bootstrap_interval(baseline_right, right)
    p = mcnemar_p(right, baseline_right)
    return {"model": baseline, "accuracy": float(baseline_right.mean()),
            "interval_95": list(wilson_interval(int(baseline_right.sum()), baseline_right.size)),
            "difference": float(right.mean() - baseline_right.mean()), "difference_interval_95": [low, high],
            "only_model_right": int(np.sum(right & ~baseline_right)),
            "only_baseline_right": int(np.sum(~right & baseline_right)),
            "mcnemar_p": p, "told_apart": p < ALPHA}


def report_lines(result: FolderEvaluation) -> list[str]:
    """What `tuner evaluate` prints: accuracy with its interval, the baseline's, each class, the confusion matrix."""
    low, high = result.interval
    top5 = f", top-5 {result.top5:.3f}" if result.top5 is not None else ""
    lines = [f"model: {result.model}", f"data: {result.data}, {result.images} images",
             f"accuracy {result.accuracy:.3f} (95% interval {low:.3f}-{high:.3f}), loss {result.loss:.3f}{top5}"]
    if result.comparison:
        lines += comparison_lines(result.comparison)
    rows = result.per_class()
    name_width = max(len("class"), *(len(row["class"]) for row in rows)) + 4  # room for the matrix's numbers
    lines += ["", f"{'class':<{name_width}} {'images':>7} {'recall':>7} {'precision':>9}"]
    for row in rows:
        recall, precision = (f"{row[k]:.3f}" if row[k] is not None else "-" for k in ("recall", "precision"))
        lines.append(f"{row['class']:<{name_width}} {row['images']:>7} {recall:>7} {precision:>9}")
    shown = [result.classes.index(row["class"]) for row in rows]
    width = max(4, *(len(str(result.matrix[i][j])) + 1 for i in shown for j in shown))
    lines += ["", "confusion matrix: rows the true class, columns the predicted one, numbered as the rows",
              " " * (name_width + 1) + "".join(f"{k:>{width}}" for k in range(1, len(shown) + 1))]
    lines += [f"{f'{k} {result.classes[i]}':<{name_width}} " + "".join(f"{result.matrix[i][j]:>{width}}" for j in shown)
              for k, i in enumerate(shown, start=1)]
    return lines


def comparison_lines(comparison: dict[str, Any]) -> list[str]:
    """The baseline, its accuracy, and the difference with whether these images tell the two apart."""
    low, high = comparison["interval_95"]
    diff_low, diff_high = comparison["difference_interval_95"]
    verdict = (f"< {ALPHA}: told apart" if comparison["told_apart"]
               else f">= {ALPHA}: these images cannot tell the two apart")
    lines = [f"baseline: {comparison['model']}",
             f"baseline accuracy {comparison['accuracy']:.3f} (95% interval {low:.3f}-{high:.3f})",
             f"model - baseline {comparison['difference']:+.3f} (95% paired-bootstrap interval {diff_low:+.3f} to "
             f"{diff_high:+.3f}); images only the model gets right {comparison['only_model_right']}, only the "
             f"baseline {comparison['only_baseline_right']}; McNemar's exact p {comparison['mcnemar_p']:.3g} {verdict}"]
    if comparison["classes_baseline_lacks"]:
        lines.append(f"the baseline does not know {', '.join(comparison['classes_baseline_lacks'])}: it is wrong "
                     f"on every image of {'them' if len(comparison['classes_baseline_lacks']) > 1 else 'it'}")
    return lines


def write_predictions(result: FolderEvaluation, path: str | Path) -> None:
    """Every image's true and predicted class, the prediction's probability (and the baseline's prediction),
    as CSV, written whole or not at all."""
    def write(handle) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")  # csv writes its own line ends
        writer = csv.DictWriter(text, fieldnames=list(result.predictions[0]))
        writer.writeheader()
        writer.writerows(result.predictions)
        text.flush()
        text.detach()  # atomic_write flushes and closes the file itself

    atomic_write(Path(path), write)
