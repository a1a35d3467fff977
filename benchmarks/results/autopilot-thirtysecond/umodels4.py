"""Architectures nobody had tried (thirty-second session), digits 8x8 (inputs (1, 8, 8))."""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class Conv3dNet(nn.Module):
    """The image as a 2-frame clip (rows 0-3 and 4-7): Conv3d, BatchNorm3d, AdaptiveAvgPool3d."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv3d(1, 12, (1, 3, 3), padding=(0, 1, 1))
        self.bn1 = nn.BatchNorm3d(12)
        self.c2 = nn.Conv3d(12, 24, (2, 3, 3), padding=(0, 1, 1))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h = x.reshape(-1, 1, 2, 4, 8)
        h = F.relu(self.bn1(self.c1(h)))
        h = F.relu(self.c2(h))
        return self.fc(self.pool(h).flatten(1))


class ConvTransposeNet(nn.Module):
    """Down with a strided convolution, up with ConvTranspose2d, added to the skip."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.head = nn.Conv2d(16, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        s = F.relu(self.stem(x))
        h = F.relu(self.up(F.relu(self.down(s)))) + s
        return self.fc(F.relu(self.head(h)).amax((2, 3)))


class CrossAttn(nn.Module):
    """Perceiver-style: 4 learned latents attend to the 8 row tokens (nn.MultiheadAttention, batch_first)."""
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.latents = nn.Parameter(torch.randn(4, 32) * 0.1)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.fc = nn.Linear(4 * 32, 10)

    def forward(self, x):
        t = self.embed(x.reshape(-1, 8, 8))
        q = self.latents.unsqueeze(0).expand(t.shape[0], -1, -1)
        z, _ = self.attn(q, t, t, need_weights=False)
        z = z + self.ff(z)
        return self.fc(z.flatten(1))


class PosTransformer(nn.Module):
    """A CLS token concatenated to row tokens, a sinusoidal position buffer added, a pre-norm encoder layer."""
    def __init__(self):
        super().__init__()
        d = 32
        self.embed = nn.Linear(8, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        pos = torch.arange(9).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(1, 9, d)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe)
        self.enc = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        t = self.embed(x.reshape(-1, 8, 8))
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pe
        return self.fc(self.norm(self.enc(t))[:, 0])


class PackedLstm(nn.Module):
    """An LSTM over the rows up to the last non-empty one: pack_padded_sequence with lengths from the input."""
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 48, batch_first=True)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        rows = x.reshape(-1, 8, 8)
        nonempty = rows.abs().sum(-1) > 0
        idx = torch.arange(1, 9, device=x.device).expand_as(nonempty)
        lengths = (idx * nonempty).amax(1).clamp(min=1)
        packed = pack_padded_sequence(rows, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.fc(h[-1])


class EmbBag(nn.Module):
    """Each pixel a token (position x 17 intensity levels) summed by nn.EmbeddingBag, then an MLP."""
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(64 * 17, 32, mode="sum")
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        v = (x.reshape(-1, 64) * 16).round().long().clamp(0, 16)
        ids = torch.arange(64, device=x.device) * 17 + v
        return self.mlp(self.bag(ids))


class MoeTopk(nn.Module):
    """A top-2 gated mixture of four expert MLPs (topk, scatter, einsum)."""
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(64, 4)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
                                     for _ in range(4))

    def forward(self, x):
        x = x.flatten(1)
        logits = self.gate(x)
        top, idx = logits.topk(2, dim=1)
        gates = torch.zeros_like(logits).scatter(1, idx, top.softmax(1))
        out = torch.stack([e(x) for e in self.experts], 1)
        return torch.einsum("be,bec->bc", gates, out)


class PadModes(nn.Module):
    """Convolutions with padding_mode reflect and circular, and padding='same' with dilation 2."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(16, 24, 3, padding=1, padding_mode="circular")
        self.c3 = nn.Conv2d(24, 32, 3, padding="same", dilation=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.relu(self.c2(h))
        h = F.relu(self.c3(h))
        return self.fc(h.mean((2, 3)))


class LstmProj(nn.Module):
    """A two-layer LSTM with proj_size (LSTMP) and inter-layer dropout."""
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 64, num_layers=2, proj_size=16, dropout=0.1, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        out, _ = self.lstm(x.reshape(-1, 8, 8))
        return self.fc(out[:, -1])


class Sdpa(nn.Module):
    """Self-attention written by hand: one qkv Linear, heads by reshape, F.scaled_dot_product_attention."""
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.qkv = nn.Linear(32, 96)
        self.proj = nn.Linear(32, 32)
        self.ff1 = nn.Linear(32, 64)
        self.ff2 = nn.Linear(64, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        t = self.embed(x.reshape(-1, 8, 8))
        b, n, d = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, 4, d // 4).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        t = t + self.proj(a)
        t = t + self.ff2(F.relu(self.ff1(t)))
        return self.fc(t.mean(1))


def conv3d(): return Conv3dNet()
def convtranspose(): return ConvTransposeNet()
def cross_attn(): return CrossAttn()
def pos_transformer(): return PosTransformer()
def packed_lstm(): return PackedLstm()
def embbag(): return EmbBag()
def moe_topk(): return MoeTopk()
def padmodes(): return PadModes()
def lstm_proj(): return LstmProj()
def sdpa(): return Sdpa()
