"""The thirteen architectures of BENCHMARKS.md's twenty-ninth session, for scikit-learn's digits (1x8x8 inputs).

Copied to a folder as ``umodels.py`` and run from there (PYTHONPATH=.:REPO):
``python REPO/examples/train_dense.py --arch umodels:NAME --data digits --epochs 40 -o NAME.pt``, then
``prunedrop compress NAME.pt --arch umodels:NAME --data digits [--recipe REPO/recipes/sbp.yaml]``.
"""
import torch
import torch.nn.functional as F
from torch import nn


class VggBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x):
        return self.f(x.view(-1, 1, 8, 8))


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 128)
        self.b = nn.Linear(128, 10)

    def forward(self, x):
        return {"logits": self.b(F.relu(self.a(x.flatten(1))))}


class MlpBnDrop(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
                               nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))

    def forward(self, x):
        return self.f(x)


class Spectral(nn.Module):
    def __init__(self):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.a = sn(nn.Linear(64, 128))
        self.b = sn(nn.Linear(128, 64))
        self.c = nn.Linear(64, 10)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x.flatten(1))))))


class EmbedTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(17, 16)
        self.pos = nn.Parameter(torch.zeros(64, 16))
        self.fc = nn.Linear(64 * 16, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        ids = (x.flatten(1) * 16).round().clamp(0, 16).long()
        h = self.emb(ids) + self.pos
        return self.out(F.relu(self.fc(h.flatten(1))))


class GatedMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.gate = nn.Linear(64, 96)
        self.down = nn.Linear(96, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.down(self.up(x) * torch.sigmoid(self.gate(x)))


class MeanMaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 24, 3, padding=1)
        self.c2 = nn.Conv2d(24, 32, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        h = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))


class Highway(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 64)
        self.h = nn.Linear(64, 64)
        self.t = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.inp(x.flatten(1)))
        t = torch.sigmoid(self.t(x))
        x = x + t * (F.relu(self.h(x)) - x)
        return self.out(x)


class Mixer(nn.Module):
    """MLP-Mixer on 16 patches of 2x2 pixels."""
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 32)
        self.norm1 = nn.LayerNorm(32)
        self.tok1 = nn.Linear(16, 32)
        self.tok2 = nn.Linear(32, 16)
        self.norm2 = nn.LayerNorm(32)
        self.ch1 = nn.Linear(32, 64)
        self.ch2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        p = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(-1, 16, 4)
        h = self.embed(p)
        y = self.norm1(h).transpose(1, 2)
        h = h + self.tok2(F.gelu(self.tok1(y))).transpose(1, 2)
        h = h + self.ch2(F.gelu(self.ch1(self.norm2(h))))
        return self.head(h.mean(1))


class LayerScaleConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((1, 32, 1, 1), 0.5))
        self.fc = nn.Linear(32 * 16, 10)

    def forward(self, x):
        h = F.relu(self.c1(x.view(-1, 1, 8, 8)))
        h = h + self.gamma * F.relu(self.c2(h))
        return self.fc(F.max_pool2d(h, 2).flatten(1))


class TiedAE(nn.Module):
    """Encoder with a tied-transpose reconstruction path added to the logits' features."""
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(64, 48)
        self.cls = nn.Linear(48 + 64, 10)

    def forward(self, x):
        x = x.flatten(1)
        z = F.relu(self.enc(x))
        rec = F.linear(z, self.enc.weight.t())
        return self.cls(torch.cat([z, rec], 1))


class StrideFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, stride=1, padding=1)
        self.fc = nn.Linear(32 * 16, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x.view(-1, 1, 8, 8)))))
        return self.out(F.relu(self.fc(h.flatten(1))))


class ConvNeXtBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 2, stride=2)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.norm = nn.LayerNorm(32)
        self.pw1 = nn.Linear(32, 128)
        self.pw2 = nn.Linear(128, 32)
        self.gamma = nn.Parameter(torch.full((32,), 0.1))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x.view(-1, 1, 8, 8))
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def vgg_bn(): return VggBN()
def dict_out(): return DictOut()
def mlp_bn_drop(): return MlpBnDrop()
def spectral(): return Spectral()
def embed_tokens(): return EmbedTokens()
def gated_mlp(): return GatedMlp()
def meanmax(): return MeanMaxPool()
def highway(): return Highway()
def mixer(): return Mixer()
def layerscale(): return LayerScaleConv()
def tied_ae(): return TiedAE()
def stride_flatten(): return StrideFlatten()
def convnext(): return ConvNeXtBlock()
