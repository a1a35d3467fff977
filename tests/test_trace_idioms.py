"""Forwards torch.fx could not trace: a TorchScript function called by the forward (traced as the Python it was
compiled from), the pieces of a chunk or split iterated (``list(h.chunk(2, 1))``)."""

import warnings

import pytest
import torch
from torch import nn

from prunedrop.batchnorm import batchnorm_pairs
from prunedrop.fxtrace import symbolic_trace
from prunedrop.storage.saved import load_saved_model, save_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.jit.script is deprecated; models written with it are still around

    @torch.jit.script
    def mish(x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(torch.nn.functional.softplus(x))


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(mish(self.bn(self.conv(x))).mean((2, 3)))


def test_a_scripted_function_is_traced_through_and_left_as_it_was(tmp_path):
    """torch.fx passed a proxy to the compiled function, which takes tensors only: architecture.json was not
    written, and the BatchNorm's place for structured noise could not be found."""
    torch.manual_seed(0)
    model, x = Scripted().eval(), torch.randn(2, 1, 6, 6)
    gm = symbolic_trace(model)
    torch.testing.assert_close(gm(x), model(x))
    assert isinstance(mish, torch.jit.ScriptFunction) and globals()["mish"] is mish
    assert batchnorm_pairs(model) == [("conv", "bn")]
    save_model(model, tmp_path, x)
    torch.testing.assert_close(load_saved_model(tmp_path)(x), model(x))


class C2f(nn.Module):
    """YOLOv8's C2f: ``list(cv1(x).chunk(2, 1))``, a bottleneck on the last piece appended, every piece concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.cv1, self.m, self.cv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(12, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(torch.relu(self.cv1(x)).chunk(2, 1))
        y.append(self.m(y[-1]))
        a, b, *rest = torch.split(self.cv2(torch.cat(y, 1)), [1, 1, 1], dim=1)
        return torch.cat([b, a, *rest], 1).mean((2, 3))


def test_the_pieces_of_a_chunk_or_split_are_iterated(tmp_path):
    """``list(proxy)`` stopped the trace ("Proxy object cannot be iterated", after "'len' is not supported"): the
    number of pieces a chunk or a split with sizes returns is in its call."""
    torch.manual_seed(0)
    model = C2f().eval()
    gm = symbolic_trace(model)
    for batch in (2, 5):
        x = torch.randn(batch, 1, 6, 6)
        torch.testing.assert_close(gm(x), model(x))
    save_model(model, tmp_path, torch.randn(2, 1, 6, 6))
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(load_saved_model(tmp_path)(x), model(x))


class ImagePooling(nn.Module):
    """DeepLab's image-pooling branch: pooled, a 1x1 convolution, expanded back with ``*h.shape[-2:]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return (h + self.pool(h.mean((2, 3), keepdim=True)).expand(-1, -1, *h.shape[-2:])).mean((2, 3))


def test_a_slice_of_a_shape_is_iterated(tmp_path):
    torch.manual_seed(0)
    model = ImagePooling().eval()
    save_model(model, tmp_path, torch.randn(2, 1, 6, 6))
    x = torch.randn(3, 1, 5, 7)
    torch.testing.assert_close(load_saved_model(tmp_path)(x), model(x))


def test_other_proxies_still_cannot_be_counted():
    class Counted(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * len(x)

    class RankDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.new_zeros(*x.shape[1:])

    with pytest.raises(RuntimeError, match="'len' is not supported"):
        symbolic_trace(Counted())
    with pytest.raises(Exception, match="cannot be iterated"):
        symbolic_trace(RankDependent())


class BufferExpanded(nn.Module):
    """PointNet's input: a buffer of coordinates expanded to the batch (``self.coords.expand(n, -1, -1)``) beside
    the signal; ``taps``: a loop over a buffer's length read in Python instead."""

    def __init__(self, taps: bool = False) -> None:
        super().__init__()
        self.taps = taps
        self.register_buffer("coords", torch.linspace(0, 1, 9).view(1, 1, 9))
        self.register_buffer("weights", torch.tensor([0.25, 0.5, 0.25]))
        self.conv, self.fc = nn.Conv1d(2, 4, 1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.taps:
            h = torch.relu(self.conv(torch.cat([x, x], 1)))
            h = sum(self.weights[i] * h.roll(i - 1, 2) for i in range(self.weights.shape[0]))
        else:
            h = torch.relu(self.conv(torch.cat([self.coords.expand(x.shape[0], -1, -1), x], 1)))
        return self.fc(h.mean(2))


@pytest.mark.parametrize("taps", [False, True], ids=["expanded", "loop"])
def test_a_buffer_given_a_traced_size_is_traced(tmp_path, taps):
    """``self.coords.expand(x.shape[0], -1, -1)`` stopped torch.fx ("expand() takes 1 positional argument but 3 were
    given": a real tensor's method reads the proxy as no int), and ``architecture.json`` was not written. It is traced
    again with buffers as proxies, only then: a loop over a buffer's length still reads it as a number."""
    torch.manual_seed(0)
    model = BufferExpanded(taps).eval()
    if not taps:
        with pytest.raises(TypeError, match="expand"):
            torch.fx.symbolic_trace(model)
    gm = symbolic_trace(model)
    for batch in (2, 5):
        x = torch.randn(batch, 1, 9)
        torch.testing.assert_close(gm(x), model(x))
    save_model(model, tmp_path, torch.randn(2, 1, 9))
    x = torch.randn(3, 1, 9)
    torch.testing.assert_close(load_saved_model(tmp_path)(x), model(x))
