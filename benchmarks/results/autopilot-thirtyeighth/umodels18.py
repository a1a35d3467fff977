"""Idioms no sweep had tried (thirty-eighth session): what training code puts in a forward (a scripted function,
gradient checkpointing, autocast, an auxiliary head while training), as digits 8x8 classifiers (inputs (1, 8, 8))."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


@torch.jit.script
def mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


class _Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 10)

    def block(self, x):
        return F.relu(self.c2(F.relu(self.c1(x))))

    def head(self, h):
        return self.fc2(F.relu(self.fc1(h.mean((2, 3)))))


class Scripted(_Cnn):
    """A TorchScript-compiled activation function (mish) between the layers."""

    def forward(self, x):
        return self.fc2(mish(self.fc1(mish(self.c2(mish(self.c1(x)))).mean((2, 3)))))


class Checkpointed(_Cnn):
    """The convolutions under gradient checkpointing (torch.utils.checkpoint, non-reentrant) while training."""

    def forward(self, x):
        h = checkpoint(self.block, x, use_reentrant=False) if self.training else self.block(x)
        return self.head(h)


class CheckpointedReentrant(_Cnn):
    """The same with the reentrant checkpoint (the older default), in training and in eval mode alike."""

    def forward(self, x):
        if x.requires_grad or self.training:
            return self.head(checkpoint(self.block, x, use_reentrant=True))
        return self.head(self.block(x))


class Autocast(_Cnn):
    """The convolutions under torch.autocast (bfloat16 on the CPU), cast back for the head."""

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.block(x)
        return self.head(h.float())


class AuxHead(_Cnn):
    """An Inception-style auxiliary classifier on the first convolution's map while training: the forward returns
    (logits, aux logits) in training mode and the logits alone in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(16, 10)

    def forward(self, x):
        h1 = F.relu(self.c1(x))
        out = self.head(F.relu(self.c2(h1)))
        if self.training:
            return out, self.aux(h1.mean((2, 3)))
        return out


MODELS = {"scripted": Scripted, "checkpointed": Checkpointed, "checkpointed_reentrant": CheckpointedReentrant,
          "autocast": Autocast, "aux_head": AuxHead}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)
