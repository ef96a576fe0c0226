"""The augmentation policy: what `aug_strength` s in [0, 1] sets, the one place its numbers live.

Framework-free, in the manner of big_transfer's bit_hyperrule.py. The loader (loading.crop_transforms:
crop and flip, per image) and the training device (augment.BatchAugment: rotation, colour jitter and
RandAugment, per batch) both read an AugmentPolicy, and README's "Augmentation strength" table is
rendered from it (readme_table; a test compares the two), so code and prose cannot drift apart.

Every range grows linearly with s, from nothing at s = 0 (the eval transform: resize + centre crop)
to s = 1, whose crop goes down to torchvision's default 8% of the image. RandAugment joins at s >= 0.5.
The seed tutorial's augmentation (RandomResizedCrop(224), flip, RandomRotation(15), ColorJitter(0.2,
0.2)) is roughly s = 0.5: the same rotation and jitter, but its crops go down to 8% of the image where
s = 0.5 keeps at least half, and it has no RandAugment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError

README_STRENGTHS = (0.0, 0.25, 0.5, 1.0)  # the rows of README's table


@dataclass(frozen=True)
class AugmentPolicy:
    """The augmentation one `aug_strength` gives; build it with AugmentPolicy.from_strength."""

    strength: float
    crop_scale: tuple[float, float] | None  # RandomResizedCrop's area range; None: resize + centre crop
    flip: float  # probability of a horizontal flip
    rotation_degrees: float  # uniform in +- this
    brightness: float  # brightness, contrast and saturation factors uniform in 1 +- these
    contrast: float
    saturation: float
    hue: float  # shift uniform in +- this, in turns of the colour wheel
    randaugment_ops: int  # ops per image from torchvision's 14; 0 = no RandAugment
    randaugment_magnitude: int  # of torchvision's 30 (31 bins); 0 when there is no RandAugment

    @classmethod
    def from_strength(cls, aug_strength: float) -> AugmentPolicy:
        if not 0 <= aug_strength <= 1:
            raise UserError(f"aug_strength must be >= 0 and <= 1, but got {aug_strength!r}")
        s = aug_strength
        randaugment = s >= 0.5  # milder strengths stay close to the seed tutorial's plain jitter
        return cls(
            strength=s,
            crop_scale=None if s == 0 else (1 - 0.92 * s, 1.0),  # s = 1 reaches torchvision's 0.08
            flip=0.0 if s == 0 else 0.5,
            rotation_degrees=30 * s,
            brightness=0.4 * s,
            contrast=0.4 * s,
            saturation=0.4 * s,
            hue=0.1 * s,
            randaugment_ops=2 if randaugment else 0,  # torchvision's default number of ops
            randaugment_magnitude=math.floor(9 * s + 0.5) if randaugment else 0,  # halves round up: 0.5 -> 5
        )


NO_AUGMENTATION = AugmentPolicy.from_strength(0.0)  # evaluation's: resize + centre crop, no randomness


def readme_table(strengths=README_STRENGTHS) -> list[str]:
    """The Markdown lines of README's "Augmentation strength" table, one row per strength."""
    lines = [
        "| s | crop scale | flip | rotation | colour jitter (brightness, contrast, saturation / hue) | RandAugment |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in strengths:
        lines.append("| " + " | ".join([_number(s), *_row(AugmentPolicy.from_strength(s))]) + " |")
    return lines


def _row(policy: AugmentPolicy) -> list[str]:
    if policy.crop_scale is None:
        return ["none: resize + centre crop, deterministic", "-", "-", "-", "-"]
    low, high = policy.crop_scale
    # One number for brightness, contrast and saturation while they agree, as they do today.
    jitter = ", ".join(dict.fromkeys(_number(v) for v in (policy.brightness, policy.contrast, policy.saturation)))
    randaugment = (f"{policy.randaugment_ops} ops, magnitude {policy.randaugment_magnitude}"
                   if policy.randaugment_ops else "-")
    return [f"({_number(low)}, {_number(high)})", _number(policy.flip), f"±{_number(policy.rotation_degrees)}°",
            f"{jitter} / {_number(policy.hue)}", randaugment]


def _number(value: float) -> str:
    return f"{round(value, 4):g}"  # 1 - 0.92 is 0.07999999999999996 in floats; the table says 0.08
