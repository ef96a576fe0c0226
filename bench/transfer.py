"""Transfer learning on small data: does the model a search delivers beat the baselines on images no search saw?

The project makes its own pretrained weights (none can be downloaded here): a ResNet-50 is trained from
scratch with `tuner train` on the demo generator's 8 classes (SOURCE, 600 training images a class), then
transferred to few-shot targets of 5 other classes it never saw (TARGET: star, hexagon, crescent, dots,
waves). Each target size n (--targets) is drawn once per seed s (--seeds) as its own dataset (demo seed
1 + s): n training, 30 validation and 100 test images a class. Every variant starts from the same weights
on the same splits at the same image size, and is judged by test_acc on the 500 test images, which no
variant selects on:

  probe           scikit-learn's LogisticRegressionCV (C by 5-fold CV) on the frozen backbone's pooled
                  features of the training images (centre crops): val_acc and test_acc
  probe-trainval  the stronger five-second baseline: the features standardised, LogisticRegressionCV fitted
                  on train+val; test_acc only (it learnt from the validation images)
  seed-features   the seed tutorial's feature extraction (frozen backbone, Adam 1e-3 head), --epochs,
                  torch seeded by s: the test_acc of its best validation epoch
  seed-finetune   the seed tutorial's fine-tuning (Adam: head 1e-3, layer4 1e-4, layer3 5e-5), likewise
  search          `tuner search --space finetune --trials T --sampler-seed s`: test_acc of what best/
                  delivers (the refit model when the search refits), beside the val_acc and test_acc of
                  the search's own choice (best/search/), and the rank correlation of val_acc at ASHA's
                  first rung with the final
  search-no-asha  the same with --no-early-stopping: every trial runs its whole budget, so the first-rung
                  correlation is not cut short by ASHA's own stops (not run by default)
  search-40       the same as search with --trials 40 (not run by default)
  search-highest  the same as search with --selection highest: the best trial by val_acc, where the default
                  (within_noise) delivers the cheapest of the trials a paired test cannot tell from it
                  (not run by default)
  curve           `tuner train` of the finetune portfolio's first prior (gentle LP-FT, depth 4) for
                  --curve-steps, validated every epoch: the step where its val_acc peaks, which sizes the
                  default budget (tuner/runs/budget.py); not run by default

Seconds are wall-clock: whole commands for the searches (Ray's start, the probe, the refit and the export
included). Every result goes to WORK/results-<time>.json as well. Run from the repository root on an idle
machine. With the default variants, targets and seeds a run takes about an hour on 2 idle CPU cores (a
rough estimate, not measured: six searches at the old bench's ~5 minutes each, plus the baselines), more on
a busy one (a 2-trial smoke search took 7 minutes there), and about 12 minutes of pretraining the first time:

    python bench/transfer.py [--work DIR] [--variants probe search ...] [--targets 10 50] [--seeds 0 1 2]

WORK (default ./bench-transfer) keeps the data and the pretrained weights between runs. `--weights PATH`
starts every target from that state_dict instead, with no pretraining: for smoke tests.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from common import (
    best_metrics,
    fmt,
    machine_line,
    search_tables,
    seed_eval_transform,
    seed_groups,
    seed_loader,
    seed_train,
    seed_train_transform,
    seed_val_acc,
    tuner_command,
)
from torch import nn

from tuner.search.refit import SEARCH_BEST
from tuner.train.demo_data import CLASSES, TRANSFER_CLASSES, write_demo_data
from tuner.train.folders import load_splits
from tuner.train.model import load_backbone_weights

IMAGE_SIZE = 32  # small enough for a 12-trial ResNet-50 search in minutes on a CPU
# From scratch at 32 px a ResNet-50 learns slowly: AdamW 2e-3 for 15 epochs reached 0.40 val_acc.
PRETRAIN = {"model": "resnet50", "weights": "none", "unfreeze_depth": 5, "image_size": IMAGE_SIZE,
            "batch_size": 64, "epochs": 30, "lr_head": 1e-3, "warmup_steps": 200, "aug_strength": 0.3,
            "weight_decay": 0.05}
SOURCE = {"train_per_class": 600, "val_per_class": 50, "test_per_class": 0}
# >= 100 test images a class: one image is 0.2 points of test_acc over the 5 classes, finer than the gaps judged.
TARGET = {"val_per_class": 30, "test_per_class": 100}
SEARCHES = {"search": [], "search-no-asha": ["--no-early-stopping"], "search-40": ["--trials", "40"],
            "search-highest": ["--selection", "highest"]}
VARIANTS = ("probe", "probe-trainval", "seed-features", "seed-finetune", *SEARCHES, "curve")
DEFAULT_VARIANTS = ("probe", "probe-trainval", "seed-features", "seed-finetune", "search")
SEED_RECIPES = ("seed-features", "seed-finetune")
# The probes' C is picked by accuracy, today's default, named so scikit-learn 1.11's log-loss default cannot move it.
PROBE = {"Cs": 10, "cv": 5, "max_iter": 5000, "scoring": "accuracy"}


# --- data and weights --------------------------------------------------------------------------


def target_folder(work: Path, n: int, seed: int) -> Path:
    """WORK/target-{n}-seed{seed}: the target classes with `n` training images a class, drawn by demo seed 1 + seed."""
    folder = work / f"target-{n}-seed{seed}"
    write_demo_data(folder, seed=1 + seed, train_per_class=n, classes=TRANSFER_CLASSES, **TARGET)
    return folder


def pretrained_weights(work: Path) -> Path:
    """The backbone every target starts from, trained once on SOURCE (WORK/pretrained/best/model.pt)."""
    source, run = work / "source", work / "pretrained"
    weights = run / "best" / "model.pt"
    if not weights.is_file():
        write_demo_data(source, classes=CLASSES, **SOURCE)
        command = tuner_command("train", "--data", str(source), "--out", str(run), settings=PRETRAIN)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"pretrained in {time.perf_counter() - start:.0f} s")
    # best/ is written after the first epoch: a pretraining still running (or killed) is not the backbone.
    epochs = len((run / "epochs.jsonl").read_text().splitlines()) if (run / "epochs.jsonl").is_file() else 0
    if epochs < PRETRAIN["epochs"]:
        raise SystemExit(f"{run} holds {epochs} of {PRETRAIN['epochs']} pretraining epochs: wait for the "
                         f"pretraining to finish, or delete {run} to pretrain again")
    metrics = best_metrics(run)
    print(f"weights: {weights}, ResNet-50 pretrained on {len(CLASSES)} source classes, val_acc "
          f"{metrics['val_acc']:.3f} (epoch {metrics['epoch']} of {epochs})")
    return weights


def given_weights(path: Path) -> Path:
    """The --weights file, checked to exist; no pretraining."""
    if not path.is_file():
        raise SystemExit(f"--weights {path} is not a file; pass a state_dict saved with torch.save")
    print(f"weights: {path} (--weights: no pretraining)")
    return path


def prior_values(prior: dict, weights: Path, seed: int) -> dict:
    """A finetune prior's hyperparameters as a search trains it here: the space's constants (AdamW, cosine),
    ResNet-50 at IMAGE_SIZE from `weights` (bench/averaging.py and bench/ceiling.py train priors directly)."""
    return {**prior, "model": "resnet50", "weights": str(weights), "image_size": IMAGE_SIZE, "optimizer": "adamw",
            "schedule": "cosine", "seed": seed}


def backbone(weights: Path, classes: int) -> nn.Module:
    """torchvision's ResNet-50 (the seed tutorial's model) with `weights` loaded as tuner loads them, a new head."""
    model = torchvision.models.resnet50(weights=None)
    load_backbone_weights(model, "resnet50", str(weights))
    model.fc = nn.Linear(model.fc.in_features, classes)
    return model


# --- baselines ---------------------------------------------------------------------------------


@torch.no_grad()
def pooled_features(model: nn.Module, samples) -> tuple[np.ndarray, np.ndarray]:
    """The frozen backbone's pooled features of `samples` (centre crops) and their labels."""
    head, model.fc = model.fc, nn.Identity()
    model.eval()
    loader = torch.utils.data.DataLoader(
        [(seed_eval_transform(IMAGE_SIZE)(_image(p)), y) for p, y in samples], batch_size=64)
    xs, ys = zip(*[(model(x).numpy(), y.numpy()) for x, y in loader], strict=True)
    model.fc = head
    return np.concatenate(xs), np.concatenate(ys)


def _image(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def split_features(weights: Path, splits) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pooled features and labels of the train, val and test splits."""
    model = backbone(weights, len(splits.classes))
    return [pooled_features(model, s) for s in (splits.train, splits.val, splits.test)]


def one_blas_thread():
    """A block in which NumPy's BLAS runs one thread.

    The probes' matrices are tiny (images x 2048): a second BLAS thread gains nothing, and on a busy
    machine its spin-waiting made one LogisticRegressionCV fit take 10 minutes instead of 6 seconds.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def run_probe(weights: Path, splits) -> dict:
    """LogisticRegressionCV on the training images' features: val_acc and test_acc."""
    from sklearn.linear_model import LogisticRegressionCV

    start = time.perf_counter()
    (x, y), (xv, yv), (xt, yt) = split_features(weights, splits)
    with one_blas_thread():
        probe = LogisticRegressionCV(**PROBE).fit(x, y)
    return {"val_acc": probe.score(xv, yv), "test_acc": probe.score(xt, yt), "seconds": time.perf_counter() - start}


def run_probe_trainval(weights: Path, splits) -> dict:
    """Standardised features, LogisticRegressionCV fitted on train+val: test_acc only (val_acc None)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    (x, y), (xv, yv), (xt, yt) = split_features(weights, splits)
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(**PROBE))
    with one_blas_thread():
        probe.fit(np.concatenate([x, xv]), np.concatenate([y, yv]))  # the scaler sees only the fitting images
    return {"val_acc": None, "test_acc": probe.score(xt, yt), "seconds": time.perf_counter() - start}


def run_seed(weights: Path, splits, recipe: str, epochs: int, seed: int) -> dict:
    """The seed tutorial's loop (bench/common.py) from the weights, torch seeded by `seed`: its best val epoch."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = backbone(weights, len(splits.classes))
    for param in model.parameters():
        param.requires_grad = False
    groups = seed_groups(model)[-1:] if recipe == "seed-features" else seed_groups(model)  # features: the head
    for group in groups:
        for param in group["params"]:
            param.requires_grad = True
    optimizer = torch.optim.Adam(groups)
    train = seed_loader(splits.train, seed_train_transform(IMAGE_SIZE), workers=0)
    val = seed_loader(splits.val, seed_eval_transform(IMAGE_SIZE), workers=0)
    test = seed_loader(splits.test, seed_eval_transform(IMAGE_SIZE), workers=0)
    best = (-1.0, None)
    for _ in range(epochs):
        seed_train(model, optimizer, train, torch.device("cpu"))
        accuracy = seed_val_acc(model, val, torch.device("cpu"))
        if accuracy > best[0]:
            best = (accuracy, seed_val_acc(model, test, torch.device("cpu")))
    return {"val_acc": best[0], "test_acc": best[1], "seconds": time.perf_counter() - start}


# --- searches ----------------------------------------------------------------------------------


def run_search(weights: Path, target: Path, runs: Path, name: str, flags: list[str], trials: int,
               seed: int) -> dict:
    """One `tuner search` (stdout kept in RUNS/NAME.log) and what it delivered (search_result)."""
    command = tuner_command("search", "--space", "finetune", "--data", str(target), "--storage", str(runs),
                            "--name", name, "--trials", str(trials), "--sampler-seed", str(seed),
                            "--max-concurrent", "2", *flags,  # a later --trials (search-40) wins
                            settings={"model": "resnet50", "weights": weights, "image_size": IMAGE_SIZE})
    start = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (runs / f"{name}.log").write_text(output.stdout + output.stderr)
    if output.returncode != 0:
        raise SystemExit(f"{name} failed (exit {output.returncode}), see {runs / name}.log:\n{output.stderr[-2000:]}")
    return {**search_result(runs / name), "seconds": seconds, "run": str(runs / name)}


def search_result(run: Path) -> dict:
    """What a search run delivered: best/'s test_acc, its choice's val_acc and test_acc, budget, correlation.

    The choice is the search's own checkpoint: best/search/ after a refit, else best/ itself.
    """
    delivered = best_metrics(run)
    chosen_file = run / "best" / SEARCH_BEST / "metrics.json"
    chosen = json.loads(chosen_file.read_text()) if chosen_file.is_file() else delivered
    trials, epochs, record = search_tables(run)
    return {"val_acc": chosen["val_acc"], "test_acc": delivered.get("test_acc"),
            "choice_test_acc": chosen.get("test_acc"), "refit": bool(delivered.get("refit")),
            "budget": record["budget"]["steps"], "trial_steps": sum(row["steps"] for row in trials),
            "trials": len(trials), **first_rung_spearman(epochs, record)}


def first_rung_spearman(epochs: list[dict], record: dict) -> dict:
    """Spearman, over trials, of val_acc at ASHA's first rung with the final, two ways.

    `spearman`: a trial's best-so-far val_acc (running max, the step-0 probe row included) at its first
    row at or past the rung, against its best over all rows: what ASHA's stop keeps or loses.
    `spearman_raw` (the old bench's figure): that row's own val_acc against the trial's last val_acc.
    Over the trials with a row past that one (`rung_trials`); None with fewer than 3 trials or when one
    side is constant. Diverged (NaN) rows are left out.
    """
    rungs = record.get("rungs") or []
    rung = rungs[0] if rungs else record["budget"]["grace_steps"]  # no ASHA: where its first rung would be
    by_trial: dict[str, list[tuple[int, float]]] = {}
    for row in sorted(epochs, key=lambda r: r["budget_steps"]):
        accuracy = row["val_acc"]
        if accuracy is not None and math.isfinite(accuracy):
            by_trial.setdefault(row["trial_id"], []).append((row["budget_steps"], accuracy))
    best, raw = [], []
    for rows in by_trial.values():
        at = next((i for i, (steps, _) in enumerate(rows) if steps >= rung), None)
        if at is None or at == len(rows) - 1:
            continue  # never reached the rung, or stopped there: its final is its rung figure
        accuracies = [accuracy for _, accuracy in rows]
        best.append((max(accuracies[: at + 1]), max(accuracies)))
        raw.append((accuracies[at], accuracies[-1]))
    return {"rung": rung, "rung_trials": len(best), "spearman": spearman(best), "spearman_raw": spearman(raw)}


def spearman(pairs: list[tuple[float, float]]) -> float | None:
    """scipy's Spearman rho of the pairs; None below 3 pairs or when it is undefined (a constant side)."""
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(*zip(*pairs, strict=True)).statistic)
    return rho if math.isfinite(rho) else None


def run_curve(weights: Path, target: Path, runs: Path, name: str, steps: int) -> dict:
    """`tuner train` of the portfolio's first prior (gentle LP-FT, depth 4) for `steps`, validated every
    epoch: where fine-tuning peaks, which sizes the default budget (tuner/runs/budget.py)."""
    from tuner.search.spaces.finetune import START

    out = runs / name
    settings = {**START[0], "model": "resnet50", "weights": weights, "image_size": IMAGE_SIZE, "steps": steps}
    start = time.perf_counter()
    subprocess.run(tuner_command("train", "--data", str(target), "--out", str(out), settings=settings),
                   check=True, capture_output=True, text=True)
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines() if line.strip()]
    best = max(epochs, key=lambda e: (e["val_acc"], -e["step"]))
    return {"val_acc": best["val_acc"], "test_acc": best_metrics(out).get("test_acc"),
            "seconds": time.perf_counter() - start, "peak_step": best["step"],
            "curve": [(e["step"], e["val_acc"]) for e in epochs]}


# --- output ------------------------------------------------------------------------------------


def header_lines() -> list[str]:
    """The machine, the software and the commit the figures come from."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git checkout"
    return [machine_line(), f"python {platform.python_version()}, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, commit {commit}"]


def result_line(result: dict) -> str:
    """One finished (n, seed, variant): its accuracies, seconds and, for a search, what it spent."""
    line = (f"{result['n']:>4} a class  seed {result['seed']}  {result['variant']:<15} test_acc "
            f"{fmt(result['test_acc'], '.3f')}  val_acc {fmt(result['val_acc'], '.3f')} (selection)  "
            f"{result['seconds']:6.0f} s")
    if "peak_step" in result:
        line += f"  | val_acc peaks at step {result['peak_step']} of {result['curve'][-1][0]}"
    if "budget" in result:
        line += (f"  | choice's test_acc {fmt(result['choice_test_acc'], '.3f')}, refit "
                 f"{'on' if result['refit'] else 'off'}, {result['trials']} trials, budget {result['budget']} "
                 f"steps, {result['trial_steps']} trial-steps, first-rung ({result['rung']} steps) Spearman "
                 f"{fmt(result['spearman'], '.2f')} best-so-far, {fmt(result['spearman_raw'], '.2f')} raw, over "
                 f"{result['rung_trials']} trials")
    return line


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summary_table(results: list[dict], n: int) -> list[str]:
    """One row a variant for target size `n`: test_acc over seeds (mean, sample std, min-max), val_acc, seconds."""
    rows = [r for r in results if r["n"] == n]
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"\n{n} training images a class, seeds {', '.join(map(str, seeds))}: test_acc judges; val_acc is "
             f"what a search selects on, never the headline",
             f"{'variant':<15} {'test_acc':>8} {'std':>6} {'min-max':>11} {'choice test':>11} "
             f"{'val_acc (sel.)':>14} {'seconds':>8}"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        of = [r for r in rows if r["variant"] == variant]
        tests = [r["test_acc"] for r in of]
        spread = statistics.stdev(tests) if len(tests) > 1 else None
        choice = mean([r.get("choice_test_acc") for r in of])
        lines.append(f"{variant:<15} {fmt(mean(tests), '>8.3f')} {fmt(spread, '>6.3f')} "
                     f"{min(tests):>5.3f}-{max(tests):.3f} {fmt(choice, '>11.3f')} "
                     f"{fmt(mean([r['val_acc'] for r in of]), '>14.3f')} {mean([r['seconds'] for r in of]):>8.0f}")
    return lines


def difference(results: list[dict], n: int, variant: str, other: str) -> str | None:
    """'+x.x points (seed 0 +a, seed 1 +b)': `variant`'s test_acc minus `other`'s, over the seeds both ran."""
    by_seed = {v: {r["seed"]: r["test_acc"] for r in results if r["n"] == n and r["variant"] == v}
               for v in (variant, other)}
    seeds = sorted(set(by_seed[variant]) & set(by_seed[other]))
    if not seeds:
        return None
    gaps = [100 * (by_seed[variant][s] - by_seed[other][s]) for s in seeds]
    per_seed = ", ".join(f"seed {s} {g:+.1f}" for s, g in zip(seeds, gaps, strict=True))
    return f"{statistics.fmean(gaps):+.1f} points ({per_seed})"


def comparison_lines(results: list[dict], n: int) -> list[str]:
    """Issue 19's questions for target size `n`, in points of test_acc of the model each variant delivers."""
    ran = {r["variant"] for r in results if r["n"] == n}
    means = {v: mean([r["test_acc"] for r in results if r["n"] == n and r["variant"] == v]) for v in ran}
    lines = []
    if "probe-trainval" in ran and (gap := difference(results, n, "search", "probe-trainval")):
        lines.append(f"{n:>4} a class: delivered search - probe-trainval: {gap}")
    if recipes := [v for v in SEED_RECIPES if v in ran]:
        better = max(recipes, key=means.get)  # the generous choice: the better recipe on the test images
        if gap := difference(results, n, "search", better):
            lines.append(f"{n:>4} a class: delivered search - {better} (the better seed recipe): {gap}")
    if gap := difference(results, n, "search-40", "search"):
        lines.append(f"{n:>4} a class: search-40 - search: {gap}")
    if gap := difference(results, n, "search", "search-highest"):
        lines.append(f"{n:>4} a class: search (within_noise) - search-highest: {gap}")
    for variant in (v for v in SEARCHES if v in ran):
        seconds = mean([r["seconds"] for r in results if r["n"] == n and r["variant"] == variant])
        lines.append(f"{n:>4} a class: {variant} wall time {seconds:.0f} s on average")
    return lines


def write_results(path: Path, header: list[str], weights: Path, args, results: list[dict]) -> None:
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path.write_text(json.dumps({"header": header, "weights": str(weights), "args": args_json, "results": results},
                               indent=1))


# --- main --------------------------------------------------------------------------------------


def run_variant(variant: str, weights: Path, target: Path, n: int, seed: int, args) -> dict:
    """One variant on one target: its result dict (val_acc, test_acc, seconds, and a search's extras)."""
    if variant in SEARCHES:
        name = f"{variant}-{n}-seed{seed}-{time.strftime('%H%M%S')}"
        return run_search(weights, target, args.work / "runs", name, SEARCHES[variant], args.trials, seed)
    if variant == "curve":
        return run_curve(weights, target, args.work / "runs", f"curve-{n}-seed{seed}-{time.strftime('%H%M%S')}",
                         args.curve_steps)
    splits = load_splits(target)
    if variant == "probe":
        return run_probe(weights, splits)
    if variant == "probe-trainval":
        return run_probe_trainval(weights, splits)
    return run_seed(weights, splits, variant, args.epochs, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-transfer"), help="data, weights and runs")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a state_dict file every target starts from, instead of pretraining (smoke tests)")
    parser.add_argument("--targets", type=int, nargs="+", default=[10, 50], help="training images a class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="draws of each target (demo seed 1 + s), torch seeds and sampler seeds")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                        help="what to run on each target (the docstring says what each is)")
    parser.add_argument("--trials", type=int, default=12, help="trials of a search (search-40: 40)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the seed recipes")
    parser.add_argument("--curve-steps", type=int, default=600, help="optimizer steps of the curve variant")
    args = parser.parse_args()

    header = header_lines()
    print("\n".join(header))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "runs").mkdir(exist_ok=True)
    weights = given_weights(args.weights) if args.weights else pretrained_weights(args.work)
    out = args.work / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results = []
    for n in args.targets:
        for seed in args.seeds:
            target = target_folder(args.work, n, seed)
            for variant in args.variants:
                result = {"n": n, "seed": seed, "variant": variant,
                          **run_variant(variant, weights, target, n, seed, args)}
                results.append(result)
                print(result_line(result), flush=True)
                write_results(out, header, weights, args, results)  # a crash later keeps what finished
    for n in args.targets:
        print("\n".join(summary_table(results, n)))
    print("\ndelivered test_acc, side by side (points; per seed where both ran):")
    for n in args.targets:
        print("\n".join(comparison_lines(results, n)))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
