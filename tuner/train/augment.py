"""Augmentation of whole batches on the training device, with random parameters drawn per image.

The loader only crops and flips (loading.crop_transforms) and hands over uint8 batches; everything else
runs here, vectorised over the batch: on the GPU when the trial has one, and on a CPU still far
cheaper than transforming one image at a time (torchvision's tensor ops cost 0.2-4 ms per small image,
hue alone 0.6 ms at 64 px). Parameters come from a seeded CPU generator, so a batch is augmented the
same way on any device and a resumed run repeats its augmentation.

For `aug_strength` s > 0, in this order, with the ranges of augment_policy.AugmentPolicy:
    rotation        uniform in +- rotation_degrees
    colour jitter   brightness, contrast, saturation factors in 1 +- theirs; hue shift in +- hue turns
    RandAugment     randaugment_ops per image (when there are any) at randaugment_magnitude of 30,
                    torchvision's op list and ranges (shear, translate, rotate, brightness, colour,
                    contrast, sharpness, posterize, solarize, autocontrast, equalize, identity)
Every geometric op (the rotation and RandAugment's shear/translate/rotate) is composed into one affine
resampling of the crop, applied before the colour ops; empty corners are black, as in torchvision.
Hue is shifted by turning the chroma plane in YIQ space, which keeps each pixel's luma: cheap, and
close to torchvision's HSV shift for muted colours, but not equal to it for vivid ones.
`random_erase` (the `random_erasing` hyperparameter) runs after all of this, on the normalised batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .augment_policy import AugmentPolicy

RANDAUGMENT_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
                   "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
BINS = 31  # torchvision's RandAugment magnitude bins: magnitude m of 30 takes the m-th of 31 values
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GREY = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, scaled to [0, 1] and normalised per channel."""
    return _standardize(images.float(), mean, std, scale=1 / 255)


def _standardize(x: torch.Tensor, mean, std, scale: float = 1.0) -> torch.Tensor:
    """Float images in [0, 1 / scale] -> (scale x - mean) / std per channel, in one pass over the pixels."""
    # Every elementwise pass over a 224 px batch costs milliseconds on a CPU, so the scale is folded in.
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.addcmul(-mean / std, x, scale / std)


class BatchAugment:
    """uint8 batch -> augmented, normalised float batch; a policy of strength 0 only normalises."""

    def __init__(self, policy: AugmentPolicy, *, mean, std):
        self.policy, self.mean, self.std = policy, mean, std

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.policy.strength == 0:
            return normalize(images, self.mean, self.std)
        params = draw_params(images.shape[0], self.policy, generator)
        x = resample(images.float(), self._geometry(params))  # still 0-255: linear ops
        x = colour_jitter(x, params["brightness"], params["contrast"], params["saturation"], params["hue"],
                          scale=1 / 255)
        for slot in range(self.policy.randaugment_ops):
            x = self._colour_op(x, params["op"][:, slot], params["sign"][:, slot])
        return _standardize(x, self.mean, self.std)

    def _value(self, low: float, high: float) -> float:
        return low + (high - low) * self.policy.randaugment_magnitude / (BINS - 1)

    def _geometry(self, params) -> torch.Tensor:
        """(N, 3, 3) forward maps in normalised coordinates: jitter rotation, then the RandAugment ops."""
        matrices = rotation_matrices(params["rotation"])
        for slot in range(self.policy.randaugment_ops):
            op, sign = params["op"][:, slot], params["sign"][:, slot]
            step = torch.eye(3).repeat(len(op), 1, 1)
            shear = self._value(0, 0.3) * sign
            shift = 2 * self._value(0, 150 / 331) * sign  # a fraction of the width; [-1, 1] spans 2
            step[:, 0, 1] = torch.where(op == RANDAUGMENT_OPS.index("shear_x"), shear, 0.0)
            step[:, 1, 0] = torch.where(op == RANDAUGMENT_OPS.index("shear_y"), shear, 0.0)
            step[:, 0, 2] = torch.where(op == RANDAUGMENT_OPS.index("translate_x"), shift, 0.0)
            step[:, 1, 2] = torch.where(op == RANDAUGMENT_OPS.index("translate_y"), shift, 0.0)
            degrees = torch.where(op == RANDAUGMENT_OPS.index("rotate"), self._value(0, 30) * sign, 0.0)
            matrices = rotation_matrices(degrees) @ step @ matrices
        return matrices

    def _colour_op(self, x: torch.Tensor, op: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """Apply each image's chosen RandAugment colour op (only to the images that chose it)."""
        factor = (1 + self._value(0, 0.9) * sign).to(x.device)
        bits = 8 - round(self.policy.randaugment_magnitude / ((BINS - 1) / 4))
        threshold = self._value(1.0, 0.0)
        ops = {
            "brightness": lambda x, f: adjust_brightness(x, f),
            "color": lambda x, f: adjust_saturation(x, f),
            "contrast": lambda x, f: adjust_contrast(x, f),
            "sharpness": lambda x, f: adjust_sharpness(x, f),
            "posterize": lambda x, f: posterize(x, bits),
            "solarize": lambda x, f: torch.where(x >= threshold, 1 - x, x),
            "autocontrast": lambda x, f: autocontrast(x),
            "equalize": lambda x, f: equalize(x),
        }
        op = op.to(x.device)
        for name, apply in ops.items():
            chosen = (op == RANDAUGMENT_OPS.index(name)).nonzero().flatten()
            if len(chosen):  # each image has one op, so writing back in place touches no other op's input
                x[chosen] = apply(x[chosen], factor[chosen])
        return x


# torchvision's RandomErasing defaults: the box's share of the area, its aspect ratio, and the tries to fit one.
ERASE_SCALE, ERASE_RATIO, ERASE_TRIES = (0.02, 0.33), (0.3, 3.3), 10


def random_erase(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Erase one random box per image with `probability`, to 0 (the mean colour of a normalised batch).

    torchvision's v2.RandomErasing(p, value=0) for a whole batch at once: each image draws its tries of
    (area, aspect) up front and takes the first box that fits, or none if no try fits, as torchvision does
    one image at a time. Parameters come from the CPU `generator`, so any device erases the same boxes.
    """
    n, _, height, width = x.shape
    erase = torch.rand(n, generator=generator) < probability
    area = height * width * _uniform(*ERASE_SCALE, (n, ERASE_TRIES), generator)
    aspect = torch.exp(_uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), (n, ERASE_TRIES), generator))
    h, w = torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()
    fits = (h < height) & (w < width)
    chosen = fits.long().argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    h, w = h.gather(1, chosen).squeeze(1), w.gather(1, chosen).squeeze(1)
    erase &= fits.any(1)
    top = (torch.rand(n, generator=generator) * (height - h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).long()
    if not erase.any():
        return x
    # The draws stay on the CPU generator; only the n boxes move, and the mask is built where x is.
    top, h, left, w, erase = (t.to(x.device).view(-1, 1, 1) for t in (top, h, left, w, erase))
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & erase
    return x.masked_fill(box.unsqueeze(1), 0.0)


def _uniform(low: float, high: float, shape, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator)


def draw_params(n: int, policy: AugmentPolicy, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every image's random parameters; the order of the draws is part of exact resume, keep it."""
    def uniform(low, high):
        return _uniform(low, high, (n,), generator)

    ops = policy.randaugment_ops
    return {
        "rotation": uniform(-policy.rotation_degrees, policy.rotation_degrees),
        "brightness": uniform(1 - policy.brightness, 1 + policy.brightness),
        "contrast": uniform(1 - policy.contrast, 1 + policy.contrast),
        "saturation": uniform(1 - policy.saturation, 1 + policy.saturation),
        "hue": uniform(-policy.hue, policy.hue),
        "op": torch.randint(len(RANDAUGMENT_OPS), (n, ops), generator=generator),
        "sign": torch.where(torch.rand(n, ops, generator=generator) < 0.5, -1.0, 1.0),
    }


def rotation_matrices(degrees: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) forward maps in normalised coordinates turning each image by its `degrees`."""
    radians = degrees * math.pi / 180
    cos, sin = torch.cos(radians), torch.sin(radians)
    matrices = torch.eye(3).repeat(len(degrees), 1, 1)
    matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 0], matrices[:, 1, 1] = cos, -sin, sin, cos
    return matrices


def resample(x: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """Warp every image by its forward map (square images, normalised coordinates); skip identities."""
    moved = (forward - torch.eye(3)).abs().flatten(1).amax(1) > 1e-6
    if not moved.any():
        return x
    theta = torch.linalg.inv(forward)[:, :2].to(x.device, x.dtype)  # grid_sample maps output -> input
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (other + _per_image(factor) * (x - other)).clamp(0, 1)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of float images, ITU-R 601 as torchvision's rgb_to_grayscale."""
    r, g, b = _GREY.tolist()
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]  # 4x faster than an einsum on a CPU


def adjust_brightness(x, factor):
    """torchvision's adjust_brightness on float images in [0, 1], one factor per image."""
    return (x * _per_image(factor)).clamp(0, 1)


def adjust_contrast(x, factor):
    """torchvision's adjust_contrast on float images in [0, 1], one factor per image."""
    return _blend(x, to_grey(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    """torchvision's adjust_saturation on float images in [0, 1], one factor per image."""
    return _blend(x, to_grey(x), factor)


def colour_jitter(x, brightness, contrast, saturation, hue, scale: float = 1.0) -> torch.Tensor:
    """Brightness, contrast, saturation and hue as one colour matrix and offset per image, clamped once.

    Each of the four is linear in the colour, so composing them costs one pass over the pixels instead
    of four (torchvision clamps after each; this clamps at the end). `x` in [0, 1 / scale] gives [0, 1].
    """
    n = len(brightness)
    grey = _GREY.view(1, 3).expand(n, 3)
    saturate = saturation.view(n, 1, 1) * torch.eye(3) + (1 - saturation).view(n, 1, 1) * grey.view(n, 1, 3)
    matrices = (contrast * brightness).view(n, 1, 1) * _hue_matrices(hue) @ saturate
    # Contrast pulls towards the mean grey of the brightened image; grey stays grey under the rest.
    # The mean grey is the grey of the channel means: one cheap reduction, no grey image.
    offset = (1 - contrast) * brightness * scale * (x.mean(dim=(2, 3)).cpu().float() @ _GREY)
    n, c, h, w = x.shape
    matrices, offset = (scale * matrices).to(x.device, x.dtype), offset.view(n, 1, 1).to(x.device, x.dtype)
    return torch.baddbmm(offset, matrices, x.reshape(n, c, h * w)).view(n, c, h, w).clamp_(0, 1)


def _hue_matrices(turns: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) RGB maps that rotate the chroma plane (I, Q of YIQ) by `turns` of the colour wheel."""
    angle = -2 * math.pi * turns  # the sign that matches torchvision's adjust_hue
    rotate = torch.zeros(len(turns), 3, 3)
    rotate[:, 0, 0] = 1
    rotate[:, 1, 1], rotate[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
    rotate[:, 2, 1], rotate[:, 2, 2] = torch.sin(angle), torch.cos(angle)
    return torch.linalg.inv(_RGB_TO_YIQ) @ rotate @ _RGB_TO_YIQ


def adjust_sharpness(x, factor):
    """PIL's sharpness: blend with a 3x3 smoothed copy whose border pixels are left as they are."""
    # PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (3x3 box sum + 4 * centre) / 13;
    # the box sum as row then column sums of shifted slices is 4x faster than avg_pool2d on a CPU.
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = (box + 4 * x[..., 1:-1, 1:-1]) / 13
    return _blend(x, smooth, factor)


def posterize(x, bits: int):
    """torchvision's posterize (keep `bits` bits of each uint8 value) on float images in [0, 1]."""
    step = 2 ** (8 - bits)
    return torch.floor(x * 255 / step) * step / 255


def autocontrast(x):
    """torchvision's autocontrast: stretch each image's channels to [0, 1]; flat channels stay."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-8), 1.0)
    low = torch.where(high > low, low, 0.0)
    return ((x - low) * scale).clamp(0, 1)


def equalize(x):
    """Histogram equalisation per image and channel, as torchvision computes it on uint8 values."""
    n, c, h, w = x.shape
    values = (x * 255).round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, values, torch.ones_like(values, dtype=torch.float))
    last = hist.gather(1, (values.amax(1, keepdim=True)))  # count of the largest value present
    step = torch.div(hist.sum(1, keepdim=True) - last, 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1),
                    rounding_mode="floor")
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp(0, 255)
    equalized = lut.gather(1, values) / 255
    same = (step == 0).expand_as(equalized)  # one value only: torchvision leaves the channel alone
    return torch.where(same, values / 255, equalized).view(n, c, h, w)
