"""Search-space files: loading, the shipped spaces, and one-line errors for broken files (no Ray)."""

import textwrap

import pytest

from tuner.errors import UserError
from tuner.search.space import SPACES_DIR, check_space, load_space, resolve_path


def write_space(tmp_path, body, name="space.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize("name", ["finetune", "feature_extract", "gradual", "demo"])
def test_shipped_spaces_load_and_draw_valid_configs(name):
    space = load_space(name)
    space.fixed = {k: v for k, v in space.settings.items() if k in ("model", "image_size")}
    check_space(space)
    assert space.searched and space.path == SPACES_DIR / f"{name}.py"


def test_bare_name_means_the_shipped_file_and_paths_stay_paths(tmp_path):
    assert resolve_path("finetune") == SPACES_DIR / "finetune.py"
    assert resolve_path(str(tmp_path / "x.py")) == tmp_path / "x.py"


def test_finetune_draws_every_dimension_at_every_depth_and_its_portfolio_names_them_all():
    import optuna

    space = load_space("finetune")
    check_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):  # the same dimensions whatever the depth: TPE models them jointly
        trial = study.ask()
        space.define_by_run()(trial)
        assert set(trial.params) == set(space.searched)
    assert len(space.start) >= 4
    for point in space.start:
        assert set(point) == set(space.searched), point


def test_finetune_portfolio_holds_the_seed_recipe_and_gentle_lp_ft_with_batch_norm_frozen():
    from tuner.train.config import SEED_RECIPE, make_config

    rates = [make_config(point).stage_lrs() for point in load_space("finetune").start]
    seed = {stage: SEED_RECIPE[f"lr_{stage}"] for stage in ("head", "layer4", "layer3")}
    assert any({stage: pytest.approx(rate) for stage, rate in seed.items()} == {s: r[s] for s in seed} for r in rates)
    points = load_space("finetune").start
    gentle = [p for p in points if p["bn_mode"] == "frozen" and p["unfreeze_depth"] > 0 and p["head_init"] == "probe"]
    assert {p["unfreeze_depth"] for p in gentle} == {2, 4}
    assert all(len(set(make_config(p).stage_lrs().values())) == 1 for p in gentle)  # equal rates, head included


def test_fixed_values_win_over_the_file():
    space = load_space("finetune")
    space.fixed = {"optimizer": "sgd"}
    import optuna

    constants = space.define_by_run()(optuna.create_study().ask())
    assert constants["optimizer"] == "sgd"


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("def space(trial):\n    return {\n", "space.py:2: syntax error"),
        ("x = 1\n", "defines no function space(trial)"),
        ("def space(trial):\n    raise ValueError('boom')\n", "raised ValueError: boom"),
        ("def space(trial):\n    trial.suggest_float('lr_haed', 1e-4, 1e-2)\n", "unknown hyperparameter 'lr_haed'"),
        ("def space(trial):\n    return {'unfreeze_depth': 7}\n", "unfreeze_depth must be >= 0 and <= 5"),
        ("def space(trial):\n    return 3\n", "must return a dict"),
        ("SETTINGS = {'trails': 3}\ndef space(trial):\n    pass\n", "unknown key 'trails' (did you mean trials?)"),
        ("SETTINGS = {'workers': 2}\ndef space(trial):\n    pass\n", "unknown key 'workers'"),
        ("SETTINGS = {'seed': 1, 'sampler_seed': 2}\ndef space(trial):\n    pass\n",
         "both 'seed' and 'sampler_seed' are given"),
        ("START = [{'lr_head': -1.0}]\ndef space(trial):\n    pass\n", "START in"),
        ("START = [{'lr_head': 0.01, 'lr_layer4': 0.001}]\ndef space(trial):\n"
         "    trial.suggest_float('lr_head', 1e-4, 1e-1, log=True)\n",
         "configuration 1 sets lr_layer4, which space(trial) does not suggest for it, so it would be ignored"),
        ("def space(trial):\n    trial.suggest_int('epochs', 1, 5)\n", "--max-epochs"),
        ("import no_such_module\ndef space(trial):\n    pass\n", "failed to import: ModuleNotFoundError"),
    ],
)
def test_broken_space_files_give_one_line_errors(tmp_path, body, fragment):
    path = write_space(tmp_path, body)
    with pytest.raises(UserError) as caught:
        check_space(load_space(path))
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message


def test_missing_space_file_lists_the_shipped_ones(tmp_path):
    with pytest.raises(UserError, match="does not exist; pass a path or one of: demo, feature_extract"):
        load_space(str(tmp_path / "nope.py"))


def test_weights_auto_is_refused_on_the_users_own_data(tmp_path):
    from tuner.search.driver import prepare

    with pytest.raises(UserError, match="weights=auto is only for the built-in demo data"):
        prepare("demo", {"data": str(tmp_path)}, {})


def test_a_space_may_not_set_a_trials_length_in_steps(tmp_path):
    path = tmp_path / "steps.py"
    path.write_text("def space(trial):\n    return {'steps': 100}\n")
    space = load_space(str(path))
    with pytest.raises(UserError, match="sets steps; a search sets a trial's length with --max-steps"):
        check_space(space)


def test_settings_seed_is_the_old_name_of_sampler_seed_and_says_so(tmp_path, capsys):
    space = load_space(write_space(tmp_path, "SETTINGS = {'seed': 5, 'trials': 3}\ndef space(trial):\n    pass\n"))
    assert space.settings == {"sampler_seed": 5, "trials": 3}
    note = capsys.readouterr().err.strip()
    assert len(note.splitlines()) == 1 and "'seed' is now 'sampler_seed'" in note, note


def test_settings_may_turn_early_stopping_off(tmp_path):
    from tuner.search.driver import settings_for

    space = load_space(write_space(tmp_path, "SETTINGS = {'early_stopping': False}\ndef space(trial):\n    pass\n"))
    assert settings_for(space, {}).early_stopping is False
    assert settings_for(space, {"sampler_seed": 4}).sampler_seed == 4


def test_each_searched_distribution_is_recorded_as_the_space_declared_it(tmp_path):
    """What RUN/tuner.json keeps for the report: kind, bounds, log, step and choices, in the order drawn."""
    space = load_space(write_space(tmp_path, """
        def space(trial):
            trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
            trial.suggest_int("unfreeze_depth", 0, 4, step=2)
            trial.suggest_float("aug_strength", 0.0, 1.0, step=0.25)
            trial.suggest_categorical("optimizer", ["sgd", "adamw"])
    """))
    check_space(space)
    assert space.searched == ["lr_head", "unfreeze_depth", "aug_strength", "optimizer"]
    assert space.distributions == [
        {"name": "lr_head", "kind": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": None, "choices": None},
        {"name": "unfreeze_depth", "kind": "int", "low": 0, "high": 4, "log": False, "step": 2, "choices": None},
        {"name": "aug_strength", "kind": "float", "low": 0.0, "high": 1.0, "log": False, "step": 0.25,
         "choices": None},
        {"name": "optimizer", "kind": "categorical", "low": None, "high": None, "log": False, "step": None,
         "choices": ["sgd", "adamw"]},
    ]
