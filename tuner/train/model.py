"""Model surgery: build a ResNet, load its weights, freeze by stage, build optimizer parameter groups.

Stages, from the input upwards: stem (conv1 + bn1), layer1 .. layer4, then the head (fc).
`unfreeze_depth` d trains the head plus the top d backbone stages: 0 = feature extraction,
4 = every residual stage, 5 = everything.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import socket
import sys
import urllib.parse
import urllib.request
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import get_model_weights
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..errors import UserError, first_line
from .config import MODELS, STAGES, TrainConfig

# Every batch-norm layer torch has (its common base class is private).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm1d,
               nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)

_ARCHITECTURES = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}
_STAGE_PREFIXES = {"stem": ("conv1.", "bn1."), **{f"layer{i}": (f"layer{i}.",) for i in range(1, 5)}}
# Our checkpoints mark themselves so `weights=PATH` and `predict` know what they hold.
CHECKPOINT_FORMAT = "tuner.checkpoint/1"  # the marker every release has written: old checkpoints still load


class DropoutLinear(nn.Linear):
    """A Linear head with dropout on its input; its state_dict keys stay torchvision's (fc.weight, fc.bias)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0):
        super().__init__(in_features, out_features)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout(x, self.dropout, self.training))


class TransferResNet(ResNet):
    """torchvision's ResNet that keeps frozen stages' batch norm in eval mode through `train()`.

    `trained_depth` (how many top stages train) and `bn_mode` decide which batch-norm layers may update
    their running statistics; every `model.train()` call re-applies that, so no caller can forget it.
    """

    trained_depth: int = 0
    bn_mode: str = "train"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled backbone output that the head sees: forward(x) == fc(features(x))."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def train(self, mode: bool = True) -> TransferResNet:
        super().train(mode)
        if mode:
            for stage in STAGES:
                if self.bn_mode == "frozen" or stage not in trained_stages(self.trained_depth):
                    for module in stage_modules(self, stage):
                        for bn in module.modules():
                            if isinstance(bn, BATCH_NORMS):
                                bn.eval()
        return self


def trained_stages(depth: int) -> tuple[str, ...]:
    """The backbone stages trained at `depth`, e.g. 2 -> ("layer3", "layer4")."""
    return STAGES[len(STAGES) - depth :] if depth > 0 else ()


def stage_modules(model: ResNet, stage: str) -> list[nn.Module]:
    return [model.conv1, model.bn1] if stage == "stem" else [getattr(model, stage)]


def stage_of(param_name: str) -> str:
    """"layer3.1.conv2.weight" -> "layer3"; "fc.bias" -> "head"."""
    if param_name.startswith("fc."):
        return "head"
    for stage, prefixes in _STAGE_PREFIXES.items():
        if param_name.startswith(prefixes):
            return stage
    raise ValueError(f"parameter {param_name} belongs to no stage")


def build_model(config: TrainConfig, num_classes: int) -> tuple[TransferResNet, dict[str, Any]]:
    """The configured ResNet with its weights loaded and a new head; returns (model, weights provenance)."""
    if config.model not in MODELS:
        raise UserError(f"model={config.model!r} is not supported; choose one of {', '.join(MODELS)}")
    backbone, provenance, rng_state = _backbone(config.model, config.weights, config.seed)
    model = copy.deepcopy(backbone)
    torch.set_rng_state(rng_state)  # the new head is drawn exactly as right after a fresh build
    model.fc = DropoutLinear(model.fc.in_features, num_classes, config.dropout)
    set_trained_depth(model, 0, config.bn_mode)
    return model, dict(provenance)


_BACKBONES: OrderedDict[tuple, tuple[TransferResNet, dict[str, Any], torch.Tensor]] = OrderedDict()
KEEP_BACKBONES = 2  # a process that runs trial after trial (Ray's reused actors) keeps the last few


def _backbone(name: str, weights: str, seed: int) -> tuple[TransferResNet, dict[str, Any], torch.Tensor]:
    """A built and loaded backbone, with the RNG state that followed its build; kept for the next trial.

    Initialising a ResNet-50 and reading its weights file take most of a second; copying a kept one
    takes a few milliseconds, which is much of what makes one trial follow another quickly.
    """
    # Keyed by the weights file's identity too: a replaced file or another TORCH_HOME is a new backbone.
    path = imagenet_cache_path(name)[1] if weights == "imagenet" else Path(weights).expanduser()
    source = (str(path), path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else str(path)
    key = (name, weights, source, seed)
    if key not in _BACKBONES:
        torch.manual_seed(seed)  # random init and the new head are the same in every run with this seed
        block, layers = _ARCHITECTURES[name]
        model = TransferResNet(block, layers)
        provenance = load_backbone_weights(model, name, weights)
        provenance["state_sha256"] = state_sha256(model.state_dict())  # what lean checkpoints apply to
        _BACKBONES[key] = (model, provenance, torch.get_rng_state())
        while len(_BACKBONES) > KEEP_BACKBONES:
            _BACKBONES.popitem(last=False)
    _BACKBONES.move_to_end(key)
    return _BACKBONES[key]


def load_backbone_weights(model: ResNet, name: str, weights: str) -> dict[str, Any]:
    """Load `weights` ("imagenet", "none" or a file path) into `model`; return what was loaded."""
    if weights == "none":
        return {"name": "none", "description": "random initialisation", "sha256": None}
    if weights == "imagenet":
        state, path, label = _imagenet_state_dict(name)
    else:
        path = Path(weights).expanduser()
        state, label = _file_state_dict(path, name), f"file:{path.name}"
    _load_backbone_state(model, state, name, path)
    return {"name": label, "path": str(path), "sha256": file_sha256(path)}


def imagenet_cache_path(name: str) -> tuple[Any, Path]:
    """torchvision's default ImageNet weights for `name` and where its cache keeps the file."""
    weights = get_model_weights(name).DEFAULT
    filename = weights.url.rsplit("/", 1)[-1]
    return weights, Path(torch.hub.get_dir()) / "checkpoints" / filename


def _imagenet_state_dict(name: str) -> tuple[dict, Path, str]:
    """torchvision's ImageNet weights for `name`: from torch's hub cache, else downloaded into it.

    The cache is asked first and the download tried only where its host (or proxy) answers, so offline
    nothing is printed that reads as a download in progress: the caller's UserError says what happens.
    """
    weights, path = imagenet_cache_path(name)
    unreachable = None if path.is_file() else unreachable_reason(weights.url)
    if unreachable is None:
        if not path.is_file():
            print(f"downloading ImageNet weights for {name} ({weights}) into {path}", file=sys.stderr, flush=True)
        try:
            # torchvision's own download-and-cache path (TORCH_HOME/hub/checkpoints), hash checked on download;
            # its `Downloading: "https://..."` line on stdout is replaced by ours above.
            with contextlib.redirect_stdout(io.StringIO()):
                state = torch.hub.load_state_dict_from_url(
                    weights.url, progress=False, check_hash=True, weights_only=True, map_location="cpu"
                )
            return state, path, f"imagenet:{weights.name}"
        except OSError as err:  # DNS failure, HTTP error, a dead proxy, disk full
            unreachable = str(getattr(err, "reason", err))
    raise UserError(
        f"ImageNet weights for {name} ({weights}) are not in the cache at {path} and could not be "
        f"downloaded ({unreachable}); put the file there, pass weights=PATH to a "
        f"local file, or use weights=none for random initialisation"
    )


def unreachable_reason(url: str, timeout: float = 5.0) -> str | None:
    """None when a connection to `url`'s host, or to the proxy urllib would use for it, opens; else why not."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        target = urllib.parse.urlsplit(proxy if "//" in proxy else f"//{proxy}")
        host, port = target.hostname, target.port or 80
    else:
        host, port = parts.hostname, parts.port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:  # no DNS, no route, refused, timed out
        return f"{host}:{port} is not reachable: {err.strerror or err}"


def _file_state_dict(path: Path, name: str) -> dict:
    if not path.is_file():
        raise UserError(
            f"weights file {str(path)!r} does not exist; pass an existing state_dict file, "
            f"weights=imagenet or weights=none"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zip, refused globals: all mean "not usable"
        raise UserError(
            f"weights file {str(path)!r} is not a loadable PyTorch state_dict ({first_line(err)}); "
            f"pass a torchvision or tuner checkpoint"
        ) from None
    if isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT:
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(
            f"weights file {str(path)!r} does not hold a state_dict of tensors; "
            f"pass a torchvision or tuner checkpoint for {name}"
        )
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _load_backbone_state(model: ResNet, state: dict, name: str, path: Path) -> None:
    """Load every backbone tensor strictly; the head stays new (its classes are ours)."""
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = sorted(k for k in own if not k.startswith("fc.") and k not in backbone)
    unexpected = sorted(k for k in backbone if k not in own)
    wrong_shape = sorted(k for k in backbone if k in own and own[k].shape != backbone[k].shape)
    if missing or unexpected or wrong_shape:
        problems = [
            f"{len(keys)} {what} (first: {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", wrong_shape))
            if keys
        ]
        raise UserError(
            f"weights file {str(path)!r} does not fit {name}: {', '.join(problems)} keys; "
            f"was it saved from another model? Set model= to the architecture it came from"
        )
    model.load_state_dict(backbone, strict=False)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of a model's tensors (names, dtypes, shapes, bytes): the identity of starting weights,
    random init included, that a checkpoint of only the trained tensors applies to."""
    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def trained_keys(model: nn.Module, depth: int) -> list[str]:
    """The state keys training at `depth` can change: the head's and the trained stages' parameters and
    batch-norm statistics. Everything else is the starting weights, bit for bit (frozen stages get no
    gradients and their batch norm stays in eval mode)."""
    active = set(trained_stages(depth)) | {"head"}
    return [key for key in model.state_dict() if stage_of(key) in active]


def apply_trained_state(model: nn.Module, provenance: dict[str, Any], trained: dict[str, torch.Tensor],
                        base_sha256: str | None, shown: str) -> None:
    """Load a checkpoint's trained tensors onto `model`, which must hold the starting weights they apply to.

    A checkpoint written before lean checkpoints (no `base_sha256`) holds every tensor and loads as it is.
    """
    if base_sha256 is not None and base_sha256 != provenance.get("state_sha256"):
        raise UserError(f"{shown} holds the trained part of a model whose starting weights had sha256 "
                        f"{base_sha256[:12]}, but weights={provenance.get('name')} now give "
                        f"{str(provenance.get('state_sha256'))[:12]}; restore the weights file it was trained from")
    unknown = sorted(set(trained) - set(model.state_dict()))
    if unknown:
        raise UserError(f"{shown} does not fit this model: {len(unknown)} unknown keys (first: {unknown[0]})")
    model.load_state_dict(trained, strict=base_sha256 is None)


def full_model_state(state: dict[str, Any], shown: str) -> dict[str, torch.Tensor]:
    """The whole evaluated model of a lean trainer checkpoint: its starting weights rebuilt from its config,
    its trained tensors applied (what best/model.pt holds, so that it serves without the weights file).
    With ema_decay on, the trained tensors are the moving average's: what was validated."""
    model, provenance = build_model(TrainConfig(**state["config"]), len(state["classes"]))
    trained = state["ema"] if state.get("ema") and state.get("ema_updates") else state["model"]
    apply_trained_state(model, provenance, trained, state.get("base_sha256"), shown)
    return model.state_dict()


def normalization(name: str) -> dict[str, list[float]]:
    """Mean and std that the ImageNet weights of `name` were trained with (from their metadata)."""
    preset = get_model_weights(name).DEFAULT.transforms()
    return {"mean": list(preset.mean), "std": list(preset.std)}


def set_trained_depth(model: TransferResNet, depth: int, bn_mode: str) -> None:
    """Train the head plus the top `depth` stages; freeze the rest (no gradients, batch norm in eval)."""
    model.trained_depth, model.bn_mode = depth, bn_mode
    active = set(trained_stages(depth)) | {"head"}
    for param_name, param in model.named_parameters():
        param.requires_grad_(stage_of(param_name) in active)
    model.train(model.training)


def param_groups(model: nn.Module, config: TrainConfig, stages: tuple[str, ...]) -> list[dict]:
    """Optimizer groups for `stages`: one per stage for decayed weights, one for its batch-norm/bias.

    Each group carries its stage name and `base_lr` so the schedule can scale it.
    Batch-norm and bias parameters (1-D) get no weight decay: decaying them only hurts.
    """
    rates = config.stage_lrs()
    groups = []
    for stage in stages:
        params = [(n, p) for n, p in model.named_parameters() if stage_of(n) == stage and p.requires_grad]
        decay = [p for n, p in params if p.ndim > 1]
        no_decay = [p for n, p in params if p.ndim <= 1]
        for members, weight_decay in ((decay, config.weight_decay), (no_decay, 0.0)):
            if members:
                groups.append(
                    {"params": members, "stage": stage, "lr": rates[stage], "base_lr": rates[stage],
                     "weight_decay": weight_decay}
                )
    return groups


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, nesterov=config.nesterov, foreach=True)
    # The fused kernel (CPU and CUDA) steps every parameter in one pass: 2.6x faster than foreach
    # for layer3 + layer4 of a ResNet-50 on a 2-core CPU (73 -> 28 ms a step).
    return torch.optim.AdamW(groups, fused=True)
