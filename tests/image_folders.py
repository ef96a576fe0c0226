"""Tiny image folders written by the data tests: solid-colour PNGs in the layouts tuner reads."""

from PIL import Image


def write_image(path, size=(12, 10), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def class_folders(root, counts):
    """root/<class>/<i>.png for {class: count}."""
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"{i:03d}.png")
    return root


def train_val_folders(root, train_classes=("cat", "dog"), val_classes=("cat", "dog"), per_class=3):
    """root/train/<class>/ with `per_class` images and root/val/<class>/ with one."""
    class_folders(root / "train", {name: per_class for name in train_classes})
    class_folders(root / "val", {name: 1 for name in val_classes})
    return root
