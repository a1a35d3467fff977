"""The recipe: every setting of a compression run, typed and validated; YAML is only its file form.

The keys are declared once, in groups: :mod:`prunedrop.recipe_groups` (training, finetune, selection, structure,
export, report, data) and one config per noise family beside the layer files (:mod:`prunedrop.layers.configs`).
From those declarations this module builds

* :class:`Recipe`, the flat form: every key an attribute (``recipe.lr``), as run folders store it (``to_dict()``);
* the key map between the flat form and the grouped YAML form (``version: 2``; :data:`KEY_SECTIONS`);
* the validation (each key's own checks, then the checks that involve several keys, here);
* the command-line overrides of ``prunedrop compress`` (:func:`cli_overrides`) and the key reference
  (:func:`recipe_keys`, :func:`recipe_sections`).

A file with ``version: 2`` is read grouped; one without a version (every recipe and run folder written before
version 2) is read flat. Unknown keys, wrong types and out-of-range values are errors that name the key (and
suggest the closest valid key for a typo, or the section a key belongs in).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
import warnings
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from statistics import NormalDist
from typing import Any

from . import __version__
from .errors import PrunedropError
from .layers.configs import DEFAULT_THRESHOLDS, NOISE_CONFIGS, SNR_METHODS, RecurrentNoise
from .recipe_fields import Cli, coerce, field_docs
from .recipe_groups import (
    GROUPS,
    MAX_IMAGE_SIDE,
    CompileMode,
    Exporter,
    Loss,
    Method,
    Normalize,
    Precision,
    Quantize,
    Schedule,
    SparseStorage,
    is_classification,
)

__all__ = [
    "DEFAULT_THRESHOLDS", "KEY_SECTIONS", "MAX_IMAGE_SIDE", "RECIPE_VERSION", "SECTIONS", "SNR_METHODS",
    "CompileMode", "Exporter", "Loss", "Method", "Normalize", "Precision", "Quantize", "Recipe", "RecurrentNoise",
    "Schedule", "SparseStorage", "cli_overrides", "load_recipe", "recipe_keys", "recipe_sections",
    "shipped_recipes_dir",
]

#: the version of the grouped form; files without ``version`` are the flat form of earlier prunedrop versions
RECIPE_VERSION = 2

#: section of the grouped form → its dataclass, in file order (None: the top of the file, no section)
SECTIONS: dict[str | None, type] = {None: GROUPS[None], **NOISE_CONFIGS,
                                    **{k: v for k, v in GROUPS.items() if k is not None}}
#: the key map: every (flat) key → the section that holds it in the grouped form (None: the top)
KEY_SECTIONS: dict[str, str | None] = {f.name: section for section, group in SECTIONS.items() for f in fields(group)}
_FIELDS = {f.name: f for group in SECTIONS.values() for f in fields(group)}
_HINTS = {name: hint for group in SECTIONS.values() for name, hint in typing.get_type_hints(group).items()}
_DOCS = {name: doc for group in SECTIONS.values() for name, doc in field_docs(group).items()}


#: keys whose null means "decided by the run" and which a run folder written before that null existed stores as a
#: value: ``--resume`` without the key continues with the stored value (so such folders still resume)
RUN_DECIDES = ("budget_after_finetune",)

#: the share of the weights' rate a null ``finetune_lr`` fine-tunes at where no probe judges the fine-tuned model
#: against the budget (the threshold judged before the fine-tuning, a fixed β): Adam at the full rate first costs a
#: converged network 0.8-1.2 points (docs/autopilot.md), and nothing there would see it; 0.3 × the default lr is
#: the 3e-4 those runs always had
GENTLE_FINETUNE = 0.3

#: keys whose default changed, with the old default: ``--resume`` of a run folder that stored the old default,
#: with a recipe that leaves the key at today's default, continues with the stored value (``quantize`` became
#: ``bayes`` once the quantized files were measured faster and within the budget; docs/quantization.md;
#: ``finetune_lr`` became null, the weights' rate, once 1e-3 was measured to win back more than 3e-4: docs/autopilot.md;
#: ``onnx_exporter`` became ``auto`` once models with an operator only the dynamo exporter knows were refused;
#: ``channel_multiple`` became null, measured, once odd widths were measured to run slower than the original;
#: ``keep_unremovable`` came in true, see :data:`KEYS_ADDED`)
DEFAULT_CHANGED: dict[str, Any] = {"quantize": "none", "finetune_lr": 3e-4, "onnx_exporter": "torchscript",
                                   "channel_multiple": 1, "keep_unremovable": False}

#: keys added with a default that changes what a run does, with the value that gives what runs did before the key
#: existed: a run folder's recorded recipe without the key is read with it (its checkpoints hold the layers that
#: run converted), and ``--resume`` continues it so (``keep_unremovable``: structured runs converted every layer)
KEYS_ADDED: dict[str, Any] = {"keep_unremovable": False}


def _known_keys(keys: Iterable[str]) -> None:
    """A one-line error naming the keys that are no recipe key."""
    unknown = set(keys) - set(KEY_SECTIONS)
    if unknown:
        raise PrunedropError(f"unknown recipe key(s): {', '.join(sorted(unknown))}")


class _RecipeMethods:
    """What a :class:`Recipe` does beyond holding its keys (the keys are generated from the groups)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check types and ranges; raise PrunedropError naming the key."""
        for name, hint in _HINTS.items():
            object.__setattr__(self, name, coerce(name, getattr(self, name), hint))
        for name, f in _FIELDS.items():
            for check in f.metadata["checks"]:
                check(name, getattr(self, name))
        self._check_together()

    def _check_together(self) -> None:
        """The checks that involve several keys."""
        r: Any = self
        if r.threshold is None:
            r.threshold = DEFAULT_THRESHOLDS[r.method]
        if r.fold_batchnorm is not None:  # deprecated: consumed here, so that to_dict and replace never carry it
            if r.fold_batchnorm and r.batchnorm_noise == "before":
                raise PrunedropError("recipe keys fold_batchnorm: true and batchnorm_noise: before contradict each "
                                     "other; fold_batchnorm is deprecated, keep batchnorm_noise only")
            if r.fold_batchnorm:
                r.batchnorm_noise = "fold"
            r.fold_batchnorm = None
        if r.budget_confidence is not None and r.max_metric_drop is None:
            raise PrunedropError("recipe key 'budget_confidence' needs a budget ('max_metric_drop'): it says how surely "
                                 "the budget must hold; set one, or drop budget_confidence")
        if r.target is not None and (r.kl_weight is not None or r.kl_weights):
            raise PrunedropError("recipe key 'target' cannot be combined with a fixed 'kl_weight' or "
                                 "'kl_weights': the autopilot chooses β to reach the target; remove one")
        for t in [r.threshold, *(r.sweep_thresholds or [])]:
            self._check_threshold(t, "threshold" if t == r.threshold else "sweep_thresholds")
        if not -r.log_alpha_clip < r.weight_threshold < r.log_alpha_clip:
            raise PrunedropError(
                f"recipe key 'weight_threshold' = {r.weight_threshold} must lie inside (−log_alpha_clip, "
                f"log_alpha_clip) = (−{r.log_alpha_clip}, {r.log_alpha_clip}), else no or every weight is pruned"
            )
        if r.epochs is not None and r.kl_warmup_epochs > r.epochs > 0 and not self.automatic:
            raise PrunedropError(
                f"recipe key 'kl_warmup_epochs' = {r.kl_warmup_epochs} is longer than 'epochs' = {r.epochs}: "
                "the KL term would never reach its full weight; shorten the warm-up or train longer"
            )
        given = [k for k in ("normalize_mean", "normalize_std") if getattr(r, k) is not None]
        if r.normalize == "custom" and len(given) < 2:
            missing = "normalize_std" if given == ["normalize_mean"] else "normalize_mean"
            raise PrunedropError(f"recipe key 'normalize' = 'custom' needs '{missing}' too")
        if r.normalize != "custom" and given:
            raise PrunedropError(f"recipe key '{given[0]}' is only used with normalize: custom (normalize is "
                                 f"{r.normalize!r}); set normalize: custom or drop it")
        for key in given:
            if not getattr(r, key):
                raise PrunedropError(f"recipe key '{key}' is empty; give one number per channel")
        if r.normalize_std is not None and min(r.normalize_std) <= 0:
            raise PrunedropError(f"recipe key 'normalize_std' = {r.normalize_std} must hold positive numbers")

    def threshold_allowed(self, t: float) -> bool:
        """Whether the method's pruning rule can take threshold ``t``: > 0 for a signal-to-noise rule (an SNR is
        ≥ 0), inside (−log_alpha_clip, log_alpha_clip) for a log α rule (log α is clipped to that range: outside it
        every weight or none is pruned)."""
        r: Any = self
        return t > 0 if r.method in SNR_METHODS else -r.log_alpha_clip < t < r.log_alpha_clip

    def _check_threshold(self, t: float, key: str) -> None:
        r: Any = self
        if self.threshold_allowed(t):
            return
        if r.method in SNR_METHODS:
            raise PrunedropError(f"recipe key '{key}' = {t}: a signal-to-noise threshold (method "
                                 f"{r.method}) must be > 0")
        raise PrunedropError(
            f"recipe key '{key}' = {t} must lie inside (−log_alpha_clip, log_alpha_clip) = "
            f"(−{r.log_alpha_clip}, {r.log_alpha_clip}), else nothing or everything is pruned"
        )

    def judges_after_finetune(self, num_val: int) -> bool:
        """Whether the budget is judged after the noise-free fine-tuning (``budget_after_finetune``). null: in
        automatic runs whose ``num_val`` validation samples resolve the budget (for accuracy, one sample weighs at
        most half of it); a coarser validation set would pick, among the bisection's probes, the one that happened
        to lose no sample, so the pessimistic sweep before the fine-tuning is kept there."""
        r: Any = self
        if r.budget_after_finetune is not None:
            return bool(r.budget_after_finetune)
        if not r.automatic:
            return False
        return self.validation_resolves_budget(num_val)

    def budget_judges_finetuned(self, num_val: int) -> bool:
        """Whether each probe of the threshold search is fine-tuned and held to the budget where it ends: a budget
        (``max_metric_drop``), judged after the fine-tuning (:meth:`judges_after_finetune`)."""
        r: Any = self
        return r.max_metric_drop is not None and self.judges_after_finetune(num_val)

    def validation_resolves_budget(self, num_val: int) -> bool:
        """Whether ``num_val`` validation samples resolve the accuracy budget: one of them weighs at most the
        autopilot's aim while training (half the budget). Always for ``mse`` (no sample has a weight of its own)
        and without a budget."""
        r: Any = self
        if is_classification(r.loss) and r.max_metric_drop is not None:
            # the autopilot's aim while training; imported here, since reading a recipe must not import torch
            from .autopilot import MARGIN

            return 100.0 / max(num_val, 1) <= MARGIN * r.max_metric_drop
        return True

    @property
    def budget_z(self) -> float:
        """Standard errors added to a measured drop before it is held to the budget (``budget_confidence``'s one-sided
        standard normal quantile; 0 without one)."""
        r: Any = self
        return 0.0 if r.budget_confidence is None else NormalDist().inv_cdf(r.budget_confidence)

    @property
    def automatic(self) -> bool:
        """Whether the autopilot chooses β: no fixed ``kl_weight`` or ``kl_weights``, and a budget or a target."""
        r: Any = self
        return (r.kl_weight is None and not r.kl_weights
                and (r.max_metric_drop is not None or r.target is not None))

    def finetune_epochs_for(self, num_train: int) -> int:
        """``finetune_epochs``, or its automatic value for a training set of ``num_train`` samples."""
        r: Any = self
        if r.finetune_epochs is not None:
            return int(r.finetune_epochs)
        steps_per_epoch = max(1, math.ceil(num_train / r.batch_size))
        return int(min(50, max(3, math.ceil(500 / steps_per_epoch))))

    def finetune_rate(self, *, verified: bool = False) -> float:
        """The noise-free fine-tuning's learning rate: ``finetune_lr``, or where it is null the weights' ``lr``, times
        :data:`GENTLE_FINETUNE` unless each fine-tuning is ``verified``: judged against the budget where it ends
        (``budget_after_finetune``'s probes)."""
        r: Any = self
        if r.finetune_lr is not None:
            return float(r.finetune_lr)
        return float(r.lr) * (1.0 if verified else GENTLE_FINETUNE)

    @property
    def fixed_beta(self) -> float:
        """β of a run without the autopilot: ``kl_weight``, or 1 (the true ELBO) when it is null."""
        r: Any = self
        return 1.0 if r.kl_weight is None else float(r.kl_weight)

    def pruning_rule(self, threshold: float | None = None) -> str:
        """What is pruned, in words: ``log α > 3``, ``SNR ≤ 1``, or both rules of ``sbp_sparse_vd``."""
        r: Any = self
        t = r.threshold if threshold is None else threshold
        if r.method == "sbp_sparse_vd":
            return f"SNR ≤ {t:g} (units) and log α > {r.weight_threshold:g} (weights)"
        return f"SNR ≤ {t:g}" if r.method in SNR_METHODS else f"log α > {t:g}"

    def noise_options(self) -> dict[str, Any]:
        """The settings a layer's ``from_dense`` may ask for: the noise families' keys and ``threshold``."""
        names = [f.name for config in NOISE_CONFIGS.values() for f in fields(config)]
        return {name: getattr(self, name) for name in ["threshold", *names]}

    def section(self, name: str | None) -> Any:
        """One group of the recipe as its dataclass (a copy): ``recipe.section("training").lr``; None: the top."""
        if name not in SECTIONS:
            raise KeyError(f"no recipe section {name!r}; sections: {', '.join(s for s in SECTIONS if s)}")
        values = self.to_dict()
        return SECTIONS[name](**{f.name: values[f.name] for f in fields(SECTIONS[name])})

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some keys changed (validated); ``None`` values are ignored (CLI overrides). A new ``method``
        without a ``threshold`` takes the new method's default threshold where the old one had its own method's
        (``Recipe().replace(method="sbp")`` pruned at SNR ≤ 3, sparse VD's log α default read as an SNR)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        _known_keys(changes)
        r: Any = self
        if changes.get("method", r.method) != r.method and "threshold" not in changes \
                and r.threshold == DEFAULT_THRESHOLDS[r.method]:
            changes["threshold"] = DEFAULT_THRESHOLDS[changes["method"]]
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def nulled(self, *keys: str) -> Recipe:
        """A copy with ``keys`` set to null (validated), which :meth:`replace` cannot say: ``nulled("max_metric_drop")``
        is a recipe without a budget."""
        _known_keys(keys)
        return type(self)(**{**self.to_dict(), **dict.fromkeys(keys)})  # type: ignore[return-value]

    def to_dict(self, *, grouped: bool = False) -> dict[str, Any]:
        """The flat mapping of every key (as run folders store it), or with ``grouped`` the ``version: 2`` form."""
        flat = dataclasses.asdict(self)  # type: ignore[call-overload]
        if not grouped:
            return flat
        out: dict[str, Any] = {"version": RECIPE_VERSION}
        for section, group in SECTIONS.items():
            values = {f.name: flat[f.name] for f in fields(group)}
            if section is None:
                out.update(values)
            else:
                out[section] = values
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe", saved_run: bool = False) -> Recipe:
        """A recipe from a mapping (a YAML file's): grouped with ``version: 2``, flat without a version.
        ``saved_run``: the mapping is a run folder's recorded recipe; one written before ``batchnorm_noise`` existed
        gets the placement that run trained with (``fold`` where it set ``fold_batchnorm``, else ``before``), and one
        written before a key of :data:`KEYS_ADDED` existed gets that key's old behaviour, so that its checkpoints load
        as they were saved."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PrunedropError(f"{source} must be a mapping of recipe keys to values, not a {type(data).__name__}")
        if "version" in data:
            data = _flatten(data, source)
        if "fold_batchnorm" in data and "batchnorm_noise" not in data and (saved_run or data["fold_batchnorm"]):
            data = dict(data)
            if saved_run:
                data["batchnorm_noise"] = "fold" if data.pop("fold_batchnorm") else "before"
            else:
                warnings.warn(f"{source}: recipe key fold_batchnorm is deprecated; it is read as batchnorm_noise: fold. "
                              "The default batchnorm_noise: after keeps the BatchNorms while training and folds them at "
                              "export (docs/structured.md)", FutureWarning, stacklevel=2)
        elif data.get("fold_batchnorm") and data.get("batchnorm_noise") not in (None, "fold"):
            raise PrunedropError(f"{source}: fold_batchnorm: true and batchnorm_noise: {data['batchnorm_noise']} "
                                 "contradict each other; fold_batchnorm is deprecated, keep batchnorm_noise only")
        if saved_run and any(k not in data for k in KEYS_ADDED):
            data = {**KEYS_ADDED, **data}
        names = list(KEY_SECTIONS)
        for key in data:
            if not isinstance(key, str) or key not in KEY_SECTIONS:
                if key in SECTIONS:
                    raise PrunedropError(f"{source}: '{key}' is a section of a grouped recipe; a grouped recipe starts "
                                         f"with version: {RECIPE_VERSION} (docs/recipes.md)")
                if saved_run:  # prunedrop wrote it: a key it does not know comes from a newer prunedrop (or an edit)
                    raise PrunedropError(f"{source}: unknown key '{key}'{_NEWER}")
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else \
                    f"; valid keys: {', '.join(names)} (a key of a newer prunedrop than this one, {__version__}?)"
                raise PrunedropError(f"{source}: unknown key '{key}'{hint}")
        try:
            return cls(**data)  # type: ignore[no-any-return]
        except PrunedropError as e:  # a key's check: say where the value came from (which file, or run.json)
            edited = "; run.json was edited, or written by another prunedrop" if saved_run else ""
            raise PrunedropError(e.message if source == "recipe" else f"{source}: {e.message}{edited}") from None


#: the end of an unknown key's error in a recipe that prunedrop recorded (run.json)
_NEWER = (f": the run was recorded by a newer prunedrop than this one ({__version__}), or run.json was edited; use "
          "that prunedrop, or upgrade this one")


def _flatten(data: dict[Any, Any], source: str) -> dict[str, Any]:
    """The flat mapping of a mapping that states its ``version``: 1 is the flat form, 2 the grouped form."""
    version = data["version"]
    if isinstance(version, bool) or version not in (1, RECIPE_VERSION):
        newer = isinstance(version, (int, float)) and not isinstance(version, bool) and version > RECIPE_VERSION
        raise PrunedropError(f"{source}: version {version!r} is not a recipe version prunedrop reads (1: flat keys, "
                             f"{RECIPE_VERSION}: grouped)" + (f"; a newer prunedrop's recipe? this is prunedrop "
                                                              f"{__version__}: upgrade it" if newer else ""))
    if version == 1:
        return {k: v for k, v in data.items() if k != "version"}
    flat: dict[str, Any] = {}
    top = [k for k, s in KEY_SECTIONS.items() if s is None] + [s for s in SECTIONS if s is not None]
    for key, value in data.items():
        if key == "version":
            continue
        if isinstance(key, str) and key in SECTIONS and key is not None:
            flat.update(_section_values(key, value, source))
        elif isinstance(key, str) and key in KEY_SECTIONS and KEY_SECTIONS[key] is None:
            flat[key] = value
        elif isinstance(key, str) and key in KEY_SECTIONS:
            raise PrunedropError(f"{source}: key '{key}' belongs in section '{KEY_SECTIONS[key]}' of a version "
                                 f"{RECIPE_VERSION} recipe ({KEY_SECTIONS[key]}: {{{key}: ...}})")
        else:
            close = difflib.get_close_matches(str(key), top, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else \
                f"; valid keys and sections: {', '.join(top)} (a key of a newer prunedrop than this one, {__version__}?)"
            raise PrunedropError(f"{source}: unknown key '{key}'{hint}")
    return flat


def _section_values(section: str, value: Any, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PrunedropError(f"{source}: section '{section}' must be a mapping of its keys, not a "
                             f"{type(value).__name__}")
    names = [f.name for f in fields(SECTIONS[section])]
    for key in value:
        if isinstance(key, str) and key in names:
            continue
        home = KEY_SECTIONS.get(key) if isinstance(key, str) else None
        if isinstance(key, str) and key in KEY_SECTIONS:
            where = "at the top of the recipe" if home is None else f"in section '{home}'"
            raise PrunedropError(f"{source}: key '{key}' belongs {where}, not in section '{section}'")
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; its keys: {', '.join(names)}"
        raise PrunedropError(f"{source}: unknown key '{key}' in section '{section}'{hint}")
    return dict(value)


def _recipe_class() -> type:
    specs = []
    for name, f in _FIELDS.items():
        if f.default_factory is not dataclasses.MISSING:
            new = dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
        else:
            new = dataclasses.field(default=f.default, metadata=f.metadata)
        specs.append((name, _HINTS[name], new))
    cls = dataclasses.make_dataclass("Recipe", specs, bases=(_RecipeMethods,))
    cls.__module__ = __name__
    cls.__doc__ = ("A compression recipe: every key of every group as one attribute (``recipe.lr``), built from the "
                   "groups' declarations; see :mod:`prunedrop.recipes`.")
    return cls


if typing.TYPE_CHECKING:
    class Recipe(_RecipeMethods):
        def __init__(self, **keys: Any) -> None: ...
        def __getattr__(self, name: str) -> Any: ...
else:
    Recipe = _recipe_class()


def load_recipe(path: str | os.PathLike[str] | None) -> Recipe:
    """Load a YAML recipe with the safe loader; ``None`` gives the defaults."""
    if path is None:
        return Recipe()
    from .safety import load_yaml_file, not_a_file

    path = Path(path)
    wrong = not_a_file(path)  # a folder, a FIFO, a path without permission: said as it is, never "does not exist"
    if wrong is not None:
        if wrong.startswith(("does not exist", "is a link")):
            raise PrunedropError(f"recipe file {path} {wrong}; see `prunedrop recipes` for the shipped ones")
        raise PrunedropError(f"recipe file {path} {wrong}; give the YAML file itself (`prunedrop recipes` lists the "
                             "shipped ones)")
    data = load_yaml_file(path, where=f"recipe {path}")  # safe_load, bounded, no aliases
    return Recipe.from_dict(data, source=f"recipe {path}")


def shipped_recipes_dir() -> Path | None:
    """The ``recipes/`` folder of a source checkout, where the shipped YAML files live."""
    here = Path(__file__).resolve().parent.parent / "recipes"
    return here if here.is_dir() else None


def recipe_keys() -> list[tuple[str, str, str]]:
    """(key, default, documentation) for every recipe key, in the order of the grouped form."""
    defaults = Recipe()
    return [(name, repr(getattr(defaults, name)), _DOCS.get(name, "")) for name in KEY_SECTIONS]


def recipe_sections() -> list[tuple[str | None, str, list[tuple[str, str, str]]]]:
    """(section, the group's documentation, its keys as :func:`recipe_keys` gives them) for every section."""
    keys = {k[0]: k for k in recipe_keys()}
    return [(section, " ".join((group.__doc__ or "").split()), [keys[f.name] for f in fields(group)])
            for section, group in SECTIONS.items()]


def cli_overrides() -> list[tuple[str, Cli, Any, tuple[Any, ...]]]:
    """(key, its command-line option, its type annotation, its checks) for every key ``compress`` can override."""
    return [(name, f.metadata["cli"], _HINTS[name], f.metadata["checks"])
            for name, f in _FIELDS.items() if f.metadata["cli"] is not None]
