"""What the command line prints: a setting that loses says so, one default per --help line, no download
line where nothing can be downloaded, exports named by their format."""

import json
import re
import socket
import threading

import pytest

from tuner.__main__ import COMMANDS, main
from tuner.errors import UserError
from tuner.runs.settings import settings_under_flags
from tuner.serve.export import FORMAT_NAMES, FORMATS
from tuner.train.config import make_config, override_notes
from tuner.train.demo_data import write_demo_data
from tuner.train.model import build_model

TINY = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The demo data with 4 training images a class: 32 images, 2 steps an epoch at batch 16."""
    root = tmp_path_factory.mktemp("small") / "data"
    write_demo_data(root, train_per_class=4, val_per_class=2, test_per_class=1)
    return root


def _train(data, out, *argv) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--loader-workers", "0", *argv])


def test_epochs_under_steps_from_a_config_says_so_and_set_steps_changes_the_length(small_demo, tmp_path, capsys):
    config = tmp_path / "config.json"  # as a run's best/config.json: every field, epochs at its default
    config.write_text(json.dumps(make_config({**TINY, "steps": 4}).to_dict()))

    assert _train(small_demo, tmp_path / "a", "--config", str(config), "--set", "epochs=1") == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "tuner train: note: epochs=1 ignored: steps=4 from --config wins; pass --set steps=N for another length, "
        "or --set steps=none to train epochs=1"]
    assert "length: 4 optimizer steps (2 an epoch)" in captured.out

    assert _train(small_demo, tmp_path / "b", "--config", str(config), "--set", "steps=2") == 0
    captured = capsys.readouterr()
    assert "length: 2 optimizer steps (2 an epoch)" in captured.out and "note" not in captured.err

    # The config's own epochs (the default, which nobody chose) is not a setting that lost.
    assert _train(small_demo, tmp_path / "c", "--config", str(config)) == 0
    assert "note" not in capsys.readouterr().err

    assert _train(small_demo, tmp_path / "d", "--config", str(config), "--set", "steps=none", "--set", "epochs=1") == 0
    assert "length: 2 optimizer steps (2 an epoch)" in capsys.readouterr().out


def test_epochs_on_resume_names_the_checkpoints_steps(small_demo, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(small_demo, run, *(f"--set={k}={v}" for k, v in {**TINY, "steps": 2}.items())) == 0
    capsys.readouterr()
    assert _train(small_demo, run, "--resume", "--set", "epochs=3") == 0
    assert "tuner train: note: epochs=3 ignored: steps=2 from the run's checkpoint wins" in capsys.readouterr().err


def test_a_stage_rate_overrides_the_ratio_and_says_so():
    config = make_config({"lr_layer4": 1e-4, "lr_backbone_ratio": 0.5})
    assert override_notes(config, {"lr_backbone_ratio": "--set", "lr_layer4": "--config"}) == [
        "lr_backbone_ratio=0.5 ignored: lr_layer4=0.0001 from --config wins; pass --set lr_layer4=none to use "
        "lr_backbone_ratio=0.5"]
    assert override_notes(config, {"lr_layer4": "--config"}) == []  # the ratio was not given: nothing lost
    assert override_notes(make_config({"lr_backbone_ratio": 0.5}), {"lr_backbone_ratio": "--set"}) == []


def test_a_budget_flag_says_which_settings_of_the_space_it_replaces():
    space = {"max_steps": 200, "grace_period": 20, "trials": 6}
    chosen, notes = settings_under_flags(space, {"max_epochs": 3, "trials": 4})
    assert chosen == {"max_epochs": 3, "trials": 4}
    assert notes == [
        "max_steps=200 from the space's SETTINGS ignored: --max-epochs 3 replaces the space's budget; pass "
        "--max-steps 200 instead to keep it",
        "grace_period=20 from the space's SETTINGS ignored: --max-epochs 3 replaces the space's budget; pass "
        "--grace-period to set one"]
    # A flag of the same name is the documented order (flag, then SETTINGS): no note.
    assert settings_under_flags(space, {"max_steps": 300, "grace_period": 30}) == (
        {"max_steps": 300, "grace_period": 30, "trials": 6}, [])
    assert settings_under_flags(space, {}) == (space, [])


def _help_entries(text: str) -> list[str]:
    """--help's text cut into its entries: a line that starts with two spaces and a name begins one."""
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"  \S", line) or not entries:
            entries.append(line)
        else:
            entries[-1] += " " + line.strip()
    return entries


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_help_line_states_at_most_one_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"] if command else ["--help"])
    text = capsys.readouterr().out
    assert "usage: tuner" in text
    for entry in _help_entries(text):
        assert entry.count("default:") <= 1, f"tuner {command} --help: {entry}"
    if command == "train":
        assert "(default: runs/train-YYYYmmdd-HHMMSS)" in " ".join(text.split()).replace("- ", "-")
        assert "(default: None)" not in " ".join(e for e in _help_entries(text) if "--data" in e)  # required


def test_every_export_format_has_a_name():
    assert set(FORMAT_NAMES) == set(FORMATS)
    assert FORMAT_NAMES["export"] == "torch.export program"


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_offline_imagenet_weights_print_no_download_line(empty_torch_home, monkeypatch, capsys):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a dead proxy: offline with or without internet
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(UserError, match=r"not in the cache at .* \(127.0.0.1:9 is not reachable"):
        build_model(make_config({**TINY, "weights": "imagenet"}), num_classes=3)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # the UserError is the one line the caller prints


@pytest.fixture
def closing_proxy():
    """A proxy that accepts a connection and closes it: reachable, yet no download comes through."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_a_failed_download_prints_our_line_not_torchs(empty_torch_home, closing_proxy, monkeypatch, capsys):
    monkeypatch.setenv("https_proxy", closing_proxy)
    monkeypatch.setenv("HTTPS_PROXY", closing_proxy)
    with pytest.raises(UserError, match="could not be downloaded"):
        build_model(make_config({**TINY, "weights": "imagenet"}), num_classes=3)
    captured = capsys.readouterr()
    assert "Downloading" not in captured.out + captured.err
    assert captured.err.startswith("downloading ImageNet weights for resnet18") and captured.err.count("\n") == 1
