"""Private names of Ray, Optuna and torch live in tuner/internals.py only, and each still exists there.

An upgrade that moves one fails here in seconds, not in a slow search (or silently: a warm start taking 0
trials, `--trials N` adding nothing). No Ray cluster is started.
"""

import ast
import re
from pathlib import Path

import optuna
import pytest
import torch

from tuner import internals

PACKAGE = Path(internals.__file__).parent
# A private attribute of a framework object: `x._name` or a module path like `ray._private`.
FRAMEWORK_MODULE = re.compile(r"^(ray|optuna|torch|torchvision|mlflow|wandb)(\.|$)")


def _own_private_names() -> set[str]:
    """Private names tuner defines itself (functions, classes, attributes it assigns): these are ours."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {name for name in names if name.startswith("_")}


def test_no_module_but_internals_names_a_private_member_of_ray_optuna_or_torch():
    ours = _own_private_names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(internals.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            private = None
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                private = node.attr if node.attr not in ours else None
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                private = next((m for m in modules if FRAMEWORK_MODULE.match(m) and "._" in m), None)
            if private:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {private}")
    assert found == []


def test_a_study_trial_can_be_had_again_by_its_number_to_suggest_report_and_tell():
    study = optuna.create_study(direction="maximize")
    asked = study.ask()
    asked.suggest_float("x", 0.0, 1.0)
    again = internals.running_trial(study, asked.number)
    assert again.suggest_float("x", 0.0, 1.0) == asked.params["x"]  # the same trial: its value, not a new draw
    again.report(0.5, 3)
    study.tell(asked.number, 0.75)
    assert study.trials[0].intermediate_values == {3: 0.5} and study.trials[0].value == 0.75


@pytest.mark.parametrize("distribution, value, inside", [
    (optuna.distributions.FloatDistribution(0.1, 1.0, log=True), 0.5, True),
    (optuna.distributions.FloatDistribution(0.1, 1.0, log=True), 2.0, False),
    (optuna.distributions.IntDistribution(0, 4, step=2), 3, False),
    (optuna.distributions.CategoricalDistribution(["a", "b"]), "c", False),
    (optuna.distributions.CategoricalDistribution(["a", "b"]), "b", True),
])
def test_optuna_says_whether_a_value_lies_in_a_distribution(distribution, value, inside):
    assert internals.in_distribution(distribution, value) is inside


def test_rays_search_generator_keeps_the_counts_the_restore_wrapper_raises():
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator
    from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: F401  (Ray's import order)

    from tuner.search.study import StudySearcher

    seen = []
    base = StudySearcher(lambda trial: {}, metric="val_acc", mode="max", start=[], sampler=None, study_name="s",
                         run="/nowhere", budget_steps=10)
    search = internals.restoring_search(ConcurrencyLimiter(base, max_concurrent=1),
                                        lambda searcher, total: seen.append((searcher, total)), trials=7, run=None)
    assert isinstance(search, SearchGenerator)

    class Experiment:
        spec = {}

    search.set_state({"counter": 3, "total_samples": 5, "finished": True, "experiment": Experiment()})
    assert (search._total_samples, search._finished) == (7, False) and seen == [(base, 7)]


def test_a_restored_tuner_has_its_tune_config_where_internals_looks():
    from ray import tune

    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(num_samples=2))
    assert internals.restored_tune_config(tuner).num_samples == 2


def test_rays_checkpoint_manager_says_which_checkpoint_is_a_trials_best_and_which_its_latest(tmp_path):
    from types import SimpleNamespace

    from ray import tune
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_acc"))
    trial = SimpleNamespace(run_metadata=SimpleNamespace(checkpoint_manager=manager))
    # (folder, val_acc, is the best, is the latest) after each round
    expected = [[("0", 0.5, True, True)], [("1", 0.9, True, True)], [("1", 0.9, True, False), ("2", 0.7, False, True)]]
    for round_, score in enumerate([0.5, 0.9, 0.7]):
        (tmp_path / str(round_)).mkdir()
        manager.register_checkpoint(_TrainingResult(tune.Checkpoint(str(tmp_path / str(round_))), {"val_acc": score}))
        kept = internals.kept_checkpoints(trial)
        assert [(Path(c.path).name, m["val_acc"], best, latest) for c, m, best, latest in kept] == expected[round_]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]  # Ray deleted round 0's itself


def test_rays_constants_and_logger_callbacks_keep_the_names_used(tmp_path):
    from ray._private import ray_constants
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.air.integrations.wandb import WandbLoggerCallback

    assert isinstance(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, str) and hasattr(ray_constants, "ENABLE_RAY_CLUSTER")
    mlflow = MLflowLoggerCallback(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="e")
    mlflow.setup()
    assert internals.mlflow_trial_runs(mlflow) == {}
    assert internals.mlflow_client(mlflow).get_experiment_by_name("e") is not None
    wandb = WandbLoggerCallback(project="p")
    assert wandb._trial_logging_actors == {} and callable(wandb._signal_logging_actor_stop)
    internals.stop_wandb_loggers(wandb)  # no actors: nothing to stop, and no error


def test_torchs_fused_list_ops_do_what_the_ema_needs():
    targets, sources = [torch.zeros(3), torch.zeros(2)], [torch.ones(3), torch.full((2,), 2.0)]
    internals.foreach_lerp_(targets, sources, 0.5)
    assert torch.equal(targets[0], torch.full((3,), 0.5)) and torch.equal(targets[1], torch.ones(2))
    internals.foreach_copy_(targets, sources)
    assert all(torch.equal(t, s) for t, s in zip(targets, sources, strict=True))
