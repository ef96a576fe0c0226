"""Command line: parse, call, print. `python -m tuner --help` lists the commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuner", description="Hyperparameter search for ResNet transfer learning.",
                     formatter_class=_formatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train one configuration (no Ray)", formatter_class=_formatter)
    train.add_argument("--data", required=True, help="image folder: DIR/train/<class>, DIR/val/<class> or DIR/<class>")
    train.add_argument("--config", help="JSON file of hyperparameters (a run's best/config.json works)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set one hyperparameter, e.g. --set lr_head=0.01 (repeatable; wins over --config)")
    train.add_argument("--out", help="output folder (default: runs/train-YYYYmmdd-HHMMSS)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    _add_runtime_options(train)

    predict = commands.add_parser("predict", help="classify images with a trained model", formatter_class=_formatter)
    predict.add_argument("--model", required=True, help="a run's best/ folder or its model.pt")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=int, default=3, help="classes to show per image")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")

    check = commands.add_parser("check-data", help="inspect an image folder before training", formatter_class=_formatter)
    check.add_argument("data", metavar="DIR")
    check.add_argument("--val-fraction", type=float, default=0.2, help="val share when DIR has no val/ folder")
    check.add_argument("--seed", type=int, default=0, help="seed of that split")

    demo = commands.add_parser("demo-data", help="write the built-in demo dataset", formatter_class=_formatter)
    demo.add_argument("out", metavar="DIR")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    return parser


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading processes; default: up to 8 with CUDA, 0 on CPU (loading in the main "
                             "process leaves every core to the model)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="drop unreadable or non-image files instead of refusing the data")


def cmd_train(args: argparse.Namespace) -> int:
    from . import data
    from .engine import Diverged, Trainer, fit

    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be >= 0, but got {args.workers}")
    saved = _resumable_checkpoint(out) if args.resume else None
    if saved is None and out.exists() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} already holds files; pass --resume to continue that run or choose another --out")
    config = _train_config(args, saved)
    splits = data.load_splits(args.data, val_fraction=config.val_fraction, seed=config.seed,
                              skip_bad_images=args.skip_bad_images)
    trainer = Trainer(config, splits, device=args.device, num_workers=args.workers, progress=sys.stderr.isatty())
    if saved is not None:
        trainer.load_state_dict(saved)
    _print_run_header(trainer, splits)
    out.mkdir(parents=True, exist_ok=True)
    try:
        best = fit(trainer, out, on_epoch=_EpochTable().row)
    except Diverged as err:
        print(f"diverged: {err}; the best checkpoint so far is in {out / 'best'}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith(("val_", "test_")))
    print(f"best epoch {best.get('epoch')}: {summary}\nsaved: {out / 'best'}")
    return 0


def _resumable_checkpoint(out: Path) -> dict:
    from .checkpoint import load_checkpoint

    checkpoint = out / "checkpoint.pt"
    if not checkpoint.is_file():
        raise UserError(f"--resume: {str(checkpoint)!r} does not exist; point --out at an earlier run")
    return load_checkpoint(checkpoint)


def _train_config(args: argparse.Namespace, saved: dict | None):
    """The run's config: --config then --set; on --resume the saved one, where only epochs may change."""
    from .config import load_config_file, make_config, parse_assignments

    values = load_config_file(args.config) if args.config else {}
    values.update(parse_assignments(args.set))
    if saved is None:
        return make_config(values)
    changed = sorted(k for k, v in values.items() if k != "epochs" and saved["config"].get(k) != v)
    if changed:
        raise UserError(f"--resume keeps the run's hyperparameters, but {', '.join(changed)} differ; "
                        f"only epochs may change (start a new --out to train another configuration)")
    return make_config({**saved["config"], **values})


def _print_run_header(trainer, splits) -> None:
    weights = trainer.weights
    print(f"data: {splits.root} ({splits.layout}): {len(splits.classes)} classes, "
          f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images"
          + (f", {splits.dropped} bad files dropped" if splits.dropped else ""))
    print(f"model: {trainer.config.model}, weights: {weights['name']}"
          + (f" (sha256 {weights['sha256'][:12]})" if weights.get("sha256") else "")
          + f", device: {trainer.device}, precision: {trainer.amp_dtype or 'fp32'}")


class _EpochTable:
    """Prints one aligned row per epoch (header first); `*` marks a new best epoch."""

    COLUMNS = (("epoch", "epoch", "d"), ("train_loss", "train_loss", ".4f"), ("train_acc", "train_acc", ".4f"),
               ("val_loss", "val_loss", ".4f"), ("val_acc", "val_acc", ".4f"), ("lr/head", "lr_head", ".2e"),
               ("epoch_seconds", "seconds", ".1f"), ("images_per_second", "img/s", ".1f"))

    def __init__(self):
        self.started = False

    def row(self, metrics: dict) -> None:
        if not self.started:
            print("  ".join(f"{title:>10}" for _, title, _ in self.COLUMNS) + "  best")
            self.started = True
        cells = [f"{metrics[key]:>10{spec}}" for key, _, spec in self.COLUMNS]
        print("  ".join(cells) + ("     *" if metrics["improved"] else ""), flush=True)


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Predictor

    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, but got {args.top_k}")
    predictor = Predictor(args.model, device=args.device)
    results = predictor.predict(args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"image": img, "top": [{"class": c, "probability": p} for c, p in top]}
                          for img, top in zip(args.images, results)], indent=2))
    else:
        for image, top in zip(args.images, results):
            print(f"{image}: " + ", ".join(f"{name} {prob:.3f}" for name, prob in top))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data import check_data

    lines, usable = check_data(args.data, val_fraction=args.val_fraction, seed=args.seed)
    print("\n".join(lines))
    return 0 if usable else 2


def cmd_demo_data(args: argparse.Namespace) -> int:
    from .demo_data import write_demo_data

    summary = write_demo_data(args.out, seed=args.seed)
    print(f"demo data in {args.out}: {len(summary['classes'])} classes ({', '.join(summary['classes'])})")
    return 0


COMMANDS = {"train": cmd_train, "predict": cmd_predict, "check-data": cmd_check_data, "demo-data": cmd_demo_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        print(f"tuner {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
