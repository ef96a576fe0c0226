"""Exported models serve without this package and predict what `Predictor` predicts."""

import json
import re
import subprocess
import sys
import warnings

import pytest
import torch

from tuner.__main__ import main
from tuner.errors import UserError
from tuner.serve.export import export_model, read_metadata
from tuner.serve.predict import Predictor
from tuner.train import folders, loading
from tuner.train.config import make_config
from tuner.train.demo_data import write_demo_data
from tuner.train.engine import Trainer, fit

# A serving script that knows only torch/onnxruntime, PIL and torchvision: it takes the preprocessing
# from the file's own metadata and prints one row of probabilities per image (argv: fmt, model, images).
SERVE = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from torchvision import transforms

fmt, path, images = sys.argv[1], sys.argv[2], sys.argv[3:]
if fmt == "export":
    extra = {"preprocessing.json": ""}
    model = torch.export.load(path, extra_files=extra).module()
    meta = json.loads(extra["preprocessing.json"])
    run = lambda x: model(torch.from_numpy(x)).numpy()
elif fmt == "torchscript":
    extra = {"preprocessing.json": ""}
    model = torch.jit.load(path, _extra_files=extra)
    meta = json.loads(extra["preprocessing.json"])
    run = lambda x: model(torch.from_numpy(x)).numpy()
else:
    import onnx, onnxruntime
    meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["preprocessing"])
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    run = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]
prep = transforms.Compose([transforms.Resize(meta["resize"]), transforms.CenterCrop(meta["image_size"]),
                           transforms.ToTensor()])
batch = np.stack([prep(Image.open(p).convert("RGB")).numpy() for p in images])
with torch.no_grad():
    probs = torch.from_numpy(run(batch)).softmax(dim=1)
    first = torch.from_numpy(run(batch[:1])).softmax(dim=1)  # another batch size than the export's
assert "tuner" not in sys.modules
print(json.dumps({"classes": [meta["classes"][i] for i in probs.argmax(1).tolist()],
                  "probs": probs.tolist(), "first": first.tolist()}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real one-epoch run folder (RUN/best/model.pt) of a tiny resnet18 that trains every stage."""
    root = tmp_path_factory.mktemp("export") / "data"
    write_demo_data(root, train_per_class=6, val_per_class=3, test_per_class=0)
    config = make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16,
                          "epochs": 1, "unfreeze_depth": 5, "precision": "fp32"})
    out = root.parent / "run"
    fit(Trainer(config, folders.load_splits(root), num_workers=0), out)
    return out


@pytest.fixture(scope="module")
def images(run):
    root = run.parent / "data" / "val"
    return sorted(str(p) for p in root.rglob("*.png"))[::3][:5]


def serve(fmt, path, images):
    result = subprocess.run([sys.executable, "-c", SERVE, fmt, str(path), *images],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("fmt, suffix, atol", [("export", "pt2", 1e-4), ("torchscript", "pt", 1e-4),
                                               ("onnx", "onnx", 1e-3)])
def test_exported_model_serves_without_tuner_and_matches_predictor(run, images, tmp_path, fmt, suffix, atol):
    out = tmp_path / "served" / f"model.{suffix}"  # the parent folder is created
    export_model(run, fmt, out)
    served = serve(fmt, out, images)
    predictor = Predictor(run / "best", device="cpu")
    assert served["classes"] == [top[0][0] for top in predictor.predict(images, top_k=1)]
    expected = predictor.probabilities(images)
    assert torch.allclose(torch.tensor(served["probs"]), expected, atol=atol)
    assert torch.allclose(torch.tensor(served["first"]), expected[:1], atol=atol)


@pytest.mark.parametrize("fmt, suffix", [("export", "pt2"), ("torchscript", "pt"), ("onnx", "onnx")])
def test_metadata_round_trips(run, tmp_path, fmt, suffix):
    out = tmp_path / f"model.{suffix}"
    meta = export_model(run / "best" / "model.pt", fmt, out)
    assert read_metadata(out) == meta
    payload = torch.load(run / "best" / "model.pt", weights_only=True)
    assert meta["classes"] == payload["classes"] and meta["model"] == "resnet18"
    assert (meta["image_size"], meta["resize"]) == (32, loading.resize_size(32))
    assert (meta["mean"], meta["std"]) == (payload["normalization"]["mean"], payload["normalization"]["std"])
    assert meta["weights"]["name"] == "none" and meta["epoch"] == 1 and "val_acc" in meta["metrics"]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind


def test_unknown_format_is_refused(run, tmp_path):
    with pytest.raises(UserError, match="'tflite'.*export, onnx, torchscript"):
        export_model(run, "tflite", tmp_path / "model.tflite")


def test_directory_target_is_refused(run, tmp_path):
    with pytest.raises(UserError, match=f"{re.escape(str(tmp_path))}'? is a directory.*model.pt2"):
        export_model(run, "export", tmp_path)


def test_foreign_file_is_refused_and_existing_export_is_kept(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    out = tmp_path / "model.pt"
    out.write_bytes(b"the previous export")
    with pytest.raises(UserError, match="foreign.pt"):
        export_model(foreign, "torchscript", out)
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.pt", "model.pt"]


def test_read_metadata_refuses_files_that_are_not_exports(run, tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\x00not a model")
    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(b"PK\x03\x04 and then nothing")
    foreign = tmp_path / "foreign.pt2"  # a torch.export archive that tuner did not write
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), foreign)
    for path in (plain, damaged, foreign, run / "best" / "model.pt"):  # the checkpoint is a zip, as .pt2 is
        with pytest.raises(UserError, match=re.escape(path.name)):
            read_metadata(path)


def test_cli_exports_pt2_and_marks_torchscript_deprecated(run, tmp_path, capsys):
    assert main(["export", str(run), "--format", "export", "--out", str(tmp_path / "model.pt2")]) == 0
    captured = capsys.readouterr()
    assert f"exported torch.export program: {tmp_path / 'model.pt2'}" in captured.out
    assert "deprecated" not in captured.err
    assert read_metadata(tmp_path / "model.pt2")["classes"] == torch.load(
        run / "best" / "model.pt", weights_only=True)["classes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own jit FutureWarnings stay hidden: the note says it once
        assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "model.pt")]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "TorchScript is deprecated" in err and "--format export" in err
    assert f"exported TorchScript module: {tmp_path / 'model.pt'}" in captured.out
    # A refused TorchScript export is its error alone, without the note.
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err and "deprecated" not in err


def test_help_marks_torchscript_deprecated(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{export,onnx,torchscript}" in text and "torchscript: DEPRECATED" in text and ".pt2" in text


def test_onnx_without_onnxscript_says_what_to_install(tmp_path):
    # A None entry in sys.modules makes `import onnxscript` fail as if it were not installed.
    code = ("import sys; sys.modules['onnxscript'] = None\n"
            "from tuner.errors import UserError\nfrom tuner.serve.export import export_model\n"
            f"try: export_model('missing', 'onnx', {str(tmp_path / 'm.onnx')!r})\n"
            "except UserError as err: print(err)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "onnxscript" in result.stdout and "pip install 'tuner[export]'" in result.stdout, result.stderr
