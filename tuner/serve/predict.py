"""Load a trained checkpoint and classify images with the preprocessing it was trained with."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..train import loading
from ..train.checkpoint import load_checkpoint
from ..train.engine import resolve_device
from ..train.evaluation import load_trained


class Predictor:
    """A trained model (fp32) plus its class names and eval transform, ready for `predict`."""

    def __init__(self, checkpoint: str | Path, device: str = "auto"):
        trained = load_trained(load_checkpoint(checkpoint), resolve_device(device))
        self.model, self.device = trained.model, trained.device
        self.classes: list[str] = trained.classes
        self.weights = trained.weights
        self.transform = loading.eval_transforms(image_size=trained.config.image_size, **trained.normalization)

    @torch.no_grad()
    def probabilities(self, paths: list[str | Path]) -> torch.Tensor:
        """Class probabilities, one row per image."""
        batch = torch.stack([self.transform(open_rgb(p)) for p in paths]).to(self.device)
        return self.model(batch).float().softmax(dim=1).cpu()

    def predict(self, paths: list[str | Path], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """The `top_k` (class, probability) pairs of each image, most likely first."""
        probs = self.probabilities(paths)
        values, indices = probs.topk(min(top_k, len(self.classes)), dim=1)
        return [
            [(self.classes[i], float(v)) for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
        ]


def open_rgb(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {str(path)!r} does not exist; pass paths to image files")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"image {str(path)!r} cannot be read ({err}); pass a PNG, JPEG or other image file") from None
