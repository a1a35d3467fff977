"""Idioms no sweep had tried (thirty-seventh session), as digits 8x8 classifiers (inputs (1, 8, 8))."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations


def _stem(c: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())


def _grid_adjacency() -> torch.Tensor:
    """The 8x8 pixel grid's 4-neighbour adjacency with self loops, normalised D^-1/2 (A + I) D^-1/2."""
    a = torch.eye(64)
    for i in range(8):
        for j in range(8):
            for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                if 0 <= i + di < 8 and 0 <= j + dj < 8:
                    a[i * 8 + j, (i + di) * 8 + j + dj] = 1
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


class Moe(nn.Module):
    """A soft mixture of experts: a softmax gate over 4 expert Linears, the outputs stacked and mixed by an einsum."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.gate = nn.Linear(64, 64), nn.Linear(64, 4)
        self.experts = nn.ModuleList(nn.Linear(64, 64) for _ in range(4))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.inp(x.flatten(1)))
        g = torch.softmax(self.gate(h), dim=-1)
        e = torch.stack([F.relu(ex(h)) for ex in self.experts], dim=1)
        return self.fc(torch.einsum("be,bed->bd", g, e))


class TopkMoe(Moe):
    """A sparse mixture of experts: the top 2 of 4 gates kept (topk, scatter into zeros), renormalised, and the
    experts' outputs weighed and summed."""

    def forward(self, x):
        h = F.relu(self.inp(x.flatten(1)))
        logits = self.gate(h)
        top, idx = logits.topk(2, dim=-1)
        g = torch.zeros_like(logits).scatter(-1, idx, torch.softmax(top, dim=-1))
        out = sum(g[:, i:i + 1] * F.relu(ex(h)) for i, ex in enumerate(self.experts))
        return self.fc(out)


def _nodes(x: torch.Tensor) -> torch.Tensor:
    """The 64 pixels as graph nodes of 3 features: the intensity and the node's row and column in [0, 1]."""
    coords = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1).view(1, 64, 2) / 7
    return torch.cat([x.flatten(1).unsqueeze(-1), coords.to(x).expand(x.size(0), 64, 2)], dim=-1)


class Gcn(nn.Module):
    """A graph convolution over the pixel grid: H' = relu(A (H W)), A a normalised adjacency buffer on the left;
    mean and max over the nodes read out."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("adj", _grid_adjacency())
        self.g1, self.g2, self.fc = nn.Linear(3, 32), nn.Linear(32, 32), nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.adj @ self.g1(_nodes(x)))
        h = F.relu(torch.matmul(self.adj, self.g2(h)))
        return self.fc(torch.cat([h.mean(1), h.amax(1)], dim=1))


class GcnFlat(nn.Module):
    """The graph convolution with a per-node readout: a Linear to 4 features per node, the (N, 64, 4) flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("adj", _grid_adjacency())
        self.g1, self.g2, self.read = nn.Linear(3, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        h = F.relu(self.adj @ self.g1(_nodes(x)))
        h = F.relu(self.adj @ self.g2(h))
        return self.fc(F.relu(self.read(h)).flatten(1))


class GcnLearned(nn.Module):
    """A graph convolution whose adjacency is learned (a Parameter initialised from the grid's), plus token mixing
    over the 64 nodes written as a Parameter matrix on the left, with a residual; the per-node readout flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.adj = nn.Parameter(_grid_adjacency())
        self.g1, self.g2, self.read = nn.Linear(3, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        self.mix = nn.Parameter(torch.eye(64) + 0.01 * torch.randn(64, 64))
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        h = F.relu(self.adj @ self.g1(_nodes(x)))
        h = F.relu(self.g2(h))
        h = h + self.mix @ h
        return self.fc(F.relu(self.read(h)).flatten(1))


class ConvLeftMix(nn.Module):
    """A hand-written 1x1 convolution over a Conv1d's map: a Parameter (32, 16) on the left of its (N, 16, L)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(8, 16, 3, padding=1)
        self.w = nn.Parameter(torch.randn(32, 16) / 4)
        self.c2, self.fc = nn.Conv1d(32, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.c1(x.squeeze(1)))
        h = F.relu(self.c2(self.w @ h))
        return self.fc(h.mean(-1))


class Conv3dNet(nn.Module):
    """Conv3d over the image as a one-deep volume, BatchNorm3d, then a depth-2 volume from the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv3d(1, 16, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(16)
        self.c2, self.b2 = nn.Conv3d(16, 32, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x.unsqueeze(2))))
        h = F.relu(self.b2(self.c2(h)))
        return self.fc(h.mean((2, 3, 4)))


class CumsumSsm(nn.Module):
    """A linear recurrence written as a cumulative sum over the rows (a linear-attention / SSM idiom), gated."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.gate, self.out = nn.Linear(8, 64), nn.Linear(8, 64), nn.Linear(64, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        r = x.squeeze(1)  # (N, 8 rows, 8)
        h = torch.cumsum(self.inp(r), dim=1) / torch.arange(1, 9, device=x.device).view(1, 8, 1)
        h = self.out(h * torch.sigmoid(self.gate(r)))
        return self.fc(F.relu(h)[:, -1])


class Cosine(nn.Module):
    """A cosine classifier: features and 10 class prototypes (a raw Parameter) L2-normalised, scaled dot products."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _stem()
        self.proj = nn.Linear(32, 32)
        self.protos = nn.Parameter(torch.randn(10, 32))
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        h = self.proj(self.body(x).mean((2, 3)))
        return self.scale * F.normalize(h, dim=1) @ F.normalize(self.protos, dim=1).t()


class UnfoldConv(nn.Module):
    """A convolution written as im2col: F.unfold into (N, C*9, L), a Linear over the C*9 patch, folded back."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.lin = nn.Linear(16 * 9, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))
        p = F.unfold(h, 3, padding=1).transpose(1, 2)  # (N, 64, 144)
        h = F.relu(self.lin(p))  # (N, 64, 32)
        return self.fc(h.mean(1))


class AttrView(nn.Module):
    """A forward that reads its layers' attributes: views by self.conv.out_channels, slices by self.fc.in_features."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _stem()
        self.conv = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.conv(self.body(x)))
        h = h.view(x.size(0), self.conv.out_channels, -1).mean(-1)
        return self.fc(h[:, : self.fc.in_features])


class TiedAe(nn.Module):
    """A tied autoencoder whose code feeds a classifier: the decoder is F.linear with the encoder's weight transposed."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.dec_bias = nn.Linear(64, 32), nn.Parameter(torch.zeros(64))
        self.l2, self.fc = nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        z = torch.sigmoid(self.enc(x.flatten(1)))
        rec = F.linear(z, self.enc.weight.t(), self.dec_bias)
        return self.fc(F.relu(self.l2(rec)))


class RawParam(nn.Module):
    """A hand-written layer (x @ W + b with raw Parameters) between two nn.Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(64, 128)
        self.w, self.b = nn.Parameter(torch.randn(128, 64) / 128 ** 0.5), nn.Parameter(torch.zeros(64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.l1(x.flatten(1)))
        return self.fc(F.relu(h @ self.w + self.b))


class DropPath(nn.Module):
    """A residual CNN with stochastic depth: each block's branch dropped per sample while training (p 0.2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                                  nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
                                    for _ in range(2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            y = b(h)
            if self.training:
                keep = (torch.rand(h.size(0), 1, 1, 1, device=h.device) > 0.2).to(h.dtype) / 0.8
                y = y * keep
            h = F.relu(h + y)
        return self.fc(h.mean((2, 3)))


class InstNorm(nn.Module):
    """Convolutions with affine InstanceNorm2d (style-transfer and GAN encoders), then global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(1, 16, 3, padding=1), nn.InstanceNorm2d(16, affine=True)
        self.c2, self.n2 = nn.Conv2d(16, 32, 3, padding=1), nn.InstanceNorm2d(32, affine=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.n1(self.c1(x)))
        h = F.relu(self.n2(self.c2(h)))
        return self.fc(h.amax((2, 3)))


class Ortho(nn.Module):
    """An MLP whose middle Linear is parametrized orthogonal (torch.nn.utils.parametrizations.orthogonal)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(64, 64)
        self.l2 = parametrizations.orthogonal(nn.Linear(64, 64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(F.relu(self.l2(F.relu(self.l1(x.flatten(1))))))


class CausalTcn(nn.Module):
    """Causal dilated Conv1d over the rows with explicit left padding (F.pad), residual 1x1 where widths differ."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(8, 32, 3, dilation=1), nn.Conv1d(32, 32, 3, dilation=2)
        self.res = nn.Conv1d(8, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        r = x.squeeze(1).transpose(1, 2)  # (N, 8 features, 8 steps)
        h = F.relu(self.c1(F.pad(r, (2, 0))))
        h = F.relu(self.c2(F.pad(h, (4, 0))) + self.res(r))
        return self.fc(h[:, :, -1])


MODELS = {"moe": Moe, "topk_moe": TopkMoe, "gcn": Gcn, "gcn_learned": GcnLearned, "gcn_flat": GcnFlat, "conv_left_mix": ConvLeftMix, "conv3d": Conv3dNet, "cumsum_ssm": CumsumSsm,
          "cosine": Cosine, "unfold_conv": UnfoldConv, "attr_view": AttrView, "tied_ae": TiedAe,
          "raw_param": RawParam, "drop_path": DropPath, "inst_norm": InstNorm, "ortho": Ortho,
          "causal_tcn": CausalTcn}


def _factory(cls: type[nn.Module]):
    """The ``--arch umodels11:NAME`` function of a model class: it builds the model with no arguments."""
    def make() -> nn.Module:
        return cls()
    make.__name__ = cls.__name__
    return make


for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)
