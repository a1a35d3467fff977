"""The README and the docs/ pages document what the code offers, and their links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from prunedrop.cli import cli
from prunedrop.recipes import recipe_keys

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *DOCS]


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.strip().splitlines() if ln.strip()]
    assert len(commands) == 2
    for command in commands:
        script = command.split("#")[0].split()[1]
        assert (ROOT / script).is_file(), script


def test_every_recipe_key_and_command_is_documented() -> None:
    recipes_page = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    for key, _, _ in recipe_keys():
        assert f"| `{key}` |" in recipes_page, key
    for name in cli.commands:
        assert re.search(rf"prunedrop {name}\b", README), name


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters such as β stay), spaces → '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_every_docs_page_is_linked_from_the_readme() -> None:
    for page in DOCS:
        assert f"](docs/{page.name})" in README, page.name


def test_relative_links_and_anchors_resolve() -> None:
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s):, mailto:
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{page.name}: {target}"


def test_every_command_line_option_is_documented() -> None:
    cli_page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name, command in cli.commands.items():
        for param in command.params:
            spellings = [*param.opts, *param.secondary_opts]
            if param.param_type_name == "option":
                assert any(re.search(rf"{re.escape(o)}\b", cli_page) for o in spellings), (name, spellings)
