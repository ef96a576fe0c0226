"""One way to reload a trained model (load_trained) and one evaluation loop (evaluate)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuner.train import folders
from tuner.train.checkpoint import load_checkpoint
from tuner.train.config import make_config
from tuner.train.engine import Trainer, fit
from tuner.train.evaluation import evaluate, load_trained

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small(demo_root):
    splits = folders.load_splits(demo_root)
    return folders.ImageSplits(root=splits.root, layout=splits.layout, classes=splits.classes,
                               train=splits.train[::5], val=splits.val[::5], test=splits.test[::5])


@pytest.fixture(scope="module")
def run(small, tmp_path_factory):
    """(trainer, best payload) of a two-epoch partial fine-tune in fp32, channels_last."""
    config = make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32, "epochs": 2,
                          "unfreeze_depth": 2, "dropout": 0.3, "precision": "fp32",
                          "memory_format": "channels_last"})
    trainer = Trainer(config, small, num_workers=0)
    out = tmp_path_factory.mktemp("evaluation")
    fit(trainer, out)
    return trainer, load_checkpoint(out / "best")


def test_load_trained_rebuilds_the_best_weights_in_eval_mode(run):
    trainer, payload = run
    trained = load_trained(payload, CPU)
    assert not trained.model.training and trained.classes == trainer.classes
    assert trained.config == trainer.config and trained.normalization == trainer.normalization
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(tensor, trainer.best_state[name]), name


def test_served_models_run_in_fp32_and_contiguous_by_default(run):
    trained = load_trained(run[1], CPU)
    assert (trained.compute.precision, trained.compute.memory_format) == ("fp32", "contiguous")
    assert trained.model.conv1.weight.is_contiguous()


def test_as_trained_reproduces_the_recorded_metrics_exactly(run, small):
    trainer, payload = run
    trained = load_trained(payload, CPU, as_trained=True)
    assert trained.compute.memory_format == "channels_last"
    assert trained.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    recorded = payload["metrics"]
    assert trained.evaluate(small.val, prefix="val").metrics == {
        "val_loss": recorded["val_loss"], "val_acc": recorded["val_acc"]}
    test = trained.evaluate(small.test, prefix="test").metrics
    assert test == {"test_loss": recorded["test_loss"], "test_acc": recorded["test_acc"]}


@pytest.mark.parametrize("recorded, device, expected", [
    ({"precision": "fp16", "memory_format": "channels_last"}, "cpu", ("fp32", "channels_last")),  # a GPU's choice
    ({"precision": "bf16", "memory_format": "contiguous"}, "cpu", ("bf16", "contiguous")),
    (None, "cpu", ("fp32", "contiguous")),  # a checkpoint from before the choice was recorded
])
def test_the_recorded_precision_is_used_where_the_device_can(run, recorded, device, expected):
    payload = {**run[1], "compute": recorded}
    compute = load_trained(payload, torch.device(device), as_trained=True).compute
    assert (compute.precision, compute.memory_format) == expected


def test_evaluate_is_mean_cross_entropy_and_accuracy_with_logits_in_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3))  # dropout: must be off when evaluating
    inputs, labels = torch.randn(10, 4), torch.randint(3, (10,))
    batches = [(inputs[:4], labels[:4]), (inputs[4:], labels[4:])]
    result = evaluate(model, batches, num_classes=3, device=CPU, prefix="test", keep_logits=True)
    assert not model.training
    expected = model(inputs)
    assert torch.allclose(result.logits, expected)
    assert result.metrics["test_loss"] == pytest.approx(F.cross_entropy(expected, labels).item())
    assert result.metrics["test_acc"] == (expected.argmax(1) == labels).float().mean().item()
    assert set(result.metrics) == {"test_loss", "test_acc"}  # top-5 only with ten or more classes


def test_evaluate_reports_top5_with_ten_classes():
    model = nn.Linear(2, 10)
    labels = torch.arange(10)
    result = evaluate(model, [(torch.randn(10, 2), labels)], num_classes=10, device=CPU)
    assert result.logits is None
    assert 0.0 <= result.metrics["val_acc"] <= result.metrics["val_top5"] <= 1.0


def test_evaluate_keeps_each_images_prediction_in_order():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    inputs, labels = torch.randn(10, 4), torch.randint(3, (10,))
    result = evaluate(model, [(inputs[:4], labels[:4]), (inputs[4:], labels[4:])], num_classes=3, device=CPU,
                      keep_predictions=True)
    expected = model(inputs)
    kept = result.predictions
    assert torch.equal(kept.label, labels) and torch.equal(kept.predicted, expected.argmax(1))
    assert torch.allclose(kept.true_prob, expected.softmax(1)[torch.arange(10), labels])
    assert kept.correct.float().mean().item() == result.metrics["val_acc"]
    assert evaluate(model, [(inputs, labels)], num_classes=3, device=CPU).predictions is None  # only when asked


@pytest.mark.parametrize("unfreeze_depth", [0, 2])  # 0: the head on cached features; 2: the images
def test_validation_keeps_the_val_predictions_in_the_splits_order(small, unfreeze_depth):
    config = make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 8, "epochs": 1,
                          "unfreeze_depth": unfreeze_depth, "precision": "fp32"})
    trainer = Trainer(config, small, num_workers=0)
    metrics = trainer.validate()
    kept = trainer.val_predictions
    assert kept.label.tolist() == [label for _, label in small.val]  # one per image, in the split's order
    assert kept.correct.float().mean().item() == pytest.approx(metrics["val_acc"])
    assert ((kept.true_prob >= 0) & (kept.true_prob <= 1)).all()
