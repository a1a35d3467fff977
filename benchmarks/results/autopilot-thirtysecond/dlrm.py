"""A DLRM-style model on digits: a bottom MLP over the pixels, eight categorical features (each row's ink, bucketed)
through embedding bags, their pairwise dot products (bmm, upper triangle), a top MLP."""
import torch
from torch import nn


class Dlrm(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, dim), nn.ReLU())
        self.tables = nn.ModuleList(nn.EmbeddingBag(17, dim, mode="sum") for _ in range(8))
        rows, cols = torch.triu_indices(9, 9, offset=1)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        self.top = nn.Sequential(nn.Linear(dim + 36, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        pixels = x.flatten(1)
        dense = self.bottom(pixels)
        ink = (x.reshape(-1, 8, 8).sum(-1) * 2).round().long().clamp(0, 16)  # (N, 8) categorical ids
        sparse = [table(ink[:, i:i + 1]) for i, table in enumerate(self.tables)]
        t = torch.stack([dense] + sparse, 1)  # (N, 9, dim)
        z = torch.bmm(t, t.transpose(1, 2))[:, self.rows, self.cols]  # (N, 36)
        return self.top(torch.cat([dense, z], 1))


def dlrm():
    return Dlrm()
