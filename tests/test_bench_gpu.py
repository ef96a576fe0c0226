"""bench/gpu.sh runs on a bare GPU machine: torch, torchvision, numpy, pillow, pyarrow, tqdm, no more."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a bare GPU machine lacks: importing any of these on the bench's path fails there.
ABSENT = ("ray", "optuna", "tensorboardX", "sklearn", "scipy", "onnx", "onnxruntime", "matplotlib")
SMOKE = ["--device", "cpu", "--image-size", "32", "--batch-size", "4", "--seed-batch-size", "2", "--batches", "2",
         "--repeats", "1"]


@pytest.mark.slow
def test_the_gpu_bench_runs_without_ray_optuna_or_tensorboardx(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    # sitecustomize runs at start-up: `import ray` (and every name in ABSENT) then fails as if not installed.
    (blocker / "sitecustomize.py").write_text(f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHONPATH": str(blocker), "OUT": str(tmp_path / "out")}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *SMOKE], capture_output=True, text=True,
                            env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    trained = figures["train_img_s"]
    assert any(name.startswith("seed loop") for name in trained) and "ours bf16 eager" in trained
    assert all(rate > 0 for rate in trained.values())
    assert figures["forward_img_s"] > 0 and figures["loader_img_s"] > 0 and "CPU" in figures["device"]
    assert (tmp_path / "out" / "gpu.txt").read_text().strip().endswith(result.stdout.strip().splitlines()[-1])
