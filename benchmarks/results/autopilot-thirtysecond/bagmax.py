"""Two more bags over `fasttext.py`'s tokens (thirty-second session): a max bag (left dense) and one fed 1-D ids."""

import torch
from torch import nn


class BagMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(1025, 24, mode="max", padding_idx=0)
        self.fc = nn.Linear(24, 10)

    def forward(self, ids):
        return self.fc(self.bag(ids))


def bagmax():
    return BagMax()


class BagOffsets(nn.Module):
    """1-D ids and offsets made inside forward (fixed-length bags), include_last_offset."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(1025, 24, mode="sum", include_last_offset=True)
        self.fc = nn.Linear(24, 10)

    def forward(self, ids):
        n, length = ids.shape
        offsets = torch.arange(0, n * length + 1, length, device=ids.device)
        return self.fc(self.bag(ids.reshape(-1), offsets))


def bagoffsets():
    return BagOffsets()
