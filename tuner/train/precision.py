"""How a run computes, precision and memory layout, chosen by measuring this node rather than assumed.

Speed choices that suit one machine are wrong on another: on a Xeon with AVX-512 but no bf16 units,
oneDNN still says bf16 is "supported" and emulates it, so bf16 autocast ran at 0.6x fp32 there
(ResNet-50, 64 px, batch 32). So on a CPU `precision=auto` offers bf16 only where the CPU has bf16
instructions (AVX512-BF16, AMX, Arm's BF16), `memory_format=auto` offers channels_last and contiguous,
and when more than one candidate is left a probe times a few training steps of each for the run's own
model, image size, batch, trained depth and thread count, and the fastest wins. The answer is kept in
the node cache ($TUNER_CACHE/compute/<key>/, keyed by CPU model, torch version and those sizes), so later
runs and trials on the node reuse it. On CUDA: bf16 where the GPU has bf16 tensor cores (compute
capability 8.0, Ampere, and later), else fp16 with a grad scaler, channels_last (the cuDNN layout for
tensor cores); nothing to measure. `torch.cuda.is_bf16_supported()` is not the test: by default it also
says True where bf16 is only emulated (T4, V100), slower than fp16 there.

torch.compile is not probed: compiling a ResNet-50 takes 60-90 s on a CPU (bench/trainer.py --compile),
more than a probe may cost and often more than a trial; it stays the explicit `compile` hyperparameter.
Plain PyTorch: nothing here knows about Ray.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from . import cache
from .checkpoint import save_json
from .config import TrainConfig
from .model import set_trained_depth

PROBE_FORMAT = "tuner.compute-probe/1"  # bump when what the probe measures changes
PROBE_STEPS = 3  # timed steps per candidate, after one warm-up step; the median counts
PROBE_FILE = "probe.json"  # in the node cache: compute/<key>/probe.json
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


@dataclass(frozen=True)
class ComputeChoice:
    """The precision and memory layout a run trains in, and why."""

    precision: str  # fp32, bf16 or fp16
    memory_format: str  # channels_last or contiguous
    reason: str
    seconds: dict[str, float] | None = None  # measured seconds a step per candidate "precision/layout"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return DTYPES[self.precision]

    @property
    def torch_memory_format(self) -> torch.memory_format:
        return LAYOUTS[self.memory_format]

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.precision}, {self.memory_format} ({self.reason})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 instruction sets that torch can use (empty: bf16 would be emulated, slowly)."""
    flags = cpu_flags()
    units = [unit for unit, flag in (("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16")) if flag in flags]
    if platform.machine() in ("aarch64", "arm64") and "bf16" in flags:
        units.append("Arm BF16")
    return units


def cpu_flags() -> set[str]:
    """The CPU's feature flags, by the kernel's names (avx512_bf16, amx_bf16; Arm: bf16): torch's public
    torch.cpu.get_capabilities() where this torch has it, else /proc/cpuinfo (Linux); empty elsewhere."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return {name for name, value in capabilities().items() if value is True}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86, Arm
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16, AMX, Arm BF16). oneDNN's own answer
    (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) is also True where it only emulates bf16."""
    return bool(cpu_bf16_units())


def describe_machine(device: torch.device | str = "cpu") -> str:
    """One line naming the hardware a figure came from: CPU model and bf16 units, or the GPU; torch."""
    device = torch.device(device)
    if device.type == "cuda":
        where = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        units = cpu_bf16_units()
        flags = [f"{unit} {'yes' if unit in units else 'no'}" for unit in ("AVX512-BF16", "AMX")]
        flags += ["Arm BF16 yes"] if "Arm BF16" in units else []
        where = f"CPU {cpu_model()} ({os.cpu_count()} cores, {', '.join(flags)})"
    return f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def choose_compute(config: TrainConfig, model: nn.Module, device: torch.device, *, num_classes: int) -> ComputeChoice:
    """The run's precision and memory layout: as configured, or (auto) the fastest measured candidate."""
    precisions, precision_why = _precision_candidates(config.precision, device)
    layouts = list(LAYOUTS) if config.memory_format == "auto" else [config.memory_format]
    if device.type == "cuda" and config.memory_format == "auto":
        layouts = ["channels_last"]  # cuDNN's tensor-core layout; nothing to measure
    candidates = [(p, m) for p in precisions for m in layouts]
    if len(candidates) == 1:
        why = precision_why + ("" if config.memory_format == "auto" else "; memory_format as configured")
        return ComputeChoice(precisions[0], layouts[0], why)
    seconds = _cached_probe(config, model, device, candidates, num_classes)
    precision, layout = min(candidates, key=lambda c: seconds[f"{c[0]}/{c[1]}"])
    slowest = max(seconds.values())
    reason = (f"measured on this node: {min(seconds.values()) * 1000:.0f} ms a step against "
              f"{slowest * 1000:.0f} ms for the slowest of {', '.join(seconds)}; {precision_why}")
    return ComputeChoice(precision, layout, reason, seconds)


def _precision_candidates(precision: str, device: torch.device) -> tuple[list[str], str]:
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise UserError("precision=fp16 needs a CUDA GPU; use precision=bf16 or fp32 on the CPU")
        return [precision], "as configured"
    if device.type == "cuda":
        return cuda_precisions(torch.cuda.get_device_capability(device))
    units = cpu_bf16_units()
    if units:
        return ["fp32", "bf16"], f"the CPU has bf16 units ({', '.join(units)})"
    return ["fp32"], "the CPU has no bf16 units (AVX512-BF16, AMX or Arm BF16): bf16 would be emulated"


def cuda_precisions(capability: tuple[int, int]) -> tuple[list[str], str]:
    """The precision for a GPU of this compute capability, and why: bf16 from 8.0 (Ampere) on, where the
    tensor cores compute it; before, bf16 is emulated (slower than fp16), so fp16 with a grad scaler."""
    major, minor = capability
    if (major, minor) >= (8, 0):
        return ["bf16"], f"the GPU has bf16 tensor cores (compute capability {major}.{minor})"
    return ["fp16"], (f"the GPU has no bf16 tensor cores (compute capability {major}.{minor}, under 8.0): "
                      f"fp16 with a grad scaler")


def probe_key(config: TrainConfig, device: torch.device, candidates: list[tuple[str, str]], num_classes: int) -> str:
    """Everything a probe's answer depends on."""
    return cache.key_of(PROBE_FORMAT, cpu_model(), platform.machine(), torch.__version__, str(device),
                        torch.get_num_threads(), config.model, config.image_size, config.batch_size,
                        _probe_depth(config), num_classes, candidates)


def _probe_depth(config: TrainConfig) -> int | str:
    """What the run's steps cost: the trained depth, or the backbone's forward alone for head-only runs
    on cached features (their cost is computing the features)."""
    if config.unfreeze_depth == 0 and config.feature_cache:
        return "features"
    return config.unfreeze_depth


def _cached_probe(config, model, device, candidates, num_classes) -> dict[str, float]:
    """The probe's seconds per candidate: read from the node cache, else measured once under its lock
    (trials starting together measure once, not at once) and kept there."""
    def measure(folder: Path) -> None:
        seconds = measure_candidates(config, model, device, candidates, num_classes)
        save_json({"format": PROBE_FORMAT, "cpu": cpu_model(), "torch": torch.__version__, "model": config.model,
                   "image_size": config.image_size, "batch_size": config.batch_size, "depth": _probe_depth(config),
                   "threads": torch.get_num_threads(), "seconds": seconds}, folder / PROBE_FILE)

    target = cache.cache_root() / "compute" / probe_key(config, device, candidates, num_classes)
    return json.loads((cache.publish(target, measure) / PROBE_FILE).read_text())["seconds"]


def measure_candidates(config: TrainConfig, model: nn.Module, device: torch.device,
                       candidates: list[tuple[str, str]], num_classes: int) -> dict[str, float]:
    """Median seconds of one step for each (precision, layout), on a copy of `model` and random images.

    The run's own model and random state are untouched: the steps train a copy, under a forked RNG.
    """
    depth = _probe_depth(config)
    seconds = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        images = torch.randn(config.batch_size, 3, config.image_size, config.image_size, device=device)
        labels = torch.randint(num_classes, (config.batch_size,), device=device)
        for precision, layout in candidates:
            trial = copy.deepcopy(model).to(memory_format=LAYOUTS[layout])
            set_trained_depth(trial, 0 if depth == "features" else depth, config.bn_mode)
            step = _step(trial, images.contiguous(memory_format=LAYOUTS[layout]), labels, DTYPES[precision],
                         forward_only=depth == "features")
            times = []
            for _ in range(1 + PROBE_STEPS):  # the first step warms up oneDNN's kernels and the allocator
                start = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            seconds[f"{precision}/{layout}"] = statistics.median(times[1:])
            del trial
    return seconds


def _step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype | None, *,
          forward_only: bool):
    """One step as the run takes it: forward only (features), or forward, backward and fused AdamW."""
    autocast = torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None)
    if forward_only:
        model.eval()

        def forward() -> None:
            with torch.no_grad(), autocast:
                model.features(images)
        return forward
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)  # as the run's

    def train() -> None:
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return train
