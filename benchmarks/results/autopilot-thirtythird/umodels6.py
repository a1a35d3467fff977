import torch
import torch.nn.functional as F
from torch import nn


class Decoder(nn.Module):
    """Linear → Unflatten(C, H, W) → ConvTranspose/Conv: a generator-style decoder used as a classifier trunk."""
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(64, 32)
        self.fc = nn.Linear(32, 16 * 4 * 4)
        self.unflat = nn.Unflatten(1, (16, 4, 4))
        self.conv = nn.Conv2d(16, 24, 3, padding=1)
        self.head = nn.Linear(24, 10)
    def forward(self, x):
        h = self.unflat(F.relu(self.fc(F.relu(self.enc(x.flatten(1))))))
        return self.head(F.relu(self.conv(h)).mean((2, 3)))

class ViewDecoder(Decoder):
    def forward(self, x):
        h = F.relu(self.fc(F.relu(self.enc(x.flatten(1))))).view(-1, 16, 4, 4)
        return self.head(F.relu(self.conv(h)).mean((2, 3)))

class NonLocal(nn.Module):
    """Non-local block: theta/phi/g 1x1 convs, bmm attention over positions, W 1x1 conv, residual."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.theta, self.phi, self.g = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)
        self.w = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)
    def forward(self, x):
        h = F.relu(self.stem(x))
        n, c, hh, ww = h.shape
        t = self.theta(h).flatten(2).transpose(1, 2)   # (N, HW, 8)
        p = self.phi(h).flatten(2)                      # (N, 8, HW)
        a = torch.softmax(torch.bmm(t, p), -1)          # (N, HW, HW)
        y = torch.bmm(a, self.g(h).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, 8, hh, ww)
        return self.fc((h + self.w(y)).mean((2, 3)))

class AttnPool(nn.Module):
    """Attention pooling over positions: a 1-channel score map, softmax over pixels, weighted sum of features."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.score = nn.Conv2d(16, 1, 1)
        self.fc = nn.Linear(16, 10)
    def forward(self, x):
        h = F.relu(self.c1(x))
        a = torch.softmax(self.score(h).flatten(2), -1)      # (N, 1, HW)
        return self.fc((h.flatten(2) * a).sum(-1))

def decoder(): return Decoder()
def viewdecoder(): return ViewDecoder()
def nonlocal_(): return NonLocal()
def attnpool(): return AttnPool()
