"""Precision and memory layout chosen by measuring this node (tuner/train/precision.py)."""

import json
import platform
from pathlib import Path

import pytest
import torch

from tuner.errors import UserError
from tuner.train import folders
from tuner.train.cache import cache_root
from tuner.train.config import make_config
from tuner.train.engine import Trainer
from tuner.train.model import build_model
from tuner.train.precision import choose_compute, cpu_bf16_units, cuda_precisions, describe_machine, probe_key

CPU = torch.device("cpu")


def probe_config(**values):
    return make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 8, **values})


def test_auto_takes_the_fastest_candidate_the_probe_measured():
    config = probe_config(unfreeze_depth=2)
    model, _ = build_model(config, 4)
    choice = choose_compute(config, model, CPU, num_classes=4)
    # bf16 is a candidate exactly where the CPU has bf16 units; both layouts always are.
    expected = {f"{p}/{m}" for p in (["fp32", "bf16"] if cpu_bf16_units() else ["fp32"])
                for m in ("channels_last", "contiguous")}
    assert set(choice.seconds) == expected and all(s > 0 for s in choice.seconds.values())
    assert f"{choice.precision}/{choice.memory_format}" == min(choice.seconds, key=choice.seconds.get)
    assert "measured on this node" in choice.reason


def test_the_answer_is_kept_in_the_node_cache_and_reused():
    config = probe_config(unfreeze_depth=1, batch_size=4)
    model, _ = build_model(config, 3)
    first = choose_compute(config, model, CPU, num_classes=3)
    files = list((cache_root() / "compute").glob("*/probe.json"))
    assert files
    # Make the slowest candidate the fastest in the cached answer: a reused answer follows it.
    slowest = max(first.seconds, key=first.seconds.get)
    (path,) = [f for f in files if json.loads(f.read_text())["seconds"] == first.seconds]
    record = json.loads(path.read_text())
    record["seconds"][slowest] = 1e-9
    path.write_text(json.dumps(record))
    again = choose_compute(config, model, CPU, num_classes=3)
    assert f"{again.precision}/{again.memory_format}" == slowest


def test_the_probe_leaves_the_model_and_the_random_state_untouched():
    config = probe_config(unfreeze_depth=5, batch_size=4, image_size=40)
    model, _ = build_model(config, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choose_compute(config, model, CPU, num_classes=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_key_separates_what_changes_the_answer():
    candidates = [("fp32", "channels_last"), ("fp32", "contiguous")]
    keys = {probe_key(probe_config(**values), CPU, candidates, 4)
            for values in ({}, {"image_size": 64}, {"batch_size": 16}, {"unfreeze_depth": 4}, {"model": "resnet50"},
                           {"unfreeze_depth": 0})}
    assert len(keys) == 6
    # Head-only runs on cached features cost the backbone's forward, whatever else differs.
    assert probe_key(probe_config(unfreeze_depth=0, lr_head=0.1), CPU, candidates, 4) in keys


def test_configured_choices_are_taken_as_they_are_without_a_probe():
    config = probe_config(precision="fp32", memory_format="contiguous")
    model, _ = build_model(config, 2)
    choice = choose_compute(config, model, CPU, num_classes=2)
    assert (choice.precision, choice.memory_format, choice.seconds) == ("fp32", "contiguous", None)
    with pytest.raises(UserError, match="precision=fp16 needs a CUDA GPU"):
        choose_compute(probe_config(precision="fp16"), model, CPU, num_classes=2)


def test_a_trainer_trains_in_the_chosen_layout_and_records_the_choice(demo_root):
    splits = folders.load_splits(demo_root)
    small = folders.ImageSplits(root=splits.root, layout=splits.layout, classes=splits.classes,
                                train=splits.train[::20], val=splits.val[::20], test=[])
    trainer = Trainer(probe_config(memory_format="contiguous", precision="fp32", epochs=1, head_init="random"), small)
    assert trainer.model.conv1.weight.is_contiguous() and trainer.amp_dtype is None
    metrics = trainer.run_epoch()
    assert metrics["compute"] == "fp32/contiguous"


def test_the_machine_line_names_the_cpu_and_its_bf16_units():
    line = describe_machine()
    assert "CPU " in line and "AVX512-BF16" in line and "AMX" in line and torch.__version__ in line


@pytest.mark.parametrize("capability, expected", [
    ((7, 0), ["fp16"]),  # V100: bf16 only emulated
    ((7, 5), ["fp16"]),  # T4, where torch.cuda.is_bf16_supported() still says True
    ((8, 0), ["bf16"]),  # A100
    ((8, 9), ["bf16"]),  # L4, L40S
    ((9, 0), ["bf16"]),  # H100, H200
])
def test_cuda_takes_bf16_from_compute_capability_8_and_fp16_with_a_scaler_before(capability, expected):
    precisions, reason = cuda_precisions(capability)
    assert precisions == expected
    assert f"compute capability {capability[0]}.{capability[1]}" in reason
    assert ("grad scaler" in reason) == (expected == ["fp16"])


def test_the_cpus_bf16_units_are_the_kernels_cpu_flags():
    # Read here from /proc/cpuinfo, not through the function under test (which asks torch where it can).
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    line = next(line for line in lines if line.startswith(("flags", "Features")))
    flags = set(line.split(":", 1)[1].split())
    units = cpu_bf16_units()
    assert ("AVX512-BF16" in units) == ("avx512_bf16" in flags)
    assert ("AMX" in units) == ("amx_bf16" in flags)
    assert ("Arm BF16" in units) == (platform.machine() in ("aarch64", "arm64") and "bf16" in flags)
