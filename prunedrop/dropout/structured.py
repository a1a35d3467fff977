"""Dropout for convolutional feature maps: spatial dropout, cutout, max-drop and max-pooling dropout.

Inputs are ``(N, C, *spatial)`` tensors; ``p`` is a drop probability.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._common import DropoutModule, bernoulli_keep, check_probability

__all__ = ["Cutout", "MaxDrop", "MaxPoolingDropout2d", "SpatialDropout"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SpatialDropout(DropoutModule):
    """Spatial dropout (Tompson, Goroshin, Jain, LeCun, Bregler 2015): whole feature maps dropped.

    Neighbouring activations of a feature map are strongly correlated, so dropping single pixels
    hardly regularises a convolutional layer. Spatial dropout draws one Bernoulli(1 - p) variable per
    example and channel and zeroes or keeps the whole map. As with the paper's (Torch7) layer, the
    default ``inverted=False`` trains with a {0, 1} mask and multiplies by 1 - p at test time;
    ``inverted=True`` divides by 1 - p in training and is the identity at test time.
    """

    def __init__(self, p: float = 0.5, inverted: bool = False):
        super().__init__()
        self.p = check_probability(p, allow_one=not inverted)
        self.inverted = inverted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"SpatialDropout needs (N, C, *spatial) input, got shape {tuple(x.shape)}")
        keep = 1.0 - self.p
        if not self.training:
            return x if self.inverted else x * keep
        mask = bernoulli_keep((x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2), keep, x)
        return x * mask / keep if self.inverted else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, inverted={self.inverted}"


class Cutout(DropoutModule):
    """Cutout (DeVries & Taylor 2017): a square region of each training input set to zero.

    For each image, with probability ``p`` (the paper: always), ``n_holes`` centres are drawn
    uniformly over the image and a ``size x size`` square around each is zeroed in every channel. A
    square may stick out of the image and is then clipped, as in the paper, so that border regions are
    cut as often as the middle. Apply it to normalised inputs, where zero is the dataset mean.
    Nothing is masked in eval mode.
    """

    def __init__(self, size: int, n_holes: int = 1, p: float = 1.0):
        super().__init__()
        if size < 1 or n_holes < 1:
            raise ValueError(f"size and n_holes must be at least 1, got size={size}, n_holes={n_holes}")
        self.size = int(size)
        self.n_holes = int(n_holes)
        self.p = check_probability(p, allow_one=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.dim() != 4:
            raise ValueError(f"Cutout needs (N, C, H, W) input, got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        cy = torch.randint(0, h, (n, self.n_holes, 1), device=x.device)
        cx = torch.randint(0, w, (n, self.n_holes, 1), device=x.device)
        top, left = cy - self.size // 2, cx - self.size // 2
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= top) & (rows < top + self.size)  # (n, holes, h)
        in_cols = (cols >= left) & (cols < left + self.size)  # (n, holes, w)
        cut = (in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)).any(dim=1)  # (n, h, w)
        applied = torch.rand(n, device=x.device) < self.p
        cut = cut & applied.view(n, 1, 1)
        return x.masked_fill(cut.unsqueeze(1), 0.0)

    def extra_repr(self) -> str:
        return f"size={self.size}, n_holes={self.n_holes}, p={self.p}"


class MaxDrop(DropoutModule):
    """Max-drop (Park & Kwak 2016, "Analysis on the dropout effect in convolutional neural networks").

    Instead of random units, max-drop drops the *largest* activations, the ones a network would
    otherwise rely on most. ``mode="feature"``: in each feature map (each example and channel) the
    maximal activation is dropped with probability ``p``. ``mode="channel"``: at each spatial location
    the maximal activation across channels is dropped with probability ``p``. Ties are dropped
    together. On a ``(N, F)`` input, ``"channel"`` treats the features as channels; ``"feature"``
    makes every unit its own map, which is plain dropout.

    Other activations are never touched, so at test time only the maxima are rescaled, by the
    probability 1 - p that they were kept: the dropout weight-scaling rule, which makes the test
    output the expected training output.
    """

    def __init__(self, p: float = 0.5, mode: Literal["feature", "channel"] = "feature"):
        super().__init__()
        if mode not in ("feature", "channel"):
            raise ValueError(f"mode must be 'feature' or 'channel', got {mode!r}")
        self.p = check_probability(p, allow_one=True)
        self.mode = mode

    def maximal(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the activations that max-drop may drop: the maxima per map or per location."""
        if x.dim() < 2:
            raise ValueError(f"MaxDrop needs (N, C, *spatial) input, got shape {tuple(x.shape)}")
        if self.mode == "channel":
            return x == x.amax(dim=1, keepdim=True)
        if x.dim() == 2:
            return torch.ones_like(x, dtype=torch.bool)
        return x == x.amax(dim=tuple(range(2, x.dim())), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        is_max = self.maximal(x)
        if not self.training:
            return torch.where(is_max, x * (1.0 - self.p), x)
        if self.mode == "channel":
            shape = (x.shape[0], 1, *x.shape[2:])
        else:
            shape = (*x.shape[:2], *(1,) * (x.dim() - 2))
        dropped = bernoulli_keep(shape, self.p, x).bool()
        return x.masked_fill(is_max & dropped, 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"


class MaxPoolingDropout2d(DropoutModule):
    """Max-pooling dropout with probabilistic weighted pooling (Wu & Gu 2015), for non-negative inputs.

    Training: each unit of the input is dropped with probability ``p`` (no rescaling) *before* max
    pooling, so the pooled output is a random element of the window, picked from a multinomial that
    favours the large ones. Test: probabilistic weighted pooling, the exact expectation of that
    output. With the ``n`` window activations sorted ``a_1 <= ... <= a_n``, ``a_i`` is the max when it
    is kept and every larger one dropped, which has probability ``q p^(n - i)`` (``q = 1 - p``); if all
    are dropped the output is 0. So the test output is

        sum_i q p^(n - i) a_i.

    The paper applies it after a ReLU; with negative inputs a dropped 0 can win the training max.
    No padding; ``stride`` defaults to ``kernel_size``, as in :func:`torch.nn.functional.max_pool2d`.
    """

    def __init__(
        self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None, p: float = 0.5
    ):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.p = check_probability(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"MaxPoolingDropout2d needs (N, C, H, W) input, got shape {tuple(x.shape)}")
        if self.training:
            x = x * bernoulli_keep(x.shape, 1.0 - self.p, x)
            return F.max_pool2d(x, self.kernel_size, self.stride)
        return self._weighted_pooling(x)

    def _weighted_pooling(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        sh, sw = self.stride
        out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
        windows = F.unfold(x.reshape(n * c, 1, h, w), self.kernel_size, stride=self.stride)
        ascending = windows.sort(dim=1).values  # (n*c, kh*kw, L)
        size = kh * kw
        q = 1.0 - self.p
        # weight of the i-th smallest (0-based): q * p^(size - 1 - i)
        powers = torch.arange(size - 1, -1, -1, device=x.device, dtype=x.dtype)
        weights = q * torch.pow(torch.tensor(self.p, device=x.device, dtype=x.dtype), powers)
        pooled = (ascending * weights.view(1, size, 1)).sum(dim=1)
        return pooled.reshape(n, c, out_h, out_w)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, p={self.p}"
