"""The one swapping walk: plain layers → variational layers, and back after pruning.

Like torchao's ``quantize_``, a single recursive walk over ``named_children()`` passes each module's
fully qualified name to a filter (the recipe's include/exclude globs) and swaps registered types through
:data:`prunedrop.layers.LAYER_REGISTRY`. Transforms return the model, since a swap at the root cannot be
done in place.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import PrunedropError
from .layers import LAYER_REGISTRY, VariationalLayer, from_dense_options
from .layers._units import OutputUnitNoise, tie_slots, tie_units
from .layers.sparse_vd import SparseVD
from .recipes import Recipe


@dataclass
class ConversionSummary:
    """What :func:`to_variational` did, for the user and the report."""

    converted: list[str] = field(default_factory=list)
    """Qualified names of the layers that now carry noise."""
    excluded: list[str] = field(default_factory=list)
    """Convertible layers that the recipe's include/exclude globs left dense."""
    left_alone: dict[str, str] = field(default_factory=dict)
    """Leaf modules with parameters of a type that no registered variational layer replaces (BatchNorm, LayerNorm, user layers): name → type."""
    tied: list[list[str]] = field(default_factory=list)
    """Groups of converted layers sharing one noise per unit (recipe key ``tie_residual``)."""
    slots: dict[str, int] = field(default_factory=dict)
    """Converted layers whose units are tied in slots around a grouped convolution (recipe key ``tie_grouped``): name
    → the period p (unit ``j·p + t`` of every group j shares slot t's noise)."""
    folded: list[list[str]] = field(default_factory=list)
    """(convolution, BatchNorm) pairs folded before the conversion (recipe key ``batchnorm_noise: fold``)."""
    output_layers: list[str] = field(default_factory=list)
    """Layers producing the model's outputs, left without unit noise (recipe key ``keep_output_layers``)."""
    unremovable: dict[str, str] = field(default_factory=dict)
    """Layers a structured method leaves dense because slimming could never remove any of their units (recipe key
    ``keep_unremovable``; :func:`prunedrop.slim.unremovable_layers`): name → why."""
    normalised: list[list[str]] = field(default_factory=list)
    """(convolution, BatchNorm) pairs whose unit noise sits on the BatchNorm's output (``batchnorm_noise: after``);
    the BatchNorm moved into the layer (``<conv>.batchnorm``) and left an ``nn.Identity`` in its place."""
    per_position: list[list[str]] = field(default_factory=list)
    """(layer, norm) pairs where an InstanceNorm follows a converted layer, whose unit noise is therefore drawn per
    position (:func:`prunedrop.batchnorm.instance_normalised`)."""
    reparametrized: list[str] = field(default_factory=list)
    """Tensors whose parametrization (weight_norm, spectral_norm, ...) was folded into a plain tensor first
    (:func:`fold_parametrizations`), e.g. ``"fc1.weight (weight_norm)"``."""
    hooked: dict[str, list[str]] = field(default_factory=dict)
    """Convertible layers left dense because the user registered hooks on them (:func:`user_hooks`): name → the
    hooks."""
    cut_off: list[str] = field(default_factory=list)
    """Convertible layers left dense because no gradient reaches their output (:func:`gradient_free_layers`)."""
    notes: list[str] = field(default_factory=list)
    """What the conversion could not do as the recipe asked (e.g. a model torch.fx cannot trace keeps its noise
    before the BatchNorms), one line each."""


_PARAMETRIZATION_NAMES = {"_WeightNorm": "weight_norm", "_SpectralNorm": "spectral_norm", "_Orthogonal": "orthogonal"}


def parametrized_tensors(model: nn.Module) -> list[tuple[str, str, str]]:
    """``(module name, tensor name, kind)`` of every reparametrized tensor of ``model``: a
    ``torch.nn.utils.parametrize`` parametrization (``parametrizations.weight_norm``, ``spectral_norm``,
    ``orthogonal`` or the user's own), the older hook-based ``weight_norm`` / ``spectral_norm``, or a mask of
    ``torch.nn.utils.prune`` (``weight = weight_orig * weight_mask``, computed by a forward pre-hook)."""
    from torch.nn.utils import parametrize

    found = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor, chain in module.parametrizations.items():
                kinds = [_PARAMETRIZATION_NAMES.get(type(p).__name__, type(p).__name__) for p in chain]
                found.append((name, tensor, "+".join(kinds)))
        for hook in module._forward_pre_hooks.values():
            folded = _folded_hook(hook)
            if folded is not None:
                found.append((name, *folded))
    return found


def _folded_hook(hook: Any) -> tuple[str, str] | None:
    """``(tensor name, kind)`` of a forward pre-hook that computes a weight and that :func:`fold_parametrizations`
    folds (the hook-based ``weight_norm`` / ``spectral_norm``, a ``torch.nn.utils.prune`` mask), else None: the one
    list of them, which :func:`parametrized_tensors` finds and :func:`user_hooks` does not count."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if isinstance(hook, WeightNorm):
        return hook.name, "weight_norm"
    if isinstance(hook, SpectralNorm):
        return hook.name, "spectral_norm"
    if isinstance(hook, BasePruningMethod):
        return hook._tensor_name, "torch.nn.utils.prune"
    return None


_HOOK_KINDS = {"_forward_pre_hooks": "forward pre-hook", "_forward_hooks": "forward hook",
               "_backward_pre_hooks": "backward pre-hook", "_backward_hooks": "backward hook"}


def user_hooks(module: nn.Module) -> list[str]:
    """The hooks registered on ``module`` itself (``register_forward_pre_hook``, ``register_forward_hook``,
    ``register_full_backward_hook``, ...), as ``"forward hook <lambda>"``; the weight-computing hooks folded before
    the conversion (:func:`_folded_hook`), a lazy module's own ``_infer_parameters`` (gone at its first forward)
    and prunedrop's are not counted.

    prunedrop replaces a converted layer by a new module (and a BatchNorm it folds by ``nn.Identity``), which the
    hooks are not registered on: a hook that changes the layer's input or output (a scale, a clamp, a feature
    tap) would be dropped without a word and the compressed model would compute something else. Such a layer is
    left dense and named instead (a digits MLP whose first layer's pre-hook mapped x to 3x − 1 and whose head's
    hook halved the logits was converted whole, both hooks lost).
    """
    from torch.nn.modules.lazy import LazyModuleMixin

    from .batchnorm import FINETUNE_HOOK_ATTRIBUTE

    ours = getattr(module, FINETUNE_HOOK_ATTRIBUTE, None)
    found = []
    for attribute, kind in _HOOK_KINDS.items():
        for key, hook in getattr(module, attribute, {}).items():
            if key == ours or _folded_hook(hook) is not None \
                    or getattr(hook, "__func__", None) is LazyModuleMixin._infer_parameters:
                continue
            found.append(f"{kind} {getattr(hook, '__qualname__', type(hook).__name__)}")
    return found


def hooks_note(hooked: Mapping[str, Sequence[str]]) -> str:
    """One line for the layers :func:`user_hooks` keeps dense."""
    shown = "; ".join(f"{name} ({', '.join(hooks[:2])})" for name, hooks in list(hooked.items())[:5])
    more = f"; and {len(hooked) - 5} more" if len(hooked) > 5 else ""
    return (f"left dense, as hooks are registered on them that a replaced layer would lose: {shown}{more} "
            "(to compress such a layer, do what its hook does in the model's forward instead)")


def copy_for_folding(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to fold (a dry run, ``inspect``). A hook-based ``weight_norm`` / ``spectral_norm``
    layer keeps the weight it last computed as a plain attribute, a non-leaf tensor that ``deepcopy`` refuses; it
    is recomputed without autograd first (the same value; the hook recomputes it at every forward)."""
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                folded = _folded_hook(hook)
                if folded is None:
                    continue
                tensor, kind = folded
                if kind == "torch.nn.utils.prune":
                    weight = hook.apply_mask(module)
                elif kind == "spectral_norm":
                    weight = hook.compute_weight(module, do_power_iteration=False)
                else:
                    weight = hook.compute_weight(module)
                setattr(module, tensor, weight)
    return copy.deepcopy(model)


def fold_parametrizations(model: nn.Module) -> list[str]:
    """Replace each reparametrized tensor of ``model`` by the plain tensor it computes (in eval mode), in place;
    returns ``"fc1.weight (weight_norm)"`` for each.

    A ``weight_norm`` / ``spectral_norm`` / ``orthogonal`` layer is a subclass that torch makes on the fly
    (``ParametrizedLinear``), or an ``nn.Linear`` whose ``weight`` a hook recomputes from ``weight_g`` and
    ``weight_v``: neither is a layer the variational layers can take over, and their forward computes the
    weight with operators ONNX lacks (``spectral_norm``'s ``vdot``). A parametrized layer was left dense without
    a word (a digits MLP with a weight-normed first layer compressed 1.15× instead of 14.6×), and a hook-normed
    one stopped the run with a traceback. Folded, the layer computes the same outputs with a plain weight, which
    prunedrop prunes, fine-tunes and exports; the constraint the parametrization kept (a unit norm, a spectral
    norm of 1) is not kept during the fine-tuning.
    """
    from torch.nn.utils import parametrize, remove_spectral_norm, remove_weight_norm
    from torch.nn.utils import prune as torch_prune

    folded = []
    for name, tensor, kind in parametrized_tensors(model):
        module = model.get_submodule(name)
        label = f"{name}.{tensor}" if name else tensor
        try:
            if parametrize.is_parametrized(module, tensor):
                module.parametrizations[tensor].eval()  # spectral_norm: no power iteration while folding
                # Removal deletes the property from the module's class, which a deepcopy shares with its
                # original: folding a copy left the original without its weight. This module gets its own class.
                cls = type(module)
                module.__class__ = type(cls.__name__, cls.__bases__, {k: v for k, v in cls.__dict__.items()
                                                                       if k not in ("__dict__", "__weakref__")})
                parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
            elif kind == "weight_norm":  # the hook-based forms (parametrized_tensors names them so)
                remove_weight_norm(module, tensor)
            elif kind == "torch.nn.utils.prune":  # the mask made permanent: weight = weight_orig * weight_mask
                torch_prune.remove(module, tensor)
            else:
                remove_spectral_norm(module, tensor)
        except Exception as e:  # noqa: BLE001 - a user parametrization that cannot leave a plain tensor behind
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise PrunedropError(
                f"cannot fold the {kind} parametrization of {label} into a plain tensor ({type(e).__name__}: "
                f"{first}); remove it before saving the model (torch.nn.utils.parametrize.remove_parametrizations)"
            ) from None
        folded.append(f"{label} ({kind})")
    return folded


def unit_noise(method: str) -> bool:
    """Whether ``method`` puts its noise on whole units (a structured method, followed by slimming)."""
    return any(issubclass(v, OutputUnitNoise) for v in LAYER_REGISTRY.get(method, {}).values())


def prunes_units_only(method: str) -> bool:
    """Whether ``method`` prunes whole units and nothing finer (sbp, group_vd; not sbp_sparse_vd, whose per-weight
    noise also prunes single weights): the methods that leave layers with unremovable units dense
    (``keep_unremovable``)."""
    return unit_noise(method) and not any(issubclass(v, SparseVD) for v in LAYER_REGISTRY[method].values())


def unremovable_to_keep(model: nn.Module, recipe: Recipe, example_input: torch.Tensor | None,
                        heads: set[str], found: Mapping[str, str] | None = None) -> dict[str, str]:
    """The selected layers that ``recipe`` leaves dense because slimming could never remove any of their units
    (``keep_unremovable``): name → why. ``heads``: the model's output layers (``keep_output_layers`` decides those);
    ``found``: :func:`prunedrop.slim.unremovable_layers` of ``model`` when the caller has it. Empty without an
    example input (nothing can be traced) or for a method that does not prune units only."""
    if not (recipe.keep_unremovable and prunes_units_only(recipe.method)) or example_input is None:
        return {}
    if found is None:
        from .slim import unremovable_layers

        found = unremovable_layers(model, example_input[:2])
    if found and not recipe.keep_output_layers:  # the user asked for the outputs' units: not this key's to keep
        from .outputs import output_layers

        heads = set(output_layers(model, example_input))
    names = module_names(model)
    return {name: why for name, why in found.items() if name not in heads and is_selected(name, recipe, names)}


def unremovable_kept_note(kept: Mapping[str, str]) -> str:
    """One line for the layers :func:`unremovable_to_keep` leaves dense."""
    shown = "; ".join(f"{name} ({why})" for name, why in list(kept.items())[:4])
    more = f"; and {len(kept) - 4} more" if len(kept) > 4 else ""
    return (f"left dense, as slimming could never remove any of their units: {shown}{more} (pruned units would stay "
            "as zeros, no smaller or faster; keep_unremovable: false converts them, sparse_vd prunes their single "
            "weights)")


def module_names(model: nn.Module) -> dict[str, list[str]]:
    """Every name of each module (``named_modules(remove_duplicate=False)``, the root ``<root>``), keyed by its
    first name: more than one for a module registered under several names (locuslab/TCN's ``conv1`` that is also
    ``net.0``)."""
    by_id: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        by_id.setdefault(id(module), []).append(name or "<root>")
    return {names[0]: names for names in by_id.values()}


def is_selected(name: str, recipe: Recipe, names: Mapping[str, Sequence[str]] | None = None) -> bool:
    """Whether the recipe's ``include`` globs match the layer ``name`` and no ``exclude`` glob does. A module
    registered under several names (``names``: :func:`module_names`, keyed by the first) is selected where one of
    its names is included and none is excluded: an exclude glob naming it by its other name leaves it dense."""
    every = (names or {}).get(name) or (name,)
    if not any(fnmatch.fnmatchcase(n, pattern) for n in every for pattern in recipe.include):
        return False
    return not any(fnmatch.fnmatchcase(n, pattern) for n in every for pattern in recipe.exclude)


def _traced(key: str, what: str, read: Callable[[nn.Module, torch.Tensor], Any], model: nn.Module,
            example_input: torch.Tensor | None) -> Any:
    """``read(model, example_input)``, a dependency-graph tracing that recipe key ``key`` needs (it reads the model's
    ``what``), with its failures as one line naming the key to switch off."""
    if example_input is None:
        raise PrunedropError(f"recipe key {key} needs an example input to trace the model's {what} "
                             "(to_variational(..., example_input=batch))")
    try:
        return read(model, example_input)
    except PrunedropError:
        raise
    except Exception as e:  # the dependency-graph tracing met something it cannot follow
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise PrunedropError(f"{key}: tracing the model's {what} failed ({type(e).__name__}: {first}); set "
                             f"{key}: false in the recipe") from None


def to_variational(
    model: nn.Module,
    recipe: Recipe,
    *,
    summary: ConversionSummary | None = None,
    dry_run: bool = False,
    example_input: torch.Tensor | None = None,
    unremovable: Mapping[str, str] | None = None,
) -> nn.Module:
    """Swap every selected, registered layer of ``model`` for its variational version.

    The trained weights are kept (the variational layer takes over the same Parameter objects, so no
    second copy of the model is made). Parametrized weights (``weight_norm``, ``spectral_norm``, ...) are first
    folded into plain ones (:func:`fold_parametrizations`, listed in ``summary.reparametrized``). Modules of unknown
    types are left alone and listed in ``summary.left_alone``. Raises PrunedropError when nothing at all could be
    converted. ``dry_run`` walks and checks the same way but swaps nothing (to fail before any file is written; a
    parametrized model is folded in a copy).

    With the recipe key ``tie_residual``, ``example_input`` (a batch the model accepts) is traced once to find
    the layers that write one residual stream, and each such group of converted unit-noise layers shares one
    noise per channel (:func:`prunedrop.layers._units.tie_units`); the groups go into ``summary.tied``.

    Structured noise and BatchNorm (recipe key ``batchnorm_noise``): with ``after`` (the default), each converted
    convolution that a BatchNorm alone follows (:func:`prunedrop.batchnorm.batchnorm_pairs`) takes that BatchNorm in and
    puts its noise on the BatchNorm's output (:meth:`~prunedrop.layers._units.OutputUnitNoise.normalise_with`);
    the BatchNorm's place holds an ``nn.Identity`` and the pairs go into ``summary.normalised``. With ``fold``, every
    BatchNorm that a convolution alone feeds is folded into it first (:func:`prunedrop.batchnorm.fold_batchnorm`, in
    place; the pairs go into ``summary.folded``). ``before`` leaves the BatchNorms where they are.

    Structured methods that prune units only (sbp, group_vd) leave dense the layers none of whose units slimming
    could ever remove (recipe key ``keep_unremovable``, :func:`unremovable_to_keep`; traced from ``example_input``,
    or given as ``unremovable``, :func:`prunedrop.slim.unremovable_layers` of the plain model); they go into
    ``summary.unremovable``.
    """
    registry = LAYER_REGISTRY.get(recipe.method)
    if registry is None:
        raise PrunedropError(f"no variational layers are registered for method {recipe.method!r}")
    summary = summary if summary is not None else ConversionSummary()
    if example_input is not None:
        check_no_packed_sequences(model, example_input)
    refused: dict[str, str] = {}  # left alone for their settings, not their type: name → why
    if parametrized_tensors(model):  # a dry run folds a copy: it must see the layers the real run converts
        if dry_run:
            model = copy_for_folding(model)
        summary.reparametrized += fold_parametrizations(model)
    names = module_names(model)  # a module registered under several names is selected by all of them
    options = recipe.noise_options()  # each layer's from_dense receives the ones it names (from_dense_options)

    heads: set[str] = set()
    if recipe.method != "sparse_vd" and recipe.keep_output_layers:
        from .outputs import output_layers

        heads = set(output_layers(model, example_input))

    kept = unremovable_to_keep(model, recipe, example_input, heads, unremovable)

    sharing = {name: others for name, others in shared_parameter_layers(model, registry).items()
               if is_selected(name, recipe, names)}
    if sharing:
        summary.notes.append(
            "left dense, as they share parameters with other modules (weight tying): "
            + "; ".join(f"{name} with {', '.join(others)}" for name, others in list(sharing.items())[:5])
            + " (each layer's own noise would prune the shared weight differently, untie it and store it twice)")

    cut = [name for name in gradient_free_layers(model, registry, example_input)
           if name not in sharing and is_selected(name, recipe, names)] if example_input is not None else []
    if cut:
        summary.notes.append(f"left dense, as no gradient reaches their output: {', '.join(cut[:5])} "
                             f"{CUT_OFF_WHY}")

    swapped: dict[int, nn.Module] = {}  # a module registered under several names is swapped once, for all of them

    def swap(module: nn.Module, name: str) -> nn.Module:
        if id(module) in swapped:
            return swapped[id(module)]
        swapped[id(module)] = new = swap_once(module, name)
        return new

    def swap_once(module: nn.Module, name: str) -> nn.Module:
        # Exact type lookup: a subclass of nn.Linear may change forward(), so it is not assumed convertible.
        variational = registry.get(type(module))
        if variational is not None:
            if (name or "<root>") in sharing:
                summary.excluded.append(name or "<root>")
                return module
            if (name or "<root>") in cut:
                summary.cut_off.append(name or "<root>")
                summary.excluded.append(name or "<root>")
                return module
            if (hooks := user_hooks(module)) and is_selected(name or "<root>", recipe, names):
                summary.hooked[name or "<root>"] = hooks
                summary.excluded.append(name or "<root>")
                return module
            if name in heads and is_selected(name or "<root>", recipe, names):
                summary.output_layers.append(name)
                summary.excluded.append(name)
                return module
            if name in kept:
                summary.unremovable[name] = kept[name]
                summary.excluded.append(name)
                return module
            why = variational.unsupported(module)
            if why is not None and is_selected(name or "<root>", recipe, names):
                summary.left_alone[name or "<root>"] = type(module).__name__
                summary.notes.append(f"{name or '<root>'} left dense: {type(module).__name__} with {why}")
                refused[name or "<root>"] = f"{type(module).__name__} with {why}"
                return module
            if is_selected(name or "<root>", recipe, names):
                summary.converted.append(name or "<root>")
                return module if dry_run else variational.from_dense(module, **from_dense_options(variational, options))
            summary.excluded.append(name or "<root>")
            return module
        if isinstance(module, VariationalLayer):
            raise PrunedropError(f"layer {name or '<root>'} is already variational; convert a plain model")
        children = list(module.named_children())
        if not children:
            if any(True for _ in module.parameters(recurse=False)):
                summary.left_alone[name or "<root>"] = type(module).__name__
            return module
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if is_selected(name or "<root>", recipe, names)]
        if own and type(module).__module__.startswith("torch."):
            # a torch layer with a child (nn.MultiheadAttention's out_proj) that this method has no version of: left
            # dense as a layer, not weights of the user's module that its forward reads directly
            summary.left_alone[name or "<root>"] = type(module).__name__
        elif own:  # a container's own parameters, read by its forward (torch.matmul, F.linear, a class token)
            bare[name or "<root>"] = own
        for child_name, child in children:
            new_child = swap(child, f"{name}.{child_name}" if name else child_name)
            if new_child is not child:
                setattr(module, child_name, new_child)
        return module

    structured = unit_noise(recipe.method)
    pairs: list[tuple[str, str]] = []
    if structured and recipe.batchnorm_noise == "fold" and not dry_run:
        from .batchnorm import fold_batchnorm

        summary.folded = [list(pair) for pair in fold_batchnorm(model)]
    elif structured and recipe.batchnorm_noise == "after" and not dry_run:
        from .batchnorm import batchnorm_pairs

        try:
            pairs = batchnorm_pairs(model, example_input)
        except PrunedropError as e:
            summary.notes.append(f"the unit noise stays before the BatchNorms (batchnorm_noise: before): {e.message}")
    instance: list[tuple[str, str]] = []
    if structured and not dry_run:
        from .batchnorm import instance_normalised

        try:
            instance = instance_normalised(model)
        except PrunedropError as e:
            summary.notes.append(f"the unit noise before the InstanceNorms stays drawn once per sample: {e.message}")
    groups: list[list[str]] = []
    if recipe.tie_residual and not dry_run:
        from .slim import coupled_producers

        groups = _traced("tie_residual", "residual streams", coupled_producers, model, example_input)
    slots: dict[str, int] = {}
    if structured and recipe.tie_grouped and not dry_run:
        from .slim import grouped_slots

        slots = _traced("tie_grouped", "grouped convolutions", grouped_slots, model, example_input)
    bare: dict[str, list[tuple[str, nn.Parameter]]] = {}
    total = sum(p.numel() for p in model.parameters())
    model = swap(model, "")
    bare_note = bare_parameters_note(bare, total)
    if bare_note is not None:
        summary.notes.append(bare_note)
    dense_note = left_dense_note(model, summary.left_alone, recipe.method, total)
    if dense_note is not None:
        summary.notes.append(dense_note)
    if summary.hooked:
        summary.notes.append(hooks_note(summary.hooked))
    if summary.unremovable:
        summary.notes.append(unremovable_kept_note(summary.unremovable))
    if pairs:
        from .batchnorm import activation_after, plain_batchnorm

        modules = dict(model.named_modules())
        for conv_name, bn_name in pairs:
            layer, bn = modules[conv_name], modules[bn_name]
            if isinstance(layer, OutputUnitNoise):
                # a library's BatchNorm with its activation (timm's BatchNormAct2d): the normalisation joins the
                # noise, the activation keeps the BatchNorm's place
                after = activation_after(bn)
                if after is not None:
                    bn = plain_batchnorm(bn)
                layer.normalise_with(bn)
                parent, _, child = bn_name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child,
                        after if after is not None else nn.Identity())
                summary.normalised.append([conv_name, bn_name])
                summary.left_alone.pop(bn_name, None)
    if groups:
        modules = dict(model.named_modules())
        for group in groups:
            tied = [n for n in group if isinstance(modules.get(n), OutputUnitNoise)]
            if len(tied) > 1:
                tie_units([modules[n] for n in tied])
                summary.tied.append(tied)
    if slots:
        _tie_grouped_slots(model, slots, summary)
    if instance:
        modules = dict(model.named_modules())
        for layer_name, norm_name in instance:
            layer = modules.get(layer_name)
            if isinstance(layer, OutputUnitNoise):
                layer.noise_per_position = True
                summary.per_position.append([layer_name, norm_name])
        # the members of a tied group share one draw, of one shape: all of them per position where one is
        for group in summary.tied:
            members = [modules[n] for n in group if isinstance(modules.get(n), OutputUnitNoise)]
            if any(m.noise_per_position for m in members):
                for m in members:
                    m.noise_per_position = True
    if not summary.converted:
        by_globs = [n for n in summary.excluded if n not in summary.output_layers and n not in sharing
                    and n not in summary.hooked and n not in summary.cut_off and n not in summary.unremovable]
        hint = nothing_converted_hint(recipe.method, by_globs, summary.output_layers,
                                      [t for n, t in summary.left_alone.items() if n not in refused],
                                      [n for n in summary.excluded if n in sharing], list(summary.hooked), refused,
                                      summary.cut_off, list(summary.unremovable))
        if bare_note is not None:
            hint = f"{hint}; {bare_note}"
        raise PrunedropError(f"no layer of the model can be converted by recipe method {recipe.method!r}: {hint}")
    return model


def _tie_grouped_slots(model: nn.Module, slots: dict[str, int], summary: ConversionSummary) -> None:
    """Tie the converted layers of ``slots`` (:func:`prunedrop.slim.grouped_slots`: name → period) in slots
    (:func:`~prunedrop.layers._units.tie_slots`). A residual group that shares one noise (``tie_residual``) is tied
    as one, in the greatest common divisor of its members' periods, so every member's slot structure holds."""
    import math

    modules = dict(model.named_modules())
    done: set[str] = set()
    for name in slots:
        if name in done or not isinstance(modules.get(name), OutputUnitNoise):
            continue
        members = next((g for g in summary.tied if name in g), [name])
        period = 0
        for member in members:
            period = math.gcd(period, slots.get(member, 0))
        layers = [modules[n] for n in members]
        done.update(members)
        if period < 1 or period >= layers[0].num_units:
            continue
        tie_slots(layers, period)
        for member in members:
            summary.slots[member] = period
    if summary.slots:
        shown = ", ".join(f"{n} ({p})" for n, p in list(summary.slots.items())[:8])
        more = f" and {len(summary.slots) - 8} more" if len(summary.slots) > 8 else ""
        summary.notes.append(f"one noise per slot around grouped convolutions (tie_grouped; channel t of every group "
                             f"of the period in brackets): {shown}{more}")


BARE_SHARE = 0.1
"""A module's own parameters (beside its child modules) holding at least this share of the model's are named."""


def bare_parameters_note(bare: Mapping[str, Sequence[tuple[str, nn.Parameter]]], total: int) -> str | None:
    """One line naming the parameters that modules with child modules hold themselves, where together they are at
    least :data:`BARE_SHARE` of the model's ``total``: no variational layer replaces them (the forward reads them
    with ``torch.matmul``, ``F.linear``, ``einsum`` …), so they stay dense and uncounted in the FLOPs; None when
    they are fewer (a class token, a position embedding, a learned temperature)."""
    held = _held(sum(p.numel() for params in bare.values() for _, p in params), total)
    if held is None:
        return None
    named = [f"{name}.{n}" if name != "<root>" else n for name, params in bare.items() for n, _ in params]
    shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
    return (f"left dense: {shown} ({held}), held by a "
            "module itself rather than by a layer, which its forward reads directly (as in x @ self.W or "
            "F.linear(x, self.w)); only layers (nn.Linear, nn.Conv*d, nn.Embedding, …) are converted: hold such a "
            "weight in an nn.Linear (layer(x) computes x @ W.T + b) to compress it")


def left_dense_note(model: nn.Module, left_alone: Mapping[str, str], method: str, total: int) -> str | None:
    """One line for the layers ``method`` has no variational version of (``left_alone``: name → type), where together
    they hold at least :data:`BARE_SHARE` of the model's ``total`` parameters: they keep every weight, which bounds
    what the run can save (an ``nn.Bilinear`` holding 88% of a model's parameters left it at most 1.14× smaller, and
    the run said only "left alone: bil (Bilinear)"). Per-channel layers (normalisations, PReLU) are not counted:
    a tiny model's BatchNorms can hold a tenth of it, and slimming removes their entries with the channels. None when
    the rest are fewer."""
    per_channel = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.PReLU)
    modules = {name: model.get_submodule("" if name == "<root>" else name) for name in left_alone}
    counted = {name: kind for name, kind in left_alone.items() if not isinstance(modules[name], per_channel)}
    params = {id(p): p for name in counted for p in modules[name].parameters()}  # a shared weight counted once
    count = sum(p.numel() for p in params.values())
    held = _held(count, total)
    if held is None:
        return None
    shown = ", ".join(f"{n} ({t})" for n, t in list(counted.items())[:5])
    more = f" and {len(counted) - 5} more" if len(counted) > 5 else ""
    return (f"left dense: {shown}{more} ({held}): {method} has no variational version of these layers (or of their "
            f"settings), so they keep every weight and the model can become at most {total / count:.3g}x smaller in "
            "parameters")


def _held(count: int, total: int) -> str | None:
    """``N parameters, P% of the model's`` for ``count`` of ``total`` parameters, where that is at least
    :data:`BARE_SHARE` of them (else None): how the notes on weights left dense name their share."""
    if not total or count < BARE_SHARE * total:
        return None
    return f"{count:,} parameters, {100 * count / total:.0f}% of the model's"


def nothing_converted_hint(method: str, by_globs: list[str], output_layers: list[str],
                           unsupported: Iterable[str], tied: Sequence[str] = (), hooked: Sequence[str] = (),
                           settings: Mapping[str, str] | None = None, cut_off: Sequence[str] = (),
                           unremovable: Sequence[str] = ()) -> str:
    """Why a model has no layer for ``method`` to convert, for the one-line error (and ``inspect``'s warning).

    Each reason is named apart: the globs, the output layers that structured methods keep whole (a GRU
    classifier under ``sbp`` was told that "the include/exclude globs excluded all of: head"), and the layer
    types the method has no version of, with the methods that have one, and the layers that weight tying
    keeps dense (:func:`shared_parameter_layers`), and those with hooks of the user's (:func:`user_hooks`).
    ``settings``: layer → why the method's version cannot take that layer's settings (an ``nn.LSTM`` with
    ``proj_size`` under group_vd was told that group_vd "has no variational version of LSTM", a supported type).
    """
    registry = LAYER_REGISTRY.get(method, {})
    reasons = []
    if output_layers:
        several = len(output_layers) > 1
        reasons.append(f"the output layer{'s' if several else ''} {', '.join(output_layers[:5])} "
                       f"{'stay' if several else 'stays'} whole under {method} (keep_output_layers)")
    if by_globs:
        reasons.append(f"the include/exclude globs exclude {', '.join(by_globs[:5])}")
    if tied:
        several = len(tied) > 1
        reasons.append(f"{', '.join(tied[:5])} {'share' if several else 'shares'} parameters with other modules or "
                       f"the forward (weight tying) and {'stay' if several else 'stays'} dense")
    if hooked:
        several = len(hooked) > 1
        reasons.append(f"{', '.join(hooked[:5])} {'have' if several else 'has'} hooks registered and "
                       f"{'stay' if several else 'stays'} dense")
    types = sorted(set(unsupported))
    if types:
        others = sorted(m for m, layers in LAYER_REGISTRY.items()
                        if m != method and any(t.__name__ in types for t in layers))
        elsewhere = f" (method {' or '.join(others)} converts {'them' if len(types) > 1 else 'it'})" if others else ""
        reasons.append(f"{method} has no variational version of {', '.join(types[:5])}{elsewhere}")
    if unremovable:
        several = len(unremovable) > 1
        reasons.append(f"slimming could never remove any unit of {', '.join(unremovable[:5])}, so "
                       f"{'they stay' if several else 'it stays'} dense (keep_unremovable; sparse_vd prunes "
                       f"{'their' if several else 'its'} single weights)")
    if cut_off:
        several = len(cut_off) > 1
        reasons.append(f"no gradient reaches the output of {', '.join(cut_off[:5])} (torch.no_grad(), .detach() "
                       f"or an output no model output uses), so {'they stay' if several else 'it stays'} dense")
    if settings:
        reasons.append(f"{method} cannot take the settings of " + ", ".join(
            f"{name} ({why})" for name, why in list(settings.items())[:3]))
    reasons.append(f"supported types are {', '.join(sorted(t.__name__ for t in registry))}")
    return "; ".join(reasons)


#: why a layer no gradient reaches stays dense (the conversion's note and ``inspect``'s reason)
CUT_OFF_WHY = ("(computed under torch.no_grad(), detached, or not used by any output in the forward: the data term "
               "cannot hold their noise back, and the KL alone would prune them whatever they are worth)")


def check_no_packed_sequences(model: nn.Module, example_input: torch.Tensor) -> None:
    """Refuse, in one line, a model whose recurrent layers are given a ``PackedSequence`` (``pack_padded_sequence``
    in the forward, as taggers and text classifiers of padded batches do): neither ONNX exporter can write one (the
    TorchScript exporter fails with "vector::_M_range_check", torch.export cannot trace it), which the original's
    export found only after the run folder was made, and the variational recurrent layers run on padded tensors.
    Found with forward pre-hooks on one eval-mode pass of ``example_input`` (modes, buffers and the random stream
    restored); a model that cannot take the pass is left to the checks that report its own failure."""
    from torch.nn.utils.rnn import PackedSequence

    from .modes import untouched

    fed: list[str] = []
    handles = [m.register_forward_pre_hook(
        lambda module, args, name=name: fed.append(name) if args and isinstance(args[0], PackedSequence) else None)
        for name, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if not handles:
        return
    try:
        with untouched(model):
            device = next((p.device for p in model.parameters()), example_input.device)
            model.eval()(example_input.to(device))
    except Exception:  # noqa: BLE001 - a model that cannot take the pass: its own failure is reported elsewhere
        return
    finally:
        for handle in handles:
            handle.remove()
    if fed:
        names = ", ".join(f"{n or '<root>'} ({type(model.get_submodule(n)).__name__})" for n in dict.fromkeys(fed))
        raise PrunedropError(
            f"{names} {'is' if len(set(fed)) == 1 else 'are'} given a PackedSequence (pack_padded_sequence), which "
            "neither ONNX exporter can write: run the recurrent layer on the padded batch itself, and take each "
            "sequence's last real step by its length (out[torch.arange(len(x)), lengths - 1]) or mask the padding")


def gradient_free_layers(model: nn.Module, registry: Mapping[type[nn.Module], Any],
                         example_input: torch.Tensor) -> list[str]:
    """Registered layers that the forward calls but whose output no gradient of the model's outputs reaches.

    A frozen feature extractor written as ``with torch.no_grad(): h = self.encoder(x)`` or ``self.a(x).detach()``:
    converted, its noise gets no gradient from the data term, only from the KL, which then prunes the layer
    whatever it is worth (a digits MLP whose first layer ran under ``torch.no_grad()`` kept 24% of its weights at
    the autopilot's smallest β, ended 2.3 points down, and the run exported nothing). Found with one backward
    pass of the sum of the outputs on ``example_input`` (eval mode, every floating parameter requiring a gradient
    for the pass: a frozen layer, ``requires_grad=False``, still trains its noise and is not cut off); the
    parameters' flags and gradients, the buffers and the modes are restored. None when the model cannot take the
    pass."""
    from .modes import kept
    from .slim.coupling import all_requiring_grad, tensors_in

    layers = {name or "<root>": m for name, m in model.named_modules() if type(m) in registry}
    if not layers:
        return []
    called: set[str] = set()
    reached: set[str] = set()

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            called.add(name)
            for tensor in tensors_in(output):
                if tensor.requires_grad:
                    tensor.register_hook(lambda grad: reached.add(name))
        return hook

    grads = [(p, p.grad) for p in model.parameters()]
    handles = [m.register_forward_hook(make_hook(name)) for name, m in layers.items()]
    try:
        # buffers kept too: a forward that updates a buffer of its own
        with kept(model, buffers=True), all_requiring_grad(model), torch.enable_grad():
            for p, _ in grads:
                p.grad = None
            device = grads[0][0].device if grads else example_input.device
            outputs = [t for t in tensors_in(model.eval()(example_input.to(device)))
                       if t.requires_grad and t.is_floating_point()]
            if outputs:
                torch.stack([t.float().sum() for t in outputs]).sum().backward()
    except Exception:  # noqa: BLE001 - a model that cannot take the pass: its own failure is reported elsewhere
        return []
    finally:
        for handle in handles:
            handle.remove()
        for p, grad in grads:
            p.grad = grad
    return [name for name in layers if name in called and name not in reached]


def shared_parameter_layers(model: nn.Module, registry: Mapping[type[nn.Module], Any]) -> dict[str, list[str]]:
    """Convertible layers (exact types of ``registry``) holding a parameter that another module holds too →
    those other modules' names.

    Weight tying (``decoder.weight = embedding.weight``, ``b.weight = a.weight``): converted, each layer would learn
    its own noise over the one weight, prune it its own way, and the pruned model would hold two different weights
    where there was one (a tied digits MLP grew from 9.0K to 9.6K parameters under sparse VD, 13.1K under sbp). A
    layer called twice through one name shares nothing, and neither does one module registered under two names
    (locuslab/TCN's ``self.conv1`` that is also ``self.net[0]``): it is one layer, listed under its first name
    (``named_modules()``), and :func:`to_variational` swaps it once for both.

    A forward that reads a layer's parameter itself (a tied decoder, ``F.linear(z, self.enc.weight.t())``) shares it
    too (``"the model's forward"``, found by a torch.fx trace where the model allows one): that read sees the
    plain weight while the layer trains with noise, and slimming misread it (a units' removal cut the wrong
    layer's inputs, and the slim model no longer ran). Reading only its shape, dtype or device does not count.
    """
    owners: dict[int, set[tuple[str, int]]] = {}  # a parameter → (name, module) of each module holding it
    for name, module in model.named_modules(remove_duplicate=False):
        for parameter in module.parameters(recurse=False):
            owners.setdefault(id(parameter), set()).add((name or "<root>", id(module)))
    sharing: dict[str, list[str]] = {}
    inside: dict[int, set[int]] = {}  # a layer → the modules it holds (itself too)
    for name, module in model.named_modules():  # one module registered under two names is one layer: its first
        if type(module) not in registry:
            continue
        label = name or "<root>"
        held = inside.setdefault(id(module), {id(m) for m in module.modules()})
        others = {owner for parameter in module.parameters() for owner, holder in owners[id(parameter)]
                  if holder not in held}
        if others:
            sharing[label] = sorted(others)
    for label in _read_by_forward(model, registry):
        sharing.setdefault(label, []).append("the model's forward")
    return sharing


_METADATA = {"shape", "dtype", "device", "size", "dim", "ndim", "numel"}


def _read_by_forward(model: nn.Module, registry: Mapping[type[nn.Module], Any]) -> list[str]:
    """Registered layers whose parameters ``model.forward`` reads outside the layer (torch.fx ``get_attr`` nodes
    used for more than their metadata); none when torch.fx cannot trace the model."""
    from torch import fx

    from .fxtrace import symbolic_trace
    from .storage.saved import forward_defaults

    layers = [name for name, m in model.named_modules() if name and type(m) in registry]
    if not layers:
        return []
    try:
        graph = symbolic_trace(model, concrete_args=forward_defaults(model, 1) or None).graph
    except Exception:  # noqa: BLE001 - control flow or types torch.fx cannot follow: nothing to go on
        return []

    def metadata_only(node: fx.Node) -> bool:
        return all(user.op == "call_function" and user.target is getattr and user.args[1] in _METADATA
                   or user.op == "call_method" and user.target in _METADATA for user in node.users)

    found = []
    for node in graph.nodes:
        if node.op == "get_attr" and not metadata_only(node):
            found += [name for name in layers if node.target.startswith(f"{name}.") and name not in found]
    return found


def variational_layers(model: nn.Module) -> dict[str, VariationalLayer]:
    """Qualified name → variational layer, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, VariationalLayer)}


def to_deterministic(model: nn.Module, threshold: float | None = None) -> nn.Module:
    """Replace every variational layer by its plain equivalent with pruned entries zero (inverse of the swap).

    ``threshold`` overrides each layer's own threshold when given. A parameter the user froze
    (``requires_grad=False``) stays frozen in the plain layer, so the noise-free fine-tuning leaves it as the
    variational phase did.
    """
    return _to_deterministic(model, threshold, {})


def _to_deterministic(model: nn.Module, threshold: float | None, done: dict[int, nn.Module]) -> nn.Module:
    if id(model) in done:  # one layer registered under two names stays one plain layer
        return done[id(model)]
    if isinstance(model, VariationalLayer):
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        dense = model.to_dense(threshold)
        for n, p in dense.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        done[id(model)] = dense
        return dense
    done[id(model)] = model
    for name, child in list(model.named_children()):
        new_child = _to_deterministic(child, threshold, done)
        if new_child is not child:
            setattr(model, name, new_child)
    return model
