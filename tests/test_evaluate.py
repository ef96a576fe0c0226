"""`tuner evaluate`: a trained model judged on a labelled folder, the way training judged its test split."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tuner.__main__ import main
from tuner.errors import DataError
from tuner.runs.selection import mcnemar_p_of_counts
from tuner.serve.evaluate import compare, wilson_interval
from tuner.train.folders import find_labelled

# fp32 and contiguous, as evaluate runs a model: the test_acc training records is then the same computation
TINY = ["--set", "model=resnet18", "--set", "weights=none", "--set", "image_size=32", "--set", "batch_size=64",
        "--set", "precision=fp32", "--set", "memory_format=contiguous", "--loader-workers", "0"]


@pytest.fixture(scope="module")
def best(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    assert main(["train", "--data", str(demo_root), "--out", str(out), "--set", "epochs=2", *TINY]) == 0
    return out / "best"


@pytest.fixture(scope="module")
def other(demo_root, tmp_path_factory):
    """A second model of the same classes: one epoch, another seed."""
    out = tmp_path_factory.mktemp("evaluate-other") / "run"
    assert main(["train", "--data", str(demo_root), "--out", str(out), "--set", "epochs=1", "--set", "seed=1",
                 *TINY]) == 0
    return out / "best"


def evaluated(capsys, *argv) -> dict:
    assert main(["evaluate", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_test_split_gives_the_accuracy_training_recorded(best, demo_root, tmp_path, capsys):
    result = evaluated(capsys, "--model", best, "--data", demo_root, "--predictions", tmp_path / "p.csv")
    recorded = json.loads((best / "metrics.json").read_text())
    assert result["images"] == 80 and "test/ folder" in result["data"]
    assert result["accuracy"] == recorded["test_acc"]
    assert result["loss"] == pytest.approx(recorded["test_loss"], abs=1e-5)
    matrix = result["confusion_matrix"]
    assert sum(map(sum, matrix)) == 80 and sum(matrix[i][i] for i in range(8)) / 80 == result["accuracy"]
    assert result["interval_95"] == pytest.approx(list(wilson_interval(round(80 * result["accuracy"]), 80)))
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 80 and all(Path(row["path"]).parent.name == row["true"] for row in rows)
    assert sum(row["true"] == row["predicted"] for row in rows) / 80 == result["accuracy"]
    per_class = {row["class"]: row for row in result["per_class"]}
    assert all(per_class[name]["images"] == 10 for name in result["classes"])


def test_another_split_is_read_when_asked_with_a_note_that_it_flatters(best, demo_root, capsys):
    assert main(["evaluate", "--model", str(best), "--data", str(demo_root), "--split", "val", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert "note: val/ chose the model's epoch" in err
    assert result["images"] == 160 and "val/ folder" in result["data"]
    recorded = json.loads((best / "metrics.json").read_text())
    assert result["accuracy"] == recorded["val_acc"]  # the best epoch's, on the same images


def test_a_folder_of_some_classes_is_labelled_by_the_models_classes(best, demo_root, tmp_path, capsys):
    for name in ("ring", "circle"):
        shutil.copytree(demo_root / "test" / name, tmp_path / "held-out" / name)
    result = evaluated(capsys, "--model", best, "--data", tmp_path / "held-out")
    assert result["images"] == 20 and "class folders" in result["data"]
    classes = result["classes"]
    rows_with_images = [i for i, row in enumerate(result["confusion_matrix"]) if sum(row)]
    assert [classes[i] for i in rows_with_images] == ["circle", "ring"]  # the model's indices, not 0 and 1


def test_text_output_names_the_interval_and_every_class(best, demo_root, capsys):
    assert main(["evaluate", "--model", str(best), "--data", str(demo_root)]) == 0
    out = capsys.readouterr().out
    assert "95% interval" in out and "confusion matrix" in out
    assert all(name in out for name in ("circle", "ring", "checker"))


def test_wilson_interval_matches_published_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _one_line_error(capsys, fragment):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err, err


def test_an_unknown_class_folder_is_one_line_and_nothing_is_written(best, demo_root, tmp_path, capsys):
    shutil.copytree(demo_root / "test" / "ring", tmp_path / "held-out" / "ring")
    shutil.copytree(demo_root / "test" / "ring", tmp_path / "held-out" / "blob")
    out = tmp_path / "p.csv"
    assert main(["evaluate", "--model", str(best), "--data", str(tmp_path / "held-out"),
                 "--predictions", str(out)]) == 2
    _one_line_error(capsys, "class folder blob in")
    assert not out.exists()


def test_a_missing_split_names_the_ones_there(best, tmp_path, capsys):
    (tmp_path / "data" / "val" / "ring").mkdir(parents=True)
    assert main(["evaluate", "--model", str(best), "--data", str(tmp_path / "data")]) == 2
    _one_line_error(capsys, "has no test/ folder; pass --split with one of val")


def test_unreadable_images_are_refused_or_skipped_and_counted(best, demo_root, tmp_path, capsys):
    shutil.copytree(demo_root / "test" / "ring", tmp_path / "held-out" / "ring")
    (tmp_path / "held-out" / "ring" / "broken.png").write_bytes(b"not a png")
    assert main(["evaluate", "--model", str(best), "--data", str(tmp_path / "held-out")]) == 2
    _one_line_error(capsys, "ring/broken.png")
    result = evaluated(capsys, "--model", best, "--data", tmp_path / "held-out", "--skip-bad-images")
    assert result["images"] == 10 and "1 unreadable skipped" in result["data"]


def test_a_model_against_itself_is_within_noise(best, demo_root, capsys):
    result = evaluated(capsys, "--model", best, "--data", demo_root, "--baseline", best)
    baseline = result["baseline"]
    assert baseline["accuracy"] == result["accuracy"] and baseline["difference"] == 0.0
    assert (baseline["only_model_right"], baseline["only_baseline_right"], baseline["mcnemar_p"]) == (0, 0, 1.0)
    assert baseline["told_apart"] is False


def test_a_baseline_is_judged_on_the_same_images(best, other, demo_root, tmp_path, capsys):
    result = evaluated(capsys, "--model", best, "--data", demo_root, "--baseline", other,
                       "--predictions", tmp_path / "p.csv")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    right = [row["true"] == row["predicted"] for row in rows]
    baseline_right = [row["true"] == row["baseline_predicted"] for row in rows]
    only_model = sum(m and not b for m, b in zip(right, baseline_right, strict=True))
    only_baseline = sum(b and not m for m, b in zip(right, baseline_right, strict=True))
    baseline = result["baseline"]
    assert baseline["accuracy"] == sum(baseline_right) / 80 and result["accuracy"] == sum(right) / 80
    assert (baseline["only_model_right"], baseline["only_baseline_right"]) == (only_model, only_baseline)
    assert baseline["mcnemar_p"] == mcnemar_p_of_counts(only_model, only_baseline)
    assert baseline["difference"] == pytest.approx((sum(right) - sum(baseline_right)) / 80)
    assert main(["evaluate", "--model", str(best), "--data", str(demo_root), "--baseline", str(other)]) == 0
    assert "McNemar's exact p" in capsys.readouterr().out


def test_compare_tells_a_planted_gap_apart_and_not_a_small_one():
    # 100 images: both right on 35, only the model on 25, only the baseline on 5, both wrong on 35
    model = np.array([True] * 35 + [True] * 25 + [False] * 5 + [False] * 35)
    baseline = np.array([True] * 35 + [False] * 25 + [True] * 5 + [False] * 35)
    result = compare(model, baseline, "b")
    assert result["difference"] == pytest.approx(0.20) and result["told_apart"] is True
    assert result["mcnemar_p"] == mcnemar_p_of_counts(25, 5) < 0.05
    low, high = result["difference_interval_95"]
    assert 0 < low < 0.20 < high
    near = compare(model, np.array([True] * 35 + [False] * 25 + [True] * 22 + [False] * 18), "b")
    assert near["told_apart"] is False and near["difference_interval_95"][0] < 0 < near["difference_interval_95"][1]


def test_a_baseline_that_knows_fewer_classes_is_wrong_on_the_others(best, demo_root, tmp_path, capsys):
    for split in ("train", "val"):
        for name in ("circle", "ring", "square"):
            shutil.copytree(demo_root / split / name, tmp_path / "three" / split / name)
    out = tmp_path / "three-run"
    assert main(["train", "--data", str(tmp_path / "three"), "--out", str(out), "--set", "epochs=1", *TINY]) == 0
    capsys.readouterr()  # the training's epoch table
    result = evaluated(capsys, "--model", best, "--data", demo_root, "--baseline", out / "best",
                       "--predictions", tmp_path / "p.csv")
    lacks = result["baseline"]["classes_baseline_lacks"]
    assert lacks == ["checker", "cross", "diamond", "stripes", "triangle"]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert {row["baseline_predicted"] for row in rows} <= {"circle", "ring", "square"}
    assert result["baseline"]["accuracy"] == sum(row["true"] == row["baseline_predicted"] for row in rows) / 80


def test_an_unknown_class_names_a_few_of_many_model_classes(tmp_path):
    (tmp_path / "blob").mkdir()
    (tmp_path / "blob" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"class folder blob in .* \(c00, c01, .*, c09 and 2 more\)"):
        find_labelled(tmp_path, [f"c{i:02d}" for i in range(12)])
