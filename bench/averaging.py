"""Averaging a fine-tune with the probe it started from: does it beat either on images no search saw?

On bench/transfer.py's targets and weights (run that first: it writes WORK's data and pretrained weights),
each of the finetune portfolio's two gentle LP-FT priors is trained as `tuner search --refit` trains the
delivered configuration: on train+val, for the default budget's steps (tuner/runs/budget.py). Then, on the
test split alone:

  probe      the start: the backbone and the probe head fitted on train+val (step 0)
  fine-tune  the prior after its steps
  wise A     the weights (1 - A) x start + A x fine-tune (WiSE-FT, Wortsman et al. 2022), A in 0.25, 0.5, 0.75
  ensemble   the two models' class probabilities averaged

Nothing here selects on the test images; the mean over seeds is the figure. Usage:

    python bench/averaging.py [--work DIR] [--targets 10 50] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from common import machine_line
from transfer import pretrained_weights, prior_values, target_folder

from tuner.runs.budget import default_steps
from tuner.search.spaces.finetune import GENTLE
from tuner.train.config import make_config
from tuner.train.evaluation import load_trained
from tuner.train.folders import load_splits
from tuner.train.refit import refit

PRIORS = {"gentle depth 4": {**GENTLE, "unfreeze_depth": 4}, "gentle depth 2": {**GENTLE, "unfreeze_depth": 2}}
ALPHAS = (0.25, 0.5, 0.75)
COLUMNS = ("probe", "fine-tune", *(f"wise {a}" for a in ALPHAS), "ensemble")


def interpolated(start: dict, tuned: dict, alpha: float) -> dict:
    """The payload `tuned` with its weights (1 - alpha) x start's + alpha x its own (counters kept as tuned)."""
    mixed = copy.copy(tuned)
    mixed["model"] = {k: torch.lerp(start["model"][k].float(), v.float(), alpha).to(v.dtype)
                      if v.is_floating_point() else v for k, v in tuned["model"].items()}
    return mixed


def test_probabilities(payload: dict, samples) -> torch.Tensor:
    evaluation = load_trained(payload, torch.device("cpu")).evaluate(samples, prefix="test", keep_logits=True)
    return torch.softmax(evaluation.logits, dim=1)


def measure(weights: Path, target: Path, prior: dict, seed: int) -> dict[str, float]:
    """Test accuracy of each column of COLUMNS for one prior on one target."""
    splits = load_splits(target)
    values = prior_values(prior, weights, seed)
    steps, _ = default_steps(len(splits.train), make_config(values).batch_size)  # the search's default budget
    config = make_config({**values, "steps": steps})
    start, tuned = refit(config, splits, 0).payload, refit(config, splits, steps).payload
    labels = torch.tensor([label for _, label in splits.test])
    probabilities = {"probe": test_probabilities(start, splits.test),
                     "fine-tune": test_probabilities(tuned, splits.test)}
    for alpha in ALPHAS:
        probabilities[f"wise {alpha}"] = test_probabilities(interpolated(start, tuned, alpha), splits.test)
    probabilities["ensemble"] = probabilities["probe"] + probabilities["fine-tune"]
    return {name: float((p.argmax(1) == labels).float().mean()) for name, p in probabilities.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-transfer"))
    parser.add_argument("--targets", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(machine_line())
    weights = pretrained_weights(args.work)
    print(f"{'':<26}" + "".join(f"{c:>11}" for c in COLUMNS))
    for n in args.targets:
        for name, prior in PRIORS.items():
            rows = []
            for seed in args.seeds:
                started = time.perf_counter()
                rows.append(measure(weights, target_folder(args.work, n, seed), prior, seed))
                print(f"{n:>3} a class seed {seed} {name:<14}" + "".join(f"{rows[-1][c]:>11.3f}" for c in COLUMNS)
                      + f"  {time.perf_counter() - started:.0f} s", flush=True)
            means = {c: statistics.mean(r[c] for r in rows) for c in COLUMNS}
            print(f"{n:>3} a class mean   {name:<14}" + "".join(f"{means[c]:>11.3f}" for c in COLUMNS)
                  + f"  (ensemble - probe {100 * (means['ensemble'] - means['probe']):+.1f} points)", flush=True)


if __name__ == "__main__":
    main()
