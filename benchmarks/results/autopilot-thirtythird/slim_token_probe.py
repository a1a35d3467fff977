"""Token models (N, T, F): Linear a -> OP over features -> Linear d -> mean over T -> fc. Random masks on a."""
import sys

import torch
import torch.nn.functional as F
from torch import nn

from prunedrop.slim import slim, unremovable_layers

OPS = {
    "relu": lambda h: F.relu(h),
    "gelu": lambda h: F.gelu(h),
    "softmax_f": lambda h: torch.softmax(h, -1),
    "mean_center": lambda h: h - h.mean(-1, keepdim=True),
    "rms": lambda h: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6),
    "l2": lambda h: F.normalize(h, dim=-1),
    "sumsq": lambda h: h / (h.pow(2).sum(-1, keepdim=True) + 1).sqrt(),
    "glu_last": lambda h: torch.cat([F.glu(h, -1)] * 2, -1),
    "chunk_mul": lambda h: torch.cat([h.chunk(2, -1)[0] * torch.sigmoid(h.chunk(2, -1)[1])] * 2, -1),
    "roll_f": lambda h: torch.roll(h, 1, -1),
    "flip_f": lambda h: torch.flip(h, (-1,)),
    "cumsum_f": lambda h: torch.cumsum(h, -1),
    "token_mean": lambda h: h + h.mean(1, keepdim=True),
    "token_softmax": lambda h: h * torch.softmax(h.sum(-1, keepdim=True), 1),
    "attn": lambda h: torch.softmax(h @ h.transpose(1, 2) / 4, -1) @ h,
    "layernorm_f": lambda h: F.layer_norm(h, h.shape[-1:]),
    "scale_param": lambda h: h * 0.5,
    "sum_zero": lambda h: sum([F.relu(h), F.relu(-h)]),
    "where0": lambda h: torch.where(h > 0, h, 0.0),
    "transpose_back": lambda h: h.transpose(1, 2).transpose(1, 2),
    "pad_tokens": lambda h: F.pad(h, (0, 0, 1, 0))[:, 1:],
    "pad_features": lambda h: F.pad(h, (0, 2))[..., :-2],
}
class Tok(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a = nn.Linear(8, 16)
        self.d = nn.Linear(16, 12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        h = self.a(x.reshape(-1, 8, 8))
        return self.fc(F.relu(self.d(OPS[self.op](h))).mean(1))


for name in (sys.argv[1:] or OPS):
    torch.manual_seed(0)
    m = Tok(name).eval()
    x = torch.randn(4, 1, 8, 8)
    un = unremovable_layers(m, x)
    keep = torch.ones(16, dtype=torch.bool)
    keep[[1, 4, 9, 13]] = False
    if "a" in un:
        print(f"{name:15s} a unremovable: {un['a'][:120]}")
        continue
    with torch.no_grad():
        m.a.weight[~keep] = 0
        m.a.bias[~keep] = 0
    r = slim(m, {"a": keep}, x)
    fresh = torch.randn(8, 1, 8, 8) * 2
    with torch.no_grad():
        d = float((m(fresh) - r.model(fresh)).abs().max())
    print(f"{name:15s} removed {r.removed} diff {d:.1e}{'  <-- MISMATCH' if d > 1e-4 else ''} {[n[:100] for n in r.notes]}")
