"""The package's layers as folder rules: each folder imports only the folders below it.

    __main__                  the CLI: parses, calls any layer lazily
    search/  report/  serve/  search runs trials (Ray, Optuna); report reads a run's files; serve predicts
    runs/                     the run's record: settings, budget, outcomes, run files, storage
    train/                    plain PyTorch, at the bottom

Only search/ imports Ray. Optuna is search's too, but report/ reads a run's optuna.db inside the functions
that need it (importance.py). runs/ loads no torch when imported: it imports only torch-free train
modules at the top, and a train module that loads torch only inside the one function that needs it
(storage.local_data: the node cache's lock; outcomes.diverged_error: the Trainer's words). testing/
holds the fault hooks that run inside search's trials, so it may import Ray as search does.

Checked twice: statically over every import statement (lazy ones inside functions included), and by
importing each module in a fresh interpreter and looking at sys.modules.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tuner"
ABOVE_TRAIN = ("tuner.runs", "tuner.search", "tuner.report", "tuner.serve", "tuner.testing", "tuner.__main__")
# What each folder may not import, lazily or not: the layers above it, and the frameworks it stays off.
FORBIDDEN = {
    "train": ("ray", "optuna", "tensorboardX", *ABOVE_TRAIN),
    "runs": ("ray", "optuna", "torch", "torchvision", "tuner.search", "tuner.report", "tuner.serve",
             "tuner.testing", "tuner.__main__"),
    "report": ("ray", "tuner.search", "tuner.serve", "tuner.__main__"),
    "serve": ("ray", "optuna", "tuner.search", "tuner.report", "tuner.__main__"),
    "search": ("tuner.report", "tuner.serve", "tuner.__main__"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every module an import statement in the file names, relative imports resolved; with top_level_only,
    only the statements that run when the module is imported (not those inside a function)."""
    here = _module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package the module lives in
    tree = ast.parse(path.read_text())
    nodes = _outside_functions(tree) if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import data`
    return found


def _outside_functions(tree: ast.AST):
    """The nodes of `tree` that are not inside a function body."""
    for node in ast.iter_child_nodes(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield node
            yield from _outside_functions(node)


def _modules(layer: str) -> list[Path]:
    """The modules of a folder (`__main__` is the one file); search's space files are user code it loads."""
    if layer == "__main__":
        return [PACKAGE / "__main__.py"]
    return sorted(p for p in (PACKAGE / layer).rglob("*.py") if "spaces" not in p.parts)


def _violations(layer: str, roots: tuple[str, ...], *, top_level_only: bool = False) -> list[str]:
    return [f"{_module_name(path)} imports {name}" for path in _modules(layer)
            for name in sorted(_imports(path, top_level_only=top_level_only)) if _is(name, *roots)]


def _is(name: str, *roots: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_folder_imports_only_the_folders_below_it(layer):
    assert _violations(layer, FORBIDDEN[layer]) == []


@pytest.mark.parametrize("layer", ["train", "runs", "report", "serve", "__main__"])
def test_only_search_and_the_fault_hooks_its_trials_run_import_ray(layer):
    assert _violations(layer, ("ray",)) == []


def test_report_reads_optuna_only_inside_the_functions_that_need_it():
    assert _violations("report", ("optuna",), top_level_only=True) == []


def test_runs_imports_torch_free_train_modules_at_the_top():
    torch_modules = [_module_name(p) for p in _modules("train") if _is_torch_module(p)]
    assert _violations("runs", tuple(torch_modules), top_level_only=True) == []


def _is_torch_module(path: Path) -> bool:
    """Whether importing a train module loads torch (its own top-level imports, or a train module's it imports)."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        names = _imports(current, top_level_only=True)
        if any(_is(name, "torch", "torchvision") for name in names):
            return True
        todo += [p for p in _modules("train") if _module_name(p) in names]
    return False


def test_the_layer_check_sees_relative_and_lazy_imports():
    module = PACKAGE / "train" / "engine.py"
    names = _imports(module)
    assert "tuner.train.config" in names and "tuner.errors" in names  # `from .config`, `from ..errors`
    storage = PACKAGE / "runs" / "storage.py"
    assert "tuner.train.cache" in _imports(storage)  # inside local_data
    assert "tuner.train.cache" not in _imports(storage, top_level_only=True)
    assert _is_torch_module(PACKAGE / "train" / "cache.py") and not _is_torch_module(PACKAGE / "train" / "config.py")


def _loaded_after_importing(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    """The modules under `roots` that a fresh interpreter holds after importing `modules`."""
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"roots = {roots!r}\n"
            "print(sorted(m for m in sys.modules if any(m == r or m.startswith(r + '.') for r in roots)))\n")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return ast.literal_eval(loaded)


def test_importing_a_layer_below_search_loads_no_ray_no_optuna_and_no_search():
    modules = [_module_name(p) for layer in ("train", "runs", "report", "serve") for p in _modules(layer)]
    assert _loaded_after_importing(modules, ("ray", "optuna", "tuner.search")) == []


def test_importing_runs_loads_no_torch():
    modules = [_module_name(p) for p in _modules("runs")]
    assert _loaded_after_importing(modules, ("torch", "torchvision", "ray", "optuna")) == []


def test_moving_modules_kept_the_markers_that_files_already_written_carry():
    # Checkpoints and exported models name their format; a marker renamed with its module would refuse
    # every best/model.pt and exported file written before the move.
    from tuner.serve.export import EXPORT_FORMAT
    from tuner.train.model import CHECKPOINT_FORMAT

    assert CHECKPOINT_FORMAT == "tuner.checkpoint/1"
    assert EXPORT_FORMAT == "tuner.export/1"
