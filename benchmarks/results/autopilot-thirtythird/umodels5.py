"""Architectures nobody had tried (thirty-third session), digits 8x8 (inputs (1, 8, 8))."""
import torch
import torch.nn.functional as F
from torch import nn


class Unpool(nn.Module):
    """SegNet-style: MaxPool2d(return_indices=True) and MaxUnpool2d with the pool's indices."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.unpool = nn.MaxUnpool2d(2)
        self.c3 = nn.Conv2d(16, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h, idx = self.pool(F.relu(self.c1(x)))
        h = F.relu(self.c2(h))
        h = self.unpool(h, idx, output_size=x.shape[-2:])
        return self.fc(F.relu(self.c3(h)).mean((2, 3)))


class Fpn(nn.Module):
    """Two scales; the coarse one upsampled with F.interpolate and added to a 1x1 lateral of the fine one."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.lat1 = nn.Conv2d(16, 24, 1)
        self.lat2 = nn.Conv2d(32, 24, 1)
        self.smooth = nn.Conv2d(24, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        f1 = F.relu(self.c1(x))
        f2 = F.relu(self.c2(f1))
        p = self.lat1(f1) + F.interpolate(self.lat2(f2), scale_factor=2, mode="nearest")
        return self.fc(F.relu(self.smooth(p)).mean((2, 3)))


class Causal(nn.Module):
    """Decoder-only: an encoder layer under a causal mask, the last row's token classifies."""
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.pos = nn.Parameter(torch.zeros(1, 8, 32))
        self.enc = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False)
        self.register_buffer("mask", torch.triu(torch.full((8, 8), float("-inf")), 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        t = self.embed(x.reshape(-1, 8, 8)) + self.pos
        return self.fc(self.enc(t, mask=self.mask, is_causal=True)[:, -1])


class Detr(nn.Module):
    """DETR-style: nn.TransformerDecoder, 4 learned queries attend to the row tokens (self- and cross-attention)."""
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.queries = nn.Parameter(torch.randn(1, 4, 32) * 0.1)
        self.dec = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(32, 4, 64, dropout=0.1, batch_first=True), 1)
        self.fc = nn.Linear(4 * 32, 10)

    def forward(self, x):
        m = self.embed(x.reshape(-1, 8, 8))
        return self.fc(self.dec(self.queries.expand(m.shape[0], -1, -1), m).flatten(1))


class Mixer(nn.Module):
    """MLP-Mixer: 2x2 patches (16 tokens), token mixing by a Linear over the transposed tokens."""
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 32, 2, stride=2)
        self.n1 = nn.LayerNorm(32)
        self.tok = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.n2 = nn.LayerNorm(32)
        self.ch = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)          # (N, 16, 32)
        t = t + self.tok(self.n1(t).transpose(1, 2)).transpose(1, 2)
        t = t + self.ch(self.n2(t))
        return self.fc(t.mean(1))


class Selu(nn.Module):
    """Self-normalizing MLP: SELU, AlphaDropout, LeCun-normal initialisation."""
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.SELU(), nn.AlphaDropout(0.1),
                                 nn.Linear(128, 64), nn.SELU(), nn.AlphaDropout(0.1), nn.Linear(64, 10))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, m.in_features ** -0.5)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


class Lrn(nn.Module):
    """AlexNet-style LocalResponseNorm (a sum over 5 neighbouring channels) after each convolution."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(5)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.lrn2 = nn.LocalResponseNorm(5)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        h = F.max_pool2d(self.lrn(F.relu(self.c1(x))), 2)
        h = self.lrn2(F.relu(self.c2(h)))
        return self.fc(h.flatten(1))


class EinsumLinear(nn.Module):
    """A layer of raw parameters used through torch.einsum, then an ordinary head."""
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 96) * 64 ** -0.5)
        self.b = nn.Parameter(torch.zeros(96))
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        return self.fc(F.relu(torch.einsum("ni,io->no", x.flatten(1), self.w) + self.b))


class DepthMult(nn.Module):
    """Depthwise convolution with a channel multiplier of 2 (groups = in channels, out = 2 x in)."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.dw(F.relu(self.c1(x))))
        return self.fc(F.relu(self.pw(h)).mean((2, 3)))


class BiGru(nn.Module):
    """Two-layer bidirectional GRU over the 8 rows with dropout between layers; mean over time."""
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 32, num_layers=2, bidirectional=True, dropout=0.1, batch_first=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        out, _ = self.gru(x.reshape(-1, 8, 8))
        return self.fc(out.mean(1))


class Double(nn.Module):
    """A plain MLP trained and saved in float64 (the inputs cast to the weights' dtype)."""
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.double()

    def forward(self, x):
        return self.net(x.to(self.net[1].weight.dtype))


class Hardswish(nn.Module):
    """MobileNetV3-style: inverted residual with hardswish and a hardsigmoid squeeze-excitation."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.exp = nn.Conv2d(16, 48, 1)
        self.bn1 = nn.BatchNorm2d(48)
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.bn2 = nn.BatchNorm2d(48)
        self.se1 = nn.Conv2d(48, 12, 1)
        self.se2 = nn.Conv2d(12, 48, 1)
        self.proj = nn.Conv2d(48, 16, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        s = F.hardswish(self.bn0(self.stem(x)))
        h = F.hardswish(self.bn1(self.exp(s)))
        h = F.hardswish(self.bn2(self.dw(h)))
        g = F.hardsigmoid(self.se2(F.relu(self.se1(h.mean((2, 3), keepdim=True)))))
        h = self.bn3(self.proj(h * g)) + s
        return self.fc(h.mean((2, 3)))


def unpool(): return Unpool()
def fpn(): return Fpn()
def causal(): return Causal()
def detr(): return Detr()
def mixer(): return Mixer()
def selu(): return Selu()
def lrn(): return Lrn()
def einsum(): return EinsumLinear()
def depthmult(): return DepthMult()
def bigru(): return BiGru()
def double(): return Double()
def hardswish(): return Hardswish()


class Checkpointed(nn.Module):
    """Two conv blocks under torch.utils.checkpoint (non-reentrant), as memory-bound training writes them."""
    def __init__(self):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        h = checkpoint(self.b1, x, use_reentrant=False)
        h = checkpoint(self.b2, h, use_reentrant=False)
        return self.fc(h.mean((2, 3)))


class StochDepth(nn.Module):
    """Residual blocks with stochastic depth (a block dropped per sample while training, scaled)."""
    def __init__(self, p=0.2):
        super().__init__()
        self.p = p
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                                  nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
                                    for _ in range(2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        for b in self.blocks:
            r = b(h)
            if self.training:
                keep = (torch.rand(h.shape[0], 1, 1, 1, device=h.device) > self.p).to(h.dtype) / (1 - self.p)
                r = r * keep
            h = F.relu(h + r)
        return self.fc(h.mean((2, 3)))


class Wavenet(nn.Module):
    """WaveNet-style: causal dilated Conv1d over the 64 pixels, tanh x sigmoid gates, residual and skip 1x1s."""
    def __init__(self):
        super().__init__()
        self.inp = nn.Conv1d(1, 16, 1)
        self.filt = nn.ModuleList(nn.Conv1d(16, 16, 2, dilation=d) for d in (1, 2, 4))
        self.gate = nn.ModuleList(nn.Conv1d(16, 16, 2, dilation=d) for d in (1, 2, 4))
        self.res = nn.ModuleList(nn.Conv1d(16, 16, 1) for _ in range(3))
        self.skip = nn.ModuleList(nn.Conv1d(16, 24, 1) for _ in range(3))
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h = self.inp(x.reshape(-1, 1, 64))
        s = 0
        for f, g, r, k, d in zip(self.filt, self.gate, self.res, self.skip, (1, 2, 4)):
            p = F.pad(h, (d, 0))
            z = torch.tanh(f(p)) * torch.sigmoid(g(p))
            h = h + r(z)
            s = s + k(z)
        return self.fc(F.relu(s).mean(2))


class Capsule(nn.Module):
    """Primary capsules: conv features grouped into 8-d vectors and squashed (a norm over each capsule's axis)."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.prim = nn.Conv2d(32, 64, 3, stride=2, padding=1)  # 8 capsules of 8 dims per position
        self.fc = nn.Linear(8 * 16 * 8, 10)

    def forward(self, x):
        u = self.prim(F.relu(self.c1(x)))                      # (N, 64, 4, 4)
        u = u.view(u.shape[0], 8, 8, 16).permute(0, 1, 3, 2)   # (N, caps, positions, dims)
        n2 = (u ** 2).sum(-1, keepdim=True)
        v = n2 / (1 + n2) * u / (n2.sqrt() + 1e-8)
        return self.fc(v.flatten(1))


class Inplace(nn.Module):
    """In-place operations on views: relu_ on a slice, add_ of a skip, mul_ by a constant."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = self.c1(x)
        h[:, :8].relu_()
        g = self.c2(h)
        g.add_(h).mul_(0.5)
        return self.fc(F.relu(g).mean((2, 3)))


class Detach(nn.Module):
    """A stop-gradient branch (x.detach()) mixed back in, and a block run under torch.no_grad()."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.frozen = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        with torch.no_grad():
            f = self.frozen(x)
        h = F.relu(self.c1(x)) + 0.1 * f + 0.1 * F.relu(self.c1(x)).detach()
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


def checkpointed(): return Checkpointed()
def stochdepth(): return StochDepth()
def wavenet(): return Wavenet()
def capsule(): return Capsule()
def inplace(): return Inplace()
def detach(): return Detach()
