"""The report's figures: matplotlib (Agg) PNG files from plain lists and dicts, no tuner state.

Each function draws one figure with a title and labelled axes and saves it to `path`.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, works on a headless node
import matplotlib.pyplot as plt
from matplotlib.colors import Normalize
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# One colour per trial outcome, the same in every figure.
STATUS_COLORS = {"completed": "tab:blue", "stopped_early": "tab:orange", "diverged": "tab:purple",
                 "errored": "tab:red", "interrupted": "tab:brown", "running": "tab:green"}
STATUS_LABELS = {"completed": "completed", "stopped_early": "stopped early by ASHA",
                 "diverged": "diverged (NaN/inf loss)", "errored": "errored",
                 "interrupted": "interrupted (tuner resume goes on)", "running": "running"}
_OTHER_COLOR = "tab:gray"  # a status this module does not know (a newer run's)


def _finite(value: Any) -> bool:
    """A number that can be plotted: not None, NaN (a diverged epoch's val metrics) or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_categorical(values: list[Any]) -> bool:
    """Ints (unfreeze_depth), bools and strings are categories, not a continuous axis."""
    return all(isinstance(v, (bool, int, str)) for v in values)


def _save(fig, path: Path):
    """Write `fig` to `path` and close it; returns it (closed, its axes still say how it was drawn)."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def best_so_far(trials: list[dict], points: list[tuple[float, float]], metric: str, mode: str,
                path: Path) -> None:
    """Best metric so far by trial number (`trials` in order of their `number`) and by minutes (`points`:
    (minute, value))."""
    better = max if mode == "max" else min
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    numbered = [(t["number"], t.get(metric)) for t in trials if _finite(t.get(metric))]
    if numbered:
        running = _running_best([v for _, v in numbered], better)
        left.scatter([n for n, _ in numbered], [v for _, v in numbered], s=18, color="grey", label="trial's best")
        left.step([n for n, _ in numbered], running, where="post", color="tab:blue", label="best so far")
        left.legend(loc="best", fontsize=8)
    left.set(title=f"Best {metric} by trial", xlabel="trial number (order of creation)", ylabel=metric)
    points = sorted((m, v) for m, v in points if _finite(m) and _finite(v))
    if points:
        right.scatter([m for m, _ in points], [v for _, v in points], s=8, color="grey", label="epoch results")
        right.step([m for m, _ in points], _running_best([v for _, v in points], better), where="post",
                   color="tab:blue", label="best so far")
        right.legend(loc="best", fontsize=8)
    right.set(title=f"Best {metric} over time", xlabel="minutes since the search started", ylabel=metric)
    _save(fig, path)


def _running_best(values: list[float], better) -> list[float]:
    out: list[float] = []
    for value in values:
        out.append(value if not out else better(out[-1], value))
    return out


def learning_curves(curves: dict[str, tuple[str, list[int], list[float]]], metric: str, rungs: list[int],
                    path: Path) -> None:
    """`metric` per report of every trial (`curves`: id -> (status, budget steps, values)), coloured by outcome.

    Points without a finite value (a diverged epoch's NaN) are left out; a diverged trial's curve ends
    in a cross.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for status, epochs, values in curves.values():
        shown = [(e, v) for e, v in zip(epochs, values, strict=True) if _finite(v)]
        if not shown:
            continue
        color = STATUS_COLORS.get(status, _OTHER_COLOR)
        ax.plot([e for e, _ in shown], [v for _, v in shown], marker="o", markersize=3, linewidth=1.2, alpha=0.8,
                color=color)
        if status == "diverged":
            ax.plot(*shown[-1], marker="x", markersize=9, markeredgewidth=2, color=color)
    for rung in rungs:  # ASHA decides at these budget steps which trials go on
        ax.axvline(rung, color="grey", linestyle=":", linewidth=1)
    seen = {status for status, _, values in curves.values() if any(_finite(v) for v in values)}
    handles = [plt.Line2D([], [], color=STATUS_COLORS[s], marker="o", label=STATUS_LABELS[s])
               for s in STATUS_COLORS if s in seen]
    if rungs:
        handles.append(plt.Line2D([], [], color="grey", linestyle=":", label="ASHA rung"))
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(title=f"Learning curves: {metric} of every trial", xlabel="budget step", ylabel=metric)
    _save(fig, path)


def importance_bars(importances: dict[str, float], path: Path) -> None:
    names = list(importances)[::-1]  # most important at the top
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.6))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(title="Hyperparameter importance", xlabel="importance (sums to 1)", ylabel="hyperparameter")
    _save(fig, path)


def metric_by_hyperparameter(trials: list[dict], names: list[str], metric: str, path: Path, *,
                             log_scaled: Collection[str]):
    """One small panel per searched hyperparameter: each trial's best `metric` against its value; returns
    the figure, closed.

    log_scaled: the names whose axis is log (the space searched them on a log scale).
    """
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):  # the grid may have spare cells
        shown = [t for t in trials if t.get(name) is not None and _finite(t.get(metric))]
        values = [t[name] for t in shown]
        colors = [STATUS_COLORS.get(t["status"], _OTHER_COLOR) for t in shown]
        if values and is_categorical(values):
            categories = sorted(set(values), key=lambda v: (str(type(v)), v))
            ax.scatter([categories.index(v) for v in values], [t[metric] for t in shown], c=colors, s=22)
            ax.set_xticks(range(len(categories)), [str(c) for c in categories])
        else:
            ax.scatter(values, [t[metric] for t in shown], c=colors, s=22)
            if name in log_scaled:
                _log_axis(ax)
        ax.set(title=f"{name} ({len(shown)} of {len(trials)} trials)", xlabel=name, ylabel=metric)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{metric} against each searched hyperparameter (colour: outcome)")
    return _save(fig, path)


def _log_axis(ax) -> None:
    """A log x axis labelled 1e-04, 2e-04, 5e-04 ...: readable even when the values span under a decade."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def parallel_coordinates(trials: list[dict], names: list[str], metric: str, path: Path, *,
                         log_scaled: Collection[str]) -> None:
    """Top trials as lines across normalised hyperparameter axes, coloured by `metric`.

    log_scaled: the names whose axis is log (the space searched them on a log scale).
    """
    trials = [t for t in trials if _finite(t.get(metric))]  # a line needs its colour
    axes_names = [*names, metric]
    scaled: dict[str, list[float]] = {}
    labels: dict[str, tuple[str, str]] = {}
    for name in axes_names:
        scaled[name], labels[name] = _normalised_axis([t.get(name) for t in trials], log=name in log_scaled)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(axes_names)), 4.5))
    values = [t[metric] for t in trials]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    cmap = plt.get_cmap("viridis")
    for i in range(len(trials)):
        # A hyperparameter the trial does not have (a frozen stage's rate) sits at the "not used" level.
        ys = [_NOT_USED if math.isnan(scaled[n][i]) else scaled[n][i] for n in axes_names]
        ax.plot(range(len(axes_names)), ys, color=cmap(norm(values[i])), marker="o", markersize=3,
                linewidth=1.5, alpha=0.85)
    for x, name in enumerate(axes_names):
        ax.plot([x, x], [0, 1], color="black", linewidth=0.6)
        ax.annotate(labels[name][0], (x + 0.04, 0), ha="left", va="center", fontsize=7)
        ax.annotate(labels[name][1], (x + 0.04, 1), ha="left", va="center", fontsize=7)
        if any(math.isnan(v) for v in scaled[name]):
            ax.annotate("not used", (x + 0.04, _NOT_USED), ha="left", va="center", fontsize=7, color="grey")
    ax.set_xticks(range(len(axes_names)), axes_names, rotation=20)
    ax.set_xlim(-0.3, len(axes_names) - 0.4)
    ax.set_ylim(_NOT_USED - 0.1, 1.1)
    ax.set_yticks([])
    ax.set(title=f"Top {len(trials)} trials across the searched hyperparameters",
           xlabel="hyperparameter (each axis: its range among these trials, log where searched so)",
           ylabel="position on the axis (low to high)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    _save(fig, path)


_NOT_USED = -0.2  # the parallel-coordinates level of a hyperparameter a trial does not have


def _normalised_axis(values: list[Any], *, log: bool) -> tuple[list[float], tuple[str, str]]:
    """Values mapped to 0..1 (NaN where missing) and the (low, high) labels of the axis."""
    present = [v for v in values if v is not None]
    if not present:
        return [math.nan] * len(values), ("", "")
    if is_categorical(present):
        categories = sorted(set(present), key=lambda v: (str(type(v)), v))
        span = max(len(categories) - 1, 1)
        return ([math.nan if v is None else categories.index(v) / span for v in values],
                (str(categories[0]), str(categories[-1])))
    transform = (lambda v: math.log10(v)) if log and min(present) > 0 else float
    low, high = transform(min(present)), transform(max(present))
    span = high - low or 1.0
    return ([math.nan if v is None else (transform(v) - low) / span for v in values],
            (f"{min(present):.3g}", f"{max(present):.3g}"))


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    size = max(4.5, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    if len(classes) <= 20:  # counts are readable only on a small matrix
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if count > top / 2 else "black")
    ax.set(title="Confusion matrix of the best model (validation set)", xlabel="predicted class",
           ylabel="true class")
    _save(fig, path)


def per_class_accuracy(accuracies: list[float | None], classes: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(classes) + 2), 3.8))
    ax.bar(range(len(classes)), [a or 0.0 for a in accuracies], color="tab:blue")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set(title="Per-class accuracy of the best model (validation set)", xlabel="class", ylabel="accuracy")
    _save(fig, path)


def misclassified_grid(mistakes: list[dict], path: Path) -> None:
    """The most confident mistakes: image with 'true -> predicted, probability' over it."""
    from PIL import Image

    cols = min(4, len(mistakes))
    rows = math.ceil(len(mistakes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows + 0.4), squeeze=False)
    for ax, mistake in zip(axes.flat, mistakes, strict=False):  # the grid may have spare cells
        with Image.open(mistake["path"]) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_title(f"{mistake['true']} -> {mistake['predicted']}\np={mistake['probability']:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(mistakes):]:
        ax.set_visible(False)
    fig.suptitle("Most confidently misclassified validation images (true -> predicted, probability)",
                 fontsize=9)
    _save(fig, path)
