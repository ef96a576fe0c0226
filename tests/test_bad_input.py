"""Bad input to every command, as a user meets it: `python -m tuner ...` in a subprocess.

Each case is a command line built on a shared folder of fixtures (demo data and broken copies of
it, broken space files, a foreign torch file, a trained run, a run-like folder) and the fragment its
one-line error must contain, plus the offending value the line must name. Every case must exit with
code 2, print exactly one line on stderr and no traceback; afterwards every file that was there
before is byte-for-byte as it was, and no new file has appeared.

`check-data` is the exception by design: it is a report, so a dataset it cannot use is described on
stdout (an `error:` line and the verdict) with exit code 2 and nothing on stderr; its bad *flags* are
one-line errors like everywhere else.

The cases run concurrently (most spend their few seconds importing torch and Ray); the total is over
a minute, hence the `slow` marker.
"""

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tuner.__main__ import main
from tuner.runs.budget import search_budget
from tuner.runs.settings import RunSettings
from tuner.train.demo_data import write_demo_data

pytestmark = pytest.mark.slow

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
TIMEOUT = 300  # seconds per case; the slowest starts a local Ray
TINY = ["--set", "model=resnet18", "--set", "weights=none", "--set", "image_size=32", "--loader-workers", "0"]
SPACE_SETTINGS = ('SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "trials": 2, '
                  '"max_epochs": 2, "grace_period": 1}\n')

# Search-space files, each broken in its own way (the first one is not).
SPACES = {
    "good.py": SPACE_SETTINGS + "def space(trial):\n    trial.suggest_float('lr_head', 1e-4, 1e-2, log=True)\n",
    "syntax.py": "def space(trial):\n    return {\n",
    "unknown.py": "def space(trial):\n    trial.suggest_float('lr_hed', 1e-4, 1e-2)\n",
    "range.py": "def space(trial):\n    trial.suggest_float('lr_head', 1e-4, 1e-2)\n    return {'dropout': 2.0}\n",
    "settings.py": "SETTINGS = {'trails': 5}\ndef space(trial):\n    pass\n",
    "space.txt": "def space(trial):\n    pass\n",
}


def case(id, argv, fragment, value, *, stream="stderr", marks=()):
    """One row: the command line, what its error must say, the bad value it must name, and where."""
    return pytest.param(argv, fragment, value, stream, id=id, marks=marks)


S = "search --data {tmp}/data --storage {tmp}/runs --space"  # every search case: real data, the runs folder

CASES = [
    # --- train ---
    case("train-data-missing", "train --data {tmp}/missing", "does not exist", "{tmp}/missing"),
    case("train-data-is-a-file", "train --data {tmp}/notes.txt", "is not a folder", "{tmp}/notes.txt"),
    case("train-one-class", "train --data {tmp}/one-class", "only one class (circle)", "{tmp}/one-class"),
    case("train-empty-class-folder", "train --data {tmp}/empty-class", "has no training images", "'ring'"),
    case("train-val-lacks-a-class", "train --data {tmp}/unbalanced", "different class folders",
         "missing in val/: ring"),
    case("train-corrupt-png", "train --data {tmp}/corrupt", "remove them or pass --skip-bad-images",
         "broken.png"),
    case("train-text-named-jpg", "train --data {tmp}/text-jpg", "unreadable or non-image files",
         "notes.jpg"),
    case("train-mistyped-hyperparameter", "train --data {tmp}/data --set lr_head=fast", "is not a valid float",
         "'fast'"),
    case("train-config-not-json", "train --data {tmp}/data --config {tmp}/notes.txt", "is not valid JSON",
         "{tmp}/notes.txt"),
    case("train-weights-file-not-ours", "train --data {tmp}/data --set model=resnet18 --set weights={tmp}/foreign.pt",
         "does not fit resnet18", "{tmp}/foreign.pt"),
    case("train-out-holds-files", "train --data {tmp}/data --out {tmp}/trained", "already holds files",
         "{tmp}/trained"),
    case("train-resume-with-other-hyperparameters",
         "train --data {tmp}/data --out {tmp}/trained --resume --set lr_head=0.5",
         "only epochs or steps may change", "lr_head"),
    case("train-cuda-without-gpu", "train --data {tmp}/data --device cuda", "no CUDA GPU", "'cuda'",
         marks=NO_GPU),
    # --- search ---
    case("search-space-syntax-error", S + " {tmp}/spaces/syntax.py", "syntax error", "{tmp}/spaces/syntax.py:2"),
    case("search-space-binary-file", S + " {tmp}/spaces/binary.py", "syntax error", "{tmp}/spaces/binary.py"),
    case("search-space-unknown-name", S + " {tmp}/spaces/unknown.py", "did you mean lr_head", "'lr_hed'"),
    case("search-space-constant-out-of-range", S + " {tmp}/spaces/range.py", "dropout must be >= 0.0 and < 1.0",
         "got 2.0"),
    case("search-space-unknown-setting", S + " {tmp}/spaces/settings.py", "has unknown key", "'trails'"),
    case("search-space-not-python", S + " {tmp}/spaces/space.txt", "is not a .py file",
         "{tmp}/spaces/space.txt"),
    case("search-mistyped-flag", S + " {tmp}/spaces/good.py --trials many", "invalid int value", "'many'"),
    case("search-unknown-metric", S + " {tmp}/spaces/good.py --metric accuracy", "is not allowed", "'accuracy'"),
    case("search-name-of-existing-run", S + " {tmp}/spaces/good.py --name existing", "already exists",
         "{tmp}/runs/existing"),
    case("search-gpus-without-gpu", S + " {tmp}/spaces/good.py --gpus-per-trial 1", "GPUs", "1.0",
         marks=NO_GPU),
    # --- resume ---
    case("resume-folder-not-a-run", "resume {tmp}/data", "is not a tuner run", "{tmp}/data"),
    case("resume-run-without-ray-state", "resume {tmp}/runs/existing", "holds no Ray Tune state",
         "{tmp}/runs/existing"),
    case("resume-corrupt-run-record", "resume {tmp}/runs/corrupt", "tuner.json", "{tmp}/runs/corrupt"),
    # --- report ---
    case("report-folder-not-a-run", "report {tmp}/data", "is not a tuner run", "{tmp}/data"),
    case("report-corrupt-run-record", "report {tmp}/runs/corrupt", "tuner.json", "{tmp}/runs/corrupt"),
    # --- predict ---
    case("predict-model-not-ours", "predict --model {tmp}/foreign.pt {tmp}/data/val/circle/circle_0000.png",
         "is not a tuner checkpoint", "{tmp}/foreign.pt"),
    case("predict-model-not-a-torch-file", "predict --model {tmp}/notes.txt {tmp}/data/val/circle/circle_0000.png",
         "pass a best/model.pt", "{tmp}/notes.txt"),
    case("predict-image-is-text", "predict --model {tmp}/trained/best {tmp}/text-jpg/train/ring/notes.jpg",
         "cannot be read", "notes.jpg"),
    case("predict-top-k-zero", "predict --model {tmp}/trained/best --top-k 0 {tmp}/data/val/circle/circle_0000.png",
         "--top-k must be >= 1", "got 0"),
    # --- evaluate ---
    case("evaluate-model-not-ours", "evaluate --model {tmp}/foreign.pt --data {tmp}/data --split val",
         "is not a tuner checkpoint", "{tmp}/foreign.pt"),
    case("evaluate-data-missing", "evaluate --model {tmp}/trained/best --data {tmp}/missing", "does not exist",
         "{tmp}/missing"),
    case("evaluate-no-test-split", "evaluate --model {tmp}/trained/best --data {tmp}/data",
         "has no test/ folder; pass --split with one of train, val", "{tmp}/data"),
    case("evaluate-unknown-class", "evaluate --model {tmp}/trained/best --data {tmp}/unknown-class",
         "is not among the model's classes", "blob"),
    case("evaluate-corrupt-image", "evaluate --model {tmp}/trained/best --data {tmp}/corrupt --split train",
         "unreadable or non-image files", "broken.png"),
    case("evaluate-training-checkpoint", "evaluate --model {tmp}/trained/checkpoint.pt --data {tmp}/data --split val",
         "is a training checkpoint, kept for --resume", "{tmp}/trained/checkpoint.pt"),
    case("evaluate-predictions-not-csv",
         "evaluate --model {tmp}/trained/best --data {tmp}/data --split val --predictions {tmp}/trained/best/model.pt",
         "does not end in .csv", "{tmp}/trained/best/model.pt"),
    case("evaluate-predictions-in-the-data",
         "evaluate --model {tmp}/trained/best --data {tmp}/data --split val --predictions {tmp}/data/p.csv",
         "lies in the data folder", "{tmp}/data/p.csv"),
    case("evaluate-predictions-is-a-folder",
         "evaluate --model {tmp}/trained/best --data {tmp}/data --split val --predictions {tmp}/spaces",
         "is a folder; pass a file path", "{tmp}/spaces"),
    # --- check-data: a report on stdout for the data, a one-line error for its flags ---
    case("check-data-missing", "check-data {tmp}/missing", "does not exist", "{tmp}/missing", stream="stdout"),
    case("check-data-one-class", "check-data {tmp}/one-class", "only one class (circle)", "{tmp}/one-class",
         stream="stdout"),
    case("check-data-corrupt-png", "check-data {tmp}/corrupt", "unreadable or non-image files: 1", "broken.png",
         stream="stdout"),
    case("check-data-val-fraction-out-of-range", "check-data {tmp}/empty-class --val-fraction 1.5",
         "val_fraction must be > 0 and < 1", "1.5"),
]


# --- the fixture tree ----------------------------------------------------------------------------


def _copy_classes(source: Path, target: Path, classes) -> None:
    for name in classes:
        shutil.copytree(source / name, target / name)


def _build_tree(root: Path) -> None:
    data = root / "data"
    write_demo_data(data, train_per_class=6, val_per_class=3, test_per_class=0)
    (root / "notes.txt").write_text("not an image, not JSON, not a checkpoint\n")
    torch.save({"conv1.weight": torch.zeros(1)}, root / "foreign.pt")  # a torch file that is not ours
    (root / "cwd").mkdir()  # where the commands run: a stray default output would show up here

    for split in ("train", "val"):
        _copy_classes(data / split, root / "one-class" / split, ["circle"])
        _copy_classes(data / split, root / "unbalanced" / split, ["circle", "ring"] if split == "train" else ["circle"])
        for name in ("corrupt", "text-jpg"):
            _copy_classes(data / split, root / name / split, ["circle", "ring"])
    _copy_classes(data / "train", root / "empty-class", ["circle"])
    shutil.copytree(data / "val" / "circle", root / "unknown-class" / "blob")  # a class no model here knows
    (root / "empty-class" / "ring").mkdir()
    png = (data / "train" / "circle" / "circle_0000.png").read_bytes()
    (root / "corrupt" / "train" / "circle" / "broken.png").write_bytes(png[:len(png) // 2])  # truncated
    (root / "text-jpg" / "train" / "ring" / "notes.jpg").write_text("just text\n")

    spaces = root / "spaces"
    spaces.mkdir()
    for name, body in SPACES.items():
        (spaces / name).write_text(textwrap.dedent(body))
    (spaces / "binary.py").write_bytes(png)  # an image saved under a .py name

    # A run-like folder (its record, no Ray state) and one whose record is broken.
    existing = root / "runs" / "existing"
    existing.mkdir(parents=True)
    settings = dataclasses.asdict(RunSettings(data=str(data), storage=str(root / "runs"), name="existing"))
    record = {"space": str(spaces / "good.py"), "settings": settings, "searched": ["lr_head"],
              "fixed": {"model": "resnet18", "weights": "none", "image_size": 32, "metric": "val_acc"},
              "weights_choice": None, "budget": search_budget(8 * 6, 32).to_dict()}
    (existing / "tuner.json").write_text(json.dumps(record, indent=2))
    (root / "runs" / "corrupt").mkdir()
    (root / "runs" / "corrupt" / "tuner.json").write_text('{"space": "good.py", "settings": {')

    # A finished `train --out` folder: best/model.pt for predict, checkpoint.pt for --resume.
    assert main(["train", "--data", str(data), "--out", str(root / "trained"), "--set", "epochs=1", *TINY]) == 0


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, sha256) of every file under root."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            files[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns,
                                                  hashlib.sha256(path.read_bytes()).hexdigest())
    return files


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    _build_tree(root)
    return root, snapshot(root)


def _run(argv: str, root: Path, debug: bool = False) -> subprocess.CompletedProcess:
    args = argv.format(tmp=root).split()
    return subprocess.run([sys.executable, "-m", "tuner", *(["--debug"] if debug else []), *args],
                          check=False, capture_output=True, text=True, timeout=TIMEOUT, cwd=root / "cwd")


@pytest.fixture(scope="module")
def outcomes(request, tree):
    """Every selected case's CompletedProcess by id, run a few at a time before any is checked."""
    root, _ = tree
    selected = {item.callspec.id for item in request.session.items
                if item.originalname == "test_bad_input_is_one_line_and_exit_code_2" and hasattr(item, "callspec")}
    rows = [(p.id, p.values[0]) for p in CASES if p.id in selected or not selected]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = pool.map(lambda row: (row[0], _run(row[1], root)), rows)
        return dict(results)


# --- the checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, fragment, value, stream", CASES)
def test_bad_input_is_one_line_and_exit_code_2(request, tree, outcomes, argv, fragment, value, stream):
    root, _ = tree
    result = outcomes[request.node.callspec.id]
    shown = f"\n--- stdout:\n{result.stdout[-3000:]}\n--- stderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.returncode == 2, shown
    value = value.format(tmp=root)
    if stream == "stderr":
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, shown
        message = lines[0]
    else:  # check-data's report: the problem on stdout, a verdict, nothing on stderr
        assert not result.stderr.strip(), shown
        assert "verdict: not usable" in result.stdout, shown
        message = result.stdout
    assert fragment in message and value in message, shown


def test_debug_shows_the_traceback_and_still_exits_2(tree):
    root, _ = tree
    result = _run("train --data {tmp}/missing", root, debug=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" in result.stderr and "DataError" in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tuner train: error: data folder"), result.stderr


def test_nothing_already_written_is_modified(tree, outcomes):
    root, before = tree
    after = snapshot(root)
    assert sorted(set(after) - set(before)) == [], "new files"
    assert sorted(set(before) - set(after)) == [], "deleted files"
    assert [path for path in before if after[path] != before[path]] == [], "modified files"
