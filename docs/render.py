"""Render the reference tables of docs/ from the code; `python docs/render.py` rewrites every generated block.

A generated block is the lines between `<!-- generated: NAME -->` and `<!-- end generated -->` in a page
of docs/ or README.md, NAME a key of TABLES. tests/test_docs.py fails when a block differs from what
this renders, so a new field, default or help sentence reaches the pages by running this script.
"""

from __future__ import annotations

import re
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the tuner next to docs/, not an installed one

from tuner.runs.settings import RunSettings, flag  # noqa: E402
from tuner.train import config  # noqa: E402
from tuner.train.augment_policy import readme_table  # noqa: E402
from tuner.train.checks import is_optional, scalar_type  # noqa: E402

BLOCK = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)


def hyperparameter_table() -> list[str]:
    """One row per TrainConfig field: its name, default, allowed values and the help sentence of its metadata."""
    lines = ["| name | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for item in fields(config.TrainConfig):
        # The checks' own tables, so the allowed column is what make_config enforces.
        allowed = _allowed(item, config._CHOICES.get(item.name), config._RANGES.get(item.name))
        lines.append(f"| `{item.name}` | {_value(item.default)} | {allowed} | {_cell(item.metadata['help'])} |")
    return lines


def run_settings_table() -> list[str]:
    """One row per RunSettings field: its setting name, flag, default, allowed values, whether a space file's
    SETTINGS may set it, and its help."""
    lines = ["| setting | flag | default | allowed | in SETTINGS | the flag's help |",
             "| --- | --- | --- | --- | --- | --- |"]
    for item in fields(RunSettings):
        option = f"`{flag(item)}`" if flag(item) else "none"
        if item.metadata["train_flag"]:
            option += " (`tuner train` too)"
        allowed = _allowed(item, item.metadata["choices"], item.metadata["bounds"])
        in_space = "yes" if item.metadata["in_space_file"] else "no"
        lines.append(f"| `{item.name}` | {option} | {_value(item.default)} | {allowed} | {in_space} | "
                     f"{_cell(item.metadata['help'])} |")
    return lines


def augmentation_table() -> list[str]:
    """What each aug_strength does: augment_policy's own table."""
    return readme_table()


TABLES = {"hyperparameters": hyperparameter_table, "run-settings": run_settings_table,
          "augmentation": augmentation_table}


def _cell(text: str) -> str:
    """Help text as a table cell: a bar would end the cell, and `<id>` would be read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def _value(value) -> str:
    if value is MISSING or value is None:
        return "None"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _allowed(item: Field, choices, bounds) -> str:
    kind, optional = scalar_type(item.type), is_optional(item.type)
    if choices:
        text = ", ".join(f"`{choice}`" for choice in choices)
    elif kind is bool:
        text = "`true`, `false`"
    elif bounds is not None:
        text = f"{kind.__name__} {bounds.describe()}"
    else:
        text = kind.__name__
    return f"{text}, None" if optional else text


def render(text: str) -> str:
    """`text` with every generated block rewritten from the code."""
    def block(match: re.Match) -> str:
        if match.group(2) not in TABLES:
            raise SystemExit(f"unknown generated block {match.group(2)!r}; known: {', '.join(TABLES)}")
        return match.group(1) + "\n".join(TABLES[match.group(2)]()) + "\n" + match.group(4)
    return BLOCK.sub(block, text)


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> None:
    for page in pages():
        text = page.read_text()
        if render(text) != text:
            page.write_text(render(text))
            print(f"rewrote {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
