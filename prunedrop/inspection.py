"""Look before you compress: which layers a recipe would convert, what they hold and what they compute.

:func:`inspect_model` walks the model exactly as :func:`prunedrop.convert.to_variational` does (the same
``named_children()`` recursion, the same exact-type registry lookup and the same include/exclude globs via
:func:`prunedrop.convert.is_selected`) but converts nothing. Parameter counts and FLOPs (multiply-adds per
input sample, as everywhere in prunedrop, see :mod:`prunedrop.report`) come from one forward pass of
:func:`prunedrop.report.profile_model` on a batch of one, so inspecting a ResNet-50-sized model takes about
as long as one inference.

:func:`format_inspection` renders the result as an indented tree for a terminal.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .batchnorm import batchnorm_pairs, foldable_batchnorms
from .convert import (
    copy_for_folding,
    fold_parametrizations,
    gradient_free_layers,
    hooks_note,
    is_selected,
    module_names,
    nothing_converted_hint,
    parametrized_tensors,
    shared_parameter_layers,
    unit_noise,
    unremovable_kept_note,
    unremovable_to_keep,
    user_hooks,
)
from .errors import PrunedropError
from .layers import LAYER_REGISTRY, VariationalLayer
from .recipes import Recipe
from .report import LayerProfile, human_count, layer_weights, profile_model

__all__ = ["format_inspection", "inspect_model"]

#: ``status`` of a tree entry
CONVERT = "convert"
EXCLUDED = "excluded"
UNSUPPORTED = "unsupported"
NO_PARAMETERS = "no parameters"
CONTAINER = "container"
VARIATIONAL = "variational"
FOLDED = "folded"


def _glob_reason(name: str, recipe: Recipe, names: Sequence[str] = ()) -> str:
    """Why :func:`prunedrop.convert.is_selected` rejected ``name`` (whose every name is ``names``): the first
    exclude glob that matches one of them, or the include globs that all missed them (the same order of checks as
    ``is_selected``)."""
    every = list(names) or [name]
    if not any(fnmatch.fnmatchcase(n, p) for n in every for p in recipe.include):
        return f"not matched by include {list(recipe.include)!r}"
    pattern, alias = next((p, n) for p in recipe.exclude for n in every if fnmatch.fnmatchcase(n, p))
    return f"excluded by glob {pattern!r}" + (f" (as {alias})" if alias != name else "")


def _unsupported_reason(module: nn.Module, registry: dict[type[nn.Module], Any]) -> str:
    name = type(module).__name__
    # The registry lookup is by exact type (a subclass may change forward()); say so, since
    # "no variational version of NonDynamicallyQuantizableLinear" alone would puzzle a user.
    base = next((t for t in registry if isinstance(module, t)), None)
    if base is not None:
        return (f"no variational version of {name} (a subclass of {base.__name__}; only exact registered "
                f"types are converted)")
    from .layers import LAYER_REGISTRY

    # a type another method converts (nn.MultiheadAttention, nn.GRU under sbp): say which
    others = sorted(m for m, layers in LAYER_REGISTRY.items() if layers is not registry and type(module) in layers)
    return f"no variational version of {name}" + (f" (method {' or '.join(others)} converts it)" if others else "")


def inspect_model(model: nn.Module, example_input: torch.Tensor, recipe: Recipe) -> dict[str, Any]:
    """Describe what ``to_variational(model, recipe)`` would do, without converting anything.

    ``example_input`` is a batch of real-shaped inputs; only its first sample is run (one forward pass under
    ``torch.no_grad()`` in eval mode, training flags restored). The model is not modified.

    Returns a JSON-able dict:

    * ``method``, ``include``, ``exclude``: the recipe settings that decide the conversion;
    * ``layers``: one entry per module in walk order (the root first, with name ``""``): ``name``
      (qualified; a module registered under several names, locuslab/TCN's ``conv1`` that is also ``net[0]``, has one
      entry, under its first name, as :func:`~prunedrop.convert.to_variational` converts it once), ``aliases`` (its
      other names), ``depth`` (0 for the root), ``type``, ``status`` (``convert``, ``excluded``,
      ``unsupported``, ``no parameters``, ``container``, ``variational``, or ``folded`` for a BatchNorm that joins its
      convolution's unit noise or is folded into it, recipe key ``batchnorm_noise``), ``reason`` (why it is left
      alone; ``""`` when converted; for a container ``""`` unless it owns parameters directly), ``params``
      (parameters it owns directly), ``macs`` (its own multiply-adds per sample), ``subtree_params`` and
      ``subtree_macs`` (itself plus every descendant, shared modules and parameters counted once),
      ``counted`` (False when prunedrop has no MAC rule for the type, so its 0 MACs mean "unknown"),
      ``weight_shape``, ``out_shape`` (from the forward pass, ``[]`` if not called);
    * ``summary``: ``converted`` / ``excluded`` (qualified names) and ``left_alone`` (name → type), with
      exactly the meaning of :class:`prunedrop.convert.ConversionSummary`;
    * ``totals``: ``params``, ``macs``, ``converted_params`` (all parameters of the layers that would be
      converted, biases included), ``prunable_weights`` (their weights: what gets noise),
      ``converted_macs``, ``params_share`` / ``macs_share`` (converted / total, ``None`` for a zero
      total), ``layers_converted``, ``layers_excluded``, ``layers_unsupported``, ``uncounted_layers``;
    * ``warnings``: problems :func:`to_variational` would raise or a user should know about.

    Raises :class:`PrunedropError` when the recipe's method has no registered layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"inspect_model: model must be an nn.Module, not {type(model).__name__}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"inspect_model: recipe must be a Recipe (prunedrop.recipes.load_recipe, or Recipe()), not "
                        f"{type(recipe).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"inspect_model: example_input must be a torch.Tensor batch (torch.as_tensor(x)), not "
                        f"{type(example_input).__name__}")
    registry = LAYER_REGISTRY.get(recipe.method)
    if registry is None:
        raise PrunedropError(f"no variational layers are registered for method {recipe.method!r}")
    if example_input.dim() == 0 or example_input.shape[0] == 0:
        raise PrunedropError("inspect needs an example input batch with at least one sample")
    reparametrized: list[str] = []
    if parametrized_tensors(model):  # compress folds them first (and converts the layers): show what it sees
        model = copy_for_folding(model)
        reparametrized = fold_parametrizations(model)
    every_name = module_names(model)  # a module registered under several names is selected by all of them
    # Batch 1: MACs are per sample anyway, and a big model's inspection should cost one inference.
    device = next((p.device for p in model.parameters()), example_input.device)
    heads: set[str] = set()
    if recipe.method != "sparse_vd" and recipe.keep_output_layers:
        from .outputs import output_layers

        heads = set(output_layers(model, example_input[:1].to(device)))
    profiles: list[LayerProfile] = profile_model(model, example_input[:1].to(device))
    # profile_model names a shared module once (named_modules() removes duplicates), as the walk below lists it;
    # profiles are looked up by module identity.
    modules = dict(model.named_modules())
    profile_by_id = {id(modules[p.name]): p for p in profiles}

    warnings: list[str] = []
    if reparametrized:
        warnings.append("parametrized weights are folded into plain ones before the conversion (the same outputs; "
                        "the parametrization's constraint is not kept while fine-tuning): " + ", ".join(reparametrized))
    folded_into: dict[str, str] = {}  # BatchNorm → the convolution it is folded into (batchnorm_noise)
    joins: dict[str, str] = {}  # BatchNorm → the converted convolution whose unit noise acts on its output
    structured = unit_noise(recipe.method)
    if structured and recipe.batchnorm_noise == "fold":
        try:
            folded_into = {bn: conv for conv, bn in foldable_batchnorms(model)}
        except PrunedropError as e:
            warnings.append(f"{e}: `prunedrop compress` would stop with this error")
    elif structured and recipe.batchnorm_noise == "after":
        try:
            joins = {bn: conv for conv, bn in batchnorm_pairs(model, example_input[:2].to(device))
                     if type(modules[conv]) in registry and conv not in heads and is_selected(conv, recipe, every_name)}
        except PrunedropError as e:
            warnings.append(f"the unit noise would stay before the BatchNorms (batchnorm_noise: before): {e}")

    blocked: dict[str, str] = {}
    if structured:
        from .slim import unremovable_layers

        blocked = unremovable_layers(model, example_input[:2].to(device))
    kept = unremovable_to_keep(model, recipe, example_input[:2].to(device), heads, blocked)

    sharing = shared_parameter_layers(model, registry)
    cut = set(gradient_free_layers(model, registry, example_input[:2].to(device))) - set(sharing)
    entries: list[dict[str, Any]] = []
    converted: list[str] = []
    excluded: list[str] = []
    left_alone: dict[str, str] = {}
    refused: dict[str, str] = {}  # left alone for their settings, not their type: name → why
    hooked: dict[str, list[str]] = {}
    seen_params: set[int] = set()
    seen_modules: set[int] = set()
    totals = {"params": 0, "macs": 0, "converted_params": 0, "prunable_weights": 0, "converted_macs": 0}

    def own_params(module: nn.Module) -> list[nn.Parameter]:
        return list(module.parameters(recurse=False))

    names_of: dict[int, list[str]] = {}  # a module registered under several names: one entry, under its first
    for qualified, module in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(qualified)

    def walk(module: nn.Module, name: str, depth: int) -> tuple[int, int]:
        """Append the entry of ``module`` (and its subtree); return its subtree (params, macs)."""
        label = name or "<root>"
        if id(module) in seen_modules:  # listed under its first name already, with this one among its aliases
            return 0, 0
        # a registered layer is converted whole, children included (nn.MultiheadAttention's out_proj)
        params = list(module.parameters()) if type(module) in registry else own_params(module)
        n_params = sum(p.numel() for p in params)
        profile = profile_by_id.get(id(module))
        macs = profile.macs if profile is not None else 0
        entry: dict[str, Any] = {
            "name": name,
            "depth": depth,
            "type": type(module).__name__,
            "status": "",
            "reason": "",
            "params": n_params,
            "macs": macs,
            "subtree_params": 0,
            "subtree_macs": 0,
            "counted": profile.counted if profile is not None else True,
            "weight_shape": profile.weight_shape if profile is not None else None,
            "out_shape": profile.out_shape if profile is not None else [],
            "aliases": [n for n in names_of.get(id(module), []) if n != name],
        }
        entries.append(entry)
        seen_modules.add(id(module))
        # Totals count each parameter and each module's MACs once, however often it is reached.
        new_params = [p for p in params if id(p) not in seen_params]
        seen_params.update(id(p) for p in params)
        sub_params = sum(p.numel() for p in new_params)
        sub_macs = macs
        totals["params"] += sub_params
        totals["macs"] += sub_macs

        children = list(module.named_children())
        if type(module) in registry:
            # to_variational stops here: a registered layer is swapped whole and not descended into.
            if label in sharing and is_selected(label, recipe, every_name):
                entry["status"] = EXCLUDED
                entry["reason"] = f"shares parameters with {', '.join(sharing[label][:3])} (weight tying)"
                excluded.append(label)
            elif label in cut and is_selected(label, recipe, every_name):
                entry["status"] = EXCLUDED
                entry["reason"] = ("no gradient reaches its output (torch.no_grad(), .detach(), or no model output "
                                   "uses it)")
                excluded.append(label)
            elif (hooks := user_hooks(module)) and is_selected(label, recipe, every_name):
                entry["status"] = EXCLUDED
                entry["reason"] = f"hooks registered on it would be lost ({', '.join(hooks[:2])})"
                excluded.append(label)
                hooked[label] = hooks
            elif label in heads and is_selected(label, recipe, every_name):
                entry["status"] = EXCLUDED
                entry["reason"] = "produces the model's outputs (keep_output_layers)"
                excluded.append(label)
            elif label in kept:
                entry["status"] = EXCLUDED
                entry["reason"] = f"slimming could never remove its units: {kept[label]} (keep_unremovable)"
                excluded.append(label)
            elif (why := registry[type(module)].unsupported(module)) is not None and is_selected(label, recipe, every_name):
                entry["status"] = UNSUPPORTED
                entry["reason"] = f"{type(module).__name__} with {why}"
                left_alone[label] = type(module).__name__
                refused[label] = entry["reason"]
            elif is_selected(label, recipe, every_name):
                entry["status"] = CONVERT
                converted.append(label)
                totals["converted_params"] += sub_params
                weights = layer_weights(module)
                new_ids = {id(p) for p in new_params}
                totals["prunable_weights"] += sum(w.numel() for w in weights if id(w) in new_ids)
                totals["converted_macs"] += sub_macs
            else:
                entry["status"] = EXCLUDED
                entry["reason"] = _glob_reason(label, recipe, every_name.get(label, ()))
                excluded.append(label)
        elif isinstance(module, VariationalLayer):
            entry["status"] = VARIATIONAL
            entry["reason"] = f"already variational ({type(module).__name__})"
            warnings.append(f"layer {label} is already variational; to_variational needs a plain model")
        elif name in folded_into:
            entry["status"] = FOLDED
            entry["reason"] = f"folded into {folded_into[name]} before the conversion (batchnorm_noise: fold)"
        elif name in joins:
            entry["status"] = FOLDED
            entry["reason"] = (f"joins {joins[name]}: its noise acts on this output; folded into it at thresholding "
                               "(batchnorm_noise: after)")
        elif not children:
            if params:
                entry["status"] = UNSUPPORTED
                entry["reason"] = _unsupported_reason(module, registry)
                left_alone[label] = type(module).__name__
            else:
                entry["status"] = NO_PARAMETERS
                entry["reason"] = "no parameters"
        else:
            entry["status"] = CONTAINER
            if params:
                # e.g. nn.MultiheadAttention's in_proj_weight: to_variational walks past a container's own
                # parameters, so they stay dense whatever the globs say.
                names = ", ".join(n for n, _ in module.named_parameters(recurse=False))
                why = _unsupported_reason(module, registry)
                entry["reason"] = f"own parameters ({names}) stay dense: {why}"
            for child_name, child in children:
                p, m = walk(child, f"{name}.{child_name}" if name else child_name, depth + 1)
                sub_params += p
                sub_macs += m
        entry["subtree_params"] = sub_params
        entry["subtree_macs"] = sub_macs
        return sub_params, sub_macs

    walk(model, "", 0)

    if hooked:
        warnings.append(hooks_note(hooked))
    if not converted:
        outputs = [n for n in excluded if n in heads and n not in sharing]
        hint = nothing_converted_hint(
            recipe.method,
            [n for n in excluded if n not in heads and n not in sharing and n not in hooked and n not in cut
             and n not in kept],
            outputs, [t for n, t in left_alone.items() if n not in refused], [n for n in excluded if n in sharing],
            list(hooked), refused, [n for n in excluded if n in cut], [n for n in excluded if n in kept])
        warnings.insert(0, f"no layer can be converted by method {recipe.method!r} ({hint}): "
                           "`prunedrop compress` would stop with an error")
    if kept:
        warnings.append(unremovable_kept_note({n: kept[n] for n in excluded if n in kept}))
    if structured and converted:
        from .stages.conversion import unremovable_note

        stuck = {name: blocked[name] for name in converted if name in blocked}
        if stuck:
            warnings.append(unremovable_note(recipe.method, stuck))
    uncounted = sorted({p.name or "<root>" for p in profiles if not p.counted})
    if uncounted:
        warnings.append(f"FLOPs leave out layers with no MAC rule: {', '.join(uncounted)}")
    not_called = [e["name"] for e in entries if e["status"] == CONVERT and not e["out_shape"]]
    if not_called:
        # A layer the forward pass never reaches gets noise and a KL term but no data gradient.
        warnings.append(f"converted layers not used by the forward pass: {', '.join(not_called)}")

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return {
        "model": type(model).__name__,
        "method": recipe.method,
        "include": list(recipe.include),
        "exclude": list(recipe.exclude),
        "input_shape": list(example_input.shape[1:]),
        "layers": entries,
        "summary": {"converted": converted, "excluded": excluded, "left_alone": left_alone},
        "totals": {
            **totals,
            "params_share": share(totals["converted_params"], totals["params"]),
            "macs_share": share(totals["converted_macs"], totals["macs"]),
            "layers_converted": len(converted),
            "layers_excluded": len(excluded),
            "layers_unsupported": len(left_alone),
            "uncounted_layers": uncounted,
        },
        "warnings": warnings,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_inspection(d: dict[str, Any]) -> str:
    """Render :func:`inspect_model`'s dict as plain text: the indented layer tree, then totals and warnings.

    Containers show the totals of their subtree; leaves their own numbers. The action column says
    ``convert`` or, for a layer that owns parameters and stays dense, why.
    """
    header = ["layer", "type", "params", "MACs", "action"]
    rows = []
    for e in d["layers"]:
        name = e["name"] or d.get("model", "<root>")
        is_container = e["status"] == CONTAINER
        params = e["subtree_params"] if is_container else e["params"]
        macs = e["subtree_macs"] if is_container else e["macs"]
        if e["status"] == CONVERT:
            action = "convert"
        elif e["status"] in (EXCLUDED, UNSUPPORTED, VARIATIONAL, FOLDED):
            action = f"keep: {e['reason']}"
        elif is_container:
            action = e["reason"]  # "" unless the container owns parameters directly
        else:
            action = "-"  # no parameters: nothing to convert, nothing to say
        if e.get("aliases"):
            action = f"{'' if action == '-' else action} (also {', '.join(e['aliases'])})".lstrip()
        macs_text = human_count(macs) if e["counted"] else "?"
        rows.append(["  " * e["depth"] + name, e["type"], human_count(params), macs_text, action])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: list[str]) -> str:
        return "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),
                          r[3].rjust(widths[3]), r[4]]).rstrip()

    t = d["totals"]
    lines = [
        f"{d.get('model', 'model')}: method {d['method']}, include {d['include']}, exclude {d['exclude']}, "
        f"input {'x'.join(map(str, d.get('input_shape', [])))}",
        "",
        line(header),
        "  ".join("-" * w for w in [*widths, len(header[4])]),
        *(line(r) for r in rows),
        "",
        f"would convert {t['layers_converted']} layer(s); {t['layers_excluded']} excluded (by the recipe's "
        f"globs, as output layers, for weight tying, hooks or no gradient), {t['layers_unsupported']} of unsupported types",
        f"parameters: {human_count(t['converted_params'])} of {human_count(t['params'])} in converted layers "
        f"({_pct(t['params_share'])}); {human_count(t['prunable_weights'])} weights get noise",
        f"FLOPs (multiply-adds per sample): {human_count(t['converted_macs'])} of {human_count(t['macs'])} "
        f"in converted layers ({_pct(t['macs_share'])})",
    ]
    lines += [f"warning: {w}" for w in d.get("warnings", [])]
    return "\n".join(lines) + "\n"
