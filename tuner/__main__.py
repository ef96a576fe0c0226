"""Command line: parse, call, print. `python -m tuner --help` lists the commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from . import __version__
from .errors import UserError

CACHE_KINDS = ("data", "images", "features", "probes", "compute")  # train.cache.KINDS, not importing torch for --help


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds `(default: X)` to each flag's help unless the help already states its default (one per line) or
    the flag is required (it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:  # the hook this formatter exists for
        if action.required or (action.help and "default:" in action.help):
            return action.help
        return super()._get_help_string(action)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return _DefaultsFormatter(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuner", description="Hyperparameter search for ResNet transfer learning.",
                     formatter_class=_formatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train one configuration (no Ray)", formatter_class=_formatter)
    train.add_argument("--data", required=True, help="image folder: DIR/train/<class>, DIR/val/<class> or DIR/<class>")
    train.add_argument("--config", help="JSON file of hyperparameters (a run's best/config.json works)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set one hyperparameter, e.g. --set lr_head=0.01 (repeatable; wins over --config)")
    train.add_argument("--out", help="output folder (default: runs/train-YYYYmmdd-HHMMSS)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    _add_runtime_options(train)

    _add_search_parser(commands)
    resume = commands.add_parser("resume", help="continue an interrupted search, or add trials to a finished one",
                                 formatter_class=_formatter)
    resume.add_argument("run", metavar="RUN", help="the run folder, STORAGE/NAME")
    resume.add_argument("--trials", type=int, metavar="N", help="add N new trials to the search (same study and "
                        "tables; finished trials are not run again); default: none, just continue")

    predict = commands.add_parser("predict", help="classify images with a trained model", formatter_class=_formatter)
    predict.add_argument("--model", required=True, help="a run's best/ folder or its model.pt")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=int, default=3, help="classes to show per image")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")

    evaluate = commands.add_parser("evaluate", help="measure a trained model on a labelled folder it never saw",
                                   formatter_class=_formatter)
    evaluate.add_argument("--model", required=True, help="a run folder, its best/ folder or a best/model.pt")
    evaluate.add_argument("--data", required=True, help="a folder of class folders, or one with split folders")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test",
                          help="which split folder to read when DATA has split folders")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--skip-bad-images", action="store_true", help="leave unreadable images out, counted")
    evaluate.add_argument("--baseline", metavar="MODEL", help="another best/ folder or model.pt, judged on the same "
                          "images and compared (McNemar's test, paired-bootstrap interval)")
    evaluate.add_argument("--predictions", metavar="FILE.csv", help="also write every image's prediction as CSV")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of text")

    report = commands.add_parser("report", help="write RUN/report/index.html: figures and tables of a search",
                                 formatter_class=_formatter)
    report.add_argument("run", metavar="RUN",
                        help="the run folder, STORAGE/NAME (finished or still running; a URI works)")

    export = commands.add_parser("export", help="export the best model as a torch.export .pt2, ONNX or TorchScript "
                                 "file, preprocessing recorded", formatter_class=_formatter)
    export.add_argument("run", metavar="RUN", help="a run folder, its best/ folder or a model.pt")
    export.add_argument("--format", required=True, choices=("export", "onnx", "torchscript"),  # serve.export.FORMATS
                        help="export: torch.export program (.pt2, torch.export.load); onnx; "
                             "torchscript: DEPRECATED in PyTorch, kept for servers that still load it")
    export.add_argument("--out", required=True, help="the file to write, e.g. model.pt2, model.onnx or model.pt")

    check = commands.add_parser("check-data", help="inspect an image folder before training",
                                formatter_class=_formatter)
    check.add_argument("data", metavar="DIR")
    check.add_argument("--val-fraction", type=float, default=0.2, help="val share when DIR has no val/ folder")
    check.add_argument("--seed", type=int, default=0, help="seed of that split")

    cache = commands.add_parser("cache", help="show or clear this node's cache of decoded images and features",
                                formatter_class=_formatter)
    cache.add_argument("action", choices=("list", "clear"), help="list: entries and sizes; clear: delete them")
    cache.add_argument("--kind", choices=CACHE_KINDS, action="append",
                       help="only this kind (repeatable); default: every kind")
    demo = commands.add_parser("demo-data", help="write the built-in demo dataset", formatter_class=_formatter)
    demo.add_argument("out", metavar="DIR")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    return parser


def _add_search_parser(commands) -> None:
    search = commands.add_parser(
        "search", help="search hyperparameters with Ray Tune, Optuna and ASHA", formatter_class=argparse.HelpFormatter,
        description="Run a search. Each run setting comes from its flag, else the space file's SETTINGS, else the "
                    "default shown.")
    search.add_argument("--space", required=True, help="search-space file, or the name of a shipped space (finetune, "
                                                       "feature_extract, gradual, demo)")
    for item in _flagged_settings():  # default None: a flag not given leaves the space file's SETTINGS in force
        if not item.metadata["train_flag"]:
            _add_setting_flag(search, item, default=None, show_default=True)
    search.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a hyperparameter for every trial, e.g. --set model=resnet18 (repeatable)")
    _add_runtime_options(search, device=False, search=True)


def _flagged_settings():
    """RunSettings' fields that have a `tuner search` flag (runs/settings.py: no Ray, no torch)."""
    from dataclasses import fields

    from .runs.settings import RunSettings, flag

    return [item for item in fields(RunSettings) if flag(item)]


def _add_setting_flag(parser: argparse.ArgumentParser, item, default, show_default: bool) -> None:
    """The flag of one run setting, typed by its field, its help from the field's metadata; an old
    spelling (--seed, --workers) still works, hidden from --help, with a note on stderr."""
    from .runs.settings import flag, old_flag
    from .train.checks import scalar_type

    text, kind = item.metadata["help"], scalar_type(item.type)
    if kind is bool:  # a switch: --autoscaling turns it on, --no-reuse-workers off
        parser.add_argument(flag(item), dest=item.name, action="store_false" if item.default else "store_true",
                            default=default, help=text)
        return
    if show_default and "default:" not in text:
        text += f" (default: {item.default})"
    parser.add_argument(flag(item), dest=item.name, type=kind, default=default, help=text)
    if old_flag(item):
        parser.add_argument(old_flag(item), dest=item.name, type=kind, default=default, help=argparse.SUPPRESS,
                            action=_OldSpelling, setting=item.name, new=flag(item))


class _OldSpelling(argparse.Action):
    """A renamed flag's old spelling: sets the new one's value and says the new name on stderr."""

    def __init__(self, option_strings, dest, setting: str, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.setting, self.new = setting, new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .runs.settings import renamed_note

        print(f"{parser.prog}: note: {renamed_note(self.setting, option_string, self.new)}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_runtime_options(parser: argparse.ArgumentParser, device: bool = True, search: bool = False) -> None:
    """Flags `tuner train` and `tuner search` share: the device (train only), data loading, bad images."""
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    for item in _flagged_settings():
        if item.metadata["train_flag"]:  # train's defaults are the settings' own; its --help shows them
            _add_setting_flag(parser, item, default=None if search else item.default, show_default=False)


def cmd_train(args: argparse.Namespace) -> int:
    from .runs.settings import check_setting  # no torch: the check comes before the seconds of importing it

    check_setting("loader_workers", args.loader_workers, label="--loader-workers")
    from .train import folders
    from .train.engine import Diverged, Trainer, fit

    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = _resumable_checkpoint(out) if args.resume else None
    if saved is None and out.exists() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} already holds files; pass --resume to continue that run or choose "
                        f"another --out")
    config = _train_config(args, saved)
    splits = folders.load_splits(args.data, val_fraction=config.val_fraction, seed=config.seed,
                              skip_bad_images=args.skip_bad_images)
    trainer = Trainer(config, splits, device=args.device, num_workers=args.loader_workers, progress=sys.stderr.isatty())
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
    from .train.checkpoint import load_checkpoint

    checkpoint = out / "checkpoint.pt"
    if not checkpoint.is_file():
        raise UserError(f"--resume: {str(checkpoint)!r} does not exist; point --out at an earlier run")
    return load_checkpoint(checkpoint, trainer_state=True)


def _train_config(args: argparse.Namespace, saved: dict | None):
    """The run's config: --config then --set; on --resume the saved one, where only its length may change.

    Prints a note for each hyperparameter given that another one overrides (epochs when steps is set).
    """
    from .train.config import load_config_file, make_config, override_notes, parse_assignments

    from_file = load_config_file(args.config) if args.config else {}
    from_flags = parse_assignments(args.set)
    values = {**from_file, **from_flags}
    defaults = make_config().to_dict()  # a best/config.json carries every field: its defaults were not chosen
    given = {k: "--config" for k, v in from_file.items() if defaults.get(k) != v} | {k: "--set" for k in from_flags}
    if saved is not None:
        changed = sorted(k for k, v in values.items() if k not in ("epochs", "steps") and saved["config"].get(k) != v)
        if changed:
            raise UserError(f"--resume keeps the run's hyperparameters, but {', '.join(changed)} differ; "
                            f"only epochs or steps may change (start a new --out to train another configuration)")
        values = {**saved["config"], **values}
    config = make_config(values)
    for note in override_notes(config, given, otherwise="the run's checkpoint" if saved else "the defaults"):
        print(f"tuner train: note: {note}", file=sys.stderr)
    return config


def _print_run_header(trainer, splits) -> None:
    weights = trainer.weights
    print(f"data: {splits.root} ({splits.layout}): {len(splits.classes)} classes, "
          f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images"
          + (f", {splits.dropped} bad files dropped" if splits.dropped else ""))
    print(f"model: {trainer.config.model}, weights: {weights['name']}"
          + (f" (sha256 {weights['sha256'][:12]})" if weights.get("sha256") else "")
          + f", device: {trainer.device}")
    print(f"compute: {trainer.compute.describe()}")
    print(f"length: {trainer.total_steps} optimizer steps ({trainer.epoch_steps} an epoch), head: "
          + ("linear probe on the frozen features, then trained" if trainer.config.probes_head() else "random init"))


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
        # The probe round (head_init=probe, epoch 0) trains nothing: no training columns.
        cells = [f"{metrics[key]:>10{spec}}" if key in metrics else f"{'-':>10}" for key, _, spec in self.COLUMNS]
        print("  ".join(cells) + ("     *" if metrics["improved"] else ""), flush=True)


def cmd_search(args: argparse.Namespace) -> int:
    from .search.driver import run_search
    from .train.config import parse_assignments

    flags = {item.name: getattr(args, item.name) for item in _flagged_settings()}  # None: not given
    run_search(args.space, flags, parse_assignments(args.set))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    if args.trials is not None and args.trials < 1:  # before the seconds of importing torch and Ray
        raise UserError(f"--trials adds trials to the search, so it must be >= 1, but got {args.trials}; leave it "
                        f"out to just continue the search")
    from .search.driver import resume_search

    resume_search(args.run, more_trials=args.trials)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .serve.predict import Predictor

    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, but got {args.top_k}")
    predictor = Predictor(args.model, device=args.device)
    results = predictor.predict(args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"image": img, "top": [{"class": c, "probability": p} for c, p in top]}
                          for img, top in zip(args.images, results, strict=True)], indent=2))
    else:
        for image, top in zip(args.images, results, strict=True):
            print(f"{image}: " + ", ".join(f"{name} {prob:.3f}" for name, prob in top))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .serve.evaluate import evaluate_folder, report_lines, write_predictions

    if args.predictions is not None:
        _check_predictions_path(Path(args.predictions), Path(args.data))
    result = evaluate_folder(args.model, args.data, split=args.split, device=args.device,
                             skip_bad_images=args.skip_bad_images, baseline=args.baseline)
    if args.predictions:
        write_predictions(result, args.predictions)
    print(json.dumps(result.summary(), indent=2) if args.json else "\n".join(report_lines(result)))
    if args.predictions and not args.json:
        print(f"\npredictions: {args.predictions}")
    for note in result.notes:
        print(f"tuner evaluate: note: {note}", file=sys.stderr)
    return 0


def _check_predictions_path(path: Path, data: Path) -> None:
    """Before any image is read: --predictions writes a new .csv (or replaces one), never a model or an image."""
    if path.is_dir():
        raise UserError(f"--predictions {path} is a folder; pass a file path, such as {path / 'predictions.csv'}")
    if path.suffix.lower() != ".csv":
        raise UserError(f"--predictions {path} does not end in .csv; pass a .csv path (it is replaced if there)")
    if path.resolve().is_relative_to(data.resolve()):
        raise UserError(f"--predictions {path} lies in the data folder {data}; write it elsewhere")
    parent = next((p for p in path.resolve().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"--predictions {path}: {parent} is a file, not a folder; pass a path in a folder")


def cmd_report(args: argparse.Namespace) -> int:
    from .report.page import summary_lines, write_report

    index = write_report(args.run)
    print("\n".join(summary_lines(args.run, index)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .serve.export import FORMAT_NAMES, TORCHSCRIPT_DEPRECATED, export_model

    metadata = export_model(args.run, args.format, args.out)
    if args.format == "torchscript":  # one line of ours instead of torch's three multi-line FutureWarnings;
        print(f"tuner: note: {TORCHSCRIPT_DEPRECATED}", file=sys.stderr)  # after: an error stays one line
    print(f"exported {FORMAT_NAMES[args.format]}: {args.out}")
    print(f"  input: {metadata['input']}, {metadata['image_size']} px (resize the shorter side to "
          f"{metadata['resize']}, centre crop); normalisation inside the model")
    print(f"  classes: {', '.join(metadata['classes'])}; weights: {metadata['weights']['name']}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .train.check_data import check_data

    lines, usable = check_data(args.data, val_fraction=args.val_fraction, seed=args.seed)
    print("\n".join(lines))
    return 0 if usable else 2


def cmd_demo_data(args: argparse.Namespace) -> int:
    from .train.demo_data import write_demo_data

    summary = write_demo_data(args.out, seed=args.seed)
    print(f"demo data in {args.out}: {len(summary['classes'])} classes ({', '.join(summary['classes'])})")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .train.cache import KINDS, cache_root, cache_usage, clear_cache

    kinds = tuple(args.kind or KINDS)
    if args.action == "clear":
        entries, freed = clear_cache(kinds)
        print(f"cleared {entries} entries ({freed / 2**20:.1f} MiB) of {', '.join(kinds)} from {cache_root()}")
        return 0
    print(f"node cache: {cache_root()} (set TUNER_CACHE to move it)")
    for kind, (entries, size) in cache_usage().items():
        if kind in kinds:
            print(f"  {kind:<9}{entries:>5} entries {size / 2**20:>10.1f} MiB")
    return 0


COMMANDS = {"search": cmd_search, "resume": cmd_resume, "train": cmd_train, "predict": cmd_predict,
            "evaluate": cmd_evaluate,
            "check-data": cmd_check_data, "demo-data": cmd_demo_data, "cache": cmd_cache, "report": cmd_report,
            "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        print(f"tuner {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that is a file, no permission, a full disk, an unreachable bucket
        if args.debug:
            traceback.print_exc()
        print(f"tuner {args.command}: error: {err}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        code = getattr(err, "exit_code", None)  # search.interrupts.Interrupted has said what to do next
        if code is None:
            print("interrupted", file=sys.stderr)
        return code or 130


if __name__ == "__main__":
    sys.exit(main())
