"""conv1 -> OP -> conv2 -> mean -> fc; random masks on conv1 (and conv2); slim vs masked on fresh inputs."""
import sys

import torch
import torch.nn.functional as F
from torch import nn

from prunedrop.slim import slim, unremovable_layers

idx = torch.tensor([3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14])
OPS = {
    "lrn": lambda h, g: F.local_response_norm(h, 5, alpha=1.0),
    "cos_dim1": lambda h, g: F.cosine_similarity(h, g, dim=1).unsqueeze(1).expand(-1, 16, -1, -1) * h,
    "pairwise": lambda h, g: F.pairwise_distance(h.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)).unsqueeze(1) * h,
    "cumsum1": lambda h, g: torch.cumsum(h, 1),
    "flip1": lambda h, g: torch.flip(h, (1,)),
    "roll1": lambda h, g: torch.roll(h, 1, 1),
    "index_perm": lambda h, g: h[:, idx],
    "index_select": lambda h, g: h.index_select(1, idx),
    "gather": lambda h, g: torch.gather(h, 1, idx.view(1, -1, 1, 1).expand_as(h)),
    "sort1": lambda h, g: torch.sort(h, 1)[0],
    "topk1": lambda h, g: torch.cat([torch.topk(h, 8, 1)[0]] * 2, 1),
    "diff1": lambda h, g: F.pad(torch.diff(h, dim=1), (0, 0, 0, 0, 0, 1)) + 0,
    "groupnorm_fn": lambda h, g: F.group_norm(h, 4),
    "layernorm_chw": lambda h, g: F.layer_norm(h, h.shape[1:]),
    "instnorm": lambda h, g: F.instance_norm(h),
    "softmax1": lambda h, g: torch.softmax(h, 1),
    "softmax2d": lambda h, g: F.softmax(h, dim=-3),
    "transpose12": lambda h, g: h.transpose(1, 2).contiguous().transpose(1, 2),
    "permute_back": lambda h, g: h.permute(0, 2, 3, 1).permute(0, 3, 1, 2),
    "cummax1": lambda h, g: torch.cummax(h, 1)[0],
    "logcumsumexp": lambda h, g: torch.logcumsumexp(h, 1),
    "einsum_mix": lambda h, g: torch.einsum("nchw,nhw->nchw", h, h.sum(1)),
    "matmul_chan": lambda h, g: torch.matmul(h.permute(0, 2, 3, 1), torch.ones(16, 16) / 16).permute(0, 3, 1, 2),
    "unfold": lambda h, g: F.fold(F.unfold(h, 3, padding=1), (8, 8), 3, padding=1),
    "renorm": lambda h, g: torch.renorm(h, 2, 0, 5.0),
    "square_sum": lambda h, g: h * (h * h).sum(1, keepdim=True),
    "std1": lambda h, g: h / (h.std(1, keepdim=True) + 1),
    "logsoftmax1": lambda h, g: F.log_softmax(h, 1),
    "normalize1": lambda h, g: F.normalize(h, dim=1),
    "dropout2d": lambda h, g: F.dropout2d(h, 0.0, training=False),
    "adaptive_channel": lambda h, g: F.adaptive_avg_pool3d(h.unsqueeze(1), (8, 8, 8)).squeeze(1).repeat(1, 2, 1, 1),
    "maxpool_chan": lambda h, g: F.max_pool3d(h.unsqueeze(1), (2, 1, 1)).squeeze(1).repeat(1, 2, 1, 1),
    "avgpool1d_chan": lambda h, g: F.avg_pool1d(h.permute(0, 2, 3, 1).reshape(-1, 1, 16), 3, 1, 1).reshape(h.shape[0], 8, 8, 16).permute(0, 3, 1, 2),
}

class Net(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c0 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)
    def forward(self, x):
        h = F.relu(self.c1(x))
        g = self.c0(x)
        return self.fc(F.relu(self.c2(OPS[self.op](h, g))).mean((2, 3)))

for name in (sys.argv[1:] or OPS):
    torch.manual_seed(0)
    m = Net(name).eval()
    x = torch.randn(4, 1, 8, 8)
    try:
        un = unremovable_layers(m, x)
    except Exception as e:
        print(f"{name:16s} unremovable_layers FAILED {type(e).__name__}: {str(e)[:200]}")
        continue
    g = torch.Generator().manual_seed(1)
    masks = {}
    with torch.no_grad():
        for n in ("c1", "c0", "c2"):
            if n in un:
                continue
            layer = getattr(m, n)
            keep = torch.rand(layer.weight.shape[0], generator=g) > 0.4
            layer.weight[~keep] = 0
            layer.bias[~keep] = 0
            masks[n] = keep
    try:
        r = slim(m, masks, x)
    except Exception as e:
        print(f"{name:16s} slim FAILED {type(e).__name__}: {str(e)[:300]}")
        continue
    fresh = torch.randn(8, 1, 8, 8) * 2
    with torch.no_grad():
        d = float((m(fresh) - r.model.eval()(fresh)).abs().max())
    flag = "  <-- MISMATCH" if d > 1e-4 else ""
    print(f"{name:16s} diff {d:.1e} removed {r.removed} unremovable {un}{flag}")
