"""Every trainer hyperparameter in one dataclass: defaults with the reason for each, strict checks.

The field names are the only spelling of each hyperparameter: search spaces, `--set`, checkpoints,
`config.json` and result tables all use them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UserError
from .checks import Bounds, check_value, is_optional, scalar_type

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# Backbone stages from the input upwards; `unfreeze_depth` counts them from the top (layer4).
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
BN_MODES = ("train", "frozen")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
HEAD_INITS = ("auto", "probe", "random")
METRICS = {"val_acc": "max", "val_loss": "min"}
# Regularisers that act on pixels: head-only epochs on cached features skip them (mixup applies to features).
IMAGE_ONLY = ("cutmix", "random_erasing")


def hyperparameter(default: Any, help: str) -> Any:
    """A TrainConfig field with its one-sentence meaning, from which docs/hyperparameters.md's table is rendered."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # --- model ---
    model: str = hyperparameter(  # the product's backbone; smaller/larger ResNets share its stage layout
        "resnet50", "The torchvision ResNet to fine-tune.")
    weights: str = hyperparameter(  # transfer learning needs pretrained features; "none" or a file path otherwise
        "imagenet", "The starting weights: `imagenet` (torchvision's), `none` (random init) or a state_dict file.")
    dropout: float = hyperparameter(  # small datasets sometimes want 0.2-0.5
        0.0, "Dropout probability before the new head.")
    # --- what trains ---
    unfreeze_depth: int = hyperparameter(  # the seed recipe trains layer3+layer4+head; 0 = feature extraction
        2, "Backbone stages trained besides the head, from the top: 0 is feature extraction, 1 adds layer4, "
           "4 every residual stage, 5 the stem too.")
    unfreeze_every: int = hyperparameter(
        0, "Gradual unfreezing when k > 0: start head-only and unfreeze one more stage every k epochs until "
           "`unfreeze_depth`.")
    bn_mode: str = hyperparameter(  # "frozen" is better for small batches
        "train", "`train`: the batch norm of trained stages updates its statistics; `frozen`: every batch norm "
                 "stays in eval mode.")
    # --- learning rates (per stage) ---
    lr_head: float = hyperparameter(  # the seed's head rate: a new layer needs the largest steps
        1e-3, "Learning rate of the new head.")
    lr_layer4: float | None = hyperparameter(
        None, "Learning rate of layer4; None: the head's times `lr_backbone_ratio` (or `lr_decay`).")
    lr_layer3: float | None = hyperparameter(None, "Learning rate of layer3; None: layer4's times `lr_decay`.")
    lr_layer2: float | None = hyperparameter(None, "Learning rate of layer2; None: layer3's times `lr_decay`.")
    lr_layer1: float | None = hyperparameter(None, "Learning rate of layer1; None: layer2's times `lr_decay`.")
    lr_stem: float | None = hyperparameter(None, "Learning rate of the stem; None: layer1's times `lr_decay`.")
    # None: 0.1 with pretrained weights (head 1e-3 -> layer4 1e-4 as in the seed; lower stages keep more
    # of what they learnt), 1.0 from random init (0.1 would leave layer1 at 1e-7: nothing to keep there).
    lr_decay: float | None = hyperparameter(
        None, "Factor from a stage's rate to the next stage down where no rate is given; None: 0.1 with "
              "pretrained weights, 1.0 with `weights=none`.")
    # A search learns rates as a head rate and two ratios (a dozen trials can learn 3 numbers, not 5 free
    # rates): the seed recipe is head 1e-3, ratio 0.1, decay 0.5; gentle LP-FT is 1e-4, 1.0, 1.0.
    lr_backbone_ratio: float | None = hyperparameter(
        None, "Factor from the head's rate to layer4's where `lr_layer4` is not given; None: `lr_decay`.")
    # --- optimizer and schedule ---
    optimizer: str = hyperparameter(  # with weight_decay 0 this is the seed's Adam
        "adamw", "The optimizer of every parameter group.")
    momentum: float = hyperparameter(0.9, "Momentum of `sgd`.")
    nesterov: bool = hyperparameter(False, "Nesterov momentum for `sgd`.")
    weight_decay: float = hyperparameter(  # mild
        1e-4, "Weight decay (decoupled with AdamW), never applied to batch-norm or bias parameters.")
    label_smoothing: float = hyperparameter(0.0, "Label smoothing of the cross-entropy loss.")
    # --- regularisers (torchvision's MixUp/CutMix, torch's AveragedModel; 0 = off, as in the seed) ---
    # Beta(alpha, alpha) mixing of the training batch after the batch augmentation, soft targets; never at
    # evaluation. Off by default: on a few hundred images they cost more epochs than a short run has
    # (bench/regularisers.py). torchvision's recipes use mixup 0.2 and cutmix 1.0.
    mixup: float = hyperparameter(0.0, "MixUp's alpha (torchvision's `v2.MixUp`); 0 is off.")
    cutmix: float = hyperparameter(  # images only: cached-feature (head-only) epochs have no pixels to cut
        0.0, "CutMix's alpha (torchvision's `v2.CutMix`); 0 is off.")
    # Per-image probability of erasing a random box (torchvision's RandomErasing: 2-33% of the area, aspect
    # 0.3-3.3, filled with the mean colour); images only, like cutmix.
    random_erasing: float = hyperparameter(
        0.0, "Probability that a training image gets a random box erased to the mean colour; 0 is off.")
    # Exponential moving average of the trained weights per optimizer step (horizon ~1 / (1 - decay) steps:
    # keep it well under the run's steps); when on, the average is what is validated and kept as best.
    ema_decay: float = hyperparameter(
        0.0, "Decay of a moving average of the trained weights, which is then validated and kept; 0 is off.")
    schedule: str = hyperparameter(  # smooth decay to zero suits short fine-tuning runs
        "cosine", "Learning-rate schedule, per optimizer step: `cosine` to zero at the last step, `step` or "
                  "`constant`.")
    warmup_steps: int = hyperparameter(  # protects pretrained features from the first big steps
        0, "Optimizer steps of linear warm-up before the schedule.")
    step_size: int = hyperparameter(  # the seed's StepLR(step_size=7, gamma=0.1), in epochs
        7, "Epochs between two rate cuts of the `step` schedule.")
    gamma: float = hyperparameter(0.1, "Factor of each rate cut of the `step` schedule.")
    # --- data ---
    image_size: int = hyperparameter(  # ImageNet's training size; smaller is much faster, less accurate
        224, "Training and evaluation crop size in pixels.")
    # 0 = resize + centre crop only, 1 = strong; augment_policy.py says what each strength does: the loader
    # crops and flips (loading.crop_transforms), the training device does the rest (augment.BatchAugment).
    aug_strength: float = hyperparameter(
        0.5, "One augmentation knob, from none (0) to strong (1); see Augmentation strength below.")
    batch_size: int = hyperparameter(32, "Training batch size.")  # the seed's batch size
    val_fraction: float = hyperparameter(
        0.2, "Share of each class held out for validation when the data has no `val/` folder.")
    # --- the new head ---
    # probe: before the first step, fit the head to convergence on the frozen backbone's features
    # (linear probe, then fine-tune: Kumar et al. 2022), so fine-tuning starts from a fitted head instead
    # of pushing random-head gradients into the pretrained stages. auto: probe unless weights=none.
    head_init: str = hyperparameter(
        "auto", "How the new head starts: `probe` (fitted on frozen features first), `random`, or `auto` "
                "(probe unless `weights=none`).")
    probe_l2: float | None = hyperparameter(
        None, "The probe's L2 strength; None: picked by cross-validation on the training features.")
    # --- run ---
    epochs: int = hyperparameter(10, "The run's length in epochs, unless `steps` is set.")
    steps: int | None = hyperparameter(
        None, "The run's length in optimizer steps (the schedule's too); wins over `epochs`.")
    seed: int = hyperparameter(
        0, "Seed of the split, the head's init, shuffling and augmentation (a search's sampler has its own).")
    metric: str = hyperparameter(
        "val_acc", "The validation metric that picks the best checkpoint: `val_acc` (max) or `val_loss` (min).")
    # auto: bf16 (fp16 on old GPUs) on CUDA; on a CPU fp32, or bf16 where the CPU has bf16 units and a
    # measured probe says it is faster here (precision.py): emulated bf16 ran at 0.6x fp32 on one Xeon.
    precision: str = hyperparameter(
        "auto", "Training precision; `auto`: bf16 on CUDA, on a CPU whichever of its candidates a probe measures "
                "fastest.")
    memory_format: str = hyperparameter(
        "auto", "Memory layout; `auto`: channels_last on CUDA, on a CPU whichever a probe measures faster.")
    compile: bool = hyperparameter(
        False, "`torch.compile` the model: faster steps on CUDA after a slow first epoch.")
    # --- caches (node-local, see cache.py): same results, less repeated work ---
    image_cache: bool = hyperparameter(
        True, "Decode and resize each image once into the node cache, not with PIL every epoch.")
    feature_cache: bool = hyperparameter(
        True, "Epochs with a frozen backbone train the head on cached backbone features.")
    feature_views: int = hyperparameter(
        4, "Augmented views per training image in the feature cache when `aug_strength` > 0.")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stage_lrs(self) -> dict[str, float]:
        """The base learning rate of the head and every backbone stage, top to bottom."""
        rates = {"head": self.lr_head}
        above = self.lr_head
        for stage in reversed(STAGES):
            explicit = getattr(self, f"lr_{stage}")
            ratio = self.lr_backbone_ratio if stage == "layer4" else None
            above = explicit if explicit is not None else above * (ratio if ratio is not None else self.stage_decay())
            rates[stage] = above
        return rates

    def stage_decay(self) -> float:
        """lr_decay, or its default for these weights when it is None."""
        if self.lr_decay is not None:
            return self.lr_decay
        return 1.0 if self.weights == "none" else 0.1

    def probes_head(self) -> bool:
        """Whether the head starts as a linear probe fitted on the frozen features (head_init resolved)."""
        return self.head_init == "probe" or (self.head_init == "auto" and self.weights != "none")


# The seed tutorial's fine-tuning recipe: Adam, head 1e-3 / layer4 1e-4 / layer3 5e-5, StepLR(7, 0.1).
SEED_RECIPE: dict[str, Any] = {
    "unfreeze_depth": 2,
    "lr_head": 1e-3,
    "lr_layer4": 1e-4,
    "lr_layer3": 5e-5,
    "optimizer": "adamw",
    "weight_decay": 0.0,
    "schedule": "step",
    "step_size": 7,
    "gamma": 0.1,
}

_CHOICES = {
    "model": MODELS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "bn_mode": BN_MODES,
    "precision": PRECISIONS,
    "memory_format": MEMORY_FORMATS,
    "metric": tuple(METRICS),
    "head_init": HEAD_INITS,
}
_NON_NEGATIVE, _POSITIVE = Bounds(0.0), Bounds(0.0, low_inclusive=False)
_BELOW_ONE = Bounds(0.0, 1.0, high_inclusive=False)
_RANGES = {
    "dropout": _BELOW_ONE,
    "unfreeze_depth": Bounds(0, len(STAGES)),
    "unfreeze_every": Bounds(0),
    "lr_head": _POSITIVE,
    "lr_decay": _POSITIVE,
    "lr_backbone_ratio": _POSITIVE,
    "momentum": _BELOW_ONE,
    "weight_decay": _NON_NEGATIVE,
    "label_smoothing": _BELOW_ONE,
    "mixup": _NON_NEGATIVE,
    "cutmix": _NON_NEGATIVE,
    "random_erasing": Bounds(0.0, 1.0),
    "ema_decay": _BELOW_ONE,
    "warmup_steps": Bounds(0),
    "probe_l2": _POSITIVE,
    "steps": Bounds(1),
    "step_size": Bounds(1),
    "gamma": Bounds(0.0, 1.0, low_inclusive=False),
    "image_size": Bounds(32, 1024),
    "aug_strength": Bounds(0.0, 1.0),
    "batch_size": Bounds(1),
    "val_fraction": Bounds(0.0, 1.0, low_inclusive=False, high_inclusive=False),
    "epochs": Bounds(1),
    "seed": Bounds(0),
    "feature_views": Bounds(1, 64),
}
_RANGES.update({f"lr_{stage}": _POSITIVE for stage in STAGES})


def is_better(mode: str, value: float | None, best: float | None) -> bool:
    """Whether `value` beats `best` for a metric with `mode` "max" or "min"; None and NaN never win."""
    if value is None or value != value:
        return False
    return best is None or (value > best if mode == "max" else value < best)


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _annotation(name: str) -> str:
    return {f.name: f.type for f in fields(TrainConfig)}[name]


def field_type(name: str) -> type:
    """The scalar type of a field (`float` for `float | None`)."""
    return scalar_type(_annotation(name))


def _is_optional(name: str) -> bool:
    return is_optional(_annotation(name))


def check_hyperparameter(name: str, value: Any) -> Any:
    """Raise UserError unless `value` has the right type and range for hyperparameter `name`; return it
    (an int as float for a float field)."""
    if name not in field_names():
        raise UserError(unknown_key_message(name))
    return check_value(name, value, _annotation(name), choices=_CHOICES.get(name), bounds=_RANGES.get(name))


def validate(config: TrainConfig) -> None:
    for name in field_names():
        setattr(config, name, check_hyperparameter(name, getattr(config, name)))  # 1 from JSON means 1.0
    if config.nesterov and config.momentum == 0:
        raise UserError("nesterov=True needs momentum > 0, but got momentum=0.0; set momentum=0.9 or nesterov=false")
    image_only = [f"{name}={getattr(config, name)}" for name in IMAGE_ONLY if getattr(config, name)]
    if image_only and config.unfreeze_depth == 0 and config.feature_cache:
        raise UserError(f"{', '.join(image_only)} needs images, but unfreeze_depth=0 trains the head on cached "
                        f"features; set feature_cache=false to train on images, or set it to 0 "
                        f"(mixup works on features)")


def unknown_key_message(name: str) -> str:
    close = difflib.get_close_matches(name, field_names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown hyperparameter {name!r}{hint}; known: {', '.join(field_names())}"


def parse_value(name: str, text: str) -> Any:
    """Turn the text of `--set name=text` into a value of the field's type."""
    if name not in field_names():
        raise UserError(unknown_key_message(name))
    kind = field_type(name)
    if text.lower() == "none" and _is_optional(name):
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not a valid {kind.__name__}") from None
    return text


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`["lr_head=0.01", "model=resnet18"]` -> `{"lr_head": 0.01, "model": "resnet18"}`."""
    values = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise UserError(f"--set expects key=value, but got {item!r} (for example --set lr_head=0.01)")
        values[name.strip()] = parse_value(name.strip(), text.strip())
    return values


# (loser, winner, how to let the loser count): a winner that is not None decides alone; {value} is the loser's.
OVERRIDES = (
    ("epochs", "steps", "pass --set steps=N for another length, or --set steps=none to train epochs={value}"),
    ("lr_backbone_ratio", "lr_layer4", "pass --set lr_layer4=none to use lr_backbone_ratio={value}"),
)


def override_notes(config: TrainConfig, given: dict[str, str], otherwise: str = "the defaults") -> list[str]:
    """One line per hyperparameter the user gave that another one overrides in `config`, naming both.

    `given` maps each name the user set to where it came from (`--set`, `--config`); a loser is reported
    only when it is there, so values nobody chose stay quiet. A winner not in `given` came from `otherwise`.
    """
    notes = []
    for loser, winner, remedy in OVERRIDES:
        value, wins = getattr(config, loser), getattr(config, winner)
        if loser in given and wins is not None:
            notes.append(f"{loser}={value} ignored: {winner}={wins} from {given.get(winner, otherwise)} wins; "
                         + remedy.format(value=value))
    return notes


def make_config(values: dict[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from a dict, with unknown keys and bad values reported as UserError."""
    values = dict(values or {})
    for name in values:
        if name not in field_names():
            raise UserError(unknown_key_message(name))
    return TrainConfig(**values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON file of hyperparameters (a `best/config.json` works as it is)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass a JSON file of hyperparameters")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"config file {str(path)!r} is not valid JSON ({err}); fix the file") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {str(path)!r} must hold a JSON object of hyperparameters")
    return values
