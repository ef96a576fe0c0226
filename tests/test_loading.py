"""The loader's share of the work: crop transforms from a policy, the dataset, make_loader and image_loader."""

import numpy as np
import pytest
import torch
from image_folders import class_folders
from PIL import Image

from tuner.errors import UserError
from tuner.train.augment_policy import AugmentPolicy
from tuner.train.config import make_config
from tuner.train.folders import find_splits
from tuner.train.loading import crop_transforms, eval_loader, eval_transforms, image_loader, make_loader

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # realistic statistics; training takes them from the weights' metadata
IMAGENET_STD = (0.229, 0.224, 0.225)




# --- transforms ---


@pytest.fixture
def photo():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (60, 80, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(noise.numpy(), "RGB")


def test_strength_zero_is_the_deterministic_eval_crop(photo):
    crop = crop_transforms(image_size=32, policy=AugmentPolicy.from_strength(0.0))
    expected = eval_transforms(image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3)(photo)
    assert torch.equal(crop(photo), crop(photo))
    assert torch.allclose(crop(photo).float() / 255, expected, atol=1e-6)  # eval = the strength-0 crop, scaled


def test_strength_one_is_random(photo):
    crop = crop_transforms(image_size=32, policy=AugmentPolicy.from_strength(1.0))
    torch.manual_seed(0)
    draws = [crop(photo) for _ in range(4)]
    assert any(not torch.equal(draws[0], other) for other in draws[1:])


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.7, 1.0])
def test_crops_are_square_uint8_from_pil_images_and_tensors(photo, strength):
    crop = crop_transforms(image_size=40, policy=AugmentPolicy.from_strength(strength))
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
        crop_transforms(image_size=32, policy=AugmentPolicy.from_strength(1.5))


# --- loader ---


def test_make_loader_yields_batches_of_the_right_shape(tmp_path):
    class_folders(tmp_path, {"a": 4, "b": 3})
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
    transform = crop_transforms(image_size=32, policy=AugmentPolicy.from_strength(1.0))
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
    steps = crop_transforms(image_size=32, policy=AugmentPolicy.from_strength(strength)).transforms
    assert steps[0].scale == pytest.approx((lowest_scale, 1.0))


@pytest.mark.parametrize("image_cache", [True, False])
def test_image_loader_reads_the_decoded_image_cache_exactly_when_the_config_says(demo_root, image_cache):
    samples = find_splits(demo_root).val[:5]
    config = make_config({"image_size": 32, "batch_size": 2, "image_cache": image_cache})
    crop = crop_transforms(image_size=32, policy=AugmentPolicy.from_strength(0.0))
    loader = image_loader(samples, crop, config, device=torch.device("cpu"))
    assert (loader.dataset.decoded is not None) == image_cache
    assert loader.batch_size == 2 and not loader.pin_memory
    centre = eval_loader(samples, config, device=torch.device("cpu"))
    assert (centre.dataset.decoded is not None) == image_cache
    for (a, la), (b, lb) in zip(loader, centre, strict=True):  # in order: the same centre crops
        assert torch.equal(a, b) and torch.equal(la, lb)
