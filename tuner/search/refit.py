"""After the search: best/ becomes the chosen configuration refit on train+val (train/refit.py).

Runs in the driver process, on its device, once the tables and best/ are written (results.py). The
configuration and its step are read from best/ (config.json, metrics.json), whichever trial the search
chose. The search's own checkpoint is kept in best/search/ so the two can be compared; the refit model,
which learnt from the validation images, is judged on the test split alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line
from ..runs.outcomes import NUMBER, trial_name
from ..train import folders
from ..train.checkpoint import write_best
from ..train.config import make_config
from ..train.engine import Diverged, resolve_device
from ..train.evaluation import load_trained
from ..train.refit import refit

SEARCH_BEST = "search"  # best/search/: the search's chosen checkpoint, beside the refit model


def refit_best(run_dir: Path, settings, splits: folders.ImageSplits) -> str | None:
    """Refit best/'s configuration on train+val when `settings.refit` says so; returns the line to print.

    None when no refit was due (or there is no best/). A refit that fails (diverged, out of memory)
    leaves best/ as the search's and says so in the line.
    """
    best = Path(run_dir) / "best"
    shutil.rmtree(best / SEARCH_BEST, ignore_errors=True)  # a resumed run's old copy: rewritten below, or gone
    if not (best / "model.pt").is_file() or not settings.refits(len(splits.train)):
        return None
    chosen = json.loads((best / "metrics.json").read_text())
    config = make_config(json.loads((best / "config.json").read_text()))
    steps = int(chosen.get("step") or 0)
    try:
        result = refit(config, splits, steps, num_workers=settings.loader_workers)
    except (UserError, Diverged) as err:
        return f"refit failed ({first_line(err)}); best/ holds the search's checkpoint"
    payload = result.payload
    # Which trial and epoch it refits, and why the search chose it (`selection`, where results.py says).
    payload["metrics"].update({"trial_id": chosen.get("trial_id"), "chosen_epoch": chosen.get("epoch"),
                               **{k: chosen[k] for k in ("selection", NUMBER) if k in chosen}})
    if splits.test:  # through the normal load path, in the precision it trained in, as the search's was
        trained = load_trained(payload, resolve_device("auto"), as_trained=True)
        payload["metrics"].update(trained.evaluate(splits.test, prefix="test").metrics)
    # One swap: the new best/ holds the refit model and, in best/search/, the search's checkpoint.
    write_best(best, payload, extra=lambda new: keep_search_checkpoint(best, new / SEARCH_BEST))
    return refit_line(payload["metrics"], chosen, len(splits.train), len(splits.val))


def keep_search_checkpoint(best: Path, target: Path) -> None:
    """Copy best/'s files (the search's chosen checkpoint) into `target` (best/search/ of the new best/)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in best.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, target / path.name)


def refit_line(metrics: dict[str, Any], chosen: dict[str, Any], train: int, val: int) -> str:
    """'refit: trial N (T)'s configuration on N train+val images (...), S steps (E epochs), test_acc ...'."""
    test = "; no test split to judge it (the search's checkpoint is in best/search/)"
    if "test_acc" in metrics:
        search = f"{chosen['test_acc']:.4f}" if "test_acc" in chosen else "n/a"
        test = f", test_acc {metrics['test_acc']:.4f} (the search's checkpoint: {search}, in best/search/)"
    trial = trial_name(metrics.get(NUMBER), metrics["trial_id"])
    return (f"refit: {trial}'s configuration on {metrics['refit_images']} train+val images "
            f"({train} + {val}), {metrics['refit_steps']} steps ({metrics['refit_epochs']} epochs){test}")
