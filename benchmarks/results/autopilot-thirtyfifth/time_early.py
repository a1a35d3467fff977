"""The structured methods' early check (``unremovable_layers``) timed on timm models at 64x64, for one checkout.

    .venv-zoo/bin/python benchmarks/results/autopilot-thirtyfifth/time_early.py CHECKOUT MODEL ...

CHECKOUT: the repository root whose ``prunedrop`` is imported (a ``git worktree`` for the code before). One JSON line
per model: the layers named, the seconds (1 torch thread)."""
import json
import sys
import time

sys.path.insert(0, sys.argv[1])
import timm  # noqa: E402
import torch  # noqa: E402

import prunedrop  # noqa: E402
from prunedrop.slim.stage import unremovable_layers  # noqa: E402

assert prunedrop.__file__.startswith(sys.argv[1]), prunedrop.__file__
torch.set_num_threads(1)
for name in sys.argv[2:]:
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    t = time.perf_counter()
    r = unremovable_layers(m, x)
    print(json.dumps({"model": name, "code": sys.argv[1], "named": len(r), "s": round(time.perf_counter() - t, 1), "names": sorted(r)}), flush=True)
