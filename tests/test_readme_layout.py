"""README's Layout names every module of the package, and only those, in the folders they live in."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _named_modules(block: str) -> set[str]:
    """'  train/' then '    engine.py' -> 'train/engine.py': two spaces of indent per folder level."""
    named, folders = set(), []
    for line in block.splitlines():
        match = re.match(r"^((?:  )+)([a-z_]+(?:\.py|/))", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2 - 1
        folders = folders[:depth]
        if match.group(2).endswith("/"):
            folders.append(match.group(2))
        else:
            named.add("".join(folders) + match.group(2))
    return named


def test_the_layout_block_matches_the_package():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```")[1].split("\n", 1)[1]
    package = ROOT / "tuner"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")
               if p.name != "__init__.py" and "spaces" not in p.parts}
    named = _named_modules(block)
    assert named == modules, (sorted(modules - named), sorted(named - modules))
    assert "    spaces/" in block and (package / "search" / "spaces").is_dir()
