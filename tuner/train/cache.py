"""The node-local cache: work that does not change between epochs or trials, done once per node.

    $TUNER_CACHE (default ~/.cache/tuner)/
        data/<hash>/       datasets fetched from a URI (storage.local_data)
        images/<key>/      every image of a split decoded once and resized: pixels.u8 + index.npy
        features/<key>/    a frozen backbone's features per image and view: features.f32 + shape.json
        probes/<key>/      the linear probe fitted on a bank of features: entry.pt (weight, bias, l2, cv_acc)
        compute/<key>/     the compute probe's seconds a step per precision and layout (precision.py)

A key is a hash of everything an entry depends on (for images: each file's path, size and mtime, and
the resize; for features also the model, its weights' hash, the image size, the views and the
precision), so changed data, model, weights or size can never reuse a stale entry. An entry is built
in a temporary folder and renamed into place under a node-wide lock: trials starting together build it
once, and an interrupted build is never taken for a finished one. `tuner cache clear` empties it.
Plain PyTorch and NumPy: nothing here knows about Ray.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

KINDS = ("data", "images", "features", "probes", "compute")
IMAGES_FORMAT = "tuner.images/1"  # bump when the layout or the decoding changes
FEATURES_FORMAT = "tuner.features/1"
PROBES_FORMAT = "tuner.probes/1"  # bump when the probe's fit changes its answer (probe.py)


def cache_root() -> Path:
    """$TUNER_CACHE, else ~/.cache/tuner."""
    return Path(os.environ.get("TUNER_CACHE", Path.home() / ".cache" / "tuner")).expanduser()


def key_of(*parts) -> str:
    """A short stable hash of JSON-able `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_identity(paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of each file: any edit or replacement changes it."""
    identity = []
    for path in paths:
        stat = os.stat(path)
        identity.append((path, stat.st_size, stat.st_mtime_ns))
    return identity


@contextmanager
def node_lock(path: Path):
    """An exclusive lock shared by every process on this node (trials starting at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(folder)` into a temporary folder and renamed unless it already exists."""
    if target.is_dir():
        return target
    with node_lock(target.with_suffix(".lock")):
        if target.is_dir():  # another trial built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            build(staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


# --- decoded images ----------------------------------------------------------------------------


class DecodedImages:
    """The images of one list, decoded and resized once: image i as a uint8 (3, H, W) tensor.

    Backed by a memory-mapped file, so loader workers and concurrent trials share the OS page cache;
    the file is opened lazily in each process (the object pickles as its folder).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.index = np.load(folder / "index.npy")  # (N, 3): byte offset, height, width
        self._pixels = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        offset, height, width = (int(v) for v in self.index[i])
        pixels = np.array(self._pixels[offset:offset + height * width * 3])  # a private, writable copy
        return torch.from_numpy(pixels).view(height, width, 3).permute(2, 0, 1)

    def __getstate__(self):
        return {"folder": self.folder, "index": self.index, "_pixels": None}


def decoded_images(paths: list[str], short_side: int, *, threads: int = 4) -> DecodedImages:
    """The images at `paths` as RGB, resized so the shorter side is `short_side`: built once per node.

    The resize is the eval transform's first step (torchvision's Resize on the PIL image), so a centre
    crop of a cached image equals the uncached eval transform exactly.
    """
    key = key_of(IMAGES_FORMAT, short_side, file_identity(paths))

    def build(folder: Path) -> None:
        from torchvision.transforms import v2

        resize = v2.Resize(short_side)

        def decode(path: str) -> np.ndarray:
            with Image.open(path) as image:
                return np.asarray(resize(image.convert("RGB")))

        index = np.zeros((len(paths), 3), dtype=np.int64)
        offset = 0
        with open(folder / "pixels.u8", "wb") as out, ThreadPoolExecutor(threads) as pool:
            for i, pixels in enumerate(pool.map(decode, paths)):  # PIL releases the GIL while decoding
                out.write(pixels.tobytes())
                index[i] = offset, pixels.shape[0], pixels.shape[1]
                offset += pixels.size
        np.save(folder / "index.npy", index)

    return DecodedImages(publish(cache_root() / "images" / key, build))


# --- frozen-backbone features ------------------------------------------------------------------


class FeatureBank:
    """Features of a frozen backbone: (images, views, dim) float32, memory-mapped, read-only."""

    def __init__(self, folder: Path):
        self.folder = folder
        shape = tuple(json.loads((folder / "shape.json").read_text())["shape"])
        self.array = np.memmap(folder / "features.f32", dtype=np.float32, mode="r", shape=shape)

    @property
    def views(self) -> int:
        return self.array.shape[1]

    def gather(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The (len(images), dim) features of view views[k] of image images[k]."""
        return torch.from_numpy(np.array(self.array[images.numpy(), views.numpy()]))


def feature_bank(key: str, shape: tuple[int, int, int], compute: Callable[[np.ndarray], None]) -> FeatureBank:
    """The bank stored under `key`; if absent, `compute(array)` fills a new (images, views, dim) array."""

    def build(folder: Path) -> None:
        array = np.memmap(folder / "features.f32", dtype=np.float32, mode="w+", shape=shape)
        compute(array)
        array.flush()
        del array
        (folder / "shape.json").write_text(json.dumps({"shape": list(shape)}))

    return FeatureBank(publish(cache_root() / "features" / key, build))


# --- fitted probes ----------------------------------------------------------------------------


def cached_tensors(kind: str, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """(the dict of tensors and numbers stored under kind/key, whether this call computed it).

    `compute()` runs only when the entry is absent, under the node lock, so trials starting together
    compute it once; the others wait and read it. Loaded with weights_only=True: no pickle.
    """
    computed = False

    def build(folder: Path) -> None:
        nonlocal computed
        torch.save(compute(), folder / "entry.pt")
        computed = True

    folder = publish(cache_root() / kind / key, build)
    return torch.load(folder / "entry.pt", weights_only=True), computed


# --- listing and clearing ----------------------------------------------------------------------


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cache_usage() -> dict[str, tuple[int, int]]:
    """{kind: (entries, bytes)} of the node cache."""
    usage = {}
    for kind in KINDS:
        folder = cache_root() / kind
        entries = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []
        usage[kind] = (len(entries), sum(_size(p) for p in entries))
    return usage


def clear_cache(kinds: tuple[str, ...] = KINDS) -> tuple[int, int]:
    """Delete the cache entries of `kinds`; returns (entries, bytes) removed.

    Each entry is removed under its lock, so a trial that is building it right now finishes first.
    """
    removed = freed = 0
    for kind in kinds:
        folder = cache_root() / kind
        if not folder.is_dir():
            continue
        for entry in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            with node_lock(entry.with_suffix(".lock")):
                freed += _size(entry)
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    return removed, freed
