"""README's Layout names every module of the package, and only those."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layout_block_matches_the_package():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```")[1]
    named = set(re.findall(r"^  ([a-z_]+\.py)", block, flags=re.M))
    modules = {p.name for p in (ROOT / "tuner").glob("*.py")} - {"__init__.py"}
    assert named == modules, (sorted(modules - named), sorted(named - modules))
    assert "spaces/" in block and (ROOT / "tuner" / "spaces").is_dir()
