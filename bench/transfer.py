"""Transfer learning on small data, side by side: is the search worth more than a five-second baseline?

The project makes its own pretrained weights (none can be downloaded here): a ResNet-50 is trained from
scratch with `tuner train` on the demo generator's 8 classes (SOURCE), then transferred to few-shot
targets of 5 other classes it never saw (TARGET: star, hexagon, crescent, dots, waves), with about 10
and 50 training images a class and 30 validation and 30 test images a class. For each target, on the
same weights, splits and image size, it prints:

  probe          scikit-learn's LogisticRegression (C by 5-fold CV) on the frozen backbone's pooled
                 features of centre crops: the simplest honest baseline
  seed-features  the seed tutorial's feature extraction (frozen backbone, Adam 1e-3 head), --epochs
  seed-finetune  the seed tutorial's fine-tuning (Adam: head 1e-3, layer4 1e-4, layer3 5e-5), --epochs
  search         `tuner search --space finetune --trials 12` with the budget sized by the data
  search-no-asha the same with --no-early-stopping: every trial runs its whole budget, which gives the
                 Spearman correlation of val_acc at ASHA's first rung with the final val_acc
  search-complete the same as search, telling Optuna ASHA-stopped trials as COMPLETE (Ray's way), not PRUNED
  search-epochs  the same as search with today's epoch budget, --max-epochs 6 (ASHA grace 2 epochs)

Accuracy is on the validation split (what a search selects on) and, for the best model, the test split;
seconds are wall-clock, whole commands for the searches (Ray's start, the probe and the export included).
Run from the repository root on an idle machine (about 45 minutes on 2 CPU cores with every variant):

    python bench/transfer.py [--work DIR] [--variants probe seed-features ...] [--targets 10 50]

WORK (default ./bench-transfer) keeps the data and the pretrained weights between runs.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from common import (
    best_metrics,
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

from tuner.train.demo_data import CLASSES, TRANSFER_CLASSES, write_demo_data
from tuner.train.folders import load_splits

IMAGE_SIZE = 32  # small enough for a 12-trial ResNet-50 search in minutes on a CPU
# From scratch at 32 px a ResNet-50 learns slowly: AdamW 2e-3 for 15 epochs reached 0.40 val_acc.
PRETRAIN = {"model": "resnet50", "weights": "none", "unfreeze_depth": 5, "image_size": IMAGE_SIZE,
            "batch_size": 64, "epochs": 40, "lr_head": 1e-3, "warmup_steps": 200, "aug_strength": 0.3,
            "weight_decay": 0.05}
VARIANTS = ("probe", "seed-features", "seed-finetune", "search", "search-no-asha", "search-complete",
            "search-epochs")
SEARCH_FLAGS = {"search": [], "search-no-asha": ["--no-early-stopping"], "search-complete": ["--stopped-as-complete"],
                "search-epochs": ["--max-epochs", "6", "--grace-period", "2"]}


def write_data(work: Path, shots: tuple[int, ...]) -> dict[str, Path]:
    source = work / "source"
    write_demo_data(source, train_per_class=300, val_per_class=40, test_per_class=0, classes=CLASSES)
    folders = {"source": source}
    for n in shots:
        folders[f"target-{n}"] = work / f"target-{n}"
        write_demo_data(folders[f"target-{n}"], seed=1, train_per_class=n, val_per_class=30, test_per_class=30,
                        classes=TRANSFER_CLASSES)
    return folders


def pretrain(work: Path, source: Path) -> Path:
    """The backbone every target starts from, trained once (WORK/pretrained/best/model.pt)."""
    weights = work / "pretrained" / "best" / "model.pt"
    if not weights.is_file():
        command = tuner_command("train", "--data", str(source), "--out", str(work / "pretrained"), settings=PRETRAIN)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"pretrained in {time.perf_counter() - start:.0f} s")
    metrics = best_metrics(work / "pretrained")
    print(f"pretrained ResNet-50 on {len(CLASSES)} source classes: val_acc {metrics['val_acc']:.3f} "
          f"(epoch {metrics['epoch']}), weights {weights}")
    return weights


def backbone(weights: Path, classes: int) -> nn.Module:
    model = torchvision.models.resnet50(weights=None)
    state = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
    model.fc = nn.Linear(model.fc.in_features, classes)
    return model


@torch.no_grad()
def pooled_features(model: nn.Module, samples) -> tuple[np.ndarray, np.ndarray]:
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


def run_probe(weights: Path, splits) -> dict:
    from sklearn.linear_model import LogisticRegressionCV

    start = time.perf_counter()
    model = backbone(weights, len(splits.classes))
    (x, y), (xv, yv), (xt, yt) = (pooled_features(model, s) for s in (splits.train, splits.val, splits.test))
    probe = LogisticRegressionCV(Cs=10, cv=5, max_iter=5000).fit(x, y)
    return {"val_acc": probe.score(xv, yv), "test_acc": probe.score(xt, yt), "seconds": time.perf_counter() - start}


def run_seed(weights: Path, splits, recipe: str, epochs: int) -> dict:
    """The seed tutorial's loop (bench/common.py) from the pretrained weights: its best val epoch."""
    start = time.perf_counter()
    torch.manual_seed(0)
    model = backbone(weights, len(splits.classes))
    for param in model.parameters():
        param.requires_grad = False
    groups = seed_groups(model)[-1:] if recipe == "features" else seed_groups(model)  # features: the head alone
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


def run_search(weights: Path, target: Path, work: Path, name: str, flags: list[str], trials: int) -> dict:
    runs = work / "runs"
    command = tuner_command("search", "--space", "finetune", "--data", str(target), "--storage", str(runs),
                            "--name", name, "--trials", str(trials), "--max-concurrent", "2", *flags,
                            settings={"model": "resnet50", "weights": weights, "image_size": IMAGE_SIZE})
    start = time.perf_counter()
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - start
    (runs / f"{name}.log").write_text(output)
    trials_table, epochs, record = search_tables(runs / name)
    best, budget = best_metrics(runs / name), record["budget"]
    return {"val_acc": best["val_acc"], "test_acc": best.get("test_acc"), "seconds": seconds,
            "trial_steps": sum(row["steps"] for row in trials_table), "budget": budget["steps"],
            "spearman": first_rung_spearman(epochs, budget["grace_steps"])}


def first_rung_spearman(epochs: list[dict], grace: int) -> tuple[float, int] | None:
    """Spearman correlation, over trials, of val_acc at ASHA's first rung with the final val_acc."""
    by_trial: dict[str, list[dict]] = {}
    for row in sorted(epochs, key=lambda r: r["budget_steps"]):
        by_trial.setdefault(row["trial_id"], []).append(row)
    pairs = []
    for rows in by_trial.values():
        first = next((r for r in rows if r["budget_steps"] >= grace), None)
        if first is not None and rows[-1] is not first and np.isfinite(rows[-1]["val_acc"]):
            pairs.append((first["val_acc"], rows[-1]["val_acc"]))
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(*zip(*pairs, strict=True)).statistic), len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-transfer"), help="data, weights and runs")
    parser.add_argument("--targets", type=int, nargs="+", default=[10, 50], help="training images a class")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the seed recipes")
    args = parser.parse_args()

    print(f"{machine_line()}, python {platform.python_version()}")
    folders = write_data(args.work, tuple(args.targets))
    weights = pretrain(args.work, folders["source"])
    table = []
    for n in args.targets:
        splits = load_splits(folders[f"target-{n}"])
        for variant in args.variants:
            if variant == "probe":
                result = run_probe(weights, splits)
            elif variant.startswith("seed-"):
                result = run_seed(weights, splits, variant.removeprefix("seed-"), args.epochs)
            else:
                name = f"{variant}-{n}-{time.strftime('%H%M%S')}"
                result = run_search(weights, folders[f"target-{n}"], args.work, name, SEARCH_FLAGS[variant],
                                    args.trials)
            table.append((n, variant, result))
            print(f"{n:>4} a class  {variant:<16} val_acc {result['val_acc']:.3f}  test_acc "
                  f"{result['test_acc'] if result['test_acc'] is None else round(result['test_acc'], 3)}  "
                  f"{result['seconds']:6.0f} s" + (f"  budget {result['budget']} steps, {result['trial_steps']} "
                                                   f"trial-steps, first-rung Spearman {result['spearman']}"
                                                   if "budget" in result else ""), flush=True)
    print_comparison(table)


def print_comparison(table) -> None:
    print("\nside by side (points of val_acc; time ratio against search-epochs):")
    for n in sorted({row[0] for row in table}):
        results = {variant: result for m, variant, result in table if m == n}
        if "search" not in results:
            continue
        tuned = results["search"]
        for other in ("probe", "seed-features", "seed-finetune", "search-epochs", "search-complete"):
            if other in results:
                print(f"{n:>4} a class: search - {other}: {100 * (tuned['val_acc'] - results[other]['val_acc']):+.1f}")
        if "search-epochs" in results:
            print(f"{n:>4} a class: search seconds / search-epochs seconds: "
                  f"{tuned['seconds'] / results['search-epochs']['seconds']:.2f}")


if __name__ == "__main__":
    main()
