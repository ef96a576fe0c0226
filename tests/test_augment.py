import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from tuner.train import augment
from tuner.train.augment import RANDAUGMENT_OPS, BatchAugment, normalize
from tuner.train.augment_policy import AugmentPolicy

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def batch():
    return torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_strength_zero_only_normalises(batch):
    out = BatchAugment(AugmentPolicy.from_strength(0.0), mean=MEAN, std=STD)(batch, torch.Generator().manual_seed(1))
    expected = TF.normalize(batch.float() / 255, list(MEAN), list(STD))
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(normalize(batch, MEAN, STD), expected, atol=1e-6)


@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_each_image_gets_its_own_random_parameters(strength):
    # The same image 16 times: per-image parameters make the copies differ from each other.
    same = torch.randint(0, 256, (1, 3, 24, 24), dtype=torch.uint8).expand(16, 3, 24, 24).contiguous()
    augmenter = BatchAugment(AugmentPolicy.from_strength(strength), mean=MEAN, std=STD)
    out = augmenter(same, torch.Generator().manual_seed(0))
    assert out.shape == same.shape and out.dtype == torch.float32
    distinct = {tuple(image.flatten()[:50].tolist()) for image in out}
    assert len(distinct) == 16


def test_the_generator_decides_everything(batch):
    augmenter = BatchAugment(AugmentPolicy.from_strength(1.0), mean=MEAN, std=STD)
    first = augmenter(batch, torch.Generator().manual_seed(3))
    assert torch.equal(first, augmenter(batch, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augmenter(batch, torch.Generator().manual_seed(4)))


def test_randaugment_only_from_strength_one_half():
    assert BatchAugment(AugmentPolicy.from_strength(0.4), mean=MEAN, std=STD).policy.randaugment_ops == 0
    strong = BatchAugment(AugmentPolicy.from_strength(0.75), mean=MEAN, std=STD).policy
    assert strong.randaugment_ops == 2 and strong.randaugment_magnitude == 7


def test_the_batch_parameters_stay_inside_the_policys_ranges():
    policy = AugmentPolicy.from_strength(0.6)
    params = augment.draw_params(500, policy, torch.Generator().manual_seed(0))
    assert params["rotation"].abs().max() <= policy.rotation_degrees
    for name in ("brightness", "contrast", "saturation"):
        assert (params[name] - 1).abs().max() <= getattr(policy, name) + 1e-6
    assert params["hue"].abs().max() <= policy.hue
    assert params["op"].shape == (500, policy.randaugment_ops)
    assert params["rotation"].abs().max() > 0.9 * policy.rotation_degrees  # and use them


def test_colour_ops_match_torchvision(batch):
    x = batch.float() / 255
    factor = torch.full((len(x),), 1.6)
    assert torch.allclose(augment.adjust_contrast(x, factor), TF.adjust_contrast(x, 1.6), atol=1e-4)
    assert torch.allclose(augment.adjust_saturation(x, factor), TF.adjust_saturation(x, 1.6), atol=1e-4)
    assert torch.allclose(augment.adjust_brightness(x, factor), TF.adjust_brightness(x, 1.6), atol=1e-6)
    assert torch.allclose(augment.adjust_sharpness(x, factor), TF.adjust_sharpness(x, 1.6), atol=1e-5)
    assert torch.equal(augment.posterize(x, 4), TF.posterize(batch, 4).float() / 255)
    assert torch.allclose(augment.equalize(x), TF.equalize(batch).float() / 255)
    assert torch.allclose(augment.autocontrast(x), TF.autocontrast(batch).float() / 255, atol=1 / 255 + 1e-6)


def test_jitter_composes_brightness_contrast_saturation_and_a_small_hue_shift():
    smooth = torch.rand(4, 3, 1, 1).expand(4, 3, 8, 8) * 0.5 + 0.25  # away from the clamps
    ones, b, c, s = torch.ones(4), torch.full((4,), 1.1), torch.full((4,), 0.9), torch.full((4,), 1.2)
    expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(smooth, 1.1), 0.9), 1.2)
    assert torch.allclose(augment.colour_jitter(smooth, b, c, s, torch.zeros(4)), expected, atol=1e-5)
    assert torch.allclose(augment.colour_jitter(smooth, ones, ones, ones, torch.zeros(4)), smooth, atol=1e-6)
    # Hue turns the chroma plane (YIQ) and keeps each pixel's luma; a whole turn is the identity.
    vivid = torch.tensor([0.7, 0.4, 0.3]).view(1, 3, 1, 1).expand(4, 3, 8, 8)
    shifted = augment.colour_jitter(vivid, ones, ones, ones, torch.full((4,), 0.05))
    assert not torch.allclose(shifted, vivid, atol=0.02)
    assert torch.allclose(augment.to_grey(shifted), augment.to_grey(vivid), atol=1e-5)
    assert torch.allclose(augment.colour_jitter(vivid, ones, ones, ones, torch.ones(4)), vivid, atol=1e-5)


def test_geometry_is_the_identity_when_no_image_moves(batch):
    x = batch.float() / 255
    assert augment.resample(x, torch.eye(3).repeat(len(x), 1, 1)) is x
    turned = augment.resample(x, augment.rotation_matrices(torch.full((len(x),), 90.0)))
    assert torch.allclose(turned[..., 2:-2, 2:-2], torch.rot90(x, 1, (2, 3))[..., 2:-2, 2:-2], atol=1e-4) or \
        torch.allclose(turned[..., 2:-2, 2:-2], torch.rot90(x, -1, (2, 3))[..., 2:-2, 2:-2], atol=1e-4)


def test_the_op_list_is_torchvisions():
    assert len(RANDAUGMENT_OPS) == 14 and RANDAUGMENT_OPS[0] == "identity"
