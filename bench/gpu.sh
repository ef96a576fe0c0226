#!/usr/bin/env bash
# One-shot GPU benchmark (bench/gpu.py): full fine-tuning images/s of tuner's Trainer vs the seed loop,
# forward-only, and whether the loader keeps up. Estimated 3-5 minutes on one H100 with the defaults
# (most of it the torch.compile warm-up; not yet measured there).
#
# Expects torch, torchvision and ray preinstalled, or pip access: if `import tuner` fails it tries
# `pip install -e .` once and carries on either way (the import error then shows what is missing).
# Arguments go to bench/gpu.py (--help lists them); with $OUT set the output is also saved to $OUT/gpu.txt.
#   CPU smoke test:  bash bench/gpu.sh --device cpu --image-size 32 --batch-size 4 --seed-batch-size 2 --batches 1 --repeats 1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! python -c "import tuner" >/dev/null 2>&1; then
    echo "tuner is not importable: trying python -m pip install -q -e . (needs the wheels or network)" >&2
    python -m pip install -q -e . || echo "pip install failed; continuing with what is installed" >&2
fi

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    python -u bench/gpu.py "$@" 2>&1 | tee "$OUT/gpu.txt"
else
    python -u bench/gpu.py "$@"
fi
