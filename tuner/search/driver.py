"""Build and run the search: Ray Tune trials of the trainer, Optuna's TPE through the run's study (study.py), ASHA.

`run_search` starts a new search, `resume_search` continues an interrupted one; both end by writing
the run's tables and `best/` (see results.py). The run's own record, RUN/tuner.json, holds what a
resume needs: the space file's path (as the user named it), the run settings and the fixed values; and
what a report needs: each searched hyperparameter's distribution and ASHA's rungs (runs/run_files.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, first_line
from ..internals import listen_on_loopback_only, restored_tune_config, restoring_search
from ..runs.budget import SearchBudget
from ..runs.run_files import RUN_RECORD, STUDY_FILE, TRIAL_LOGS, read_run_record
from ..runs.selection import AUTO, rule_for_weights
from ..runs.settings import RunSettings, recorded_settings, settings_under_flags
from ..runs.storage import exists, is_uri, local_data, run_location, staged
from ..train import folders
from ..train.checkpoint import recover_best, save_json
from ..train.config import field_names, make_config
from ..train.model import build_model, imagenet_cache_path
from ..train.precision import ComputeChoice, choose_compute
from .interrupts import Interrupted, Interrupts
from .space import SearchSpace, check_space, load_space
from .study import StudySearcher, agree_with_table, direction, ended_trials, study_path, study_storage
from .trainable import train_trial
from .warm_start import load_warm_start, seed_study

DEMO_DATA_DIR = "demo-data"
# START of this many configurations or more is a portfolio: TPE models the results from there on.
PORTFOLIO = 3


def settings_for(space: SearchSpace, flags: dict[str, Any]) -> RunSettings:
    """Defaults, then the space file's SETTINGS, then the flags given on the command line."""
    names = {f.name for f in fields(RunSettings)}
    chosen, notes = settings_under_flags({k: v for k, v in space.settings.items() if k in names},
                                         {k: v for k, v in flags.items() if v is not None})
    settings = RunSettings(**chosen)
    settings.check()
    for note in notes:  # after the checks: bad input is one line. A budget flag replaces the space's budget
        print(f"tuner: note: {note}", file=sys.stderr)
    return settings


def hyperparameter_settings(space: SearchSpace) -> dict[str, Any]:
    """Hyperparameters a space file fixes through SETTINGS (model, image_size, weights, ...).

    A name that is also a run setting (metric) means the run setting only; `seed` there is the old name of
    sampler_seed (space.py reads it as that).
    """
    run_names = {f.name for f in fields(RunSettings)}
    return {k: v for k, v in space.settings.items() if k in field_names() and k not in run_names}


def resolve_auto_weights(fixed: dict[str, Any], space: SearchSpace, settings: RunSettings) -> str | None:
    """Replace weights "auto" by "imagenet" when those weights can be had, else by "none"; say which."""
    if fixed.get("weights") != "auto":
        return None
    if not settings.demo_data or settings.data is not None:
        raise UserError(f"weights=auto is only for the built-in demo data (space {space.name!r}); "
                        f"use weights=imagenet, none or a path")
    model = fixed.get("model", make_config().model)
    weights, cache_file = imagenet_cache_path(model)
    try:  # the real load path: torchvision's cache, else a download
        build_model(make_config({"model": model, "weights": "imagenet"}), num_classes=2)
        fixed["weights"] = "imagenet"
        return f"weights auto -> imagenet ({weights}, {cache_file})"
    except UserError:
        fixed["weights"] = "none"
        return (f"weights auto -> none: ImageNet weights for {model} are not cached at {cache_file} and could "
                f"not be downloaded; trials start from random initialisation")


def prepare(space_arg: str, flags: dict[str, Any], overrides: dict[str, Any]):
    """Load and check everything a search needs before Ray starts.

    Returns (space, settings, splits, weights_choice, budget); weights_choice says what `weights: auto` became.
    """
    space = load_space(space_arg)
    settings = settings_for(space, flags)
    # The trials pick their best epoch by the search's metric; the rest comes from SETTINGS and --set.
    space.fixed = {**hyperparameter_settings(space), **overrides, "metric": settings.metric}
    make_config({k: v for k, v in space.fixed.items() if k != "weights"})  # bad --set values stop here
    weights_choice = resolve_auto_weights(space.fixed, space, settings)
    if weights_choice:
        print(weights_choice)
    if space.fixed.get("weights") not in (None, "imagenet", "none"):  # a file: trials run in other folders
        space.fixed["weights"] = str(Path(space.fixed["weights"]).expanduser().resolve())
    check_space(space)
    if settings.data is None:
        if not settings.demo_data:
            raise UserError(f"no --data given and space {space.name!r} sets no data; pass --data DIR")
        from ..train.demo_data import write_demo_data
        write_demo_data(DEMO_DATA_DIR)
        settings.data = DEMO_DATA_DIR
    if not is_uri(settings.data):
        settings.data = str(Path(settings.data).expanduser().resolve())  # trials run in other folders
    splits = load_run_splits(settings, space.fixed)
    base = make_config(space.fixed)
    if base.weights != "none":
        build_model(base, num_classes=len(splits.classes))  # missing ImageNet file or bad path: stop now
    if settings.selection == AUTO:  # resolved here, so tuner.json records the rule the run used
        settings.selection, why = rule_for_weights(base.weights)
        print(why)
    budget = settings.search_budget(len(splits.train), base.batch_size)
    return space, settings, splits, weights_choice, budget


def local_compute_choice(settings: RunSettings, base, num_classes: int) -> ComputeChoice | None:
    """What CPU trials of a local search compute in, measured here once before Ray starts with a trial's
    threads; trials of this configuration on this node then read the answer from the node cache. None
    where the trials' own nodes decide (GPU trials, a cluster): each trial records its choice."""
    if settings.gpus_per_trial > 0 or settings.address:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(settings.cpus_per_trial)))  # as train_trial does
    try:
        model, _ = build_model(base, num_classes)
        return choose_compute(base, model, torch.device("cpu"), num_classes=num_classes)
    finally:
        torch.set_num_threads(threads)


def load_run_splits(settings: RunSettings, fixed: dict[str, Any]) -> folders.ImageSplits:
    """The checked splits of the run's data (a URI is fetched into this node's cache first)."""
    base = make_config(fixed)
    return folders.load_splits(local_data(settings.data), val_fraction=base.val_fraction, seed=base.seed,
                            skip_bad_images=settings.skip_bad_images)


def _init_ray(address: str | None) -> None:
    import ray

    # Ray's own progress tables are replaced by ProgressPrinter; the legacy engine at verbose=0 is silent.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Save the search state every 2 s (Ray's default adapts to ~10 s+): a killed driver loses less.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if ray.is_initialized():
        return
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    if not address:
        listen_on_loopback_only()
        # "local": always a new Ray of our own, never a cluster that `ray start` left running on this machine.
        ray.init(address="local", include_dashboard=False, **kwargs)  # a local Ray needs no dashboard
        return
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"cannot join the Ray cluster at --address {address!r} ({first_line(err)[:200]}); "
                        f"check the address, or leave --address out for a local Ray") from None


def _check_resources(settings: RunSettings) -> None:
    """Refuse a search whose trials could never start here (e.g. GPUs on a machine without any).

    An autoscaling cluster (cluster.yaml) starts with a head that has no GPU; `--autoscaling` says
    the nodes will come, and trials wait for them.
    """
    import ray

    if settings.autoscaling:
        return
    gpus = ray.cluster_resources().get("GPU", 0)
    if settings.gpus_per_trial > 0 and gpus < settings.gpus_per_trial:
        raise UserError(f"--gpus-per-trial {settings.gpus_per_trial} asked for, but the Ray cluster has {gpus:g} "
                        f"GPUs; use --gpus-per-trial 0, a cluster with GPUs, or --autoscaling if it adds GPU nodes "
                        f"on demand")
    cpus = ray.cluster_resources().get("CPU", 0)
    if settings.cpus_per_trial > cpus:
        raise UserError(f"--cpus-per-trial {settings.cpus_per_trial} is more than the cluster's {cpus:g} CPUs; "
                        f"lower it")


def _trainable(settings: RunSettings, splits: folders.ImageSplits, budget: SearchBudget):
    from ray import tune

    trainable = tune.with_parameters(train_trial, data_location=settings.data, splits=splits, budget=budget,
                                     cpus=settings.cpus_per_trial, loader_workers=settings.loader_workers)
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def _run_config(settings: RunSettings, name: str, printer, tracking: list):
    from ray import tune

    from .pruning import CheckpointPruner

    # --keep-checkpoints best: weights no trial will be delivered or resumed from go as soon as that is so.
    pruner = ([CheckpointPruner(settings.metric, settings.mode, settings.selection)]
              if settings.keep_checkpoints == "best" else [])

    storage = settings.storage if is_uri(settings.storage) else str(Path(settings.storage).expanduser().resolve())
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        # Keep the best epoch by the metric; Ray also always keeps the latest, which resume needs.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=settings.metric,
                                                checkpoint_score_order=settings.mode),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        callbacks=[printer, *pruner, *tracking],
        # Each trial's stdout and stderr: Ray writes them in the trial's working folder and copies that
        # into RUN/trial_<id>/ only with sync_artifacts (at each checkpoint and when the trial ends).
        log_to_file=TRIAL_LOGS,
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=0,
    )


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def study_searcher(space: SearchSpace, settings: RunSettings, run: str, name: str,
                   budget: SearchBudget) -> StudySearcher:
    """Optuna's TPE over the run's study (study.py): START first and in order, then the sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return StudySearcher(space.define_by_run(), metric=settings.metric, mode=settings.mode,
                         start=[{**point, **space.fixed} for point in space.start],
                         sampler=tpe_sampler(settings.sampler_seed, len(space.start), settings.trials),
                         study_name=name, run=run, budget_steps=budget.steps,
                         stopped_as_complete=settings.stopped_as_complete)


def startup_trials(start: int, trials: int) -> int:
    """Trials before TPE models the results: a portfolio (START of 3 or more) is the whole start, with no
    random draws after it; otherwise a third of the trials (2-10), START's points among them."""
    return start if start >= PORTFOLIO else max(2, min(10, trials // 3))


def tpe_sampler(seed: int, start: int, trials: int):
    """TPE that learns from the first trials at once: the dimensions jointly (multivariate, grouped for
    conditional spaces), running trials counted as bad guesses so parallel trials don't all pick one spot."""
    import optuna

    with warnings.catch_warnings():  # multivariate and group are marked experimental since Optuna 2.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, group=True,
                                          n_startup_trials=startup_trials(start, trials))


def run_search(space_arg: str, flags: dict[str, Any], overrides: dict[str, Any]) -> Path:
    """Run a new search; returns the run folder (STORAGE/NAME)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from .progress import ProgressPrinter

    space, settings, splits, weights_choice, budget = prepare(space_arg, flags, overrides)
    name = settings.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = run_location(settings.storage, name)
    if exists(run):
        raise UserError(f"run folder {run!r} already exists; continue it with `tuner resume {run}` "
                        f"or pick another --name")
    warm = (load_warm_start(settings.warm_start, space.define_by_run(), settings.metric, space.fixed)
            if settings.warm_start else None)  # before the run folder exists: a bad RUN leaves nothing
    tracking = []
    if settings.mlflow is not None or settings.wandb is not None:  # mlflow and wandb take seconds to import
        from .tracking import absolute_mlflow_uri, tracking_callbacks

        settings.mlflow = absolute_mlflow_uri(settings.mlflow)  # resume may run from another folder
        tracking = tracking_callbacks(settings, name)  # a missing package or a bad URI stops here, before Ray
    base = make_config(space.fixed)
    compute = local_compute_choice(settings, base, len(splits.classes))
    _init_ray(settings.address)
    _check_resources(settings)
    # ASHA's rungs are budget steps (runs/budget.py): equal budgets, whatever a trial's batch size or epochs.
    scheduler = (ASHAScheduler(time_attr="budget_steps", max_t=budget.steps, grace_period=budget.grace_steps,
                               reduction_factor=settings.reduction_factor)
                 if settings.early_stopping else FIFOScheduler())
    with staged(run) as folder:
        save_json({"space": str(space.path), "settings": asdict(settings), "fixed": space.fixed,
                   "searched": space.searched, "distributions": space.distributions,
                   "weights_choice": weights_choice, "budget": budget.to_dict(), "rungs": settings.asha_rungs(budget),
                   "compute": compute.to_dict() if compute else None}, folder / RUN_RECORD)
    if is_uri(run):  # a node's cached study of an earlier run at this URI is no part of this one
        study_path(run).unlink(missing_ok=True)
    if warm:
        print(warm.describe())
        seed_study(warm, study_storage(run), name, direction(settings.mode))
    searcher = study_searcher(space, settings, run, name, budget)
    printer = ProgressPrinter(settings.metric, settings.mode, budget.steps, settings.trials)
    stopping = (f"ASHA reduction {settings.reduction_factor} on each trial's best {settings.metric} so far"
                if settings.early_stopping else "no early stopping")
    print(f"search {name}: {settings.trials} trials of {space.name} on {settings.data} ({len(splits.train)} "
          f"training images), {settings.max_concurrent} at a time, {stopping}\n{budget.describe()}")
    if compute:
        print(f"compute: {compute.describe()}, for unfreeze_depth {base.unfreeze_depth}; trials of another "
              f"depth measure theirs once per node (the `compute` column)")
    else:
        print("compute: chosen by each trial on its node (the `compute` column of epochs.parquet)")
    tuner = tune.Tuner(
        _trainable(settings, splits, budget),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=settings.max_concurrent),
            scheduler=scheduler,
            num_samples=settings.trials,
            time_budget_s=settings.time_budget,
            # ASHA compares each trial's best round so far (trainable.best_so_far): a fine-tuning trial is not
            # stopped in its dip below the probe head it started from. The searcher has its own metric.
            metric=f"best_{settings.metric}",
            mode=settings.mode,
            trial_dirname_creator=_trial_dirname,
            # One worker process runs trial after trial (Ray's default starts a new one per trial,
            # ~1.8 s each); it is safe because train_trial keeps no state between trials but the
            # node caches and a copy of the built backbone (model._backbone).
            reuse_actors=settings.reuse_workers,
        ),
        run_config=_run_config(settings, name, printer, tracking),
    )
    _fit_and_export(tuner, run, settings, space.searched, splits, budget)
    return run


def resume_search(run: str, more_trials: int | None = None) -> str:
    """Continue an interrupted search: unfinished and errored trials from their checkpoints; `more_trials`
    adds that many new trials (to a finished search too), finished trials never run again.

    Ray restores the searcher, whose define-by-run function reloads the space file from the path the
    user named when starting the search (never a copy in the run folder), and whose study is reopened where
    the run is now (moved, copied, or at a URI on another head node). RUN/tuner.json's `trials` is the
    search's total: --trials N raises it by N once Ray has restored the search, inside fit(), and the record
    says so when fit() is over (a refused restore adds nothing; a resume killed before its export leaves the
    raised total in Ray's state, and the next resume records it).
    """
    from ray import tune

    run = run if is_uri(run) else str(Path(run).expanduser().resolve())
    record = read_run_record(run)
    if not is_uri(run):
        recover_best(Path(run) / "best")  # a crash between best/'s two renames left it aside
    settings = recorded_settings(record["settings"], f"{run!r}: {RUN_RECORD}")
    splits = load_run_splits(settings, record["fixed"])
    budget = SearchBudget(**record["budget"])
    if not tune.Tuner.can_restore(run):
        raise UserError(f"{run!r} holds no Ray Tune state to resume from (it was stopped before the "
                        f"first trial started); start a new search")
    settings.trials += more_trials or 0
    _init_ray(settings.address)
    _check_resources(settings)
    extending = f", {more_trials} of them new" if more_trials else ""
    print(f"resuming {run} ({Path(record['space']).stem}, {settings.trials} trials{extending})")
    tuner = tune.Tuner.restore(run, trainable=_trainable(settings, splits, budget),
                               resume_unfinished=True, resume_errored=True)

    total = {}

    def restored(searcher: StudySearcher, trials: int) -> None:
        searcher.run = run  # where the run is now; its study opens there
        total["trials"] = trials

    config = restored_tune_config(tuner)
    if config is None:
        raise UserError(f"this Ray restores searches in a way tuner does not know; resume {run!r} with the Ray "
                        f"version tuner's pyproject names")
    config.search_alg = restoring_search(config.search_alg, restored, trials=settings.trials,
                                         run=None if is_uri(run) else run)
    try:
        _fit_and_export(tuner, run, settings, record["searched"], splits, budget)
    finally:  # the total Ray restored and raised, once fit() is over (Ray uploads its copy of the run until then)
        if total.get("trials", record["settings"]["trials"]) != record["settings"]["trials"]:
            with staged(run) as folder:
                save_json({**record, "settings": {**record["settings"], "trials": total["trials"]}},
                          folder / RUN_RECORD)
    return run


def _fit_and_export(tuner, run: str, settings: RunSettings, searched: list[str], splits: folders.ImageSplits,
                    budget: SearchBudget) -> None:
    """Run the search and export what it made. A first SIGINT or SIGTERM while trials run stops it gracefully
    (the export then keeps every unfinished trial's checkpoints) and raises Interrupted after the export; a
    second, or one during the export, raises it at once. Either way `tuner resume RUN` goes on."""
    with Interrupts() as interrupts:
        try:
            grid = interrupts.fit(tuner)
            _export(grid, run, settings, searched, splits, budget, interrupts.signal)
        except KeyboardInterrupt:
            print(f"\nstopped at once by {interrupts.signal or 'Ctrl-C'}: `tuner resume {run}` continues the "
                  f"unfinished trials from their last checkpoints", file=sys.stderr, flush=True)
            raise
    if interrupts.signal:
        raise Interrupted(interrupts.signal)


def _export(grid, run: str, settings: RunSettings, searched: list[str], splits: folders.ImageSplits,
            budget: SearchBudget, interrupted: str | None) -> None:
    """The tables, best/ (refit on train+val when settings.refit says so) and (for a run at a URI) the study
    into the run folder. `interrupted` names the signal that stopped the search (None: it ended): its
    unfinished trials are `interrupted` and keep their checkpoints, and the study is told nothing more."""
    from .refit import refit_best
    from .results import export_results

    ended = None if interrupted is None else ended_trials(run)
    with staged(run) as folder:
        rows = export_results(grid, folder, settings, searched, splits, budget, location=run, ended=ended)
        agree_with_table(run, rows, settings.metric, settings.stopped_as_complete, ended=interrupted is None)
        # Before MLflow logs best/: the model the user gets. Not after an interruption: the user asked to stop.
        line = refit_best(folder, settings, splits) if interrupted is None else None
        if line:
            print(line)
        if is_uri(run):
            shutil.copyfile(study_path(run), folder / STUDY_FILE)
        if settings.mlflow:
            from .tracking import log_best_model

            line = log_best_model(settings.mlflow, run.rstrip("/").rsplit("/", 1)[-1], folder / "best")
            if line:
                print(line)
    if interrupted:
        print(f"interrupted by {interrupted}: `tuner resume {run}` continues the unfinished trials from their "
              f"checkpoints", flush=True)
