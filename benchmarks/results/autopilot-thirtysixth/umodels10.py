"""Idioms no sweep had tried (thirty-sixth session), as digits 8x8 classifiers (inputs (1, 8, 8))."""
import torch
import torch.nn.functional as F
from torch import nn


def _stem(c: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())


class Film(nn.Module):
    """FiLM: a Linear of the image's row means gives per-channel scale and shift (one Linear, chunked in two)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.cond = _stem(), nn.Linear(8, 64)
        self.conv, self.fc = nn.Conv2d(32, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        gamma, beta = self.cond(x.mean(3).flatten(1)).chunk(2, dim=1)
        h = self.conv(self.body(x)) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return self.fc(F.relu(h).mean((2, 3)))


class Highway(nn.Module):
    """A highway MLP: y = T * H(x) + (1 - T) * x, the gate T a sigmoid Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 128)
        self.h = nn.ModuleList(nn.Linear(128, 128) for _ in range(2))
        self.t = nn.ModuleList(nn.Linear(128, 128) for _ in range(2))
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        h = F.relu(self.inp(x.flatten(1)))
        for lh, lt in zip(self.h, self.t):
            t = torch.sigmoid(lt(h))
            h = t * F.relu(lh(h)) + (1 - t) * h
        return self.fc(h)


class Maxout(nn.Module):
    """Maxout units: a Linear's outputs viewed as (units, 4 pieces) and the max over the pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.fc = nn.Linear(64, 4 * 64), nn.Linear(64, 4 * 32), nn.Linear(32, 10)

    def forward(self, x):
        h = self.l1(x.flatten(1)).view(-1, 64, 4).amax(-1)
        h = self.l2(h).view(-1, 32, 4).amax(-1)
        return self.fc(h)


class Nin(nn.Module):
    """Network in network: mlpconv blocks of 1x1 convolutions; the last one's 10 channels, averaged, are the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 48, 1), nn.ReLU(), nn.Conv2d(48, 10, 1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


class Tabular(nn.Module):
    """A tabular model: 16 pixels bucketised into 4 levels, one Embedding each, concatenated with an MLP of all
    64 values."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("edges", torch.tensor([0.25, 0.5, 0.75]))
        self.register_buffer("cols", torch.arange(0, 64, 4))
        self.emb = nn.ModuleList(nn.Embedding(4, 4) for _ in range(16))
        self.num = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64 + 64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        flat = x.flatten(1)
        ids = torch.bucketize(flat[:, self.cols], self.edges)  # prunedrop's digits are scaled to [0, 1]
        cats = torch.cat([e(ids[:, i]) for i, e in enumerate(self.emb)], 1)
        return self.head(torch.cat([cats, self.num(flat)], 1))


class Kws(nn.Module):
    """A keyword-spotting-style sequence model: rows as time, a dilated Conv1d, a bidirectional GRU, and attention
    pooling (a Linear scores each step, softmax over time)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 32, 3, padding=2, dilation=2)
        self.gru = nn.GRU(32, 32, batch_first=True, bidirectional=True)
        self.score, self.fc = nn.Linear(64, 1), nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.conv(x[:, 0].transpose(1, 2))).transpose(1, 2)  # (N, T, 32)
        h, _ = self.gru(h)
        w = torch.softmax(self.score(h), dim=1)
        return self.fc((w * h).sum(1))


class LerpGate(nn.Module):
    """A CNN whose blocks mix the block's output into its input with torch.lerp and a per-channel gate, and add a
    product with torch.addcmul."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _stem()
        self.c1, self.c2 = nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.g = nn.Parameter(torch.full((1, 32, 1, 1), 0.5))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = self.body(x)
        h = torch.lerp(h, F.relu(self.c1(h)), self.g)
        h = torch.addcmul(h, F.relu(self.c2(h)), torch.sigmoid(h), value=0.5)
        return self.fc(h.mean((2, 3)))


class PixelAttnPool(nn.Module):
    """Attention pooling over pixels with einsum: a 1x1 convolution scores each pixel, softmax over the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.score, self.fc = _stem(), nn.Conv2d(32, 1, 1), nn.Linear(32, 10)

    def forward(self, x):
        h = self.body(x)
        w = torch.softmax(self.score(h).flatten(1), dim=1)
        return self.fc(torch.einsum("nchw,nhw->nc", h, w.view(-1, 8, 8)))


class MatmulPool(PixelAttnPool):
    """The same attention pooling written as a batched matmul: ``h.flatten(2) @ w`` with w (batch, pixels, 1)."""

    def forward(self, x):
        h = self.body(x)
        w = torch.softmax(self.score(h).flatten(2), dim=-1)
        return self.fc((h.flatten(2) @ w.transpose(1, 2)).flatten(1))


class Crnn(nn.Module):
    """A CRNN: two Conv1d + BatchNorm blocks over the rows as time, an LSTM, its last step into the head."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(8, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
                                   nn.Conv1d(32, 48, 3, padding=1), nn.BatchNorm1d(48), nn.ReLU())
        self.lstm = nn.LSTM(48, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        out, _ = self.lstm(self.front(x[:, 0].transpose(1, 2)).transpose(1, 2))
        return self.fc(out[:, -1])


class OcrCrnn(nn.Module):
    """An OCR-style CRNN: a convolutional map (N, C, H, W) read column by column (permuted to (N, W, C, H), flattened
    to C·H features per step) by a two-way LSTM, its outputs averaged over the steps."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.pool = _stem(), nn.MaxPool2d((2, 1))
        self.lstm = nn.LSTM(32 * 4, 32, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        out, _ = self.lstm(self.pool(self.body(x)).permute(0, 3, 1, 2).flatten(2))
        return self.fc(out.mean(1))


class GcBlock(nn.Module):
    """GCNet's global-context block on a small CNN: softmax attention over the pixels, the context by a 4-d matmul,
    a bottleneck transform added back to the map."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.attn = _stem(), nn.Conv2d(32, 1, 1)
        self.t1, self.t2, self.fc = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1), nn.Linear(32, 10)

    def forward(self, x):
        h = self.body(x)
        n, c, height, width = h.shape
        a = torch.softmax(self.attn(h).view(n, 1, height * width), dim=-1).unsqueeze(-1)
        context = (h.reshape(n, c, height * width).unsqueeze(1) @ a).view(n, c, 1, 1)
        return self.fc((h + self.t2(F.relu(self.t1(context)))).mean((2, 3)))


MODELS = {"film": Film, "highway": Highway, "maxout": Maxout, "nin": Nin, "tabular": Tabular, "kws": Kws,
          "lerp_gate": LerpGate, "pixel_attn_pool": PixelAttnPool, "crnn": Crnn, "matmul_pool": MatmulPool,
          "ocr_crnn": OcrCrnn, "gc_block": GcBlock}


for _name, _cls in MODELS.items():  # the --arch umodels10:NAME functions: each builds its model with no arguments
    globals()[_name] = lambda _cls=_cls: _cls()
