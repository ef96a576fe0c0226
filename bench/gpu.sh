#!/usr/bin/env bash
# One-shot GPU benchmark (bench/gpu.py): full fine-tuning images/s of tuner's Trainer vs the seed loop
# (eager and torch.compile), forward-only, the loader against the model, peak GPU memory; the last line
# is one JSON object with every figure. Sized for under 8 minutes on one H100/H200 (not yet measured there).
#
# Runs on a bare GPU machine: it needs torch, torchvision, numpy, pillow, pyarrow and tqdm, and imports
# tuner from this checkout (no install, no network, no Ray, Optuna or tensorboardX).
# Arguments go to bench/gpu.py (--help lists them); with $OUT set the output is also saved to $OUT/gpu.txt.
#   CPU smoke test:  bash bench/gpu.sh --device cpu --image-size 32 --batch-size 4 --seed-batch-size 2 --batches 2 --repeats 1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    python3 -u bench/gpu.py "$@" 2>&1 | tee "$OUT/gpu.txt"
else
    python3 -u bench/gpu.py "$@"
fi
