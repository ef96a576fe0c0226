import json

import numpy as np
import pytest
from PIL import Image

from tuner.errors import DataError, UserError
from tuner.train.demo_data import CLASSES, SIZE_RANGE, TRANSFER_CLASSES, write_demo_data

SMALL = dict(train_per_class=3, val_per_class=2, test_per_class=1)


def _file_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_gives_identical_files(tmp_path):
    write_demo_data(tmp_path / "a", seed=3, **SMALL)
    write_demo_data(tmp_path / "b", seed=3, **SMALL)
    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")


def test_different_seed_gives_different_images(tmp_path):
    write_demo_data(tmp_path / "a", seed=0, **SMALL)
    write_demo_data(tmp_path / "b", seed=1, **SMALL)
    a, b = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a)


def test_default_dataset_has_the_promised_classes_counts_and_sizes(demo_root):
    assert len(CLASSES) >= 6
    for split, count in {"train": 80, "val": 20, "test": 10}.items():
        assert sorted(p.name for p in (demo_root / split).iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            assert len(list((demo_root / split / name).glob("*.png"))) == count
    for path in list(demo_root.rglob("*.png"))[::7]:
        with Image.open(path) as image:
            assert image.mode == "RGB"
            assert all(SIZE_RANGE[0] <= side <= SIZE_RANGE[1] for side in image.size)


def test_rerun_with_same_parameters_does_not_rewrite(tmp_path):
    first = write_demo_data(tmp_path, **SMALL)
    stamp = (tmp_path / "train" / CLASSES[0] / f"{CLASSES[0]}_0000.png").stat().st_mtime_ns
    second = write_demo_data(tmp_path, **SMALL)
    assert first["written"] and not second["written"]
    assert second["counts"] == {"train": 3 * len(CLASSES), "val": 2 * len(CLASSES), "test": len(CLASSES)}
    assert (tmp_path / "train" / CLASSES[0] / f"{CLASSES[0]}_0000.png").stat().st_mtime_ns == stamp


def test_other_parameters_replace_an_existing_demo_dataset(tmp_path):
    write_demo_data(tmp_path, **SMALL)
    summary = write_demo_data(tmp_path, seed=0, train_per_class=2, val_per_class=1, test_per_class=0)
    assert summary["written"]
    assert len(list((tmp_path / "train" / CLASSES[0]).iterdir())) == 2
    assert not (tmp_path / "test").exists()
    assert json.loads((tmp_path / "DEMO.json").read_text())["per_class"]["train"] == 2


def test_interrupted_write_is_not_taken_as_complete(tmp_path):
    write_demo_data(tmp_path, **SMALL)
    (tmp_path / "DEMO.json").unlink()  # as if the process died before the manifest was written
    (tmp_path / ".demo-writing").write_text("")
    assert write_demo_data(tmp_path, **SMALL)["written"]
    assert (tmp_path / "DEMO.json").exists() and not (tmp_path / ".demo-writing").exists()


def test_refuses_a_non_empty_folder_that_is_not_demo_data(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(DataError, match="not empty"):
        write_demo_data(tmp_path, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["holiday.jpg"]


def _mean_colours(root, split):
    features, labels = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((root / split / name).glob("*.png")):
            with Image.open(path) as image:
                features.append(np.asarray(image, dtype=np.float64).mean(axis=(0, 1)))
            labels.append(label)
    return np.array(features), np.array(labels)


def test_classes_are_not_separable_by_mean_colour(demo_root):
    train_x, train_y = _mean_colours(demo_root, "train")
    val_x, val_y = _mean_colours(demo_root, "val")
    centroids = np.stack([train_x[train_y == k].mean(axis=0) for k in range(len(CLASSES))])
    predicted = np.linalg.norm(val_x[:, None] - centroids[None], axis=2).argmin(axis=1)
    assert (predicted == val_y).mean() < 0.4


def test_transfer_classes_are_written_on_request_and_never_in_the_demo_data(tmp_path):
    assert not set(TRANSFER_CLASSES) & set(CLASSES)
    summary = write_demo_data(tmp_path / "t", classes=TRANSFER_CLASSES, **SMALL)
    assert summary["classes"] == list(TRANSFER_CLASSES) and summary["counts"]["train"] == 3 * len(TRANSFER_CLASSES)
    assert sorted(p.name for p in (tmp_path / "t" / "train").iterdir()) == sorted(TRANSFER_CLASSES)
    # A class draws the same images whichever classes are written beside it.
    write_demo_data(tmp_path / "one", classes=("dots",), **SMALL)
    alone, together = _file_bytes(tmp_path / "one"), _file_bytes(tmp_path / "t")
    assert alone and all(together[name] == data for name, data in alone.items())


def test_an_unknown_class_is_refused_with_the_known_ones():
    with pytest.raises(UserError, match=r"classes \['moon'\] are not demo classes; choose from circle, .*waves"):
        write_demo_data("/nonexistent", classes=("circle", "moon"))
