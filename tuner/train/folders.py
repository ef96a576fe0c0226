"""Image folders -> checked train/val/test lists of (path, label); nothing is decoded but to verify.

Accepted layouts (hidden files and folders are ignored; other files in class folders that are not images
by their extension, such as GTSRB's per-class CSVs, are skipped with one summary warning):

    DIR/train/<class>/*  DIR/val/<class>/*  [DIR/test/<class>/*]   used as they are
    DIR/train/<class>/*  [DIR/test/<class>/*]                      val split off train/
    DIR/<class>/*                                                  val split off each class

A split is stratified and deterministic: per class, file names are sorted, shuffled with
`random.Random(seed)`, and the first `round(n * val_fraction)` (at least 1 when n >= 2) go to val.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import DataError, UserError, first_line

try:  # torchvision's ImageFolder list (.ppm/.pgm for GTSRB and the like), so we accept what it accepts
    from torchvision.datasets.folder import IMG_EXTENSIONS as _TORCHVISION_EXTENSIONS
except ImportError:  # not a public name: a torchvision without it gets the list as of 0.29
    _TORCHVISION_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_EXTENSIONS = tuple(sorted({*_TORCHVISION_EXTENSIONS, ".gif"}))  # gif: PIL reads its first frame
SPLIT_FOLDERS = ("train", "val", "test")


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
        return f"skipped {n} non-image file{'s' if n != 1 else ''}, e.g. {relative_path(self.skipped[0], self.root)}"


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


def find_labelled(root: str | Path, classes: list[str], *, split: str = "test") -> ImageSplits:
    """The images to judge a model of `classes` on, in `test` of the splits returned (train and val empty).

    ROOT/<split>/<class>/* when ROOT holds split folders (the layout training reads), else every image of
    ROOT/<class>/*. Labels index `classes`, the model's, so a folder may hold some of its classes only;
    a class folder the model does not know is a DataError.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                        f"pass a folder of class folders or one with {split}/<class>/ folders")
    subfolders = _visible_subfolders(root)
    if split in subfolders:
        folder, layout = root / split, f"{split}/ folder"
    elif set(subfolders) & set(SPLIT_FOLDERS):
        raise DataError(f"data folder {root} has no {split}/ folder; pass --split with one of "
                        f"{', '.join(s for s in SPLIT_FOLDERS if s in subfolders)}, or a folder of class folders")
    else:
        folder, layout = root, "class folders, every image"
    by_class, skipped = _read_split_folder(folder.parent, folder.name)
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        known = ", ".join(classes[:10]) + (f" and {len(classes) - 10} more" if len(classes) > 10 else "")
        raise DataError(f"class folder{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {folder} "
                        f"{'are' if len(unknown) > 1 else 'is'} not among the model's classes "
                        f"({known}); rename or remove {'them' if len(unknown) > 1 else 'it'}")
    samples = _labelled(by_class, classes)
    if not samples:
        raise DataError(f"no images in class folders under {folder}{_loose_images(folder)}; put each class's "
                        f"images in {folder}/<class>/")
    return ImageSplits(root=root, layout=layout, classes=list(classes), train=[], val=[], test=samples,
                       skipped=skipped)


def _loose_images(folder: Path) -> str:
    """' (12 images lie directly in it)' when images sit in `folder` beside (or instead of) class folders."""
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return f" ({len(loose)} images lie directly in it)" if loose else ""


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
        raise DataError(
            f"no class folders in {root}{_loose_images(root)}; put the images of each class in their own folder, "
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
    counts = count_per_class(splits.train, len(splits.classes))
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


def count_per_class(samples: list[tuple[str, int]], n_classes: int) -> list[int]:
    """Images per label, for labels 0 .. n_classes - 1."""
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
            f"first: {relative_path(path, splits.root)} ({reason}); remove them or pass --skip-bad-images"
        )
    bad_paths = {path for path, _ in bad_files}
    kept = {name: [s for s in getattr(splits, name) if s[0] not in bad_paths] for name in SPLIT_FOLDERS}
    verified = dataclasses.replace(verified, **kept, dropped=len(bad_files))
    if splits.train:  # images read to evaluate a model (find_labelled) have no training split to check
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


def relative_path(path: str, root: Path) -> str:
    """`path` relative to `root` when it lies under it, else as given: how reports name a file."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
