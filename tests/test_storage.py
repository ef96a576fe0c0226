"""Data and run folders behind URIs, through pyarrow.fs (file:// here; s3:// takes the same path)."""

import multiprocessing

import pytest

from tuner.errors import UserError
from tuner.runs.storage import exists, local_data, read_file_text, run_location, staged


def make_dataset(root):
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        (root / "train" / name / "x.txt").write_text(name)
    return root


def test_plain_paths_are_used_in_place(tmp_path):
    assert local_data(str(tmp_path)) == tmp_path.resolve()


def test_a_uri_is_fetched_once_into_the_node_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "cache"))
    source = make_dataset(tmp_path / "source")
    local = local_data(f"file://{source}")
    assert local.is_relative_to(tmp_path / "cache")
    assert (local / "train" / "b" / "x.txt").read_text() == "b"
    (source / "train" / "a" / "x.txt").write_text("changed")
    assert local_data(f"file://{source}") == local  # cached: not fetched again
    assert (local / "train" / "a" / "x.txt").read_text() == "a"


def _fetch(uri, cache, queue):
    import os

    os.environ["TUNER_CACHE"] = cache
    queue.put(str(local_data(uri)))


def test_trials_starting_together_share_one_fetch(tmp_path):
    source = make_dataset(tmp_path / "source")
    cache = str(tmp_path / "cache")
    queue = multiprocessing.get_context("spawn").Queue()
    processes = [multiprocessing.get_context("spawn").Process(target=_fetch, args=(f"file://{source}", cache, queue))
                 for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    folders = {queue.get(timeout=5) for _ in processes}
    assert len(folders) == 1
    data_dir = tmp_path / "cache" / "data"
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".fetch-")] == []  # no half copies left


def test_missing_or_non_folder_uri_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="is not a folder"):
        local_data(f"file://{tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match="cannot open"):
        local_data("nosuchscheme://bucket/data")


def test_staged_files_reach_a_uri_run_folder(tmp_path):
    run = run_location(f"file://{tmp_path / 'runs'}", "search-1")
    assert run == f"file://{tmp_path / 'runs'}/search-1" and not exists(run)
    with staged(run) as folder:
        (folder / "tuner.json").write_text("{}")
        (folder / "best").mkdir()
        (folder / "best" / "metrics.json").write_text('{"val_acc": 0.5}')
    assert exists(run)
    assert read_file_text(f"{run}/best/metrics.json") == '{"val_acc": 0.5}'
    assert read_file_text(f"{run}/missing.json") is None


def test_local_run_folders_are_written_in_place(tmp_path):
    run = run_location(str(tmp_path / "runs"), "r")
    with staged(run) as folder:
        (folder / "f.txt").write_text("x")
    assert (tmp_path / "runs" / "r" / "f.txt").read_text() == "x"
