"""README.md, docs/ and bench/README.md against the code: generated tables current, hand tables true,
flags and commands real, links alive, README a front door that CI follows."""

import importlib.util
import re
from pathlib import Path

import pytest

from tuner.__main__ import build_parser
from tuner.train.config import field_names

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "run `python docs/render.py` to regenerate it"


def _load_render():
    spec = importlib.util.spec_from_file_location("docs_render", ROOT / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()
PAGES = render.pages()  # README.md and docs/*.md
ALL_PAGES = [*PAGES, ROOT / "bench" / "README.md"]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """`text` without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def _tables(text: str) -> list[list[str]]:
    """Every Markdown table of `text` outside generated blocks, as its lines."""
    text = render.BLOCK.sub("", _prose(text))
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _cells(line: str) -> list[str]:
    """The cells of a table row; `\\|` inside a cell is a bar, not a border."""
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _rows(table: list[str]) -> list[list[str]]:
    return [_cells(line) for line in table[2:]]


def _table(page: str, header: str) -> list[list[str]]:
    """The rows of the hand table in `page` whose header line starts with `header`."""
    found = [table for table in _tables((ROOT / page).read_text()) if table[0].startswith(header)]
    assert len(found) == 1, f"{page} should have one table starting {header!r}"
    return _rows(found[0])


def _code(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def _parsers() -> dict[str, object]:
    """Each `tuner` subcommand's parser, and the top-level one under ''."""
    parser = build_parser()
    commands = next(action for action in parser._actions if action.choices and action.dest == "command")
    return {"": parser, **commands.choices}


def _flags(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


# --- generated tables ---------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_generated_block_is_what_the_code_renders(page):
    text = page.read_text()
    assert render.render(text) == text, f"a generated table in {_name(page)} is stale: {REGENERATE}"


def test_every_generated_table_appears_in_a_page():
    texts = "".join(page.read_text() for page in PAGES)
    for name in render.TABLES:
        assert f"<!-- generated: {name} -->" in texts, f"no page holds the generated {name} table"


def test_the_hyperparameter_table_has_a_row_per_field_with_a_sentence():
    rows = render.hyperparameter_table()[2:]
    assert [_cells(row)[0].strip("`") for row in rows] == field_names()
    assert all(_cells(row)[-1].endswith(".") for row in rows), "each field's help is one sentence with a full stop"


def test_the_augmentation_table_sits_in_its_section():
    """The table the loader's policy renders is under 'Augmentation strength' (it moved from README)."""
    page = (ROOT / "docs" / "hyperparameters.md").read_text()
    section = page.split("## Augmentation strength", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table == render.augmentation_table(), f"docs/hyperparameters.md's augmentation table: {REGENERATE}"


def test_every_table_is_generated_or_checked_here():
    """A new hand table needs a test below that checks what it states against the code."""
    checked = {"README.md": ["| command |"], "docs/search-spaces.md": ["| shipped space |"],
               "docs/export.md": ["| `--format` |"], "docs/libraries.md": ["| job |"],
               "docs/failures.md": ["| trials.parquet | optuna.db |", "| stop or fault |"]}
    for page in PAGES:
        for table in _tables(page.read_text()):
            assert any(table[0].startswith(header) for header in checked.get(_name(page), [])), (
                f"{_name(page)} has a table that is neither generated nor checked: {table[0]}")


# --- hand tables --------------------------------------------------------------------------------------

def test_the_commands_table_lists_every_command_with_real_flags():
    parsers = _parsers()
    rows = _table("README.md", "| command |")
    listed = {}
    for cells in rows:
        usage = _code(cells[0])[0]
        assert usage.startswith("tuner "), usage
        listed[usage.split()[1]] = " ".join(_code(cells[0]) + _code(cells[1]))
    assert set(listed) == set(parsers) - {""}, "README's Commands table should list every tuner command"
    for command, text in listed.items():
        unknown = set(re.findall(r"--[a-z][a-z0-9-]*", text)) - _flags(parsers[command])
        assert not unknown, f"tuner {command} has no {sorted(unknown)}"


def test_the_study_states_table_says_what_outcomes_tells_optuna():
    from tuner.runs.outcomes import optuna_state

    for cells in _table("docs/failures.md", "| trials.parquet | optuna.db |"):
        expected = cells[1].split()[0].strip(",;")
        for status in _code(cells[0]):
            assert (optuna_state(status, 0.5) or "RUNNING") == expected, f"{status}: docs say {expected}"


def test_every_row_of_the_fault_table_names_a_test_that_exists():
    from test_interruptions import STOPS

    for cells in _table("docs/failures.md", "| stop or fault |"):
        file, _, function = _code(cells[-1])[0].partition("::")
        assert f"def {function}(" in (ROOT / "tests" / file).read_text(), f"no {function} in tests/{file}"
        if function == "test_a_signal_leaves_a_run_that_resumes_without_loss":
            assert cells[0] in STOPS, f"{cells[0]!r} is no case of {function}"
        assert all(cell.split()[0] in ("0", "—") for cell in cells[1:-1]), cells


def test_the_shipped_spaces_table_matches_the_space_files():
    folder = ROOT / "tuner" / "search" / "spaces"
    rows = _table("docs/search-spaces.md", "| shipped space |")
    named = {cells[0].strip("`"): cells[1] for cells in rows}
    assert set(named) == {path.name for path in folder.glob("*.py") if path.name != "__init__.py"}
    for file, text in named.items():
        source = (folder / file).read_text()
        for name in _code(text):
            if name == "lr_<stage>":
                assert 'f"lr_{stage}"' in source, file
                continue
            assert name in field_names(), f"{name!r} in the row of {file} is not a hyperparameter"
            assert f'"{name}"' in source, f"{file} does not mention {name!r}, which its row names"


def test_the_export_table_has_a_row_per_format():
    formats = next(action.choices for action in _parsers()["export"]._actions if "--format" in action.option_strings)
    rows = _table("docs/export.md", "| `--format` |")
    assert [cells[0].strip("`") for cells in rows] == list(formats)


def test_the_libraries_table_names_what_tuner_uses():
    source = "".join(path.read_text() for path in (ROOT / "tuner").rglob("*.py"))
    for cells in _table("docs/libraries.md", "| job |"):
        for name in _code(cells[1]):
            if re.fullmatch(r"[A-Za-z_][\w.]*(=True)?", name):
                assert name in source, f"docs/libraries.md names {name!r}, which tuner does not use"


# --- prose: flags, commands, links --------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_tuner_command_and_flag_named_exists(page):
    """Inline code that is a tuner command line or a flag, and tuner command lines in code blocks."""
    parsers = _parsers()
    every_flag = set().union(*(_flags(parser) for parser in parsers.values()))
    text = page.read_text()
    spans = _code(_prose(text)) + re.findall(r"^\s*(?:python -m )?tuner .*$", text, flags=re.MULTILINE)
    for span in spans:
        span = re.sub(r"\s#\s.*$", "", span).strip()  # a shell comment in a code block
        if span.startswith("--"):
            flag = re.match(r"--[a-z][a-z0-9-]*", span).group()
            assert flag in every_flag, f"{_name(page)}: no tuner command has {flag}"
            continue
        words = re.sub(r"^(python -m )?tuner ", "", span, count=1).split() if re.match(
            r"(python -m )?tuner ", span) else None
        if not words:
            continue
        command = next((word for word in words if not word.startswith("-")), "")
        if command in parsers:
            flags = _flags(parsers[command]) | _flags(parsers[""])
        else:
            assert command.isupper() or command in ("...", ""), f"{_name(page)}: no tuner command {command!r}"
            flags = _flags(parsers[""])
        unknown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)) - flags
        assert not unknown, f"{_name(page)}: `{span}` uses {sorted(unknown)}, which tuner {command} lacks"


@pytest.mark.parametrize("page", ALL_PAGES, ids=_name)
def test_every_file_named_exists(page):
    """Paths of tuner's modules, tests and benchmarks named in inline code (a module moved: update the page)."""
    for span in _code(_prose(page.read_text())):
        for path in re.findall(r"(?<![\w/])((?:tuner|tests|bench)/[\w/]+\.(?:py|sh))\b", span):
            assert (ROOT / path).is_file(), f"{_name(page)} names {path}, which does not exist"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", ALL_PAGES, ids=_name)
def test_every_relative_link_points_at_a_file(page):
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{_name(page)} links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", _prose(file.read_text()), flags=re.MULTILINE)
            assert anchor in {_slug(heading) for heading in headings}, f"{_name(page)}: no heading #{anchor}"


# --- README as the front door, and CI ----------------------------------------------------------------

def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference material to docs/"
    first = "\n".join(lines[:60])
    for command in ('python -m pip install -e ".[dev]"', "python -m tuner search --space search_spaces/demo.py",
                    "python -m pytest -q"):
        assert f"\n{command}\n" in first, f"README's first 60 lines should hold `{command}` on its own line"


def test_ci_runs_the_readme_commands():
    """.ci/run's commands (not its Chromium set-up) are README's install, lint and test commands."""
    commands = [line.split("  #")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if re.match(r"(python|ruff|pytest|pip)\b", line)]
    assert len(commands) == 3, commands
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:60])
    for command in commands:
        assert command in first, f".ci/run runs `{command}`, which README's first 60 lines do not show"


# --- bench/README.md: every figure says where it came from --------------------------------------------

def _figure_sections() -> list[tuple[str, str]]:
    text = (ROOT / "bench" / "README.md").read_text()
    figures = text.split("\n## Figures", 1)[1].split("\n## ", 1)[0]
    return [(part.split("\n", 1)[0], part) for part in figures.split("\n### ")[1:]]


def test_bench_figures_exist():
    assert len(_figure_sections()) >= 5


@pytest.mark.parametrize("title, section", _figure_sections(), ids=[title for title, _ in _figure_sections()])
def test_every_bench_figure_names_its_command_commit_and_machine(title, section):
    text = (ROOT / "bench" / "README.md").read_text()
    machines = re.findall(r"^- \*\*([\w-]+)\*\*", text.split("\n## The machines", 1)[1].split("\n## ", 1)[0],
                          flags=re.MULTILINE)
    commands = re.findall(r"`python (bench/\w+\.py|-m tuner )", section)
    assert commands, f"{title}: no `python bench/...` or `python -m tuner ...` command"
    for script in commands:
        assert script.startswith("-m") or (ROOT / script).is_file(), f"{title}: {script} does not exist"
    assert re.search(r"commit [0-9a-f]{7,40}\b", section), f"{title}: no commit"
    assert any(machine in section for machine in machines), f"{title}: no machine of {machines}"
