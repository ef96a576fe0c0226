from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tuner.errors import DataError, UserError
from tuner.train.data import (
    IMAGE_EXTENSIONS,
    check_data,
    crop_transforms,
    eval_transforms,
    find_splits,
    load_splits,
    make_loader,
    verify_images,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # realistic statistics; training takes them from the weights' metadata
IMAGENET_STD = (0.229, 0.224, 0.225)


def _image(path, size=(12, 10), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _class_folders(root, counts):
    """root/<class>/<i>.png for {class: count}."""
    for name, count in counts.items():
        for i in range(count):
            _image(root / name / f"{i:03d}.png")
    return root


def _train_val(root, train_classes=("cat", "dog"), val_classes=("cat", "dog"), per_class=3):
    _class_folders(root / "train", {name: per_class for name in train_classes})
    _class_folders(root / "val", {name: 1 for name in val_classes})
    return root


# --- layouts ---


def test_train_val_folders_are_used_as_they_are(tmp_path):
    _train_val(tmp_path)
    _class_folders(tmp_path / "test", {"dog": 2})
    splits = find_splits(tmp_path)
    assert splits.classes == ["cat", "dog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert {label for _, label in splits.test} == {1}
    assert splits.layout.startswith("train/val folders")


def test_train_folder_without_val_is_split(tmp_path):
    _class_folders(tmp_path / "train", {"cat": 10, "dog": 5})
    splits = find_splits(tmp_path, val_fraction=0.2)
    assert (len(splits.train), len(splits.val), splits.test) == (12, 3, [])
    assert "split val_fraction=0.2" in splits.layout


def test_class_folders_split_is_stratified_deterministic_and_respects_val_fraction(tmp_path):
    _class_folders(tmp_path, {"a": 20, "b": 10, "c": 2, ".hidden": 4})
    splits = find_splits(tmp_path, val_fraction=0.3, seed=1)
    assert splits.classes == ["a", "b", "c"]
    val_per_class = [sum(label == k for _, label in splits.val) for k in range(3)]
    assert val_per_class == [6, 3, 1]  # round(n * 0.3), at least 1 when n >= 2
    assert not set(splits.train) & set(splits.val)
    assert find_splits(tmp_path, val_fraction=0.3, seed=1).val == splits.val
    assert find_splits(tmp_path, val_fraction=0.3, seed=2).val != splits.val


def test_hidden_files_are_ignored(tmp_path):
    _class_folders(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
    splits = find_splits(tmp_path)
    assert splits.bad_files == [] and len(splits.train) + len(splits.val) == 4


# --- bad data: one DataError line naming the problem ---


def _empty_class(root):
    _class_folders(root, {"a": 3})
    (root / "b").mkdir()
    return root


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: _image(root / "x.png"), "not a folder"),
        (lambda root: _image(root / "loose.png").parent, "no class folders"),
        (lambda root: _class_folders(root, {"only": 3}), "only one class"),
        (lambda root: _train_val(root, train_classes=("cat",)), "only one class"),
        (_empty_class, "'b' has no training images"),
        (lambda root: _train_val(root, val_classes=("cat", "emu")),
         "missing in val/: dog; missing in train/: emu"),
        (lambda root: _class_folders(root / "val", {"a": 1, "b": 1}).parent, "no train/"),
    ],
)
def test_unusable_layouts_raise_a_one_line_data_error(tmp_path, build, message):
    root = build(tmp_path / "data")
    with pytest.raises(DataError, match=message) as caught:
        find_splits(root)
    assert "\n" not in str(caught.value)


def test_corrupt_image_is_reported_with_its_path_and_the_fix(tmp_path):
    _train_val(tmp_path)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    expected = r"1 unreadable .* first: train/cat/broken.jpg \(cannot identify image file\); remove them"
    with pytest.raises(DataError, match=expected):
        load_splits(tmp_path)


def test_truncated_image_is_unreadable(tmp_path):
    _train_val(tmp_path)
    good = _image(tmp_path / "train" / "dog" / "big.png", size=(64, 64))
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="train/dog/big.png"):
        load_splits(tmp_path)


def test_non_image_files_are_skipped_with_one_summary_warning(tmp_path, capsys):
    _train_val(tmp_path)
    (tmp_path / "train" / "cat" / "GT-00000.csv").write_text("Filename;ClassId\n")
    (tmp_path / "val" / "dog" / "notes.txt").write_text("hello")
    (tmp_path / "val" / "dog" / "README").write_text("no extension")
    splits = load_splits(tmp_path)  # no --skip-bad-images needed: they are not images, not bad images
    assert splits.bad_files == [] and splits.dropped == 0 and (len(splits.train), len(splits.val)) == (6, 2)
    assert sorted(Path(p).name for p in splits.skipped) == ["GT-00000.csv", "README", "notes.txt"]
    assert capsys.readouterr().err == "warning: skipped 3 non-image files, e.g. train/cat/GT-00000.csv\n"


def test_no_warning_when_nothing_is_skipped(tmp_path, capsys):
    _train_val(tmp_path)
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden: ignored, not counted
    assert load_splits(tmp_path).skipped == []
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("suffix, mode", [(".ppm", "RGB"), (".pgm", "L"), (".gif", "P"), (".webp", "RGB"),
                                          (".PPM", "RGB")])
def test_torchvision_image_extensions_and_gif_are_images(tmp_path, suffix, mode):
    _train_val(tmp_path)
    path = tmp_path / "train" / "cat" / f"sign{suffix}"
    Image.new(mode, (9, 7)).save(path, format={".ppm": "PPM", ".pgm": "PPM"}.get(suffix.lower()))
    splits = load_splits(tmp_path)
    assert (str(path), 0) in splits.train and splits.skipped == []


def test_image_extensions_include_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert set(IMG_EXTENSIONS) | {".gif"} <= set(IMAGE_EXTENSIONS)


def test_skip_bad_images_drops_and_counts_them(tmp_path, capsys):
    _train_val(tmp_path)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "train" / "dog" / "fake.ppm").write_text("P6 but not really")  # an image by name only
    (tmp_path / "train" / "dog" / "notes.txt").write_text("hello")  # not an image: skipped, not dropped
    splits = load_splits(tmp_path, skip_bad_images=True)
    assert splits.dropped == 2 and sorted(Path(p).name for p, _ in splits.bad_files) == ["broken.jpg", "fake.ppm"]
    assert len(splits.train) == 6 and not any("broken" in path for path, _ in splits.train)
    assert "skipped 1 non-image file, e.g. train/dog/notes.txt" in capsys.readouterr().err


def test_skipping_every_training_image_of_a_class_is_an_error(tmp_path):
    _train_val(tmp_path, per_class=1)
    (tmp_path / "train" / "dog" / "000.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="'dog' has no training images"):
        load_splits(tmp_path, skip_bad_images=True)


def test_verify_records_the_size_range_by_area(tmp_path):
    _class_folders(tmp_path, {"a": 2, "b": 2})
    _image(tmp_path / "a" / "small.png", size=(5, 4))
    _image(tmp_path / "b" / "large.png", size=(30, 20))
    assert verify_images(find_splits(tmp_path)).image_sizes == ((5, 4), (30, 20))


# --- check_data ---


def test_check_data_reports_a_usable_dataset(demo_root):
    lines, usable = check_data(demo_root)
    text = "\n".join(lines)
    assert usable
    assert "train/val folders" in text and "circle" in text
    assert "image sizes" in text and lines[-1].startswith("verdict: usable")


def test_check_data_warns_about_imbalance_and_missing_val_images(tmp_path):
    _class_folders(tmp_path / "train", {"big": 12, "mid": 10, "tiny": 2})
    _class_folders(tmp_path / "val", {"big": 2, "mid": 2})
    (tmp_path / "val" / "tiny").mkdir()
    lines, usable = check_data(tmp_path)
    text = "\n".join(lines)
    assert usable
    assert "'tiny' has 2 training images, under a third of the median" in text
    assert "class imbalance" in text and "'tiny' has no validation images" in text


def test_check_data_reports_skipped_files_as_a_warning_and_stays_usable(tmp_path):
    _train_val(tmp_path)
    (tmp_path / "train" / "dog" / "GT-00001.csv").write_text("Filename;ClassId\n")
    lines, usable = check_data(tmp_path)
    assert usable and "warning: skipped 1 non-image file, e.g. train/dog/GT-00001.csv" in lines
    assert "unreadable or non-image files: 0" in lines and lines[-1].startswith("verdict: usable (1 warning)")


def test_check_data_lists_bad_files_and_is_not_usable(tmp_path):
    _train_val(tmp_path)
    for i in range(7):
        (tmp_path / "train" / "cat" / f"bad{i}.jpg").write_bytes(b"x")
    lines, usable = check_data(tmp_path)
    assert not usable
    assert "unreadable or non-image files: 7" in lines
    assert sum(line.startswith("  train/cat/bad") for line in lines) == 5 and "  ... and 2 more" in lines


def test_check_data_puts_the_error_in_the_report(tmp_path):
    lines, usable = check_data(tmp_path / "nowhere")
    assert not usable and any("does not exist" in line for line in lines)


# --- transforms ---


@pytest.fixture
def photo():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (60, 80, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(noise.numpy(), "RGB")


def test_strength_zero_is_the_deterministic_eval_crop(photo):
    crop = crop_transforms(image_size=32, aug_strength=0.0)
    expected = eval_transforms(image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3)(photo)
    assert torch.equal(crop(photo), crop(photo))
    assert torch.allclose(crop(photo).float() / 255, expected, atol=1e-6)  # eval = the strength-0 crop, scaled


def test_strength_one_is_random(photo):
    crop = crop_transforms(image_size=32, aug_strength=1.0)
    torch.manual_seed(0)
    draws = [crop(photo) for _ in range(4)]
    assert any(not torch.equal(draws[0], other) for other in draws[1:])


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.7, 1.0])
def test_crops_are_square_uint8_from_pil_images_and_tensors(photo, strength):
    crop = crop_transforms(image_size=40, aug_strength=strength)
    as_tensor = torch.from_numpy(np.array(photo)).permute(2, 0, 1)
    for image in (photo, as_tensor):
        out = crop(image)
        assert out.shape == (3, 40, 40) and out.dtype == torch.uint8 and type(out) is torch.Tensor


def test_eval_transform_normalises_a_constant_image_exactly():
    grey = Image.new("RGB", (50, 70), (128, 128, 128))
    out = eval_transforms(image_size=24, mean=IMAGENET_MEAN, std=IMAGENET_STD)(grey)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)


def test_aug_strength_outside_zero_to_one_is_refused():
    with pytest.raises(UserError, match="aug_strength must be"):
        crop_transforms(image_size=32, aug_strength=1.5)


# --- loader ---


def test_make_loader_yields_batches_of_the_right_shape(tmp_path):
    _class_folders(tmp_path, {"a": 4, "b": 3})
    Image.new("L", (9, 9), 100).save(tmp_path / "b" / "grey.png")  # one-channel files become RGB
    splits = find_splits(tmp_path, val_fraction=0.25)
    transform = eval_transforms(image_size=16, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    generator = torch.Generator().manual_seed(0)
    loader = make_loader(splits.train, transform, batch_size=4, shuffle=True, generator=generator)
    batches = list(loader)
    assert [tuple(images.shape) for images, _ in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert batches[0][1].dtype == torch.int64


def test_make_loader_refuses_to_drop_every_batch(tmp_path):
    with pytest.raises(UserError, match="lower batch_size"):
        make_loader([("x.png", 0)], None, batch_size=4, shuffle=False, drop_last=True)


def test_worker_augmentation_follows_the_reseeded_generator(demo_root):
    # What exact resume relies on: the same generator seed gives the same augmented epoch.
    samples = find_splits(demo_root).train[:6]
    transform = crop_transforms(image_size=32, aug_strength=1.0)
    generator = torch.Generator()
    loader = make_loader(samples, transform, batch_size=3, shuffle=True, num_workers=1, generator=generator)

    def epoch(seed):
        generator.manual_seed(seed)
        return torch.cat([images for images, _ in loader])

    first = epoch(5)
    assert torch.equal(first, epoch(5))
    assert not torch.equal(first, epoch(6))


@pytest.mark.parametrize(
    "strength, lowest_scale", [(0.25, 0.77), (0.5, 0.54), (1.0, 0.08)]
)
def test_strength_sets_the_crop_scale_as_documented(strength, lowest_scale):
    steps = crop_transforms(image_size=32, aug_strength=strength).transforms
    assert steps[0].scale == pytest.approx((lowest_scale, 1.0))


def test_a_class_with_one_image_keeps_it_for_training(tmp_path):
    for name, count in (("a", 1), ("b", 4)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    splits = find_splits(tmp_path, val_fraction=0.8)
    assert sum(label == 0 for _, label in splits.train) == 1
