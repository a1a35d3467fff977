"""A slim of random unit masks (40%) against the masked model on fresh inputs, for the models of umodels5.py named
on the command line: python slim_probe.py unpool causal ..."""
import sys

import torch
from torch import nn

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import umodels5 as U

from prunedrop.slim import slim, unremovable_layers

W = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
for name in sys.argv[1:]:
    torch.manual_seed(0)
    m = getattr(U, name)().float().eval()
    x = torch.randn(4, 1, 8, 8)
    try:
        un = unremovable_layers(m, x)
    except Exception as e:
        print(name, "unremovable_layers failed:", type(e).__name__, str(e)[:300])
        continue
    layers = [(n, mod) for n, mod in m.named_modules() if type(mod) in W and n not in un]
    g = torch.Generator().manual_seed(1)
    masks = {}
    with torch.no_grad():
        for n, layer in layers:
            keep = torch.rand(layer.weight.shape[0], generator=g) > 0.4
            layer.weight[~keep] = 0
            if layer.bias is not None:
                layer.bias[~keep] = 0
            masks[n] = keep
    try:
        r = slim(m, masks, x)
    except Exception as e:
        print(name, "slim failed:", type(e).__name__, str(e)[:400])
        continue
    fresh = torch.randn(8, 1, 8, 8) * 2
    with torch.no_grad():
        d = float((m(fresh) - r.model.eval()(fresh)).abs().max())
    print(name, "unremovable", sorted(un), "masked", sorted(masks), "removed", r.removed, f"diff {d:.2e}")
