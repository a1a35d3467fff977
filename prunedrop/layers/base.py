"""The contract every variational layer keeps, and the registry that maps plain layers to them.

A variational layer wraps a plain ``nn.Linear`` / ``nn.ConvNd`` with a learned noise level. It must:

* ``from_dense(module, *, <settings>)`` - build itself from a trained plain layer, keeping its weights; its
  keyword arguments name the recipe settings it takes (the fields of its family's config in :mod:`.configs`
  and ``threshold``), and the conversion passes exactly those (:func:`from_dense_options`);
* ``kl()`` - the KL divergence of its posterior from the prior (a scalar tensor, summed over its noise);
* ``keep_mask(threshold)`` - which weights (per-weight noise) or units (per-unit noise) survive;
* ``to_dense(threshold)`` - a plain torch module with the noise mean folded in and the pruned entries zero.

In eval mode a variational layer is deterministic and computes exactly what ``to_dense`` computes.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


def weight_unit_axis(module: nn.Module) -> int:
    """The axis of ``module``'s weight that indexes its output units: 1 for a transposed convolution's
    ``(in, out / groups, *kernel)``, 0 for a Linear's or a convolution's."""
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def along(values: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """``values`` (one per entry of ``like``'s ``axis``) shaped to broadcast over ``like`` along that axis."""
    shape = [1] * like.dim()
    shape[axis] = -1
    return values.reshape(shape)


class VariationalLayer(nn.Module):
    """Marker base class; concrete layers also inherit from the plain layer they replace."""

    #: the plain type this layer replaces and turns back into: the first plain torch layer among its bases (set
    #: by :meth:`__init_subclass__`), or given where it is none of them (attention)
    dense_type: type[nn.Module] = nn.Module
    #: default pruning threshold, overwritten by :func:`prunedrop.prune.set_thresholds`
    threshold: float

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "dense_type" not in cls.__dict__:
            plain = next(b for b in cls.__mro__ if b.__module__.startswith("torch.nn.modules"))
            if plain is not nn.Module:
                cls.dense_type = plain

    @classmethod
    def from_dense(cls, module: nn.Module, **options: Any) -> VariationalLayer:
        raise NotImplementedError

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        """Why ``module``'s settings keep this layer from taking it over (None when nothing does).

        :func:`prunedrop.convert.to_variational` then leaves the module dense, as a layer of an unregistered type,
        and says why; ``from_dense`` still refuses it. The default command thus compresses the rest of a model
        with an ``nn.Embedding(max_norm=...)`` instead of stopping after it had written its first files."""
        return None

    def kl(self) -> torch.Tensor:
        raise NotImplementedError

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        raise NotImplementedError

    def to_dense(self, threshold: float | None = None) -> nn.Module:
        raise NotImplementedError

    def noise_parameters(self) -> list[nn.Parameter]:
        """Parameters of the noise (they usually want a larger learning rate than the weights)."""
        return []

    def unit_keep_mask(self, threshold: float | None = None) -> torch.Tensor | None:
        """Keep mask over the output units when the noise removes whole units (for slimming), else None.

        The default reads :meth:`keep_mask`: a mask of the weight's shape is per weight (None here), any other
        shape is one entry per output unit. Layers with several kinds of noise override it.
        """
        mask = self.keep_mask(threshold)
        return None if mask.shape == self.weight.shape else mask

    def parameter_keep_masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        """Local parameter name (``weight``, ``bias``, ``weight_ih_l0`` …) → keep mask of that parameter's shape.

        What ``to_dense`` zeroes, for the noise-free fine-tuning that keeps pruned entries at zero. The default
        covers per-weight masks and per-unit masks (a unit takes its weight row and its bias with it); layers
        with other parameters or several kinds of noise override it.
        """
        mask = self.keep_mask(threshold)
        if mask.shape == self.weight.shape:
            return {"weight": mask}
        rows = along(mask, self.weight, weight_unit_axis(self)).expand_as(self.weight).clone()
        return {"weight": rows, **({"bias": mask.clone()} if self.bias is not None else {})}

    # -- shared by the families: the plain layer's constructor arguments, taking over its trained
    # Parameters, and building the plain layer back

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _take_over(cls, module: nn.Module) -> VariationalLayer:
        """A new layer holding ``module``'s own weight and bias Parameters (no copy; noise is added by the caller).

        Built on the meta device, so that converting a large model allocates only the noise parameters and
        never a second copy of the weights.
        """
        with torch.device("meta"):
            layer = cls(**cls._dense_kwargs(module))
        layer.weight = module.weight
        layer.bias = module.bias
        return layer

    def _dense_with(self, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        """The plain ``dense_type`` layer of the same configuration, holding ``weight`` and ``bias``."""
        with torch.device("meta"):
            dense = self.dense_type(**self._dense_kwargs(self))
        dense.weight = nn.Parameter(weight.detach())
        dense.bias = None if bias is None else nn.Parameter(bias.detach())
        return dense.train(self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}"


def linear_kwargs(module: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild ``module``'s nn.Linear (or a subclass taking the same ones)."""
    return {"in_features": module.in_features, "out_features": module.out_features,
            "bias": module.bias is not None}


def conv_kwargs(module: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild ``module``'s nn.ConvNd: every stride/padding/dilation/groups setting."""
    return {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": module.kernel_size,
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
        "bias": module.bias is not None,
        "padding_mode": module.padding_mode,
    }


def conv_transpose_kwargs(module: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild ``module``'s nn.ConvTransposeNd, its ``output_padding`` included."""
    return {**conv_kwargs(module), "output_padding": module.output_padding}


#: method name -> {plain layer type: variational layer type}. Users may add their own entries
#: with :func:`register_layer`.
LAYER_REGISTRY: dict[str, dict[type[nn.Module], type[VariationalLayer]]] = {}


def from_dense_options(variational_type: type[VariationalLayer], available: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``available`` that ``variational_type.from_dense`` names as keyword arguments (all of them
    when it takes ``**options``, as a user's layer may)."""
    params = inspect.signature(variational_type.from_dense).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(available)
    names = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return {k: v for k, v in available.items() if k in names}


def register_layer(method: str, dense_type: type[nn.Module], variational_type: type[VariationalLayer]) -> None:
    """Make :func:`prunedrop.convert.to_variational` swap ``dense_type`` for ``variational_type``."""
    if not (isinstance(variational_type, type) and issubclass(variational_type, VariationalLayer)):
        raise TypeError(f"{variational_type!r} must be a subclass of prunedrop.layers.VariationalLayer")
    for name in ("from_dense", "kl", "keep_mask", "to_dense"):
        # Explicit check: a layer that forgot one of these would fail much later, mid-training.
        if inspect.getattr_static(variational_type, name) is inspect.getattr_static(VariationalLayer, name):
            raise TypeError(f"{variational_type.__name__} does not implement {name}()")
    LAYER_REGISTRY.setdefault(method, {})[dense_type] = variational_type
