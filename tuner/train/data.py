"""Image folders -> checked train/val/test lists, augmentation presets, datasets and loaders.

Accepted layouts (hidden files and folders are ignored; other files in class folders that are not images
by their extension, such as GTSRB's per-class CSVs, are skipped with one summary warning):

    DIR/train/<class>/*  DIR/val/<class>/*  [DIR/test/<class>/*]   used as they are
    DIR/train/<class>/*  [DIR/test/<class>/*]                      val split off train/
    DIR/<class>/*                                                  val split off each class

A split is stratified and deterministic: per class, file names are sorted, shuffled with
`random.Random(seed)`, and the first `round(n * val_fraction)` (at least 1 when n >= 2) go to val.

Augmentation has one knob, `aug_strength` s in [0, 1], whose numbers are augment_policy.AugmentPolicy's.
It is split between the loader (crop_transforms: random crop and flip, per image, uint8) and the
training device (augment.BatchAugment: rotation, colour jitter and RandAugment, vectorised over the batch).

With the image cache on (`image_cache`, the default) the loader crops from each image as decoded once
and resized to a shorter side of size*256/224 (cache.decoded_images), not from the full-size file: the
same pixels for evaluation, slightly softer large zooms for training.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..errors import DataError, UserError, first_line
from .augment_policy import AugmentPolicy
from .cache import DecodedImages

try:  # torchvision's ImageFolder list (.ppm/.pgm for GTSRB and the like), so we accept what it accepts
    from torchvision.datasets.folder import IMG_EXTENSIONS as _TORCHVISION_EXTENSIONS
except ImportError:  # not a public name: a torchvision without it gets the list as of 0.29
    _TORCHVISION_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_EXTENSIONS = tuple(sorted({*_TORCHVISION_EXTENSIONS, ".gif"}))  # gif: PIL reads its first frame
SPLIT_FOLDERS = ("train", "val", "test")
SHOW_BAD_FILES = 5  # check_data lists this many unreadable files; the rest are counted


@dataclass
class ImageSplits:
    """Where every image is and which label it has; paths are strings so Ray can ship them cheaply."""

    root: Path
    layout: str  # human text, e.g. "train/val folders" or "class folders, split val_fraction=0.2 seed=0"
    classes: list[str]  # sorted class names; the label is the index
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]  # [] when there is no test/ folder
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): unreadable images
    skipped: list[str] = field(default_factory=list)  # non-image files in class folders, left out
    dropped: int = 0  # bad files left out because skip_bad_images was set
    # (smallest, largest) (width, height) by area; filled in by verify_images
    image_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None

    def rebased(self, root: Path) -> ImageSplits:
        """The same splits with every path moved from `self.root` to `root` (another node's copy)."""
        old, new = str(self.root), str(root)
        if old == new:
            return self

        def move(samples):
            return [(new + path[len(old):], label) for path, label in samples]

        return dataclasses.replace(self, root=Path(root), train=move(self.train), val=move(self.val),
                                   test=move(self.test), skipped=[new + path[len(old):] for path in self.skipped])

    def skipped_note(self) -> str:
        """'skipped 12 non-image files, e.g. train/stop/GT-00014.csv', or '' when none were skipped."""
        if not self.skipped:
            return ""
        n = len(self.skipped)
        return f"skipped {n} non-image file{'s' if n != 1 else ''}, e.g. {_relative(self.skipped[0], self.root)}"


# --- finding files -----------------------------------------------------------------------------


def find_splits(root: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> ImageSplits:
    """List the images of every split without decoding them; DataError if the layout is unusable.

    Files without an image extension are left out and listed in `skipped` (datasets ship CSVs and
    READMEs beside their images); files that are not images despite their extension are found by
    `verify_images`, which decides what to do with them.
    """
    root = Path(root)
    expected = "pass a folder of class folders or of train/ and val/"
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; {expected}")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder; {expected}")
    subfolders = _visible_subfolders(root)
    if "train" in subfolders:
        splits = _split_folder_layout(root, subfolders, val_fraction, seed)
    elif "val" in subfolders or "test" in subfolders:
        present = "val/" if "val" in subfolders else "test/"
        raise DataError(f"data folder {root} has {present} but no train/; add train/<class>/ folders")
    else:
        splits = _class_folder_layout(root, val_fraction, seed)
    _check_classes(splits)
    return splits


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _visible_subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p))


def _class_files(folder: Path) -> tuple[list[str], list[str]]:
    """Image files under `folder` (recursively, sorted) and the other files found there (hidden ones aside)."""
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(str(path))
    return images, others


def _read_split_folder(root: Path, split: str) -> tuple[dict[str, list[str]], list[str]]:
    """{class name: image paths} for DIR/<split>/<class>/, plus the non-image files found."""
    by_class, skipped = {}, []
    for name in _visible_subfolders(root / split):
        by_class[name], class_skipped = _class_files(root / split / name)
        skipped += class_skipped
    return by_class, skipped


def _labelled(by_class: dict[str, list[str]], classes: list[str]) -> list[tuple[str, int]]:
    return [(path, classes.index(name)) for name in sorted(by_class) for path in by_class[name]]


def _check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be > 0 and < 1, but got {val_fraction!r}")


def _split_folder_layout(
    root: Path, subfolders: list[str], val_fraction: float, seed: int
) -> ImageSplits:
    train_by_class, skipped = _read_split_folder(root, "train")
    classes = sorted(train_by_class)
    _require_two_classes(root / "train", classes)
    if "val" in subfolders:
        val_by_class, val_skipped = _read_split_folder(root, "val")
        _require_same_classes(root, classes, sorted(val_by_class))
        skipped += val_skipped
        layout = "train/val folders"
    else:
        _check_val_fraction(val_fraction)
        train_by_class, val_by_class = _split_each_class(train_by_class, val_fraction, seed)
        layout = f"train folder, split val_fraction={val_fraction} seed={seed}"
    test = []
    if "test" in subfolders:
        test_by_class, test_skipped = _read_split_folder(root, "test")
        unknown = sorted(set(test_by_class) - set(classes))
        if unknown:
            raise DataError(
                f"test/ in {root} has classes that train/ lacks: {', '.join(unknown)}; "
                "rename or remove those test folders"
            )
        test, skipped = _labelled(test_by_class, classes), skipped + test_skipped
        layout += " + test folder"
    return ImageSplits(
        root=root,
        layout=layout,
        classes=classes,
        train=_labelled(train_by_class, classes),
        val=_labelled(val_by_class, classes),
        test=test,
        skipped=skipped,
    )


def _class_folder_layout(root: Path, val_fraction: float, seed: int) -> ImageSplits:
    classes = _visible_subfolders(root)
    if not classes:
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        found = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise DataError(
            f"no class folders in {root}{found}; put the images of each class in their own folder, "
            f"{root}/<class>/ or {root}/train/<class>/"
        )
    _require_two_classes(root, classes)
    _check_val_fraction(val_fraction)
    by_class, skipped = {}, []
    for name in classes:
        by_class[name], class_skipped = _class_files(root / name)
        skipped += class_skipped
    train_by_class, val_by_class = _split_each_class(by_class, val_fraction, seed)
    return ImageSplits(
        root=root,
        layout=f"class folders, split val_fraction={val_fraction} seed={seed}",
        classes=classes,
        train=_labelled(train_by_class, classes),
        val=_labelled(val_by_class, classes),
        test=[],
        skipped=skipped,
    )


def _split_each_class(by_class: dict[str, list[str]], val_fraction: float, seed: int):
    """Stratified, deterministic split: ({class: train paths}, {class: val paths})."""
    train, val = {}, {}
    for name, paths in by_class.items():
        shuffled = sorted(paths)
        # A fresh generator per class: adding a class does not move the split of the others.
        random.Random(seed).shuffle(shuffled)
        n = len(shuffled)
        n_val = min(round(n * val_fraction), n - 1)  # every class keeps a training image
        if n >= 2:
            n_val = max(n_val, 1)  # and is validated when it can be
        val[name], train[name] = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
    return train, val


def _require_two_classes(folder: Path, classes: list[str]) -> None:
    if not classes:
        raise DataError(
            f"no class folders in {folder}; put the images of each class in {folder}/<class>/"
        )
    if len(classes) < 2:
        raise DataError(
            f"only one class ({classes[0]}) in {folder}; a classifier needs at least 2 class folders"
        )


def _require_same_classes(root: Path, train_classes: list[str], val_classes: list[str]) -> None:
    missing_in_val = sorted(set(train_classes) - set(val_classes))
    missing_in_train = sorted(set(val_classes) - set(train_classes))
    if missing_in_val or missing_in_train:
        parts = []
        if missing_in_val:
            parts.append(f"missing in val/: {', '.join(missing_in_val)}")
        if missing_in_train:
            parts.append(f"missing in train/: {', '.join(missing_in_train)}")
        raise DataError(
            f"train/ and val/ in {root} have different class folders ({'; '.join(parts)}); "
            "give both the same class folders"
        )


def _check_classes(splits: ImageSplits) -> None:
    """Every class needs a training image, and there must be something to validate on."""
    counts = _count_per_class(splits.train, len(splits.classes))
    empty = [name for name, n in zip(splits.classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no training images in {splits.root}"
            f"{f' (nor do {len(empty) - 1} more)' if len(empty) > 1 else ''}; "
            "add images to it or remove its folder"
        )
    if not splits.val:
        raise DataError(
            f"no validation images in {splits.root}; "
            "add images to val/<class>/ or have at least 2 images per class"
        )


def _count_per_class(samples: list[tuple[str, int]], n_classes: int) -> list[int]:
    counts = [0] * n_classes
    for _, label in samples:
        counts[label] += 1
    return counts


# --- decoding every file -----------------------------------------------------------------------


def verify_images(
    splits: ImageSplits, *, skip_bad_images: bool = False, workers: int = 4
) -> ImageSplits:
    """Decode every image once; DataError on bad files unless `skip_bad_images` drops them.

    Returns a new ImageSplits with `bad_files`, `dropped` and `image_sizes` filled in.
    """
    samples = splits.train + splits.val + splits.test
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decoders release the GIL
        results = list(pool.map(_decode, [path for path, _ in samples]))
    bad_files = [(path, reason) for (path, _), (size, reason) in zip(samples, results, strict=True)
                 if reason is not None]
    sizes = [size for size, reason in results if reason is None]
    verified = dataclasses.replace(splits, bad_files=bad_files, image_sizes=_size_range(sizes))
    if not bad_files:
        return verified
    if not skip_bad_images:
        path, reason = bad_files[0]
        raise DataError(
            f"{len(bad_files)} unreadable or non-image files in {splits.root}, "
            f"first: {_relative(path, splits.root)} ({reason}); remove them or pass --skip-bad-images"
        )
    bad_paths = {path for path, _ in bad_files}
    kept = {name: [s for s in getattr(splits, name) if s[0] not in bad_paths] for name in SPLIT_FOLDERS}
    verified = dataclasses.replace(verified, **kept, dropped=len(bad_files))
    _check_classes(verified)
    return verified


def load_splits(
    root: str | Path, *, val_fraction: float = 0.2, seed: int = 0, skip_bad_images: bool = False
) -> ImageSplits:
    """find_splits + verify_images: what training calls before the first epoch.

    Prints the one-line summary of skipped non-image files, if any, to stderr (one line, not one per file:
    GTSRB alone has 43 CSVs).
    """
    splits = find_splits(root, val_fraction=val_fraction, seed=seed)
    if splits.skipped:
        print(f"warning: {splits.skipped_note()}", file=sys.stderr, flush=True)
    return verify_images(splits, skip_bad_images=skip_bad_images)


def _decode(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) for a good image, (None, short reason) for a bad one."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size, None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return None, _short_reason(err, path)


def _short_reason(err: Exception, path: str) -> str:
    text = first_line(err).replace(repr(path), "").replace(path, "").strip(" :'\"")  # the path is shown anyway
    return text or type(err).__name__


def _size_range(sizes: list[tuple[int, int]]):
    if not sizes:
        return None
    by_area = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
    return by_area[0], by_area[-1]


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


# --- the dataset report ------------------------------------------------------------------------


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
    counts = {name: _count_per_class(getattr(splits, name), len(splits.classes)) for name in columns}
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
        lines.append(f"  {_relative(path, splits.root)}: {reason}")
    if len(splits.bad_files) > SHOW_BAD_FILES:
        lines.append(f"  ... and {len(splits.bad_files) - SHOW_BAD_FILES} more")
    return lines


def _balance_warnings(splits: ImageSplits) -> list[str]:
    train = _count_per_class(splits.train, len(splits.classes))
    val = _count_per_class(splits.val, len(splits.classes))
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


# --- what the loader does to each image ---------------------------------------------------------


def resize_size(image_size: int) -> int:
    """The shorter side images are resized to before a centre crop of `image_size` (ImageNet's ratio)."""
    return round(image_size * 256 / 224)


def crop_transforms(*, image_size: int, aug_strength: float) -> Callable:
    """PIL image or uint8 tensor -> uint8 tensor (3, image_size, image_size): the loader's share of the work.

    `aug_strength` 0 resizes and centre-crops (the eval transform); above 0 it takes a random crop and
    flips, as AugmentPolicy.from_strength says. The rest of the augmentation runs on whole batches on
    the training device (augment.BatchAugment).
    """
    policy = AugmentPolicy.from_strength(aug_strength)
    if policy.crop_scale is None:
        steps = [v2.Resize(resize_size(image_size)), v2.CenterCrop(image_size)]
    else:
        steps = [v2.RandomResizedCrop(image_size, scale=policy.crop_scale), v2.RandomHorizontalFlip(policy.flip)]
    return v2.Compose([*steps, v2.ToImage(), v2.ToPureTensor()])


def eval_transforms(*, image_size: int, mean, std) -> Callable:
    """PIL image -> normalised float tensor (3, image_size, image_size): resize + centre crop.

    The same pixels as training's evaluation (crop_transforms at strength 0, then augment.normalize).
    """
    return v2.Compose([
        crop_transforms(image_size=image_size, aug_strength=0.0),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


# --- datasets and loaders ----------------------------------------------------------------------


class ImageListDataset(Dataset):
    """(path, label) pairs -> (transformed image, label).

    Images come from `decoded` (the node's decoded-image cache, in the order of `samples`) when given,
    else from the files, decoded with PIL as RGB on every access.
    """

    def __init__(self, samples: list[tuple[str, int]], transform: Callable | None,
                 decoded: DecodedImages | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        if self.decoded is not None:
            image = self.decoded[index]
        else:
            with Image.open(path) as image:
                image = image.convert("RGB")  # grey, palette and RGBA files all become 3 channels
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def make_loader(
    samples: list[tuple[str, int]],
    transform: Callable,
    *,
    batch_size: int,
    decoded: DecodedImages | None = None,
    shuffle: bool,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over `samples`; pass a seeded `generator` for a reproducible shuffle."""
    if drop_last and len(samples) < batch_size:
        # Otherwise the loader is silently empty and an epoch trains on nothing.
        raise UserError(
            f"batch_size={batch_size} is larger than the {len(samples)} images and drop_last is set; "
            "lower batch_size"
        )
    return DataLoader(
        ImageListDataset(samples, transform, decoded),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # Fresh workers each epoch take their seeds from `generator`, which the trainer reseeds per
        # epoch: augmentation is then a function of (seed, epoch) and a resumed run repeats it exactly.
        persistent_workers=False,
    )
