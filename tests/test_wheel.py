"""A wheel of tuner carries its shipped search spaces: `--space finetune` works outside the checkout."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_shipped_spaces_load_from_an_installed_wheel(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("tuner-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    # Outside the checkout, the wheel's tuner (not the checkout's) loads and checks the shipped space.
    check = ("import tuner, tuner.search.space as s; space = s.load_space('finetune'); s.check_space(space); "
             "print(tuner.__file__); print(space.path)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    package, space = result.stdout.split()
    assert package.startswith(str(site)) and space == str(site / "tuner" / "search" / "spaces" / "finetune.py")
    # The command line gets past the space to the data: the next thing it checks.
    result = subprocess.run([sys.executable, "-m", "tuner", "search", "--space", "finetune", "--data",
                             str(tmp_path / "missing")], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 2 and "missing" in result.stderr and "space file" not in result.stderr, result.stderr


def test_the_top_level_search_spaces_are_the_shipped_files():
    """search_spaces/ is the user-facing copy: links to the package's files, so the two cannot drift."""
    from tuner.search.space import SPACES_DIR

    shipped = sorted(p.name for p in SPACES_DIR.glob("*.py") if p.name != "__init__.py")
    top = sorted((ROOT / "search_spaces").glob("*.py"))
    assert [p.name for p in top] == shipped
    assert all(p.resolve() == (SPACES_DIR / p.name).resolve() for p in top)
