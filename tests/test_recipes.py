"""The recipe schema: every shipped YAML loads; bad keys, types and values are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunedrop.errors import PrunedropError
from prunedrop.recipes import Recipe, load_recipe, recipe_keys, shipped_recipes_dir

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_recipes_are_shipped() -> None:
    assert shipped_recipes_dir() is not None
    assert {p.name for p in RECIPES} >= {"sparse-vd.yaml", "digits-quick.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_documents_itself(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), "the first line says what the recipe is for"
    # every key set in the file is preceded by a comment somewhere above it (documented key by key)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#") and ":" in line:
            assert any(ln.startswith("#") for ln in lines[max(0, i - 4):i]), f"{path.name}: {line} undocumented"


def test_every_field_has_documentation() -> None:
    keys = recipe_keys()
    assert len(keys) == len(Recipe.__dataclass_fields__)
    assert all(doc for _, _, doc in keys)


def test_unknown_key_names_the_closest_valid_one() -> None:
    with pytest.raises(PrunedropError, match="unknown key 'treshold'; did you mean 'threshold'"):
        Recipe.from_dict({"treshold": 2.0})
    with pytest.raises(PrunedropError, match="unknown key 'zzz'; valid keys: method"):
        Recipe.from_dict({"zzz": 1})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"epochs": "ten"}, "'epochs' must be a whole number"),
        ({"epochs": 2.5}, "'epochs' must be a whole number"),
        ({"lr": "fast"}, "'lr' must be a number"),
        ({"lr": True}, "'lr' must be a number"),
        ({"lr": 0}, "'lr' = 0.0 must be > 0"),
        ({"lr": float("nan")}, "'lr' must be a finite number"),
        ({"epochs": -1}, "'epochs' = -1 must be ≥ 0"),
        ({"threshold": 12.0}, "'threshold' = 12.0 must lie inside"),
        ({"method": "magic"}, "'method' = 'magic' must be one of 'sparse_vd'"),
        ({"include": 3}, "'include' must be a list of strings"),
        ({"latency_batch_sizes": ["a"]}, "'latency_batch_sizes' must be a list of whole numbers"),
        ({"latency_batch_sizes": [0]}, "'latency_batch_sizes' = [0] must list positive"),
        ({"latency_runs": 1}, "'latency_runs' = 1"),
        ({"include": []}, "'include' is empty"),
        ({"device": "tpu"}, "'device' = 'tpu' must be auto, cpu, cuda or cuda:N"),
        ({"val_fraction": 1.0}, "'val_fraction' = 1.0 must be in"),
        ({"epochs": 2, "kl_warmup_epochs": 5, "kl_weight": 1.0}, "'kl_warmup_epochs' = 5.0 is longer than 'epochs' = 2"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(PrunedropError) as info:
        Recipe.from_dict(data)
    assert message in info.value.message


def test_load_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(PrunedropError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(PrunedropError, match="is not valid YAML"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- epochs\n")
    with pytest.raises(PrunedropError, match="must be a mapping"):
        load_recipe(listy)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("epochs: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(PrunedropError, match="is not valid YAML"):
        load_recipe(unsafe)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_recipe(empty) == Recipe()


def test_replace_ignores_none_and_validates() -> None:
    r = Recipe().replace(epochs=3, lr=None, kl_warmup_epochs=1)
    assert r.epochs == 3 and r.lr == Recipe().lr
    with pytest.raises(PrunedropError):
        Recipe().replace(batch_size=0)


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*Recipe.__dataclass_fields__, "bogus"]), values, max_size=6))
def test_any_mapping_is_a_recipe_or_a_prunedrop_error(data: dict) -> None:
    try:
        recipe = Recipe.from_dict(data)
    except PrunedropError:
        return
    assert isinstance(recipe, Recipe)
