"""A TorchScript function called by a model's forward: traced as the Python it was compiled from."""

import warnings

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
