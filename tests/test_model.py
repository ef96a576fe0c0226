import pytest
import torch
from torch import nn

from tuner.errors import UserError
from tuner.train.config import STAGES, make_config
from tuner.train.model import (
    CHECKPOINT_FORMAT,
    build_model,
    imagenet_cache_path,
    param_groups,
    set_trained_depth,
    stage_of,
    trained_stages,
)


def small(**values):
    return make_config({"model": "resnet18", "weights": "none", **values})


def trainable_stages(model):
    return {stage_of(n) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("depth", range(6))
def test_unfreeze_depth_trains_head_plus_top_stages(depth):
    model, _ = build_model(small(), num_classes=4)
    set_trained_depth(model, depth, "train")
    assert trainable_stages(model) == {"head", *STAGES[len(STAGES) - depth:]}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(stage_of(n) not in trained_stages(depth) and stage_of(n) != "head" for n in frozen)


def test_resnet50_is_the_default_with_a_new_head():
    model, provenance = build_model(make_config({"weights": "none"}), num_classes=7)
    assert model.fc.out_features == 7 and model.fc.in_features == 2048
    assert provenance["name"] == "none"


def test_frozen_batch_norm_keeps_running_stats_through_a_training_step():
    model, _ = build_model(small(), num_classes=3)
    set_trained_depth(model, 1, "train")  # layer4 trains, layer3 and below frozen
    model.train()
    frozen_bn, trained_bn = model.layer3[0].bn1, model.layer4[0].bn1
    assert not frozen_bn.training and trained_bn.training
    before_frozen = frozen_bn.running_mean.clone()
    before_trained = trained_bn.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not torch.equal(trained_bn.running_mean, before_trained)
    model.train()  # a later train() call must not wake frozen batch norm up
    assert not frozen_bn.training


def test_bn_mode_frozen_keeps_every_batch_norm_in_eval():
    model, _ = build_model(small(bn_mode="frozen"), num_classes=3)
    set_trained_depth(model, 5, "frozen")
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.fc.training


def test_param_groups_cover_each_trainable_parameter_once_with_configured_rates():
    config = small(unfreeze_depth=3, lr_head=1e-2, lr_layer4=1e-3, lr_decay=0.5, weight_decay=0.05)
    model, _ = build_model(config, num_classes=3)
    set_trained_depth(model, 3, "train")
    groups = param_groups(model, config, ("head", "layer4", "layer3", "layer2"))
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    rates = {g["stage"]: g["lr"] for g in groups}
    assert rates == {"head": 1e-2, "layer4": 1e-3, "layer3": 5e-4, "layer2": 2.5e-4}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            is_bn_or_bias = p.ndim == 1
            assert group["weight_decay"] == (0.0 if is_bn_or_bias else 0.05), names[id(p)]


def test_param_groups_hold_no_frozen_parameter():
    config = small(unfreeze_depth=1)
    model, _ = build_model(config, num_classes=3)
    set_trained_depth(model, 1, "train")
    groups = param_groups(model, config, ("head", "layer4", "layer3"))  # layer3 asked for but frozen
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert {g["stage"] for g in groups} == {"head", "layer4"}


def test_weights_from_a_local_state_dict_load_and_equal_what_was_saved(tmp_path):
    source, _ = build_model(small(seed=1), num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model, provenance = build_model(small(weights=str(path), seed=2), num_classes=5)
    for name, tensor in source.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(model.state_dict()[name], tensor), name
    assert model.fc.out_features == 5
    assert provenance["name"] == "file:resnet18.pth" and len(provenance["sha256"]) == 64


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """torchvision's cache moved to an empty folder (torch.hub reads TORCH_HOME on every call)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_imagenet_weights_load_from_a_prefilled_torchvision_cache(empty_torch_home):
    weights, cache_file = imagenet_cache_path("resnet18")
    assert cache_file.parent == empty_torch_home / "hub" / "checkpoints"
    source, _ = build_model(small(seed=3), num_classes=1000)
    cache_file.parent.mkdir(parents=True)
    torch.save(source.state_dict(), cache_file)
    model, provenance = build_model(small(weights="imagenet"), num_classes=4)
    assert provenance["name"] == f"imagenet:{weights.name}"
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_missing_imagenet_weights_offline_stop_with_the_fix(empty_torch_home, monkeypatch):
    # A dead proxy makes the real download fail the same way with or without internet.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(UserError, match="not in the cache at .* weights=none"):
        build_model(small(weights="imagenet"), num_classes=4)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    other, _ = build_model(make_config({"model": "resnet34", "weights": "none"}), num_classes=10)
    path = tmp_path / "r34.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(UserError, match="does not fit resnet18: .*unexpected"):
        build_model(small(weights=str(path)), num_classes=4)


@pytest.mark.parametrize("content, fragment", [(b"not a torch file", "not a loadable PyTorch state_dict"),
                                               (None, "does not exist")])
def test_unusable_weights_files_are_refused(tmp_path, content, fragment):
    path = tmp_path / "w.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=fragment):
        build_model(small(weights=str(path)), num_classes=4)


def test_our_checkpoint_format_is_accepted_as_weights(tmp_path):
    source, _ = build_model(small(seed=4), num_classes=3)
    path = tmp_path / "ours.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": source.state_dict(), "config": {}}, path)
    model, _ = build_model(small(weights=str(path)), num_classes=3)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_unknown_model_lists_the_allowed_names():
    config = small()
    config.model = "vgg16"  # bypasses the dataclass check on purpose
    with pytest.raises(UserError, match="resnet18, resnet34, resnet50"):
        build_model(config, num_classes=3)
