"""einops in a model's forward: traced as the torch operations it performs (prunedrop.einops_trace)."""

import einops
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from einops.layers.torch import Rearrange, Reduce
from torch import nn

from prunedrop.batchnorm import batchnorm_pairs
from prunedrop.fxtrace import symbolic_trace
from prunedrop.outputs import output_layers
from prunedrop.storage.saved import load_saved_model, save_model


class Tokens(nn.Module):
    """Every einops entry point: the layers, rearrange, reduce bound by name, repeat, einops.* by attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2)
        self.embed, self.mix = nn.Linear(4, 8), nn.Linear(8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pool = Reduce("b n d -> b d", "max")
        self.fc = nn.Linear(3 * 8 + 16 * 8, 3)

    def forward(self, x):
        h = F.relu(self.embed(self.patch(x)))
        t = torch.cat([repeat(self.cls, "1 1 d -> b 1 d", b=h.shape[0]), h], dim=1)
        mixed = einops.einsum(self.mix(t), t, "b n d, b m d -> b n m").softmax(-1) @ t
        pooled = torch.cat([self.pool(mixed), reduce(mixed, "b n d -> b d", "mean"), mixed[:, 0]], dim=1)
        return self.fc(torch.cat([pooled, einops.rearrange(h, "b n d -> b (n d)")], dim=1))


class ConvBn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(16, 3)

    def forward(self, x):
        h = reduce(F.relu(self.bn(self.conv(x))), "b c (h 4) (w 4) -> b c h w", "mean")
        return self.fc(rearrange(h, "b c h w -> b (c h w)"))


class Ellipsis(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(rearrange(x, "b ... -> b (...)"))


@pytest.mark.parametrize("model", [Tokens, ConvBn])
def test_einops_traced_as_torch_operations_for_any_batch(model):
    torch.manual_seed(0)
    m = model().eval()
    gm = symbolic_trace(m)
    assert not [n for n in gm.graph.nodes if "einops" in str(getattr(n.target, "__module__", ""))]
    for batch in (2, 5):
        x = torch.randn(batch, 1, 8, 8)
        torch.testing.assert_close(gm(x), m(x))


def test_einops_restored_after_the_trace_even_when_it_fails():
    names = (einops.einops.reduce, einops.einops.get_backend, einops.reduce, globals()["reduce"])
    symbolic_trace(ConvBn())
    with pytest.raises(Exception, match="ellipsis cannot be traced: write its axes out"):
        symbolic_trace(Ellipsis())
    assert (einops.einops.reduce, einops.einops.get_backend, einops.reduce, globals()["reduce"]) == names
    x = torch.randn(2, 4, 6)  # untraced calls are einops' own
    torch.testing.assert_close(reduce(x, "b c l -> b c", "max"), x.amax(-1))


def test_graph_readers_see_an_einops_model():
    model = ConvBn().eval()
    assert batchnorm_pairs(model) == [("conv", "bn")]
    assert output_layers(model) == ["fc"]


def test_architecture_json_rebuilds_an_einops_model(tmp_path):
    torch.manual_seed(0)
    model, x = Tokens().eval(), torch.randn(2, 1, 8, 8)
    save_model(model, tmp_path, x)
    rebuilt = load_saved_model(tmp_path)
    for batch in (2, 3):
        x = torch.randn(batch, 1, 8, 8)
        torch.testing.assert_close(rebuilt(x), model(x))
