"""A small, deterministic shapes-and-textures dataset, so the tuner can run without user data.

Eight classes that differ only in shape or texture. Colours, position, size, rotation, noise and
clutter are drawn from the same distributions for every class, so a model cannot cheat on mean
colour, and two pairs are deliberately close (circle/ring, square/diamond) so that accuracy climbs
over several epochs instead of saturating in the first one.

Layout: root/{train,val,test}/<class>/<class>_0000.png, plus root/DEMO.json (written last) holding
the parameters; same parameters => byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError, UserError

CLASSES = ("circle", "ring", "square", "diamond", "triangle", "cross", "stripes", "checker")
# More classes of the same kind, never in the demo data: transfer targets for bench/transfer.py, which
# pretrains a backbone on CLASSES and fine-tunes it on these.
TRANSFER_CLASSES = ("star", "hexagon", "crescent", "dots", "waves")
SPLITS = ("train", "val", "test")
SIZE_RANGE = (64, 96)  # inclusive, per side; small enough to train on a CPU in seconds
VERSION = 2  # bump when the drawing changes, so an old folder is not taken for the current data
MANIFEST = "DEMO.json"
WRITING_MARKER = ".demo-writing"  # present while writing: an interrupted write can be redone
SUPERSAMPLE = 2  # draw masks at 2x and average down: anti-aliased edges, like real photos


def write_demo_data(
    root: str | Path,
    *,
    seed: int = 0,
    train_per_class: int = 80,
    val_per_class: int = 20,
    test_per_class: int = 10,
    classes: tuple[str, ...] = CLASSES,
) -> dict:
    """Write the demo dataset under `root` and return a summary; do nothing if it is already there.

    `classes` may name any of CLASSES and TRANSFER_CLASSES.

    Refuses (DataError) a non-empty folder that is not a demo dataset. A demo dataset written with
    other parameters, or whose writing was interrupted, is replaced.
    """
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for split, count in counts.items():
        minimum = 0 if split == "test" else 1
        if not isinstance(count, int) or count < minimum:
            raise UserError(f"{split}_per_class must be an int >= {minimum}, but got {count!r}")
    unknown = [name for name in classes if name not in MASKS]
    if unknown or not classes:
        raise UserError(f"classes {unknown or list(classes)} are not demo classes; choose from {', '.join(MASKS)}")
    root = Path(root)
    params = {"version": VERSION, "seed": seed, "per_class": counts, "classes": list(classes)}
    if _read_manifest(root) == params:
        return _summary(root, classes, counts, written=False)
    _prepare_folder(root)

    (root / WRITING_MARKER).write_text("demo data is being written; delete this folder if stuck\n")
    for split_index, split in enumerate(SPLITS):
        if counts[split] == 0:
            continue  # no empty test/ folders: the data loader would read them as a test set
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            # One generator per (split, class): the test images stay the same if train_per_class changes,
            # and a class's images are the same whichever other classes are written beside it.
            rng = np.random.default_rng([seed, split_index, list(MASKS).index(name)])
            for i in range(counts[split]):
                draw_image(rng, name).save(folder / f"{name}_{i:04d}.png")
    _write_json_atomically(root / MANIFEST, params)
    (root / WRITING_MARKER).unlink()
    return _summary(root, classes, counts, written=True)


def _summary(root: Path, classes: tuple[str, ...], counts: dict[str, int], *, written: bool) -> dict:
    return {
        "root": str(root),
        "classes": list(classes),
        "per_class": dict(counts),
        "counts": {split: n * len(classes) for split, n in counts.items()},
        "written": written,  # False when an identical dataset was already there
    }


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _prepare_folder(root: Path) -> None:
    """Make `root` an empty folder, clearing only a previous demo dataset."""
    if root.exists() and not root.is_dir():
        raise DataError(f"demo data folder {root} is a file; pass a new or empty folder")
    root.mkdir(parents=True, exist_ok=True)
    visible = {p.name for p in root.iterdir() if not p.name.startswith(".")}
    if not visible:
        return
    is_demo = (root / MANIFEST).exists() or (root / WRITING_MARKER).exists()
    if not is_demo or not visible <= {*SPLITS, MANIFEST}:
        raise DataError(
            f"demo data folder {root} is not empty and does not hold demo data; "
            "pass a new or empty folder"
        )
    # Manifest first: if clearing is interrupted, the folder is still recognisably incomplete.
    (root / WRITING_MARKER).write_text("demo data is being rewritten\n")
    (root / MANIFEST).unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(root / split, ignore_errors=True)


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# --- drawing -----------------------------------------------------------------------------------


def draw_image(rng: np.random.Generator, name: str) -> Image.Image:
    """One RGB image of class `name`: a shape blended between two random colours, plus clutter and noise."""
    width, height = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))
    foreground, background = _contrasting_colours(rng)
    alpha = _render_mask(MASKS[name], rng, width, height)[..., None]
    pixels = alpha * foreground + (1 - alpha) * background
    _add_clutter(rng, pixels)
    pixels += rng.normal(0.0, rng.uniform(2, 10), pixels.shape)  # sensor-like noise
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Same distribution for every class; rejection only guarantees the shape is visible.
    while True:
        foreground, background = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(foreground - background) > 90:
            return foreground, background


def _render_mask(draw: Callable, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Float mask in [0, 1] of shape (height, width), drawn large and averaged down."""
    big_w, big_h = width * SUPERSAMPLE, height * SUPERSAMPLE
    # Centre and size in supersampled pixels; the shape may touch the border but stays mostly inside.
    cx, cy = rng.uniform(0.35, 0.65) * big_w, rng.uniform(0.35, 0.65) * big_h
    radius = rng.uniform(0.22, 0.36) * min(big_w, big_h)
    mask = draw(rng, big_w, big_h, cx, cy, radius).astype(np.float64)
    return mask.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3))


def _polygon_mask(width: int, height: int, points: list[tuple[float, float]]) -> np.ndarray:
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).polygon(points, fill=255)
    return np.asarray(image) > 127


def _rotated(points, cx, cy, degrees):
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _circle(rng, width, height, cx, cy, radius):
    rx, ry = radius, radius * rng.uniform(0.85, 1.0)  # slightly oval, as if seen at an angle
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    return np.asarray(image) > 127


def _ring(rng, width, height, cx, cy, radius):
    # A thick ring (inner 0.45 of the radius) is close to a disc: one of the confusable pairs.
    outer = _circle(rng, width, height, cx, cy, radius)
    inner = _circle(rng, width, height, cx, cy, radius * rng.uniform(0.45, 0.75))
    return outer & ~inner


def _square(rng, width, height, cx, cy, radius):
    half_w, half_h = radius, radius * rng.uniform(0.8, 1.0)
    corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    # +-25 degrees overlaps the diamond's range by a few degrees: the other confusable pair.
    return _polygon_mask(width, height, _rotated(corners, cx, cy, rng.uniform(-25, 25)))


def _diamond(rng, width, height, cx, cy, radius):
    half_w, half_h = radius, radius * rng.uniform(0.7, 1.0)
    corners = [(0, -half_h), (half_w, 0), (0, half_h), (-half_w, 0)]
    return _polygon_mask(width, height, _rotated(corners, cx, cy, rng.uniform(-25, 25)))


def _triangle(rng, width, height, cx, cy, radius):
    start = rng.uniform(0, 360)
    corners = []
    for k in range(3):
        angle = math.radians(start + 120 * k + rng.uniform(-10, 10))
        r = radius * rng.uniform(0.9, 1.15)
        corners.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return _polygon_mask(width, height, corners)


def _cross(rng, width, height, cx, cy, radius):
    thickness = radius * rng.uniform(0.2, 0.35)
    angle = rng.uniform(0, 90)
    bar = [(-radius, -thickness), (radius, -thickness), (radius, thickness), (-radius, thickness)]
    upright = [(y, x) for x, y in bar]
    return _polygon_mask(width, height, _rotated(bar, cx, cy, angle)) | _polygon_mask(
        width, height, _rotated(upright, cx, cy, angle)
    )


def _textured_patch(rng, width, height, cx, cy, radius, pattern):
    """A rotated rectangle filled with `pattern(u, v)`, where u, v are rotated pixel coordinates."""
    half_w, half_h = radius * rng.uniform(1.0, 1.4), radius * rng.uniform(1.0, 1.4)
    corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    region = _polygon_mask(width, height, _rotated(corners, cx, cy, rng.uniform(-20, 20)))
    angle = math.radians(rng.uniform(0, 180))
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
    v = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
    return region & pattern(u, v)


def _stripes(rng, width, height, cx, cy, radius):
    period = rng.uniform(6, 12) * SUPERSAMPLE
    return _textured_patch(rng, width, height, cx, cy, radius, lambda u, v: (u / period) % 1.0 < 0.5)


def _checker(rng, width, height, cx, cy, radius):
    cell = rng.uniform(4, 8) * SUPERSAMPLE
    return _textured_patch(
        rng, width, height, cx, cy, radius,
        lambda u, v: (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0,
    )


def _star(rng, width, height, cx, cy, radius):
    points, start, inner = int(rng.integers(5, 7)), rng.uniform(0, 360), rng.uniform(0.4, 0.55)
    corners = []
    for k in range(2 * points):
        angle = math.radians(start + 180 * k / points)
        r = radius * (1.0 if k % 2 == 0 else inner)
        corners.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return _polygon_mask(width, height, corners)


def _hexagon(rng, width, height, cx, cy, radius):
    start = rng.uniform(0, 60)
    angles = [math.radians(start + 60 * k) for k in range(6)]
    corners = [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]
    return _polygon_mask(width, height, corners)


def _crescent(rng, width, height, cx, cy, radius):
    # A disc with an offset disc cut away: close to the ring and the circle, as real classes are.
    angle = math.radians(rng.uniform(0, 360))
    shift = radius * rng.uniform(0.35, 0.6)
    outer = _circle(rng, width, height, cx, cy, radius)
    bite = _circle(rng, width, height, cx + shift * math.cos(angle), cy + shift * math.sin(angle), radius * 0.9)
    return outer & ~bite


def _dots(rng, width, height, cx, cy, radius):
    spacing = rng.uniform(7, 11) * SUPERSAMPLE
    size = spacing * rng.uniform(0.25, 0.4)

    def pattern(u, v):
        return np.hypot((u % spacing) - spacing / 2, (v % spacing) - spacing / 2) < size

    return _textured_patch(rng, width, height, cx, cy, radius, pattern)


def _waves(rng, width, height, cx, cy, radius):
    period, amplitude = rng.uniform(8, 14) * SUPERSAMPLE, rng.uniform(2, 4) * SUPERSAMPLE
    wavelength = rng.uniform(14, 24) * SUPERSAMPLE
    return _textured_patch(rng, width, height, cx, cy, radius,
                           lambda u, v: ((u + amplitude * np.sin(2 * math.pi * v / wavelength)) / period) % 1.0 < 0.5)


MASKS = {
    "circle": _circle,
    "ring": _ring,
    "square": _square,
    "diamond": _diamond,
    "triangle": _triangle,
    "cross": _cross,
    "stripes": _stripes,
    "checker": _checker,
    "star": _star,
    "hexagon": _hexagon,
    "crescent": _crescent,
    "dots": _dots,
    "waves": _waves,
}
assert tuple(MASKS) == CLASSES + TRANSFER_CLASSES


def _add_clutter(rng: np.random.Generator, pixels: np.ndarray) -> None:
    """Random lines and an occluding blob in new colours, the same for every class."""
    height, width, _ = pixels.shape
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    changed = False
    if rng.random() < 0.4:
        for _ in range(rng.integers(1, 4)):
            ends = rng.uniform(0, 1, size=4) * [width, height, width, height]
            draw.line(ends.tolist(), fill=_random_colour(rng), width=int(rng.integers(1, 4)))
        changed = True
    if rng.random() < 0.2:
        w, h = rng.uniform(0.15, 0.35) * width, rng.uniform(0.15, 0.35) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = [x, y, x + w, y + h]
        colour = _random_colour(rng)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        changed = True
    if changed:
        pixels[...] = np.asarray(image, dtype=np.float64)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))
