"""Export a trained checkpoint for serving without this package: torch.export (.pt2), ONNX or TorchScript.

The exported model takes a float32 RGB batch (N, 3, S, S) in [0, 1], S = the checkpoint's image_size:
each image's shorter side resized (bilinear, antialiased, as PIL does) to `loading.resize_size(S)`, then
centre-cropped to S, then scaled to [0, 1] (torchvision's ToTensor). Normalisation happens inside the
model, so a server needs only resize + crop + ToTensor. It returns logits (softmax for probabilities).
The file carries these facts as JSON: the `preprocessing.json` extra file (torch.export and TorchScript) or
the ONNX metadata property "preprocessing". TorchScript is deprecated in PyTorch; it is kept for servers
that still load it.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError, first_line
from ..train import loading
from ..train.checkpoint import atomic_write, load_checkpoint
from ..train.evaluation import load_trained

FORMATS = ("export", "onnx", "torchscript")  # export: torch.export's ExportedProgram in a .pt2 file
SUFFIXES = {"export": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}
# What each format's file holds, as `tuner export` names it: `exported torch.export program: model.pt2`.
FORMAT_NAMES = {"export": "torch.export program", "onnx": "ONNX model", "torchscript": "TorchScript module"}
EXPORT_FORMAT = "tuner.export/1"  # bumped when the metadata's meaning changes, not when the module moves
METADATA_FILE = "preprocessing.json"  # extra file of a .pt2 or TorchScript archive
METADATA_KEY = "preprocessing"  # ONNX metadata_props key
ONNX_OPSET = 18
TORCHSCRIPT_DEPRECATED = ("TorchScript is deprecated in PyTorch (torch.jit.trace, save and load warn so); "
                          "--format export writes a torch.export .pt2 file, loaded with torch.export.load")


class ServingModel(nn.Module):
    """A classifier with its input normalisation built in: [0, 1] images -> logits."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def export_model(model_path: str | Path, fmt: str, out: str | Path) -> dict[str, Any]:
    """Write the checkpoint at `model_path` (run folder, best/ or model.pt) to `out` as `fmt`.

    Returns the metadata embedded in the file (what `read_metadata(out)` gives back). The write is
    atomic: on any failure an existing `out` is left as it was. The file's mode is the one open() would give
    (0644 under umask 0022), so a server running as another user can read it.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    if out.is_dir():
        suggestion = out / f"model{SUFFIXES[fmt]}"
        raise UserError(f"export target {str(out)!r} is a directory; pass a file path such as {str(suggestion)!r}")
    if fmt == "onnx":
        _require_onnx()
    payload = load_checkpoint(model_path)
    serving, metadata = serving_model(payload)
    # Only its shape matters; zeros leave the caller's RNG alone. Batch 2: batch 1 could be specialised.
    example = torch.zeros(2, 3, metadata["image_size"], metadata["image_size"])
    save = {"export": _save_exported_program, "onnx": _save_onnx, "torchscript": _save_torchscript}[fmt]
    save(serving, example, metadata, out)
    return metadata


def serving_model(payload: dict[str, Any]) -> tuple[ServingModel, dict[str, Any]]:
    """The checkpoint's model (CPU, fp32, eval) wrapped with its normalisation, and its metadata."""
    trained = load_trained(payload, torch.device("cpu"))
    config, norm = trained.config, trained.normalization
    serving = ServingModel(trained.model, norm["mean"], norm["std"]).eval()
    size = config.image_size
    metadata = {
        "format": EXPORT_FORMAT,
        "model": config.model,
        "classes": list(payload["classes"]),
        "image_size": size,
        "resize": loading.resize_size(size),
        "interpolation": "bilinear, antialiased",
        "mean": list(norm["mean"]),
        "std": list(norm["std"]),
        "input": "float32 RGB in [0, 1], NCHW",
        "preprocess": f"resize the shorter side to {loading.resize_size(size)} px, centre-crop {size} px, "
                      f"scale to [0, 1] (ToTensor); normalisation is inside the model",
        "output": "logits; softmax for probabilities",
        "weights": payload["weights"],
        "epoch": payload["epoch"],
        "metrics": {k: v for k, v in payload["metrics"].items() if k.startswith(("val_", "test_"))},
    }
    return serving, metadata


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata embedded by `export_model` in a .pt2, ONNX or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no exported model at {str(path)!r}; pass a file written by tuner export")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # .pt2 and TorchScript files are zip archives (so are torch.save checkpoints); ONNX is protobuf.
    text = _zip_metadata(path) if magic == b"PK\x03\x04" else _onnx_metadata(path)
    if not text:
        raise UserError(f"{str(path)!r} has no tuner metadata; export it with tuner export")
    return json.loads(text)


def _zip_metadata(path: Path) -> str:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise UserError(f"{str(path)!r} is a damaged zip archive ({err}); export it again with tuner export") from None
    with archive:
        names = archive.namelist()
        # torch.export.save writes <prefix>/archive_format beside <prefix>/extra/<file>; read the entry
        # directly, without deserialising the program.
        pt2 = [name[:-len("archive_format")] for name in names if name.endswith("archive_format")]
        if pt2:
            entry = f"{pt2[0]}extra/{METADATA_FILE}"
            return archive.read(entry).decode("utf-8") if entry in names else ""
    extra = {METADATA_FILE: ""}
    try:
        with _quiet_jit():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as err:  # a zip that is neither, e.g. a torch.save checkpoint
        raise UserError(f"{str(path)!r} is neither a .pt2 nor a TorchScript file ({first_line(err)[:200]}); "
                        f"pass a file written by tuner export") from None
    return extra[METADATA_FILE]


def _onnx_metadata(path: Path) -> str:
    _require_onnx()
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as err:  # protobuf decode errors have no common public type
        raise UserError(f"{str(path)!r} is not a .pt2, TorchScript or ONNX file ({first_line(err)}); "
                        f"pass a file written by tuner export") from None
    return props.get(METADATA_KEY, "")


def _save_exported_program(serving: ServingModel, example: torch.Tensor, metadata: dict, out: Path) -> None:
    # The batch dimension stays symbolic (batch 2 in the example, any size when served).
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(serving, (example,), dynamic_shapes=({0: batch},))
    extra = {METADATA_FILE: json.dumps(metadata)}
    atomic_write(out, lambda handle: torch.export.save(program, handle, extra_files=extra))


def _save_torchscript(serving: ServingModel, example: torch.Tensor, metadata: dict, out: Path) -> None:
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(serving, example)  # a plain conv net: tracing records every op
        extra = {METADATA_FILE: json.dumps(metadata)}
        atomic_write(out, lambda handle: torch.jit.save(traced, handle, _extra_files=extra))


def _save_onnx(serving: ServingModel, example: torch.Tensor, metadata: dict, out: Path) -> None:
    import onnx

    # The dynamo exporter (torch.export + onnxscript); the batch dimension stays symbolic.
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(serving, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                    input_names=["images"], output_names=["logits"],
                                    opset_version=ONNX_OPSET, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(proto, full_check=True)
    # Serialised in memory and written in one piece: a ResNet is far below protobuf's 2 GB limit.
    atomic_write(out, lambda handle: handle.write(proto.SerializeToString()))


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"ONNX export needs the {' and '.join(missing)} package(s), which are not installed; "
                        f"pip install 'tuner[export]'")


@contextmanager
def _quiet_jit():
    """Hide torch's "`torch.jit.*` is deprecated" FutureWarnings: three two-line warnings from inside torch
    on every TorchScript export; the command line says it once, in one line (TORCHSCRIPT_DEPRECATED)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield
