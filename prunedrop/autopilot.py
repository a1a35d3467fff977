"""The autopilot: β (the KL weight) as a controlled variable, so that the user states a budget or a target.

β decides how much variational dropout prunes, and no user can guess it for their model: on a small training set
β = 1 is crushed by the prior, while on a large one structured noise at β = 1 prunes nothing in a short run. So
the variational phase treats β as the multiplier of a constraint and moves it by dual ascent, in log space, from
measurements taken every ``check_every`` optimizer steps:

* **budget** (``max_metric_drop``): the constraint is "validation metric drop ≤ ``margin`` × budget". At each
  check the eval-mode model (which computes exactly the thresholded model, see :mod:`prunedrop.layers.base`) is
  measured on the validation data (at most ``check_samples`` of them); the drop is smoothed (an exponential moving
  average, so that one unlucky image of a small validation set does not steer) and
  ``log β += rate · clip((margin·budget − drop) / budget, −2, 1)``. β rises while the model is comfortably within
  budget and falls, twice as fast, when it is not: compressing is the objective, accuracy the constraint (GECO,
  Rezende & Viola 2018; Gallego-Posada et al. 2022 for sparsity). The margin (½ by default) is spent during the
  noisy phase; the rest is left for choosing the threshold afterwards, which the noise-free fine-tuning wins back.
* **target** (``target: flops=10x`` …): the constraint is "kept cost ≤ dense cost / ratio". The kept cost is the
  cost of what the current thresholds keep (multiply-adds or parameters per unit, from one profiling pass), and
  ``log β += rate · clip(log(cost / target) / log 2, −1, 1)``: β rises while the model is larger than asked.
* both: the smaller step wins, so β rises only while *both* constraints allow it; the run then says which one bound.

``rate`` is ``ln 10 × check_every / decade_steps``: β can move at most ten-fold per ``decade_steps`` steps, which
is :func:`decade_steps` of the noise learning rate: Adam moves a noise parameter by about one learning rate per
step, and the noise needs to cross about ten units of log σ² to prune a weight, so the plant answers a change of β
after roughly 10 / noise_lr steps. Moving β slower than that keeps the loop from outrunning its plant and
oscillating. β is clipped to [``BETA_MIN``, ``BETA_MAX``]. The controller never sees a NaN: a non-finite
measurement is rejected by :meth:`Autopilot.check`.

Per-layer allocation (:func:`cost_factors`): structured methods weigh each unit's KL by what the unit costs (its
multiply-adds, or parameters for a ``params`` target, together with the downstream inputs only it feeds) relative to
the average unit, so that expensive early convolutions are pruned harder without hand-set ``kl_weights``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import PrunedropError
from .layers.configs import SNR_METHODS
from .recipe_groups import is_classification

BETA_MIN = 1e-4
BETA_MAX = 1e4
#: β at the start of an automatic run: small, since the controller can raise it ten-fold per ``decade_steps`` but a
#: too large β does its damage before the validation measurements can show it
BETA_START = 0.1
#: the share of the budget spent during the noisy phase (the threshold choice and fine-tuning use the rest)
MARGIN = 0.5
#: units of log σ² the noise crosses to prune a weight (from −10 to about log α = 3 for a typical weight)
NOISE_SPAN = 10.0
#: smoothing of the measured drop between checks (weight of the newest measurement)
DROP_SMOOTHING = 0.5
#: the budget's step shrinks as the measured drop keeps crossing the aim (Kesten's rule): ``rate / (1 + s/2)`` after
#: ``s`` crossings, at least RATE_FLOOR × rate; a run of one response time (``decade_steps``) without a crossing
#: takes one back, so that a moved equilibrium is followed at the full rate again
RATE_FLOOR = 0.25
#: settled: over the last SETTLE_STEPS steps β moved less than ×SETTLE_BETA and the kept fraction less than
#: SETTLE_KEPT (absolute)
SETTLE_STEPS = 1000
SETTLE_BETA = 1.25
SETTLE_KEPT = 0.005
#: an automatic run trains at least this many optimizer steps (sparse VD's noise needs thousands of steps to grow)
AUTO_MIN_STEPS = 10000
AUTO_MIN_EPOCHS = 10
AUTO_MAX_EPOCHS = 300
#: a target's kept cost is measured at log α > this while training (:func:`control_threshold`)
TARGET_LOG_ALPHA = 0.0

TARGET_KINDS = ("flops", "params", "bytes")
_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


@dataclass(frozen=True)
class Target:
    """A size or speed target: ``kind`` is flops, params or bytes; either ``ratio`` (10 means 10× fewer) or, for
    bytes, an absolute ``limit``."""

    kind: str
    ratio: float | None = None
    limit: float | None = None

    def ratio_for(self, dense_cost: float) -> float:
        """How many times smaller than ``dense_cost`` the model must become."""
        if self.ratio is not None:
            return self.ratio
        assert self.limit is not None
        return dense_cost / self.limit

    def __str__(self) -> str:
        if self.ratio is not None:
            return f"{self.kind}={self.ratio:g}x"
        return f"{self.kind}={self.limit:g}"


def target_kind(spec: str | None) -> str | None:
    """The kind of the target ``spec`` (flops, params or bytes; :func:`parse_target`), None without one."""
    return parse_target(spec).kind if spec else None


def parse_target(spec: str) -> Target:
    """``flops=10x``, ``params=50x``, ``bytes=5x`` or ``bytes=200KB`` (KB/MB/GB, KiB/MiB/GiB); a one-line error
    naming what is wrong otherwise."""
    text = str(spec).strip().lower().replace(" ", "")
    kind, sep, value = text.partition("=")
    if not sep or kind not in TARGET_KINDS:
        raise PrunedropError(f"target {spec!r}: give KIND=VALUE with KIND one of {', '.join(TARGET_KINDS)}, "
                             "e.g. flops=10x, params=50x or bytes=200KB")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)(x|[kmg]i?b|b)?", value)
    if not m:
        raise PrunedropError(f"target {spec!r}: {value!r} is not a ratio such as 10x"
                             + (" or a size such as 200KB" if kind == "bytes" else ""))
    number, unit = float(m.group(1)), m.group(2) or ""
    if not math.isfinite(number):
        raise PrunedropError(f"target {spec!r} must be finite")
    if unit == "x" or (unit == "" and kind != "bytes"):
        if not number > 1.0:
            raise PrunedropError(f"target {spec!r}: the ratio must be more than 1x (how many times smaller)")
        return Target(kind=kind, ratio=number)
    if kind != "bytes":
        raise PrunedropError(f"target {spec!r}: {kind} takes a ratio such as {kind}=10x")
    limit = number * _UNITS[unit]
    if not limit >= 1:
        raise PrunedropError(f"target {spec!r}: the size must be at least 1 byte")
    return Target(kind="bytes", limit=limit)


def metric_drop(before: float, after: float, *, loss: str) -> float:
    """How much worse ``after`` is than ``before``, in the budget's unit: accuracy points, or for ``mse`` the
    relative increase of the error in percent."""
    if is_classification(loss):
        return before - after
    return 100.0 * (after - before) / max(abs(before), 1e-12)


# -- costs -------------------------------------------------------------------------------------------------------


def _units(layer: nn.Module) -> int:
    """Entries of the layer's keep mask: its units (per-unit noise) or weights (per-weight noise)."""
    with torch.no_grad():
        return int(layer.keep_mask().numel())


def _costs(model: nn.Module, example_input: torch.Tensor, kind: str) -> tuple[dict[str, float], float]:
    """(:func:`layer_costs`, the cost of everything outside the variational layers), from one profiling pass."""
    from .convert import variational_layers
    from .report import layer_weights, profile_model

    layers = variational_layers(model)
    costs: dict[str, float] = {}
    if kind == "flops":
        profiles = {p.name: p for p in profile_model(model, example_input[:1])}
        other = float(sum(p.macs for name, p in profiles.items() if name not in layers))
    else:
        inside = {id(p) for layer in layers.values() for p in layer.parameters()}
        other = float(sum(p.numel() for p in model.parameters() if id(p) not in inside))
    for name, layer in layers.items():
        entries = max(_units(layer), 1)
        if kind == "flops":
            total = float(profiles[name].macs) if name in profiles else 0.0
            fixed = float(profiles[name].fixed_macs) if name in profiles else 0.0
            if fixed and entries == sum(w.numel() for w in layer_weights(layer)):
                # an attention's products of queries and keys stay whatever single weights go: not theirs to save
                total -= fixed
                other += fixed
        else:
            # an attention's heads hold its packed q/k/v projection and their out_proj columns
            total = float(sum(p.numel() for n, p in layer.named_parameters()
                              if n in ("weight", "bias", "in_proj_weight", "in_proj_bias", "out_proj.weight")
                              or n.startswith(("weight_", "bias_"))))
        costs[name] = total / entries
    return costs, other


def layer_costs(model: nn.Module, example_input: torch.Tensor, kind: str) -> dict[str, float]:
    """Variational layer name → the cost of one keep-mask entry of it (a unit or a weight), in ``kind``'s terms:
    multiply-adds per sample (flops) or parameters (params, bytes). From one profiling pass at batch size 1."""
    return _costs(model, example_input, kind)[0]


def cost_factors(model: nn.Module, example_input: torch.Tensor, kind: str,
                 costs: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-layer KL factors: each entry's :func:`marginal_costs` (what pruning it saves: its own cost from
    :func:`layer_costs`, or ``costs`` already computed for ``kind``, plus, for a unit, the inputs of the layers
    downstream that it alone fed) relative to the average entry (weighted by entries, so that the factors average 1
    over all units and β keeps its scale). Layers that cost nothing (a profile without multiply-adds) get the
    smallest positive factor rather than 0, so that their KL still counts."""
    from .convert import variational_layers

    own = dict(costs) if costs is not None else layer_costs(model, example_input, kind)
    costs = marginal_costs(model, example_input, kind, own)
    layers = variational_layers(model)
    entries = {name: _units(layer) for name, layer in layers.items()}
    total_entries = sum(entries.values())
    total_cost = sum(costs[n] * entries[n] for n in costs)
    if total_entries == 0 or total_cost <= 0:
        return {name: 1.0 for name in layers}
    mean = total_cost / total_entries
    positive = [c / mean for c in costs.values() if c > 0]
    floor = min(positive) if positive else 1.0
    return {name: (costs[name] / mean if costs[name] > 0 else floor) for name in layers}


def _consumers(model: nn.Module, kind: str, example_input: torch.Tensor) -> dict[str, tuple[nn.Module, float]]:
    """Every Linear / convolution of ``model`` → (the module, its whole cost in ``kind``'s terms: multiply-adds
    per sample, or the parameters of its weight)."""
    from .report import profile_model

    modules = {name: m for name, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and name}
    if kind == "flops":
        macs = {p.name: float(p.macs) for p in profile_model(model, example_input[:1])}
        return {name: (m, macs.get(name, 0.0)) for name, m in modules.items()}
    return {name: (m, float(m.weight.numel())) for name, m in modules.items()}


def marginal_costs(model: nn.Module, example_input: torch.Tensor, kind: str,
                   own: Mapping[str, float]) -> dict[str, float]:
    """Variational layer name → what pruning one keep-mask entry of it saves: its own cost (``own``, from
    :func:`layer_costs`) and, for layers whose entries are output units, the share of the downstream layers'
    cost that reads only that unit. Slimming removes both: a pruned convolution channel also removes the slices
    of the next layer's kernels that read it, often the larger part (on LeNet-5 a conv1 channel costs 14k
    multiply-adds itself and feeds 80k in conv2). Measured, not derived from the graph: every other unit of the
    layer (of its tied group, which prunes together) is zeroed on an example batch, and the inputs of Linear /
    convolution layers that become all zero are counted; a unit feeding a residual sum silences nothing, so it
    gets no downstream credit. Per-weight entries (sparse VD) keep their own cost."""
    from .convert import variational_layers
    from .layers._units import OutputUnitNoise

    layers = variational_layers(model)
    out = {name: float(own.get(name, 0.0)) for name in layers}
    units = {name: layer for name, layer in layers.items() if isinstance(layer, OutputUnitNoise)}
    if not units:
        return out
    consumers = _consumers(model, "params" if kind == "bytes" else kind, example_input)
    reference = _nonzero_of(model, example_input, {n: m for n, (m, _) in consumers.items()})
    groups: dict[int, list[str]] = {}
    for name, layer in units.items():
        tie = getattr(layer, "_tied", None)
        groups.setdefault(id(tie) if tie is not None else id(layer), []).append(name)
    for members in groups.values():
        count = units[members[0]].num_units
        zeroed = torch.arange(0, count, 2)
        handles = [units[name].register_forward_hook(_zero_units(zeroed)) for name in members]
        try:
            now = _nonzero_of(model, example_input, {n: m for n, (m, _) in consumers.items()})
        finally:
            for h in handles:
                h.remove()
        saved = 0.0
        for name, (_, total) in consumers.items():
            ref, cur = reference.get(name), now.get(name)
            if name in members or ref is None or cur is None or ref.shape != cur.shape or not ref.numel():
                continue
            saved += total * float((ref & ~cur).float().mean())
        for name in members:  # a tied unit's KL counts once per member: each carries its share
            out[name] += saved / len(zeroed) / len(members)
    return out


def _zero_units(units: torch.Tensor) -> Any:
    """A forward hook that zeroes output units ``units`` of a unit-noise layer (on its own unit axis)."""

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        axis, _ = module._unit_axes(output)
        output = output.clone()
        output.index_fill_(axis, units.to(output.device), 0.0)
        return output

    return hook


@torch.no_grad()
def _nonzero_of(model: nn.Module, example: torch.Tensor, modules: Mapping[str, nn.Module]) -> dict[str, Any]:
    """Module name → which of its input channels / features are not all zero on ``example`` (eval mode, every
    module's training flag restored afterwards); see :func:`_nonzero_inputs`."""
    from .dropout.mc import sampling_mode

    seen: dict[str, torch.Tensor | None] = {}
    handles = [m.register_forward_pre_hook(
        lambda mod, args, name=name: seen.__setitem__(name, _nonzero_inputs(mod, args[0])) if args else None)
        for name, m in modules.items()]
    try:
        with sampling_mode(model, lambda m: False):
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            model(example.to(device))
    finally:
        for h in handles:
            h.remove()
    return seen


def _nonzero_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Which of the input's channels (convolutions: dim 1) or features (linear: the last dim) are not zero on the
    whole batch; None for other layers."""
    if isinstance(module, nn.modules.conv._ConvNd) and x.dim() >= 2:
        return x.detach().ne(0).transpose(0, 1).flatten(1).any(dim=1).cpu()
    if isinstance(module, nn.Linear) and x.dim() >= 1:
        return x.detach().ne(0).reshape(-1, x.shape[-1]).any(dim=0).cpu()
    return None


class CostMeter:
    """How many times smaller than the dense model the thresholded model is, in FLOPs or parameters.

    Per variational layer: kept entries (units or weights) × the cost of one entry × (1 − the share of the layer's
    input channels that pruning silenced: not all zero on an example batch before anything was pruned, all zero
    now). Pruned units upstream feed zeros and slimming removes the weights that read them; inputs that were zero
    from the start (a ReLU that never fires on the example) are not removed, so they do not count. The layers that are not converted count in full. An estimate for the
    controller: the report's numbers come from the slim model itself.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, kind: str,
                 threshold: float | None = None) -> None:
        from .convert import variational_layers

        self.kind = "params" if kind == "bytes" else kind
        self.example = example_input
        self.threshold = threshold
        """The threshold the kept cost is measured at (set on every variational layer for the measurement); None =
        each layer's own (:func:`control_threshold`)."""
        self.costs, self.other = _costs(model, example_input, self.kind)
        self.layers = variational_layers(model)
        self.dense = self.other + sum(_units(layer) * self.costs[n] for n, layer in self.layers.items())
        self.sparse_factor: dict[str, float] = {}
        """For a ``bytes`` target, per-weight layer → what a kept weight costs stored sparsely against densely: its
        4 bytes and the varint of the layer's largest index (:func:`prunedrop.export.sparse.stored_bytes`); the file
        holds such a layer sparse where that is smaller than dense."""
        if kind == "bytes":
            from .export.sparse import index_bytes

            self.sparse_factor = {n: 1.0 + float(index_bytes(max(_units(layer) - 1, 0))) / 4.0
                                  for n, layer in self.layers.items() if layer.unit_keep_mask() is None}
        # inputs that are zero before anything is pruned (a ReLU that never fires on the example): slimming does not
        # remove the weights that read them, so only the zeros that pruning adds count
        with self._at_threshold():
            self.reference = self._nonzero(model)

    def _nonzero(self, model: nn.Module) -> dict[str, torch.Tensor | None]:
        return _nonzero_of(model, self.example, self.layers)

    def _at_threshold(self) -> AbstractContextManager[None]:
        """The variational layers thresholded at :attr:`threshold` for the measurement, their own restored after."""
        from .prune import thresholds_at

        return nullcontext() if self.threshold is None else thresholds_at(self.layers, self.threshold)

    @torch.no_grad()
    def ratio(self, model: nn.Module) -> float:
        """Dense cost / estimated kept cost of ``model`` at :attr:`threshold` (eval mode, one forward)."""
        with self._at_threshold():
            now = self._nonzero(model)
            kept = self.other
            for name, layer in self.layers.items():
                density = 1.0
                ref, cur = self.reference.get(name), now.get(name)
                if ref is not None and cur is not None and ref.shape == cur.shape and ref.numel():
                    silenced = ref & ~cur  # fed something before pruning, zeros now
                    density = 1.0 - float(silenced.float().mean())
                mask = layer.keep_mask()
                entries = float(mask.sum())
                if name in self.sparse_factor:  # the file holds the layer dense (zeros too), or sparse
                    entries = min(float(mask.numel()), entries * self.sparse_factor[name])
                kept += entries * self.costs[name] * density
        return self.dense / max(kept, 1e-12)


def control_threshold(method: str, threshold: float) -> float | None:
    """The threshold a target's kept cost is measured at while training: for the log α methods (sparse_vd,
    group_vd) the lower of the recipe's threshold and :data:`TARGET_LOG_ALPHA` (α = 1: the noise as large as the
    weight, SBP's default rule of SNR 1); None for the SNR methods (sbp, sbp_sparse_vd): each layer's own, the
    recipe's.

    The target fixes the size, and the threshold is then chosen to meet it (the least pruning one that does), so
    the threshold the controller measures at decides only how high β must climb to get there. At sparse VD's
    default log α > 3 (noise 4.5× the weight) a LeNet-300-100 on Fashion-MNIST needed β 3.1 for 30× and read
    test −4.09 points after fine-tuning; measured at log α > 0 it needed β 0.31 and read −1.29 (−1 and 1: −1.31 and
    −1.75; BENCHMARKS.md, autopilot)."""
    if method in SNR_METHODS:
        return None
    return min(threshold, TARGET_LOG_ALPHA)


# -- the controller ----------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One measurement of the controller and what it did."""

    step: int
    beta: float
    """β after this check's update."""
    drop: float | None = None
    """Measured validation drop (budget's unit) at this check."""
    smoothed_drop: float | None = None
    cost_ratio: float | None = None
    """Dense cost / kept cost (how many times smaller the kept model is) at this check."""
    kept_fraction: float | None = None
    bound: str | None = None
    """Which constraint held β back at this check: ``budget``, ``target`` or None."""
    discount: float | None = None
    """The plain-training transient taken off the measured drop at this check (see ``prunedrop.train``)."""
    kl: float | None = None
    """The mean KL (the noise's description length, weighted as trained) over the training steps since the last
    check: it falls as the noise grows, and rises as it shrinks."""
    loss: float | None = None
    """The data loss of the eval-mode model on the check's samples."""
    val_drop: float | None = None
    """Where the checks also count training samples (a coarse validation set): the drop on the validation samples
    alone, which the budget's verdict reads."""
    val_smoothed: float | None = None
    """:attr:`val_drop` smoothed as :attr:`smoothed_drop` is."""


@dataclass
class Autopilot:
    """The β controller of one variational phase (see the module docstring). Serialisable for resume."""

    max_drop: float | None
    target_ratio: float | None = None
    check_every: int = 100
    decade_steps: float = 1000.0
    """Steps over which β may change at most ten-fold (:func:`decade_steps`)."""
    margin: float = MARGIN
    resolution: float = 0.0
    """The smallest drop the measurements can show (one validation sample: 100 / n points of accuracy)."""
    log_beta: float = math.log(BETA_START)
    smoothed_drop: float | None = None
    val_smoothed: float | None = None
    """The smoothed drop on the validation samples alone, where the checks count training samples too."""
    checks: list[Check] = field(default_factory=list)
    backoffs: int = 0
    crossings: float = 0.0
    """How often the smoothed drop has crossed the aim, less one per response time without a crossing
    (:meth:`budget_rate`)."""
    _over: bool = field(default=False, repr=False)
    over_alone: bool = field(default=False, repr=False)
    """The last check found the model over the budget on the validation samples alone, not on the pooled ones (it
    names which one set a back-off off)."""
    _side: int = field(default=0, repr=False)
    _since_crossing: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.max_drop is None and self.target_ratio is None:
            raise ValueError("an Autopilot needs a budget, a target or both")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop > 0):
            raise ValueError(f"budget must be a positive finite number, got {self.max_drop}")
        if self.target_ratio is not None and not (math.isfinite(self.target_ratio) and self.target_ratio > 1):
            raise ValueError(f"target ratio must be finite and > 1, got {self.target_ratio}")
        if self.check_every < 1:
            raise ValueError("check_every must be ≥ 1")
        if not self.decade_steps > 0:
            raise ValueError("decade_steps must be > 0")

    @property
    def beta(self) -> float:
        return math.exp(self.log_beta)

    @property
    def aim(self) -> float:
        """The drop the budget mode steers to: ``margin`` × budget.

        Raising it to one validation sample's weight where that is larger (0.69 points on 144 images) was measured
        on the digits models of BENCHMARKS.md (the autopilot section): a little more compression for more test
        loss, so the aim stays at the margin and a validation set too small to resolve it is warned about."""
        assert self.max_drop is not None
        return self.margin * self.max_drop

    @property
    def rate(self) -> float:
        """Largest change of log β per check."""
        return math.log(10.0) * self.check_every / self.decade_steps

    @property
    def budget_rate(self) -> float:
        """The budget's largest change of log β per check, after ``crossings`` crossings of the aim.

        The measured drop is noisy: on a few thousand validation samples, a model in training moves by 0.2–0.3
        points between checks (LeNet-5 and LeNet-300-100 on Fashion-MNIST, 2,000 samples), as much as a half-point
        budget's aim. An integral controller at a constant step turns that noise into a random walk of β (LeNet-5:
        β between 0.05 and 1.5, the kept fraction up and down with it, nine back-offs). A root of a noisy function
        is found by steps that shrink each time the error changes sign (Kesten 1958, stochastic approximation):
        far from the aim the error keeps its sign and the step stays large; around the aim it shrinks."""
        return self.rate * max(RATE_FLOOR, 1.0 / (1.0 + self.crossings / 2.0))

    def _count_crossing(self, slack: float) -> None:
        side = (slack > 0) - (slack < 0)
        response = max(1, round(self.decade_steps / self.check_every))
        if side and self._side and side != self._side:
            self.crossings += 1.0
            self._since_crossing = 0
        else:
            self._since_crossing += 1
            if self._since_crossing >= response:  # a response time on one side: the equilibrium has moved
                self.crossings = max(0.0, self.crossings - 1.0)
                self._since_crossing = 0
        if side:
            self._side = side

    def check(self, step: int, *, drop: float | None = None, cost_ratio: float | None = None,
              kept_fraction: float | None = None, val_drop: float | None = None) -> Check:
        """Take one measurement (validation drop in the budget's unit; dense/kept cost ratio) and update β.

        ``val_drop``: where ``drop`` is measured on training samples besides a coarse validation set, the drop on the
        validation samples alone. Smoothed alike (:attr:`val_smoothed`), it holds β back once over the whole budget,
        which the verdict reads there (not the aim: they are too few to steer by, which is why the checks pool
        training samples with them): a model can keep
        the aim on the pooled samples, which the training ones dominate, and lose the budget on the validation ones
        (a mean-and-max pooling CNN under SBP: 2 of 144 validation samples down for its last 100 epochs, a third of a
        point on all 1,437)."""
        for name, value in (("drop", drop), ("cost_ratio", cost_ratio), ("val_drop", val_drop)):
            if value is not None and not math.isfinite(value):
                raise PrunedropError(f"the autopilot measured a non-finite {name} ({value}) at step {step}: the "
                                     "model's validation outputs are not finite; lower the learning rate")
        moves: dict[str, float] = {}
        if self.max_drop is not None:
            if drop is None:
                raise ValueError("budget mode needs the measured drop at every check")
            self.smoothed_drop = drop if self.smoothed_drop is None else \
                DROP_SMOOTHING * drop + (1.0 - DROP_SMOOTHING) * self.smoothed_drop
            slack = (self.aim - self.smoothed_drop) / self.max_drop
            self._count_crossing(slack)
            # over the whole budget, the back-off takes the full step: safety does not wait for the statistics
            rate = self.rate if self.smoothed_drop > self.max_drop else self.budget_rate
            moves["budget"] = rate * min(1.0, max(-2.0, slack))
            over = drop > self.max_drop and self.smoothed_drop > self.aim
            self.over_alone = False
            if val_drop is not None:
                self.val_smoothed = val_drop if self.val_smoothed is None else \
                    DROP_SMOOTHING * val_drop + (1.0 - DROP_SMOOTHING) * self.val_smoothed
                if self.val_smoothed > self.max_drop:
                    moves["budget"] = min(moves["budget"], self.rate * max(
                        -2.0, (self.max_drop - self.val_smoothed) / self.max_drop))
                    self.over_alone = not over and val_drop > self.max_drop
                    over = over or self.over_alone
            was_over = bool(self.checks) and self.checks[-1].bound == "budget" and self._over
            if over and not was_over:
                self.backoffs += 1  # a new episode over the budget (counted once, not at every check in it)
            self._over = over
        if self.target_ratio is not None:
            if cost_ratio is None:
                raise ValueError("target mode needs the kept cost ratio at every check")
            # positive while the model is bigger than the target (its ratio below the target ratio)
            gap = math.log(self.target_ratio / max(cost_ratio, 1e-12)) / math.log(2.0)
            moves["target"] = self.rate * min(1.0, max(-1.0, gap))
        bound_by, move = min(moves.items(), key=lambda kv: kv[1])
        self.log_beta = min(math.log(BETA_MAX), max(math.log(BETA_MIN), self.log_beta + move))
        bound = bound_by if move <= 0 else None  # a constraint binds when it holds β back, not while β rises
        record = Check(step=step, beta=self.beta, drop=drop, smoothed_drop=self.smoothed_drop,
                       cost_ratio=cost_ratio, kept_fraction=kept_fraction, bound=bound, val_drop=val_drop,
                       val_smoothed=self.val_smoothed if val_drop is not None else None)
        self.checks.append(record)
        return record

    def restart(self) -> None:
        """Start over as at the first check (β at :data:`BETA_START`, no smoothed drop, no crossings of the aim), the
        trajectory kept: the phase starts again from the given weights (an overfitting back-off,
        :class:`prunedrop.pilot.Pilot`), where the step that the crossings before had shrunk (down to a quarter) would
        let β climb too slowly to prune (the padded tagger settled at 1.08× with β 0.34, its step at half)."""
        self.log_beta, self.smoothed_drop, self.val_smoothed = math.log(BETA_START), None, None
        self.crossings, self._side, self._since_crossing, self._over = 0.0, 0, 0, False

    def settled(self, step: int) -> bool:
        """β and the kept fraction have stayed flat over the last :data:`SETTLE_STEPS` steps, in a run with a budget.

        A target alone never settles: nothing measures what the noise still costs the model, which goes on adapting
        to it after β has settled. LeNet-300-100 on Fashion-MNIST (``params=30x``, no budget) settled after 4 of 19
        epochs and read test −1.87 points after the 10 noise-free ones, −1.51 after 25 of them, −1.29 when the
        variational phase ran its 19 (BENCHMARKS.md, autopilot)."""
        if self.max_drop is None:
            return False
        window = [c for c in self.checks if c.step >= step - SETTLE_STEPS]
        if len(window) < 3 or not self.checks or self.checks[0].step > step - SETTLE_STEPS:
            return False
        betas = [c.beta for c in window]
        kept = [c.kept_fraction for c in window if c.kept_fraction is not None]
        flat_beta = max(betas) / min(betas) <= SETTLE_BETA
        flat_kept = not kept or max(kept) - min(kept) <= SETTLE_KEPT
        return flat_beta and flat_kept

    def bound(self) -> str:
        """Which constraint decided where β ended: the one that held it back in most of the last five checks, or
        ``none`` when neither did (β was still rising when training ended)."""
        last = [c.bound for c in self.checks[-5:]]
        held = [b for b in last if b]
        if len(held) * 2 < len(last) or not held:
            return "none"
        return max(set(held), key=held.count)

    def state_dict(self) -> dict[str, Any]:
        return {"log_beta": self.log_beta, "smoothed_drop": self.smoothed_drop, "val_smoothed": self.val_smoothed,
                "backoffs": self.backoffs,
                "over": self._over, "crossings": self.crossings, "side": self._side,
                "since_crossing": self._since_crossing,
                "checks": [asdict(c) for c in self.checks]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.log_beta = float(state["log_beta"])
        self.smoothed_drop = state.get("smoothed_drop")
        self.val_smoothed = state.get("val_smoothed")
        self.backoffs = int(state.get("backoffs", 0))
        self._over = bool(state.get("over", False))
        self.crossings = float(state.get("crossings", 0.0))
        self._side = int(state.get("side", 0))
        self._since_crossing = int(state.get("since_crossing", 0))
        self.checks = [Check(**c) for c in state.get("checks", [])]

    def summary(self) -> dict[str, Any]:
        """The report's ``autopilot`` entry: the settings, β's trajectory and the last measurements."""
        last = self.checks[-1] if self.checks else None
        return {
            "max_metric_drop": self.max_drop,
            "target_ratio": self.target_ratio,
            "margin": self.margin,
            "aim": self.aim if self.max_drop is not None else None,
            "resolution": self.resolution,
            "check_every": self.check_every,
            "decade_steps": self.decade_steps,
            "beta_final": self.beta,
            "bound": self.bound(),
            "backoffs": self.backoffs,
            "crossings": self.crossings,
            "budget_rate": self.budget_rate if self.max_drop is not None else None,
            "last_check": None if last is None else asdict(last),
            "trajectory": [asdict(c) for c in self.checks],
        }


def auto_epochs(num_train: int, batch_size: int) -> int:
    """Epochs of an automatic variational phase: at least :data:`AUTO_MIN_STEPS` steps and
    :data:`AUTO_MIN_EPOCHS` epochs, at most :data:`AUTO_MAX_EPOCHS` (the controller may stop it earlier)."""
    steps_per_epoch = max(1, math.ceil(num_train / batch_size))
    return int(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, math.ceil(AUTO_MIN_STEPS / steps_per_epoch))))


def decade_steps(noise_lr: float) -> float:
    """Steps per ten-fold change of β: the noise's response time, :data:`NOISE_SPAN` / ``noise_lr``, within
    [50, 5000]."""
    return float(min(5000.0, max(50.0, NOISE_SPAN / noise_lr)))


def check_interval(steps_per_epoch: int) -> int:
    """Steps between two measurements: about four per epoch, between 10 and 100 steps apart."""
    return int(min(100, max(10, steps_per_epoch // 4)))
