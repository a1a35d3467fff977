"""SwiGLU feed-forwards (one Linear chunked, F.glu, or separate gate and up Linears), flat or over tokens:
which of their units slimming can remove, and whether the slim model computes what the masked one does."""
import torch
import torch.nn.functional as F
from torch import nn

from prunedrop.slim import slim, unremovable_layers


class Swi(nn.Module):
    def __init__(self, form, tokens):
        super().__init__()
        self.form, self.tokens = form, tokens
        self.w1 = nn.Linear(8, 32 if form in ("chunk", "glu") else 16)
        self.w3 = nn.Linear(8, 16)
        self.w2 = nn.Linear(16, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = x.reshape(-1, 8, 8) if self.tokens else x.reshape(-1, 64)[:, :8]
        if self.form == "chunk":
            a, b = self.w1(x).chunk(2, -1)
            h = F.silu(a) * b
        elif self.form == "glu":
            h = F.glu(self.w1(x), -1)
        else:
            h = F.silu(self.w1(x)) * self.w3(x)
        y = x + self.w2(h)
        return self.fc(y.mean(1) if self.tokens else y)


for form in ("chunk", "glu", "separate"):
    for tokens in (False, True):
        torch.manual_seed(0)
        m = Swi(form, tokens).eval()
        x = torch.randn(4, 1, 8, 8)
        un = unremovable_layers(m, x)
        masks = {}
        with torch.no_grad():
            for n in ("w1", "w3"):
                if n in un or (n == "w3" and form != "separate"):
                    continue
                layer = getattr(m, n)
                k = torch.ones(layer.out_features, dtype=torch.bool)
                k[[1, 4, 9]] = False
                if form in ("chunk", "glu"):
                    k[[17, 20, 25]] = False
                layer.weight[~k] = 0
                layer.bias[~k] = 0
                masks[n] = k
        r = slim(m, masks, x) if masks else None
        fresh = torch.randn(8, 1, 8, 8) * 2
        with torch.no_grad():
            d = float((m(fresh) - r.model(fresh)).abs().max()) if r else 0.0
        print(form, "tokens" if tokens else "flat", {k: v[:90] for k, v in un.items() if k != "fc"},
              r.removed if r else None, f"{d:.1e}")
