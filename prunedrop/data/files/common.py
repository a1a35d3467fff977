"""What the file loaders share: the split folder names, the recipe's defaults, short error reasons."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...recipes import Recipe

VAL_NAMES = ("val", "valid", "validation")
"""Folder / file / split names read as the validation split."""
TEST_NAMES = ("test",)
"""Names read as the test split."""


def recipe_or_defaults(recipe: Recipe | None) -> Recipe:
    """``recipe``, or the default recipe when None."""
    from ...recipes import Recipe

    return recipe if recipe is not None else Recipe()
