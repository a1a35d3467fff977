"""A third batch of idioms (thirty-seventh session): a spatial transformer, learned queries cross-attending to a
convolution's map, Fourier token mixing, a distance-to-prototypes head, capsule squashing, a fixed-size resize."""
import torch
import torch.nn.functional as F
from torch import nn
from umodels11 import _factory


class Stn(nn.Module):
    """A spatial transformer: a localisation net predicts an affine transform (initialised to the identity), the
    features are resampled by F.affine_grid and F.grid_sample, then classified."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.loc = nn.Sequential(nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 6))
        nn.init.zeros_(self.loc[2].weight)
        with torch.no_grad():
            self.loc[2].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))
        theta = self.loc(F.adaptive_avg_pool2d(h, 4).flatten(1)).view(-1, 2, 3)
        grid = F.affine_grid(theta, h.size(), align_corners=False)
        h = F.grid_sample(h, grid, align_corners=False)
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


class Queries(nn.Module):
    """DETR-style: two learned queries (an nn.Embedding's weight) cross-attend to a convolution's flattened map
    (nn.MultiheadAttention, batch first); their outputs are concatenated for the head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.query = nn.Embedding(2, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x))))
        tokens = h.flatten(2).transpose(1, 2)  # (N, 64, 32)
        q = self.query.weight.unsqueeze(0).expand(x.size(0), -1, -1)
        out, _ = self.attn(q, tokens, tokens)
        return self.fc(out.flatten(1))


class Fnet(nn.Module):
    """FNet-style token mixing: the real part of a 2-d FFT over (rows, features) replaces attention."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.ff, self.fc = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x):
        h = self.inp(x.squeeze(1))  # (N, 8 rows, 32)
        h = h + torch.fft.fft2(h).real
        h = h + F.relu(self.ff(h))
        return self.fc(h.mean(1))


class Distance(nn.Module):
    """A distance-to-prototypes head: logits are minus the squared distance of the features to 10 learned points."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(64, 64), nn.Linear(64, 16)
        self.protos = nn.Parameter(torch.randn(10, 16))

    def forward(self, x):
        h = self.l2(F.relu(self.l1(x.flatten(1))))
        return -torch.cdist(h, self.protos) ** 2


class Squash(nn.Module):
    """Capsule-style squashing of a Linear's outputs viewed as 8 capsules of 8: v = |s|²/(1 + |s|²) · s/|s|."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.caps, self.fc = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        s = self.caps(F.relu(self.l1(x.flatten(1)))).view(-1, 8, 8)
        n2 = (s ** 2).sum(-1, keepdim=True)
        v = n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)
        return self.fc(v.flatten(1))


class Resize(nn.Module):
    """A map resized to a fixed 4x4 by F.interpolate (bilinear) and read flattened by a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(256, 10)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(F.interpolate(h, size=(4, 4), mode="bilinear", align_corners=False).flatten(1))


MODELS = {"stn": Stn, "queries": Queries, "fnet": Fnet, "distance": Distance, "squash": Squash, "resize": Resize}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)
