"""The package's layers: imports flow train <- search <- __main__, and train <- report, serve.

Only tuner/search imports Ray. Checked twice: statically over every import statement (lazy ones inside
functions included), and by importing each module in a fresh interpreter and looking at sys.modules.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tuner"
RAY_PARTS = {"tuner.search.trainable", "tuner.search.driver", "tuner.search.progress", "tuner.search.results"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module an import statement in the file names, relative imports resolved."""
    here = _module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package the module lives in
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import data`
    return found


def _modules(layer: str) -> list[Path]:
    return sorted(p for p in (PACKAGE / layer).rglob("*.py") if "spaces" not in p.parts)


def _violations(layer: str, forbidden) -> list[str]:
    return [f"{_module_name(path)} imports {name}" for path in _modules(layer)
            for name in sorted(_imports(path)) if forbidden(name)]


def _is(name: str, *roots: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def test_train_imports_no_ray_no_optuna_and_nothing_above_it():
    assert _violations("train", lambda n: _is(n, "ray", "optuna", "tensorboardX", "tuner.search", "tuner.report",
                                               "tuner.serve", "tuner.testing", "tuner.__main__")) == []


@pytest.mark.parametrize("layer", ["report", "serve"])
def test_report_and_serve_stay_off_ray_and_the_search_driver(layer):
    assert _violations(layer, lambda n: _is(n, "ray", *RAY_PARTS)) == []


def test_serve_does_not_import_the_report_or_the_search():
    assert _violations("serve", lambda n: _is(n, "tuner.report", "tuner.search")) == []


def test_the_layer_check_sees_relative_imports():
    module = PACKAGE / "train" / "engine.py"
    names = _imports(module)
    assert "tuner.train.config" in names and "tuner.errors" in names  # `from .config`, `from ..errors`


def test_importing_a_lower_layer_loads_no_ray():
    modules = [_module_name(p) for layer in ("train", "report", "serve") for p in _modules(layer)]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna') or m in "
            f"{sorted(RAY_PARTS)!r}))\n")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_moving_modules_kept_the_markers_that_files_already_written_carry():
    # Checkpoints and exported models name their format; a marker renamed with its module would refuse
    # every best/model.pt and exported file written before the move.
    from tuner.serve.export import EXPORT_FORMAT
    from tuner.train.model import CHECKPOINT_FORMAT

    assert CHECKPOINT_FORMAT == "tuner.checkpoint/1"
    assert EXPORT_FORMAT == "tuner.export/1"
