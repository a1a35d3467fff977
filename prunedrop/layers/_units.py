"""The per-unit noise machinery that the unit-noise families share (SBP in :mod:`.lognormal`, group VD in
:mod:`.group_vd`, SBP over sparse VD in :mod:`.sbp_sparse_vd`): a plain Linear/Conv layer whose whole output is multiplied
by a noise per output unit (:class:`OutputUnitNoise`, with the :class:`LinearUnits` / :class:`ConvUnits` mixins),
the BatchNorm it may normalise with, and units tied across layers (:func:`tie_units`, :class:`TiedDraw`).

A private module with public names: the family modules import from here; users import the layers from
:mod:`prunedrop.layers`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import VariationalLayer, along, conv_kwargs, conv_transpose_kwargs, linear_kwargs, weight_unit_axis


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of a BatchNorm in eval mode: ``bn(z) = scale · z + shift`` (running statistics)."""
    with torch.no_grad():
        scale = 1 / (bn.running_var + bn.eps).sqrt()
        if bn.affine:
            scale = bn.weight * scale
        shift = -bn.running_mean * scale
        if bn.affine:
            shift = shift + bn.bias
    return scale, shift


class TiedDraw:
    """The noise draw that the layers of one tied group share within a forward pass (see :func:`tie_units`).

    The first member to run in a pass draws the multiplier and the others reuse it; a member asking a second
    time means a new pass (or the batch size changed), so it draws afresh. A draw that a backward pass has gone
    through is spent as well: its graph is freed, and a member that a module called twice in one forward pass
    left out of ``users`` (the second call drew afresh) would otherwise reuse it in the next pass and fail in
    backward ("Trying to backward through the graph a second time"). Copies and pickles carry no draw.
    """

    def __init__(self) -> None:
        self.sample: torch.Tensor | None = None
        self.users: set[int] = set()
        self.spent = False

    def multiplier(self, layer: OutputUnitNoise, shape: list[int], unit_axis: int) -> torch.Tensor:
        if self.sample is None or self.spent or id(layer) in self.users or list(self.sample.shape) != shape:
            self.sample, self.users, self.spent = layer._draw(shape, unit_axis), set(), False
            if self.sample.requires_grad:
                self.sample.register_hook(self._backward_went_through)
        self.users.add(id(layer))
        return self.sample

    def _backward_went_through(self, grad: torch.Tensor) -> None:
        self.spent = True

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


class OutputUnitNoise(VariationalLayer):
    """A plain layer whose whole output is multiplied by a learned noise per output unit.

    Shared by the log-normal (:mod:`.lognormal`) and Gaussian (:mod:`.group_vd`) families. The Linear / Conv mixins
    say how to apply the layer and where its unit and batch axes are; the noise family supplies
    ``_sample_multiplier`` (training) and ``_eval_multiplier`` (eval and ``to_dense``), and names its per-unit
    parameters in ``unit_noise_names`` (what :func:`tie_units` shares).
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    unit_noise_names: tuple[str, ...] = ()
    _tied: TiedDraw | None = None
    #: where set (:func:`tie_slots`), the per-unit noise parameters hold one entry per slot ``t`` of this period,
    #: shared by the units ``j·period + t`` of every group j: each slot is one noise (one draw per pass)
    unit_period: int | None = None
    _slot_raw: bool = False
    #: whether ``_eval_multiplier(None)`` depends on nothing but the per-unit parameters (``unit_noise_names``) and
    #: ``threshold``, so that eval-mode passes reuse it while those are unchanged (:meth:`_eval_multiplier_now`); the
    #: built-in families say so, a user's layer is recomputed every pass unless it does
    caches_eval_multiplier: bool = False
    #: draw the training noise per example, unit and position (each pixel, time step or token), not once per example
    #: and unit: set where an InstanceNorm follows the layer, which divides each channel of each sample by its own
    #: spread and so cancels a draw shared over the positions (the noise then taught nothing: SBP pruned 1.06×)
    noise_per_position: bool = False

    def _apply_dense(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _unit_axes(self, y: torch.Tensor) -> tuple[int, int | None]:
        """(axis of the units, axis of the examples or None for an unbatched input) of an output y."""
        raise NotImplementedError

    def _sample_multiplier(self, shape: list[int], unit_axis: int) -> torch.Tensor:
        raise NotImplementedError

    def _eval_multiplier(self, threshold: float | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def num_units(self) -> int:
        """The number of output units (out features, out channels), each with its own noise."""
        return int(self.weight.shape[weight_unit_axis(self)])

    def _per_unit_values(self, values: torch.Tensor) -> torch.Tensor:
        """Per-unit noise values from the stored ones: unchanged, or where the units are tied in slots
        (:func:`tie_slots`) each slot's value repeated for every group (while a training draw is made per slot, the
        slots' own values)."""
        period = self.unit_period
        if period is None or self._slot_raw or values.shape[0] != period:
            return values
        return values.repeat(self.num_units // period)

    def _per_unit(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values`` (one per unit) shaped to broadcast over ``like`` (the weight) along its unit axis."""
        return along(values, like, weight_unit_axis(self))

    def _unit_parameter(self, value: float) -> nn.Parameter:
        return nn.Parameter(torch.full((self.num_units,), float(value), dtype=self.weight.dtype,
                                       device=self.weight.device))

    def normalise_with(self, batchnorm: nn.Module) -> None:
        """Apply ``batchnorm`` (a BatchNorm of this layer's units) to the output before the unit noise.

        The convolution → BatchNorm pair then is one unit: ``y = θ ⊙ BN(f(x, W) + b)``, so the variational phase
        trains the network with its normalisation in place, and a pruned unit outputs exact zeros after it.
        The BatchNorm becomes a child (``<layer>.batchnorm.*``): it trains with the layer and keeps its own mode,
        so Monte Carlo sampling (only this layer in train mode) still normalises with the running statistics.
        ``to_dense`` folds its eval-mode affine map into the weight and bias, exactly.
        """
        if not isinstance(batchnorm, nn.modules.batchnorm._BatchNorm) or batchnorm.num_features != self.num_units:
            raise TypeError(f"normalise_with needs a BatchNorm of {self.num_units} features, not {batchnorm!r}")
        if batchnorm.running_mean is None or batchnorm.running_var is None:
            raise ValueError("normalise_with needs a BatchNorm with running statistics (track_running_stats=True), "
                             "whose eval-mode affine map can be folded")
        self.batchnorm = batchnorm

    def _batchnorm(self) -> nn.Module | None:
        """The BatchNorm applied before the noise (:meth:`normalise_with`), if any."""
        return self._modules.get("batchnorm")

    def _fold_batchnorm(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight, bias)`` with the eval-mode BatchNorm of :meth:`normalise_with` folded in (unchanged without one)."""
        bn = self._batchnorm()
        if bn is None:
            return weight, bias
        scale, shift = batchnorm_affine(bn)
        scale, shift = scale.to(weight.dtype), shift.to(weight.dtype)
        weight = weight * self._per_unit(scale, weight)
        return weight, shift if bias is None else bias * scale + shift

    def parameter_keep_masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        masks = super().parameter_keep_masks(threshold)
        if self._batchnorm() is not None and "bias" not in masks:  # to_dense gives the layer the BatchNorm's shift
            unit = self.unit_keep_mask(threshold)
            if unit is not None:
                masks["bias"] = unit.clone()
        return masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._apply_dense(x)
        bn = self._batchnorm()
        if bn is not None:
            y = bn(y)
        unit_axis, batch_axis = self._unit_axes(y)
        shape = [1] * y.dim()
        shape[unit_axis] = y.shape[unit_axis]
        if not self.training:
            return y * self._eval_multiplier_now().to(y.dtype).reshape(shape)
        # One draw per example and unit, shared over positions: the unit as a whole is on or off.
        if batch_axis is not None:
            shape[batch_axis] = y.shape[batch_axis]
        if self.noise_per_position:
            shape = list(y.shape)
        if self._tied is not None:
            return y * self._tied.multiplier(self, shape, unit_axis).to(y.dtype)
        return y * self._draw(shape, unit_axis).to(y.dtype)

    def _draw(self, shape: list[int], unit_axis: int) -> torch.Tensor:
        """A training multiplier of ``shape``: one draw per example and unit, or per slot where the units are tied in
        slots (:func:`tie_slots`), repeated for every group along the unit axis."""
        period = self.unit_period
        if period is None:
            return self._sample_multiplier(shape, unit_axis)
        reps = [1] * len(shape)
        reps[unit_axis] = shape[unit_axis] // period
        slots = list(shape)
        slots[unit_axis] = period
        self._slot_raw = True
        try:
            sample = self._sample_multiplier(slots, unit_axis)
        finally:
            self._slot_raw = False
        return sample.repeat(reps)

    def _eval_multiplier_now(self) -> torch.Tensor:
        """``_eval_multiplier(None)``, reused between eval-mode passes while the per-unit parameters (the same objects,
        their storage and in-place version) and the threshold are unchanged and no gradient is wanted: the log-normal moments cost more
        than the layer's own product, and every validation check, sweep point and cost measurement recomputed them
        (a 300-block residual MLP spent 6.5 minutes in one measurement pass per block before its first epoch)."""
        if not self.caches_eval_multiplier:
            return self._eval_multiplier(None)
        params = [getattr(self, name) for name in self.unit_noise_names]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._eval_multiplier(None)
        key = (tuple((p._version, p.data_ptr()) for p in params), self.threshold)
        cached = self.__dict__.get("_eval_cache")
        # the cache holds the parameters themselves: a replaced one is never freed and its address reused unseen
        if cached is not None and cached[0] == key and all(a is b for a, b in zip(cached[1], params, strict=True)):
            return cached[2]
        value = self._eval_multiplier(None)
        self.__dict__["_eval_cache"] = (key, params, value)
        return value

    def to_dense(self, threshold: float | None = None) -> nn.Module:
        with torch.no_grad():
            m = self._eval_multiplier(threshold).to(self.weight.dtype)
            weight, bias = self._fold_batchnorm(self.weight, self.bias)
            weight = weight * self._per_unit(m, weight)
            return self._dense_with(weight, None if bias is None else bias * m)


class LinearUnits(OutputUnitNoise):
    """Units are out features, the last axis; the first axis holds the examples."""

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return linear_kwargs(module)

    def _apply_dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _unit_axes(self, y: torch.Tensor) -> tuple[int, int | None]:
        return y.dim() - 1, (0 if y.dim() >= 2 else None)


class ConvUnits(OutputUnitNoise):
    """Units are out channels: axis 1 of ``(N, C, *spatial)``, axis 0 of an unbatched ``(C, *spatial)``."""

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return conv_kwargs(module)

    def _apply_dense(self, x: torch.Tensor) -> torch.Tensor:
        # nn.ConvNd._conv_forward handles every padding_mode (zeros, reflect, replicate, circular).
        return self._conv_forward(x, self.weight, self.bias)  # type: ignore[attr-defined]

    def _unit_axes(self, y: torch.Tensor) -> tuple[int, int | None]:
        batched = y.dim() == len(self.kernel_size) + 2  # type: ignore[attr-defined]
        return (1, 0) if batched else (0, None)


class ConvTransposeUnits(OutputUnitNoise):
    """Units are out channels of an ungrouped transposed convolution (a decoder's upsampling): axis 1 of its
    ``(in, out, *kernel)`` weight and of its ``(N, C, *spatial)`` output. ``forward(x, output_size)`` takes the plain
    layer's optional output size, as ``nn.ConvTransposeNd`` does."""

    _call_output_size: Any = None

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if getattr(module, "groups", 1) != 1:
            return (f"a grouped transposed convolution (groups={module.groups}): its output channels are spread "
                    "over the weight's groups, which unit noise does not follow")
        return None

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return conv_transpose_kwargs(module)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        self._call_output_size = output_size
        try:
            return super().forward(x)
        finally:
            self._call_output_size = None

    def _apply_dense(self, x: torch.Tensor) -> torch.Tensor:
        # the plain layer's rule (nn.ConvTransposeNd.forward: the output padding for this call's output size)
        return self.dense_type.forward(self, x, self._call_output_size)  # type: ignore[call-arg]

    def _unit_axes(self, y: torch.Tensor) -> tuple[int, int | None]:
        batched = y.dim() == len(self.kernel_size) + 2  # type: ignore[attr-defined]
        return (1, 0) if batched else (0, None)


def tie_units(layers: list[nn.Module]) -> None:
    """Make ``layers`` one noise per unit: they share their per-unit noise parameters and, in training, each
    forward pass's draw, so unit i is kept or pruned in all of them at once.

    For the producers of one residual stream (:func:`prunedrop.slim.coupled_producers`): a stream channel can
    leave only when every producer prunes it, and separate noises rarely all agree. The layers must be unit-noise
    layers of one family with the same number of units; the first one's parameters are kept (the others'
    dropped). Each member still adds the (shared) KL with its own factor, so a tied unit carries the prior's
    cost once for every layer it occupies, as untied units that agree would.
    """
    if len(layers) < 2:
        return
    lead = layers[0]
    names = getattr(lead, "unit_noise_names", ())
    for layer in layers:
        if not isinstance(layer, OutputUnitNoise) or not names or layer.unit_noise_names != names:
            raise TypeError(f"cannot tie {type(layer).__name__} to {type(lead).__name__}: both must be unit-noise "
                            "layers of one family")
        if layer.num_units != lead.num_units:
            raise ValueError(f"cannot tie layers with {layer.num_units} and {lead.num_units} units")
    draw = TiedDraw()
    for layer in layers:
        for name in names:
            setattr(layer, name, getattr(lead, name))
        layer._tied = draw


def tie_slots(layers: list[nn.Module], period: int) -> None:
    """Tie the units of ``layers`` in slots: unit ``j·period + t`` of every group j (of ``num_units / period``) takes
    the one noise of slot t: the per-unit noise parameters shrink to ``period`` entries (the first group's), and a
    training pass draws one multiplier per example and slot, so slot t is kept or pruned in every group at once.
    Several layers (a residual group that :func:`tie_units` tied: one noise already) are tied in slots together.

    For the convolutions around a grouped one (``recipe key tie_grouped``, :func:`prunedrop.slim.grouped_slots`): its
    groups must stay equal in size, so a channel leaves only where every group can lose as many, and separate
    noises per channel rarely agree; a slot leaves from every group exactly. The KL is still summed per unit, so a
    slot pays the prior once for every channel it occupies, as its channels cost multiply-adds in every group.
    """
    lead = layers[0]
    names = getattr(lead, "unit_noise_names", ())
    for layer in layers:
        if not isinstance(layer, OutputUnitNoise) or not names or layer.unit_noise_names != names:
            raise TypeError(f"cannot tie the units of {type(layer).__name__} in slots: not a unit-noise layer")
        if layer.unit_period is not None:
            raise ValueError("the layer's units are tied in slots already")
        if any(getattr(layer, n) is not getattr(lead, n) for n in names):
            raise ValueError("layers tied in slots together must share their noise (tie_units) first")
        if period < 1 or layer.num_units % period:
            raise ValueError(f"cannot tie {layer.num_units} units in slots of period {period}")
    for name in names:
        value = getattr(lead, name)
        shared = nn.Parameter(value.detach()[:period].clone(), requires_grad=value.requires_grad)
        for layer in layers:
            setattr(layer, name, shared)
    for layer in layers:
        layer.unit_period = int(period)
