"""The command line as a user meets it: exit codes, one-line errors, files written."""

import json
import subprocess
import sys

import pytest
import torch

from tuner.__main__ import build_parser, main

TINY = ["--set", "model=resnet18", "--set", "weights=none", "--set", "image_size=32", "--set", "batch_size=64",
        "--loader-workers", "0"]


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", "--data", str(demo_root), "--out", str(out), "--set", "epochs=1", *TINY]) == 0
    return out


def test_train_leaves_best_folder_with_metrics_and_provenance(trained):
    best = trained / "best"
    assert {p.name for p in best.iterdir()} >= {"model.pt", "config.json", "classes.json", "metrics.json"}
    metrics = json.loads((best / "metrics.json").read_text())
    assert {"val_acc", "epoch", "weights", "test_acc"} <= set(metrics)
    assert metrics["weights"]["name"] == "none"
    assert json.loads((best / "config.json").read_text())["model"] == "resnet18"


def test_train_prints_an_epoch_table(demo_root, tmp_path, capsys):
    assert main(["train", "--data", str(demo_root), "--out", str(tmp_path / "r"), "--set", "epochs=1", *TINY]) == 0
    out = capsys.readouterr().out
    assert "weights: none" in out and "val_acc" in out and "saved:" in out


def test_best_config_json_is_usable_as_train_config(trained, demo_root, tmp_path):
    config = trained / "best" / "config.json"
    assert main(["train", "--data", str(demo_root), "--config", str(config), "--out", str(tmp_path / "again"),
                 "--loader-workers", "0"]) == 0
    assert json.loads((tmp_path / "again" / "best" / "config.json").read_text()) == json.loads(config.read_text())


def test_resume_continues_to_more_epochs(trained, demo_root, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(demo_root), "--out", str(run), "--set", "epochs=1", *TINY]) == 0
    assert main(["train", "--data", str(demo_root), "--out", str(run), "--resume", "--set", "epochs=2",
                 "--loader-workers", "0"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_predict_prints_top_k_classes(trained, demo_root, capsys):
    image = next((demo_root / "val" / "circle").iterdir())
    assert main(["predict", "--model", str(trained / "best"), str(image), "--top-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    top = result[0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    classes = json.loads((trained / "best" / "classes.json").read_text())
    assert top[0]["class"] in classes


def test_check_data_exit_codes(demo_root, tmp_path, capsys):
    assert main(["check-data", str(demo_root)]) == 0
    assert "usable" in capsys.readouterr().out
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.txt").write_text("x")
    assert main(["check-data", str(tmp_path / "only")]) == 2


def _one_line_error(capsys, fragment):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err, err


def run_cli(argv):
    """main()'s exit code, also when argparse exits by itself."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--data", "{missing}"], "does not exist"),
        (["train", "--data", "{demo}", "--set", "lr_hed=1"], "did you mean lr_head"),
        (["train", "--data", "{demo}", "--set", "unfreeze_depth=9"], "unfreeze_depth must be >= 0 and <= 5"),
        (["train", "--data", "{demo}", "--set", "epochs"], "--set expects key=value"),
        (["train", "--data", "{demo}", "--config", "{missing}"], "config file"),
        pytest.param(["train", "--data", "{demo}", "--device", "cuda"], "no CUDA GPU",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
        (["train", "--data", "{demo}", "--loader-workers", "-1"], "--loader-workers must be >= 0, but got -1"),
        (["train", "--data", "{demo}", "--resume"], "--resume"),
        (["train", "--data", "{demo}", "--set", "weights={missing}"], "weights file"),
        (["train", "--data", "{demo}", "--bogus"], "unrecognized arguments"),
        (["predict", "--model", "{missing}", "x.png"], "no checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, fragment, demo_root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(missing=tmp_path / "missing", demo=demo_root) for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(out)]
    assert run_cli(argv) == 2
    _one_line_error(capsys, fragment)
    assert not out.exists()  # nothing written for a refused run


def test_existing_out_folder_is_never_overwritten(trained, demo_root, capsys):
    before = (trained / "best" / "model.pt").read_bytes()
    assert main(["train", "--data", str(demo_root), "--out", str(trained), *TINY]) == 2
    _one_line_error(capsys, "already holds files")
    assert (trained / "best" / "model.pt").read_bytes() == before


def test_predict_refuses_a_file_that_is_not_our_checkpoint(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    assert main(["predict", "--model", str(path), "x.png"]) == 2
    _one_line_error(capsys, "is not a tuner checkpoint")


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tuner", "check-data", str(tmp_path / "nowhere")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout


def test_an_out_path_that_is_a_file_is_one_line_and_kept(demo_root, tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("mine")
    assert main(["train", "--data", str(demo_root), "--out", str(target), *TINY]) == 2
    _one_line_error(capsys, "taken.txt")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("argv, name, value, note", [
    (["search", "--space", "demo", "--seed", "3"], "sampler_seed", 3, "--seed is now --sampler-seed"),
    (["search", "--space", "demo", "--workers", "2"], "loader_workers", 2, "--workers is now --loader-workers"),
    (["train", "--data", "d", "--workers", "0"], "loader_workers", 0, "--workers is now --loader-workers"),
])
def test_old_flag_spellings_still_work_with_a_one_line_note(argv, name, value, note, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, name) == value
    _one_line_error(capsys, f"tuner {argv[0]}: note: {note}")


def test_search_flags_come_from_the_run_settings_with_their_defaults(capsys):
    from dataclasses import fields

    from tuner.runs.settings import RunSettings, flag

    assert run_cli(["search", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for item in fields(RunSettings):
        if flag(item):
            assert flag(item) in shown, item.name
    assert "seed of the Optuna sampler (default: 0)" in shown and "trials to run (default: 20)" in shown
    assert "--seed" not in shown.replace("--sampler-seed", "") and "--workers" not in shown
    args = build_parser().parse_args(["search", "--space", "demo"])
    assert args.sampler_seed is None and args.early_stopping is None  # not given: SETTINGS stay in force


def test_version_is_the_packages_one_version():
    from importlib.metadata import version

    import tuner

    result = subprocess.run([sys.executable, "-m", "tuner", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"tuner {tuner.__version__}"
    assert version("tuner") == tuner.__version__  # pyproject reads tuner.__version__: one place
