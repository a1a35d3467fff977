"""The recipe schema: every shipped YAML loads; bad keys, types and values are errors naming the key."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunedrop.errors import PrunedropError
from prunedrop.recipes import KEY_SECTIONS, SECTIONS, Recipe, load_recipe, recipe_keys, shipped_recipes_dir

ROOT = Path(__file__).parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
FIXTURES = Path(__file__).parent / "fixtures"
#: the shipped recipes' keys and values as they stood in the flat form, recorded before they became version 2
FLAT_RECIPES = json.loads((FIXTURES / "recipes_v1.json").read_text(encoding="utf-8"))


def test_recipes_are_shipped() -> None:
    assert shipped_recipes_dir() is not None
    assert {p.name for p in RECIPES} >= {"sparse-vd.yaml", "digits-quick.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_documents_itself(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), "the first line says what the recipe is for"
    # every key (and section) set in the file is preceded by a comment somewhere above it (documented key by key)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and re.match(r"\s*\w+:", line):
            assert any(ln.lstrip().startswith("#") for ln in lines[max(0, i - 4):i]), f"{path.name}: {line} undocumented"


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


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"lr": "5e-4"}, "lr", 5e-4),
        ({"lr": "1E-3"}, "lr", 1e-3),
        ({"finetune_lr": "+2e3"}, "finetune_lr", 2e3),
        ({"kl_weight": " 1e1 "}, "kl_weight", 10.0),
        ({"epochs": "1e3"}, "epochs", 1000),
        ({"epochs": "+2E1"}, "epochs", 20),
        ({"epochs": 30.0}, "epochs", 30),
        ({"batch_size": "64"}, "batch_size", 64),
        ({"latency_batch_sizes": ["1e0", 6.4e1]}, "latency_batch_sizes", [1, 64]),
        ({"kl_weights": {"fc*": "5e-1"}}, "kl_weights", {"fc*": 0.5}),
    ],
)
def test_numbers_written_as_yaml_strings_are_read(data: dict, key: str, expected) -> None:
    """YAML 1.1 reads ``5e-4`` (an exponent without a dot) as a string: a number key reads it as the number, and an
    int key any form that writes a whole number exactly."""
    value = getattr(Recipe.from_dict(data), key)
    assert value == expected and type(value) is type(expected)
    if isinstance(value, list):
        assert all(type(v) is type(e) for v, e in zip(value, expected))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lr": "5e-4x"}, "'lr' must be a number, not '5e-4x'"),
        ({"lr": "true"}, "'lr' must be a number"),
        ({"lr": "nan"}, "'lr' must be a finite number"),
        ({"lr": "-inf"}, "'lr' must be a finite number"),
        ({"lr": "0x10"}, "'lr' must be a number"),
        ({"epochs": "1.5e0"}, "'epochs' must be a whole number"),
        ({"epochs": "1e-400"}, "'epochs' must be a whole number"),
        ({"epochs": "1e400"}, "'epochs' must be a whole number"),
        ({"epochs": "inf"}, "'epochs' must be a whole number"),
        ({"epochs": True}, "'epochs' must be a whole number"),
        ({"epochs": float("nan")}, "'epochs' must be a whole number"),
        ({"latency_batch_sizes": ["1.5"]}, "'latency_batch_sizes' must be a list of whole numbers"),
        ({"kl_weights": {"fc*": "nan"}}, "'kl_weights' must map layer-name globs to numbers"),
        ({"kl_weights": {"fc*": True}}, "'kl_weights' must map layer-name globs to numbers"),
    ],
)
def test_text_that_is_not_a_number_is_still_refused(data: dict, message: str) -> None:
    with pytest.raises(PrunedropError) as info:
        Recipe.from_dict(data)
    assert message in info.value.message


def test_a_recipe_file_with_exponents_without_a_dot_loads(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 2\ntraining:\n  lr: 5e-4\n  epochs: 1e1\nfinetune:\n  finetune_lr: 1E-3\n")
    recipe = load_recipe(path)
    assert (recipe.lr, recipe.epochs, recipe.finetune_lr) == (5e-4, 10, 1e-3)
    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 5e-4\nepochs: 1e1\n")
    assert load_recipe(flat) == Recipe(lr=5e-4, epochs=10)


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


def test_a_new_method_takes_its_own_default_threshold_unless_one_was_set() -> None:
    assert Recipe(method="sbp").threshold == 1.0
    assert Recipe().replace(method="sbp").threshold == 1.0  # not sparse VD's log α 3 read as an SNR
    assert Recipe(method="sbp").replace(method="group_vd").threshold == 3.0
    assert Recipe().replace(method="sbp", threshold=2.0).threshold == 2.0
    assert Recipe(threshold=2.5).replace(method="group_vd").threshold == 2.5  # the user's own stays
    assert Recipe().replace(epochs=3).threshold == 3.0


def test_nulled_sets_keys_to_null_and_validates() -> None:
    assert Recipe().nulled("max_metric_drop").max_metric_drop is None
    assert Recipe(target="params=4x").nulled("max_metric_drop").target == "params=4x"
    with pytest.raises(PrunedropError, match="unknown recipe key"):
        Recipe().nulled("bogus")
    with pytest.raises(PrunedropError, match="needs a budget"):
        Recipe(budget_confidence=0.9).nulled("max_metric_drop")


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


# -- version 2 (grouped) and the flat form before it


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_is_version_2_with_its_flat_values(path: Path) -> None:
    import yaml

    assert yaml.safe_load(path.read_text(encoding="utf-8"))["version"] == 2
    assert load_recipe(path).to_dict() == Recipe.from_dict(FLAT_RECIPES[path.name]).to_dict()


def test_flat_recipe_files_still_load(tmp_path: Path) -> None:
    import yaml

    assert set(FLAT_RECIPES) == {p.name for p in RECIPES}
    for name, flat in FLAT_RECIPES.items():
        old = tmp_path / name
        old.write_text(yaml.safe_dump(flat), encoding="utf-8")
        assert load_recipe(old) == load_recipe(ROOT / "recipes" / name)


def test_grouped_and_flat_forms_round_trip() -> None:
    recipe = Recipe(method="sbp", lr=0.5, init_mu=0.25, finetune_epochs=3, exclude=["fc"], latency_runs=0)
    grouped = recipe.to_dict(grouped=True)
    assert grouped["version"] == 2 and grouped["training"]["lr"] == 0.5 and grouped["sbp"]["init_mu"] == 0.25
    assert set(grouped) == {"version", *(k for k, s in KEY_SECTIONS.items() if s is None), *filter(None, SECTIONS)}
    assert Recipe.from_dict(grouped) == recipe == Recipe.from_dict(recipe.to_dict())
    assert Recipe.from_dict({**recipe.to_dict(), "version": 1}) == recipe
    assert recipe.section("finetune").finetune_epochs == 3 and recipe.section(None).method == "sbp"


def test_run_folder_written_before_version_2_loads_unchanged() -> None:
    """A run.json written by prunedrop before the grouped recipe (flat keys): re-export and --resume read it, and
    --resume compares it with the current recipe's to_dict(), which must be the same flat mapping."""
    from prunedrop.pipeline import read_run_info

    info = read_run_info(FIXTURES / "run_v1")
    recipe = Recipe.from_dict(info["recipe"], source="run.json", saved_run=True)
    # keys added since (budget_confidence, class_names, pad_token_id, tie_grouped) are not in the file: the run ran as
    # their defaults do, as --resume reads it; but keep_unremovable, whose default changes what a structured run
    # converts, as that run did
    assert recipe.to_dict() == {**Recipe().to_dict(), **info["recipe"], "keep_unremovable": False}
    assert set(recipe.to_dict()) - set(info["recipe"]) == {"budget_confidence", "class_names", "keep_unremovable",
                                                           "pad_token_id", "tie_grouped"}
    # the same recipe as today's file but for quantize, whose default became bayes after that run, the exporter,
    # auto since, the slim widths, measured since, and the noise-free epochs, 10 in today's file
    assert recipe == load_recipe(ROOT / "recipes" / "lstm-fashion.yaml").replace(quantize="none", finetune_epochs=5,
                                                                                  onnx_exporter="torchscript",
                                                                                  channel_multiple=1,
                                                                                  keep_unremovable=False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 2, "lr": 0.1}, "key 'lr' belongs in section 'training'"),
        ({"version": 2, "training": {"init_mu": 0.1}}, "key 'init_mu' belongs in section 'sbp', not in section 'training'"),
        ({"version": 2, "training": {"method": "sbp"}}, "key 'method' belongs at the top of the recipe"),
        ({"version": 2, "training": {"lrr": 0.1}}, "unknown key 'lrr' in section 'training'; did you mean 'lr'?"),
        ({"version": 2, "trainig": {"lr": 0.1}}, "unknown key 'trainig'; did you mean 'training'?"),
        ({"version": 2, "training": [1]}, "section 'training' must be a mapping"),
        ({"version": 3}, "version 3 is not a recipe version"),
        ({"version": True, "lr": 0.1}, "version True is not a recipe version"),
        ({"training": {"lr": 0.1}}, "'training' is a section of a grouped recipe; a grouped recipe starts with version: 2"),
        ({"version": 2, "training": {"lr": 0}}, "'lr' = 0.0 must be > 0"),
    ],
)
def test_grouped_recipe_errors_name_the_key_and_its_section(data: dict, message: str) -> None:
    with pytest.raises(PrunedropError) as info:
        Recipe.from_dict(data)
    assert message in info.value.message


def _documented_keys() -> list[tuple[str | None, str, object]]:
    """(section, key, default) of every row of docs/recipes.md's key tables, under its section's heading."""
    rows, section = [], "?"
    for line in (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            section = None if title.startswith("Top") else title.strip("`")
        match = re.match(r"\| `(\w+)` \| `(.*?)` \|", line)
        if match:
            rows.append((section, match.group(1), ast.literal_eval(match.group(2))))
    return rows


def test_every_documented_key_loads_in_its_section() -> None:
    rows = _documented_keys()
    assert [key for _, key, _ in rows] == [key for key, _, _ in recipe_keys()]
    for section, key, default in rows:
        assert KEY_SECTIONS[key] == section, key
        grouped = {"version": 2, key: default} if section is None else {"version": 2, section: {key: default}}
        assert getattr(Recipe.from_dict(grouped), key) == default, key
        assert getattr(Recipe.from_dict({key: default}), key) == default, key


def test_convert_passes_each_layer_only_its_own_settings() -> None:
    """Every registered layer's from_dense names only settings a noise config (or the threshold) provides, and
    takes no catch-all **options, so a setting no layer reads cannot be passed silently."""
    import inspect

    from prunedrop.layers import LAYER_REGISTRY
    from prunedrop.layers.configs import NOISE_OPTIONS

    for method, layers in LAYER_REGISTRY.items():
        for layer in layers.values():
            params = list(inspect.signature(layer.from_dense).parameters.values())[1:]
            assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), (method, layer)
            assert {p.name for p in params} <= NOISE_OPTIONS, (method, layer)


def test_the_documented_example_loads() -> None:
    import yaml

    block = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8").split("```yaml", 1)[1].split("```", 1)[0]
    recipe = Recipe.from_dict(yaml.safe_load(block))
    assert recipe.method == "sbp" and recipe.epochs == 10 and recipe.exclude == ["fc"]


def test_reading_a_recipe_does_not_import_torch() -> None:
    """The groups and the noise families' configs are torch-free, so `prunedrop --help` and `prunedrop recipes`
    answer at once."""
    import subprocess
    import sys

    code = ("import sys, prunedrop.cli, prunedrop.recipes as r; r.load_recipe(r.shipped_recipes_dir() / 'sbp.yaml'); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0
