"""The `tuner check-data` report: what training would find in a data folder, and whether it can use it."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..errors import DataError
from .folders import ImageSplits, count_per_class, find_splits, relative_path, verify_images

SHOW_BAD_FILES = 5  # the report lists this many unreadable files; the rest are counted


def check_data(root: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], bool]:
    """A readable report on the dataset at `root` and whether training can use it as it is."""
    lines = [f"data: {root}"]
    try:
        found = find_splits(root, val_fraction=val_fraction, seed=seed)
        splits = verify_images(found, skip_bad_images=True)  # to list the bad files, not stop at them
    except DataError as err:
        return lines + [f"error: {err}", "verdict: not usable; fix the error above"], False
    lines.append(f"layout: {splits.layout}")
    lines += _class_table(splits)
    lines.append(_size_line(splits.image_sizes))
    lines += _bad_file_lines(splits)
    warnings = ([splits.skipped_note()] if splits.skipped else []) + _balance_warnings(splits)
    lines += [f"warning: {w}" for w in warnings]
    usable = not splits.bad_files
    if usable:
        note = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
        lines.append(f"verdict: usable{note}: {len(splits.classes)} classes, "
                     f"{len(splits.train)} training and {len(splits.val)} validation images")
    else:
        lines.append(f"verdict: not usable as it is: remove the {len(splits.bad_files)} bad files "
                     "or pass --skip-bad-images (they are then left out)")
    return lines, usable


def _class_table(splits: ImageSplits) -> list[str]:
    columns = ["train", "val"] + (["test"] if splits.test else [])
    counts = {name: count_per_class(getattr(splits, name), len(splits.classes)) for name in columns}
    width = max(len("class"), len("total"), *(len(c) for c in splits.classes))
    rows = [f"  {'class':<{width}}" + "".join(f"{c:>8}" for c in columns)]
    for i, name in enumerate(splits.classes):
        rows.append(f"  {name:<{width}}" + "".join(f"{counts[c][i]:>8}" for c in columns))
    rows.append(f"  {'total':<{width}}" + "".join(f"{sum(counts[c]):>8}" for c in columns))
    return [f"classes: {len(splits.classes)}"] + rows


def _size_line(image_sizes) -> str:
    if image_sizes is None:
        return "image sizes: no readable images"
    (w0, h0), (w1, h1) = image_sizes
    return f"image sizes (w x h): smallest {w0}x{h0}, largest {w1}x{h1}"


def _bad_file_lines(splits: ImageSplits) -> list[str]:
    lines = [f"unreadable or non-image files: {len(splits.bad_files)}"]
    for path, reason in splits.bad_files[:SHOW_BAD_FILES]:
        lines.append(f"  {relative_path(path, splits.root)}: {reason}")
    if len(splits.bad_files) > SHOW_BAD_FILES:
        lines.append(f"  ... and {len(splits.bad_files) - SHOW_BAD_FILES} more")
    return lines


def _balance_warnings(splits: ImageSplits) -> list[str]:
    train = count_per_class(splits.train, len(splits.classes))
    val = count_per_class(splits.val, len(splits.classes))
    warnings = []
    median = statistics.median(train)
    # A class this far below the rest is mostly ignored by an unweighted loss.
    for name, n in zip(splits.classes, train, strict=True):
        if n < median / 3:
            warnings.append(
                f"class {name!r} has {n} training images, under a third of the median ({median:g})"
            )
    if max(train) > 3 * min(train):
        warnings.append(f"class imbalance: the largest class has {max(train) / min(train):.1f}x the "
                        f"training images of the smallest ({max(train)} vs {min(train)})")
    for name, n in zip(splits.classes, val, strict=True):
        if n == 0:
            warnings.append(f"class {name!r} has no validation images; its accuracy is not measured")
    return warnings
