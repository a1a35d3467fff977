"""The settings of each noise family: one small config per family, the recipe section of that name.

Each config sits here, beside the family's layer file (named in its docstring), so that ``import
prunedrop.recipes`` does not import torch. A layer's ``from_dense`` names the settings it takes as keyword
arguments; :func:`prunedrop.convert.to_variational` passes it exactly those, from these configs and the recipe's
``threshold`` (:func:`prunedrop.layers.base.from_dense_options`). The defaults of ``from_dense`` are the defaults
below, written once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from ..errors import PrunedropError
from ..recipe_fields import POSITIVE, setting

RecurrentNoise = Literal["sequence", "batch"]
#: default threshold of each method: log α for the variational-dropout families, SNR for log-normal noise
#: (sbp_sparse_vd: the units' SNR; its weights have ``weight_threshold``)
DEFAULT_THRESHOLDS = {"sparse_vd": 3.0, "group_vd": 3.0, "sbp": 1.0, "sbp_sparse_vd": 1.0}
#: methods whose ``threshold`` is a signal-to-noise ratio (log-normal unit noise), not a log α
SNR_METHODS = ("sbp", "sbp_sparse_vd")


def _log_sigma2_range(name: str, value: float) -> None:
    if not -30.0 <= value <= 0.0:
        raise PrunedropError(f"recipe key '{name}' = {value} must be in [−30, 0]")


@dataclass
class SparseVDConfig:
    """``sparse_vd``: per-weight noise (:mod:`prunedrop.layers.sparse_vd`; also the per-weight noise of
    ``sbp_sparse_vd``, of nn.LSTM/nn.GRU/nn.RNN and of nn.MultiheadAttention)."""

    init_log_sigma2: float = setting(-10.0, check=_log_sigma2_range)
    """Initial log σ² of every weight; very low, so fine-tuning starts from the trained network."""

    log_alpha_clip: float = setting(10.0, check=POSITIVE)
    """log α is clipped to [−clip, clip] (8 or 10 in the paper) for stable training (sparse_vd, group_vd)."""


@dataclass
class GroupVDConfig:
    """``group_vd``: per-unit Gaussian noise (:mod:`prunedrop.layers.group_vd`; also per attention head, per
    recurrent unit and per embedding row). Its log α is clipped by ``log_alpha_clip``."""

    init_log_alpha: float = setting(-8.0)
    """group_vd: initial log α of every unit (tiny noise, so training starts from the trained network)."""


@dataclass
class SBPConfig:
    """``sbp``: per-unit truncated log-normal noise, structured Bayesian pruning (:mod:`prunedrop.layers.lognormal`;
    also per attention head, and the unit noise of ``sbp_sparse_vd``)."""

    init_mu: float = setting(0.0)
    """sbp: initial μ of every unit's log-normal noise (log θ ~ N(μ, σ²) truncated to [−20, 0])."""

    init_log_sigma: float = setting(-5.0)
    """sbp: initial log σ of every unit's log-normal noise."""


@dataclass
class SBPSparseVDConfig:
    """``sbp_sparse_vd``: sbp's unit noise over sparse VD's weight noise (:mod:`prunedrop.layers.sbp_sparse_vd`); its
    initial noise comes from the ``sbp`` and ``sparse_vd`` sections."""

    weight_threshold: float = setting(3.0)
    """sbp_sparse_vd: prune a single weight (of a unit that stays) where its log α exceeds this; ``threshold``
    decides the units. The other methods ignore it."""


@dataclass
class RecurrentConfig:
    """nn.LSTM / nn.GRU under ``sparse_vd`` and ``group_vd``, nn.RNN under ``sparse_vd``
    (:mod:`prunedrop.layers.recurrent`)."""

    recurrent_noise: RecurrentNoise = setting("sequence")
    """nn.LSTM / nn.GRU / nn.RNN: how the weight noise is drawn (it is always fixed along the time steps of a sequence).
    ``sequence``: every sequence of a mini-batch draws its own weights (lower-variance gradients; the time loop
    runs unrolled in Python). ``batch``: one draw per mini-batch shared by its sequences, as Lobacheva et al.
    train; the layer then runs torch's fused LSTM/GRU/RNN kernel, which makes a training step many times cheaper
    (measured in BENCHMARKS.md, LSTM section)."""


#: recipe section name → the family's config, in the order of the grouped recipe
NOISE_CONFIGS: dict[str, type] = {
    "sparse_vd": SparseVDConfig,
    "group_vd": GroupVDConfig,
    "sbp": SBPConfig,
    "sbp_sparse_vd": SBPSparseVDConfig,
    "recurrent": RecurrentConfig,
}

#: every setting a layer's ``from_dense`` may ask for: the families' fields and the pruning threshold
NOISE_OPTIONS: frozenset[str] = frozenset(
    {"threshold", *(f.name for config in NOISE_CONFIGS.values() for f in fields(config))}
)
