"""The node cache: decoded images and frozen features equal the uncached path, keys never go stale."""

import multiprocessing
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tuner.__main__ import main
from tuner.train import cache, folders, loading
from tuner.train.augment_policy import NO_AUGMENTATION
from tuner.train.batches import eval_batch
from tuner.train.config import make_config
from tuner.train.engine import Trainer
from tuner.train.evaluation import autocast


def _photos(folder, count=5):
    paths = []
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (30 + i, 41, 3), dtype=np.uint8)
        path = folder / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def test_decoded_images_are_the_eval_resize_and_crop_exactly(tmp_path):
    paths = _photos(tmp_path)
    decoded = cache.decoded_images(paths, loading.resize_size(24))
    crop = loading.crop_transforms(image_size=24, policy=NO_AUGMENTATION)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            uncached = crop(image.convert("RGB"))
        assert torch.equal(crop(decoded[i]), uncached)
        assert min(decoded[i].shape[1:]) == loading.resize_size(24)


def test_an_entry_is_built_once_and_a_changed_file_gets_a_new_one(tmp_path):
    paths = _photos(tmp_path)
    first = cache.decoded_images(paths, 27)
    assert cache.decoded_images(paths, 27).folder == first.folder  # reused, not rebuilt
    Image.fromarray(np.zeros((30, 41, 3), np.uint8)).save(paths[0])  # same name, new content
    os.utime(paths[0], ns=(1, 1))  # even with an mtime that cannot collide with the old one
    second = cache.decoded_images(paths, 27)
    assert second.folder != first.folder and second[0].sum() == 0 and first[0].sum() > 0
    assert cache.decoded_images(paths, 30).folder not in (first.folder, second.folder)  # another size


def _build(paths, queue):
    queue.put(str(cache.decoded_images(paths, 20).folder))


def test_processes_starting_together_share_one_build(tmp_path):
    paths = _photos(tmp_path, count=40)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_build, args=(paths, queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    folders = {queue.get(timeout=120) for _ in workers}
    for worker in workers:
        worker.join()
    assert len(folders) == 1
    images_dir = cache.cache_root() / "images"
    assert not [p for p in images_dir.iterdir() if p.name.startswith(".")]  # no half-built leftovers


def test_the_cache_command_lists_and_clears(tmp_path, capsys):
    cache.decoded_images(_photos(tmp_path), 21)
    assert main(["cache", "list"]) == 0
    assert "images" in capsys.readouterr().out
    assert cache.cache_usage()["images"][0] >= 1
    assert main(["cache", "clear", "--kind", "images"]) == 0
    assert "cleared" in capsys.readouterr().out
    assert cache.cache_usage()["images"] == (0, 0)


def test_a_cached_entry_is_computed_once_and_listed_and_cleared_as_probes(capsys):
    calls = []

    def compute():
        calls.append(1)
        return {"weight": torch.arange(6.0).view(2, 3), "l2": 0.5, "cv_acc": None}

    first, computed = cache.cached_tensors("probes", "test-entry", compute)
    again, computed_again = cache.cached_tensors("probes", "test-entry", compute)
    assert (computed, computed_again, len(calls)) == (True, False, 1)
    assert torch.equal(again["weight"], first["weight"]) and (again["l2"], again["cv_acc"]) == (0.5, None)
    assert main(["cache", "list", "--kind", "probes"]) == 0
    assert "probes" in capsys.readouterr().out
    assert cache.cache_usage()["probes"][0] >= 1
    assert main(["cache", "clear", "--kind", "probes"]) == 0
    assert cache.cache_usage()["probes"] == (0, 0)
    assert cache.cached_tensors("probes", "test-entry", compute)[1] and len(calls) == 2  # cleared: computed anew


def test_the_cache_command_knows_every_kind_the_cache_keeps():
    from tuner.__main__ import CACHE_KINDS

    assert CACHE_KINDS == cache.KINDS


# --- cached and uncached training give the same numbers ---


def tiny(**values):
    return make_config({"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 40,
                        "epochs": 2, "unfreeze_depth": 0, **values})


@pytest.fixture(scope="module")
def splits(demo_root):
    full = folders.load_splits(demo_root)
    return folders.ImageSplits(root=full.root, layout=full.layout, classes=full.classes,
                               train=full.train[::8], val=full.val[::4], test=[])


def test_image_cache_gives_the_same_validation_batches(splits):
    cached, uncached = Trainer(tiny(), splits), Trainer(tiny(image_cache=False), splits)
    for (a, la), (b, lb) in zip(cached.val_loader, uncached.val_loader, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_cached_features_are_the_backbones_and_give_the_same_loss(splits):
    trainer = Trainer(tiny(aug_strength=0.0), splits)
    bank = trainer.features.banks()["val"]
    images, labels = next(iter(trainer.val_loader))
    inputs, labels = eval_batch(images, labels, device=trainer.device, normalization=trainer.normalization,
                                memory_format=trainer.memory_format)
    trainer.model.eval()
    with torch.no_grad(), autocast(trainer.device, trainer.amp_dtype):
        direct = trainer.model.features(inputs).float()
        loss_direct = torch.nn.functional.cross_entropy(trainer.model(inputs).float(), labels)
        cached = bank.gather(torch.arange(len(labels)), torch.zeros(len(labels), dtype=torch.long))
        loss_cached = torch.nn.functional.cross_entropy(trainer.model.fc(cached).float(), labels)
    tolerance = 1e-2 if trainer.amp_dtype is not None else 1e-5  # bf16 batches of another size round apart
    assert torch.allclose(cached, direct, atol=tolerance, rtol=tolerance)
    assert loss_cached.item() == pytest.approx(loss_direct.item(), abs=tolerance)
    assert trainer.validate()["val_loss"] == pytest.approx(trainer.evaluate(trainer.val_loader)["val_loss"],
                                                           abs=tolerance)


def test_a_cached_epoch_leaves_the_backbone_and_its_batch_norm_untouched(splits):
    trainer = Trainer(tiny(aug_strength=0.5, dropout=0.2), splits)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith("fc.")}
    head_before = trainer.model.fc.weight.clone()
    assert trainer.head_only()
    trainer.run_epoch()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included
    assert not torch.equal(head_before, trainer.model.fc.weight)
    assert trainer.features.banks()["train"].views == trainer.config.feature_views


def test_feature_banks_are_shared_and_keyed_by_what_they_depend_on(splits):
    bank = Trainer(tiny(aug_strength=0.5), splits).features.banks()["train"]
    assert Trainer(tiny(aug_strength=0.5, lr_head=0.1), splits).features.banks()["train"].folder == bank.folder
    others = [tiny(aug_strength=0.5, seed=1),  # random init differs with the seed
              tiny(aug_strength=0.5, image_size=40), tiny(aug_strength=0.25), tiny(aug_strength=0.5, feature_views=2),
              tiny(aug_strength=0.5, model="resnet34")]
    folders = {Trainer(config, splits).features.banks()["train"].folder for config in others}
    assert bank.folder not in folders and len(folders) == len(others)


def test_gradual_unfreezing_uses_features_only_while_the_backbone_is_frozen(splits):
    trainer = Trainer(tiny(unfreeze_depth=1, unfreeze_every=1, epochs=2), splits)
    trainer.run_epoch()
    assert trainer.features.built is not None and trainer.depth == 0
    trainer.run_epoch()
    assert trainer.depth == 1 and not trainer.head_only()


def test_a_cached_run_resumes_exactly(splits):
    straight = Trainer(tiny(epochs=3, aug_strength=0.5), splits)
    for _ in range(3):
        straight.run_epoch()
    first = Trainer(tiny(epochs=3, aug_strength=0.5), splits)
    first.run_epoch()
    resumed = Trainer(tiny(epochs=3, aug_strength=0.5), splits)
    resumed.load_state_dict(first.state_dict())
    for _ in range(2):
        resumed.run_epoch()
    assert [m["train_loss"] for m in resumed.history] == [m["train_loss"] for m in straight.history]
    assert torch.equal(resumed.model.fc.weight, straight.model.fc.weight)
