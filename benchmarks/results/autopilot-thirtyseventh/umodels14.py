"""A fourth batch (thirty-seventh session): channels picked by an index buffer, strided channel slices, two halves
added, sliding windows by Tensor.unfold, k-max pooling over time."""
import torch
import torch.nn.functional as F
from torch import nn
from umodels11 import _factory


class IndexPick(nn.Module):
    """A fixed channel permutation (an index buffer) applied with index_select between two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)
        self.register_buffer("order", torch.randperm(16, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        h = F.relu(self.c1(x)).index_select(1, self.order)
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


class EvenChannels(nn.Module):
    """Every other channel of a convolution read by the next one (h[:, ::2])."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))[:, ::2]
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


class HalvesAdded(EvenChannels):
    """A convolution's two halves (torch.chunk) added channel by channel (EvenChannels' layers)."""

    def forward(self, x):
        a, b = F.relu(self.c1(x)).chunk(2, dim=1)
        return self.fc(F.relu(self.c2(a + b)).mean((2, 3)))


class Windows(nn.Module):
    """Sliding windows over time by Tensor.unfold ((N, C, L) → (N, C, L', 3)), averaged: a pooling written by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv1d(8, 32, 3, padding=1), nn.Conv1d(32, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.c1(x.squeeze(1))).unfold(2, 3, 1).mean(-1)
        return self.fc(F.relu(self.c2(h)).mean(-1))


class KMax(nn.Module):
    """k-max pooling over time (the 3 largest values of each channel, in their order), flattened for the head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.fc = nn.Conv1d(8, 32, 3, padding=1), nn.Linear(96, 10)

    def forward(self, x):
        h = F.relu(self.c1(x.squeeze(1)))
        idx = h.topk(3, dim=2).indices.sort(dim=2).values
        return self.fc(h.gather(2, idx).flatten(1))


MODELS = {"index_pick": IndexPick, "even_channels": EvenChannels, "halves_added": HalvesAdded, "windows": Windows,
          "kmax": KMax}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)
