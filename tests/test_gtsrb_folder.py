"""A dataset as it comes: GTSRB's training folder (class folders of .ppm images, a CSV per class) trains as is."""

import json

import pytest
from PIL import Image, ImageDraw

from tuner.__main__ import main

CLASSES = 3
IMAGES_PER_CLASS = 8


@pytest.fixture(scope="module")
def gtsrb(tmp_path_factory):
    """GTSRB/Final_Training/Images in small: 0000N/0000N_0000i.ppm of varied sizes, GT-0000N.csv, a .DS_Store."""
    root = tmp_path_factory.mktemp("gtsrb") / "Images"
    for label in range(CLASSES):
        folder = root / f"{label:05d}"
        folder.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for i in range(IMAGES_PER_CLASS):
            size = 15 + 7 * i  # GTSRB's images run from 15 px to 250 px a side
            image = Image.new("RGB", (size, size + i % 3), (40 * i, 90, 200 - 40 * label))
            ImageDraw.Draw(image).regular_polygon((size / 2, size / 2, size / 3), 3 + label, fill=(250, 250, 250))
            name = f"{label:05d}_{i:05d}.ppm"
            image.save(folder / name)  # PIL picks PPM from the extension
            rows.append(f"{name};{size};{size + i % 3};1;1;{size - 1};{size - 1};{label}")
        (folder / f"GT-{label:05d}.csv").write_text("\n".join(rows) + "\n")
    (root / "00000" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: ignored without a word
    return root


def test_gtsrb_shaped_folder_trains_and_warns_once_about_the_csvs(gtsrb, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(gtsrb), "--out", str(out), "--loader-workers", "0",
            "--set", "model=resnet18", "--set", "weights=none", "--set", "image_size=32",
            "--set", "batch_size=8", "--set", "steps=2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: skipped {CLASSES} non-image files, e.g. 00000/GT-00000.csv"]
    # Every .ppm is used: 8 a class, stratified 20% (2 a class) to val.
    assert f"{CLASSES} classes, {CLASSES * 6} train / {CLASSES * 2} val" in captured.out
    assert json.loads((out / "best" / "classes.json").read_text()) == ["00000", "00001", "00002"]
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics["step"] == 2 and 0 <= metrics["val_acc"] <= 1


def test_check_data_calls_the_gtsrb_folder_usable(gtsrb, capsys):
    assert main(["check-data", str(gtsrb)]) == 0
    out = capsys.readouterr().out
    assert "image sizes (w x h): smallest 15x15, largest 64x65" in out
    assert "warning: skipped 3 non-image files, e.g. 00000/GT-00000.csv" in out
    assert "unreadable or non-image files: 0" in out
