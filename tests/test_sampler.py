"""The sampler behind every search: START's configurations first and in order, then TPE with no random start
after a portfolio (real Optuna through the study's Ray Searcher, no Ray cluster)."""

import pytest

from tuner.runs.budget import search_budget
from tuner.runs.settings import RunSettings
from tuner.search.driver import PORTFOLIO, startup_trials, study_searcher
from tuner.search.space import check_space, load_space


def test_the_portfolio_is_suggested_first_and_in_order_then_tpe_draws_inside_the_space(tmp_path):
    space = load_space("finetune")
    space.fixed = {"model": "resnet18"}
    check_space(space)
    searcher = study_searcher(space, RunSettings(trials=8), str(tmp_path), "portfolio", search_budget(100, 32))
    for number, point in enumerate(space.start):
        suggestion = searcher.suggest(f"t{number}")
        assert {k: suggestion[k] for k in point} == point  # exactly the prior, in START's order
        assert suggestion["model"] == "resnet18"
        searcher.on_trial_complete(f"t{number}", {"val_acc": 0.5 + number / 10, "budget_steps": 1000})
    later = searcher.suggest("t-next")  # TPE now: a fresh configuration, inside the space
    assert later["number"] == len(space.start) + 1  # the trial's number (study.py), no hyperparameter
    hyperparameters = {k: v for k, v in later.items() if k != "number"}
    assert set(space.searched) <= set(later) and hyperparameters not in [{**p, **space.fixed} for p in space.start]
    assert 0 <= later["unfreeze_depth"] <= 4 and 1e-5 <= later["lr_head"] <= 1e-2


@pytest.mark.parametrize("start, trials, expected", [(4, 12, 4), (PORTFOLIO, 40, PORTFOLIO), (1, 12, 4),
                                                    (0, 3, 2), (0, 60, 10)])
def test_a_portfolio_is_the_whole_random_start_and_a_lone_start_point_is_not(start, trials, expected):
    assert startup_trials(start, trials) == expected
