"""Tracking a search in MLflow or W&B: Ray's logger callbacks, each behind a pip extra.

`tracking_callbacks` builds them before Ray starts, so a missing package, a tracking URI MLflow cannot
open or a W&B login that is not there stops the search with a one-line error instead of a traceback
from inside Ray. Each trial is one MLflow run (tag `trial_id`, in the experiment named after the run
folder) or one W&B run (id = the trial's id, in group NAME): its hyperparameters, then every round's
metrics. `log_best_model` adds RUN/best/ to the best trial's MLflow run when the search ends.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback  # imports without wandb; the callback needs it

from ..errors import UserError, first_line
from ..internals import mlflow_client, mlflow_trial_runs, stop_wandb_loggers
from ..runs.settings import RunSettings
from ..runs.storage import is_uri

BEST_ARTIFACT = "best"  # the artifact folder of the best model in the best trial's MLflow run
_SQLITE = "sqlite:///"


def _require(package: str, flag: str) -> None:
    try:
        importlib.import_module(package)
    except ImportError:
        raise UserError(f"{flag} needs the {package} package, which is not installed here: "
                        f"pip install 'tuner[{package}]'") from None


def absolute_mlflow_uri(uri: str | None) -> str | None:
    """A relative sqlite:///PATH made absolute: resume and the best-model step may run from another folder."""
    if uri is None or not uri.startswith(_SQLITE) or uri.startswith(_SQLITE + "/"):
        return uri
    return _SQLITE + str(Path(uri[len(_SQLITE):]).expanduser().resolve())


def tracking_callbacks(settings: RunSettings, name: str) -> list[Any]:
    """The logger callbacks --mlflow and --wandb ask for, checked; none without them."""
    callbacks = []
    if settings.mlflow is not None:
        _require("mlflow", "--mlflow")
        _mlflow_experiment(settings.mlflow, name)
        callbacks.append(MLflowTrialRuns(settings.mlflow, experiment_name=name))
    if settings.wandb is not None:
        callbacks.append(_wandb_callback(settings.wandb, name, local_run=not is_uri(settings.storage)))
    return callbacks


# --- MLflow ----------------------------------------------------------------------------------------


class MLflowTrialRuns(MLflowLoggerCallback):
    """Ray's MLflowLoggerCallback with the trial's id as a run tag and the budget step as the metrics' step.

    The tag finds the run again: a trial resumed by `tuner resume` logs on to its own run (Ray's callback
    would start a second one), and `log_best_model` finds the best trial's. The step is the budget step,
    the x axis of ASHA, the Optuna study and the report, so trials of different batch sizes line up.
    """

    def log_trial_start(self, trial) -> None:
        runs = mlflow_trial_runs(self)
        if trial not in runs:
            runs[trial] = self._run_of(trial)
        super().log_trial_start(trial)  # the hyperparameters (again on resume: same values, allowed)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in mlflow_trial_runs(self):
            self.log_trial_start(trial)
        step = int(result.get("budget_steps") or result.get("training_iteration") or 0)
        self.mlflow_util.log_metrics(run_id=mlflow_trial_runs(self)[trial], metrics_to_log=result, step=step)

    def _run_of(self, trial) -> str:
        client = mlflow_client(self)
        found = client.search_runs([self.mlflow_util.experiment_id], f"tags.trial_id = '{trial.trial_id}'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        tags = {**self.tags, "trial_id": trial.trial_id, "trial_name": str(trial)}
        return self.mlflow_util.start_run(run_name=f"trial_{trial.trial_id}", tags=tags).info.run_id


def _mlflow_experiment(uri: str, name: str) -> None:
    """Open the tracking store and create the search's experiment (artifacts beside a SQLite file)."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "Creating initial MLflow database tables"
    try:
        client = MlflowClient(tracking_uri=uri)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except Exception as err:  # MLflow raises its own and its stores' exceptions for a bad URI
        raise UserError(f"--mlflow {uri!r}: MLflow cannot use it ({first_line(err)[:200]}); give a database URI "
                        f"such as sqlite:///PATH/mlflow.db or a tracking server's http(s)://HOST:PORT") from None


def _artifact_location(uri: str, name: str) -> str | None:
    # MLflow's default for a SQLite store is ./mlruns under whatever folder the search ran from; keep the
    # artifacts beside the database instead. A server decides for itself (None).
    if not uri.startswith(_SQLITE):
        return None
    return str(Path(uri[len(_SQLITE):]).expanduser().resolve().parent / "mlartifacts" / name)


def log_best_model(uri: str, name: str, best: Path) -> str | None:
    """Log the folder `best` (RUN/best/) as the artifact `best` of its trial's MLflow run; returns a line
    that says where, or None when the search has no best model or the trial has no run."""
    metrics_file = best / "metrics.json"
    if not metrics_file.is_file():
        return None
    from mlflow import MlflowClient

    trial_id = json.loads(metrics_file.read_text())["trial_id"]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], f"tags.trial_id = '{trial_id}'",
                              max_results=1) if experiment else []
    if not runs:
        return None
    run_id = runs[0].info.run_id
    client.log_artifacts(run_id, str(best), artifact_path=BEST_ARTIFACT)
    client.set_tag(run_id, "best", "true")
    client.set_experiment_tag(experiment.experiment_id, "best_run_id", run_id)
    return f"MLflow: best model (trial {trial_id}) logged as artifact {BEST_ARTIFACT!r} of run {run_id}, " \
           f"experiment {name!r} at {uri}"


# --- Weights & Biases ------------------------------------------------------------------------------


def _wandb_callback(project: str, name: str, local_run: bool):
    _require("wandb", "--wandb")
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode not in ("offline", "disabled", "dryrun") and not wandb.login(prompt=False, verify=False):
        raise UserError(f"--wandb {project!r}: W&B has no API key on this machine; run `wandb login` or set "
                        f"WANDB_API_KEY, or set WANDB_MODE=offline to keep the runs on this machine (`wandb sync` "
                        f"uploads them later)")
    # Ray starts a logging actor per trial; WANDB_MODE given to the driver reaches it on a cluster too.
    # resume="allow": a trial resumed by `tuner resume` goes on in its own W&B run (its id is the trial's).
    return WandbTrialRuns(project=project, group=name, resume="allow", local_run=local_run,
                          **({"mode": mode} if mode else {}))


class WandbTrialRuns(WandbLoggerCallback):
    """Ray's WandbLoggerCallback with W&B's files straight in RUN/trial_<id>/wandb/, which ends the W&B runs
    of trials still running when the search stops.

    Ray ends a trial's W&B run when the trial ends; a search stopped before its trials (Ctrl-C, an error
    in the driver) would leave their logging actors waiting, and Ray waits for them for upload_timeout
    (30 minutes) before it exits. Ended here, they finish their runs and the driver exits at once.
    """

    def __init__(self, *args, local_run: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.local_run = local_run

    def log_trial_start(self, trial) -> None:
        # Ray's default is the trial's staging folder, copied into the run folder now and then: whatever W&B
        # writes after the last copy (its run's end) would be lost. A run folder on this machine gets it direct.
        if self.local_run:
            Path(trial.path).mkdir(parents=True, exist_ok=True)  # W&B falls back to a temp folder without it
            self.kwargs["dir"] = trial.path  # RUN/trial_<id>: W&B writes RUN/trial_<id>/wandb/
        super().log_trial_start(trial)

    def on_experiment_end(self, trials, **info) -> None:
        stop_wandb_loggers(self)
        super().on_experiment_end(trials, **info)
