from pathlib import Path

import pytest
from image_folders import class_folders, train_val_folders, write_image
from PIL import Image

from tuner.errors import DataError
from tuner.train.folders import IMAGE_EXTENSIONS, find_splits, load_splits, verify_images

# --- layouts ---


def test_train_val_folders_are_used_as_they_are(tmp_path):
    train_val_folders(tmp_path)
    class_folders(tmp_path / "test", {"dog": 2})
    splits = find_splits(tmp_path)
    assert splits.classes == ["cat", "dog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert {label for _, label in splits.test} == {1}
    assert splits.layout.startswith("train/val folders")


def test_train_folder_without_val_is_split(tmp_path):
    class_folders(tmp_path / "train", {"cat": 10, "dog": 5})
    splits = find_splits(tmp_path, val_fraction=0.2)
    assert (len(splits.train), len(splits.val), splits.test) == (12, 3, [])
    assert "split val_fraction=0.2" in splits.layout


def test_class_folders_split_is_stratified_deterministic_and_respects_val_fraction(tmp_path):
    class_folders(tmp_path, {"a": 20, "b": 10, "c": 2, ".hidden": 4})
    splits = find_splits(tmp_path, val_fraction=0.3, seed=1)
    assert splits.classes == ["a", "b", "c"]
    val_per_class = [sum(label == k for _, label in splits.val) for k in range(3)]
    assert val_per_class == [6, 3, 1]  # round(n * 0.3), at least 1 when n >= 2
    assert not set(splits.train) & set(splits.val)
    assert find_splits(tmp_path, val_fraction=0.3, seed=1).val == splits.val
    assert find_splits(tmp_path, val_fraction=0.3, seed=2).val != splits.val


def test_hidden_files_are_ignored(tmp_path):
    class_folders(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
    splits = find_splits(tmp_path)
    assert splits.bad_files == [] and len(splits.train) + len(splits.val) == 4


# --- bad data: one DataError line naming the problem ---


def _empty_class(root):
    class_folders(root, {"a": 3})
    (root / "b").mkdir()
    return root


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: write_image(root / "x.png"), "not a folder"),
        (lambda root: write_image(root / "loose.png").parent, "no class folders"),
        (lambda root: class_folders(root, {"only": 3}), "only one class"),
        (lambda root: train_val_folders(root, train_classes=("cat",)), "only one class"),
        (_empty_class, "'b' has no training images"),
        (lambda root: train_val_folders(root, val_classes=("cat", "emu")),
         "missing in val/: dog; missing in train/: emu"),
        (lambda root: class_folders(root / "val", {"a": 1, "b": 1}).parent, "no train/"),
    ],
)
def test_unusable_layouts_raise_a_one_line_data_error(tmp_path, build, message):
    root = build(tmp_path / "data")
    with pytest.raises(DataError, match=message) as caught:
        find_splits(root)
    assert "\n" not in str(caught.value)


def test_corrupt_image_is_reported_with_its_path_and_the_fix(tmp_path):
    train_val_folders(tmp_path)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    expected = r"1 unreadable .* first: train/cat/broken.jpg \(cannot identify image file\); remove them"
    with pytest.raises(DataError, match=expected):
        load_splits(tmp_path)


def test_truncated_image_is_unreadable(tmp_path):
    train_val_folders(tmp_path)
    good = write_image(tmp_path / "train" / "dog" / "big.png", size=(64, 64))
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="train/dog/big.png"):
        load_splits(tmp_path)


def test_non_image_files_are_skipped_with_one_summary_warning(tmp_path, capsys):
    train_val_folders(tmp_path)
    (tmp_path / "train" / "cat" / "GT-00000.csv").write_text("Filename;ClassId\n")
    (tmp_path / "val" / "dog" / "notes.txt").write_text("hello")
    (tmp_path / "val" / "dog" / "README").write_text("no extension")
    splits = load_splits(tmp_path)  # no --skip-bad-images needed: they are not images, not bad images
    assert splits.bad_files == [] and splits.dropped == 0 and (len(splits.train), len(splits.val)) == (6, 2)
    assert sorted(Path(p).name for p in splits.skipped) == ["GT-00000.csv", "README", "notes.txt"]
    assert capsys.readouterr().err == "warning: skipped 3 non-image files, e.g. train/cat/GT-00000.csv\n"


def test_no_warning_when_nothing_is_skipped(tmp_path, capsys):
    train_val_folders(tmp_path)
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden: ignored, not counted
    assert load_splits(tmp_path).skipped == []
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("suffix, mode", [(".ppm", "RGB"), (".pgm", "L"), (".gif", "P"), (".webp", "RGB"),
                                          (".PPM", "RGB")])
def test_torchvision_image_extensions_and_gif_are_images(tmp_path, suffix, mode):
    train_val_folders(tmp_path)
    path = tmp_path / "train" / "cat" / f"sign{suffix}"
    Image.new(mode, (9, 7)).save(path, format={".ppm": "PPM", ".pgm": "PPM"}.get(suffix.lower()))
    splits = load_splits(tmp_path)
    assert (str(path), 0) in splits.train and splits.skipped == []


def test_image_extensions_include_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert set(IMG_EXTENSIONS) | {".gif"} <= set(IMAGE_EXTENSIONS)


def test_skip_bad_images_drops_and_counts_them(tmp_path, capsys):
    train_val_folders(tmp_path)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "train" / "dog" / "fake.ppm").write_text("P6 but not really")  # an image by name only
    (tmp_path / "train" / "dog" / "notes.txt").write_text("hello")  # not an image: skipped, not dropped
    splits = load_splits(tmp_path, skip_bad_images=True)
    assert splits.dropped == 2 and sorted(Path(p).name for p, _ in splits.bad_files) == ["broken.jpg", "fake.ppm"]
    assert len(splits.train) == 6 and not any("broken" in path for path, _ in splits.train)
    assert "skipped 1 non-image file, e.g. train/dog/notes.txt" in capsys.readouterr().err


def test_skipping_every_training_image_of_a_class_is_an_error(tmp_path):
    train_val_folders(tmp_path, per_class=1)
    (tmp_path / "train" / "dog" / "000.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="'dog' has no training images"):
        load_splits(tmp_path, skip_bad_images=True)


def test_verify_records_the_size_range_by_area(tmp_path):
    class_folders(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "a" / "small.png", size=(5, 4))
    write_image(tmp_path / "b" / "large.png", size=(30, 20))
    assert verify_images(find_splits(tmp_path)).image_sizes == ((5, 4), (30, 20))


def test_a_class_with_one_image_keeps_it_for_training(tmp_path):
    for name, count in (("a", 1), ("b", 4)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    splits = find_splits(tmp_path, val_fraction=0.8)
    assert sum(label == 0 for _, label in splits.train) == 1
