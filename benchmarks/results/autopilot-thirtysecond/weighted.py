"""A weighted bag: each token's weight (its pixel's intensity) passed as per_sample_weights."""
import torch
from torch import nn


class WeightedBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(64, 16, mode="sum")
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        w = x.flatten(1)  # (N, 64) intensities in [0, 1]
        ids = torch.arange(64, device=x.device).expand(w.shape[0], 64)
        return self.fc(self.bag(ids, per_sample_weights=w))


def weighted_bag():
    return WeightedBag()
