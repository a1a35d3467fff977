"""The README documents what the code offers."""

from __future__ import annotations

import re
from pathlib import Path

from prunedrop.cli import cli
from prunedrop.recipes import recipe_keys

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.strip().splitlines() if ln.strip()]
    assert len(commands) == 2
    for command in commands:
        script = command.split("#")[0].split()[1]
        assert (Path(__file__).parent.parent / script).is_file(), script


def test_every_recipe_key_and_command_is_documented() -> None:
    for key, _, _ in recipe_keys():
        assert f"`{key}`" in README, key
    for name in cli.commands:
        assert re.search(rf"prunedrop {name}\b", README), name
