"""Recurrent cells written by hand whose gates come from one layer chunked in four (thirty-ninth session), as digits
8x8 classifiers (inputs (1, 8, 8)): a ConvLSTM over the image's four 4x4 quadrants as time steps, and an LSTM cell
of two Linears (``x2h(x) + h2h(h)``, chunked into i, f, g, o) over the 8 rows."""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class ConvLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = 16
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.gates = nn.Conv2d(8 + 16, 4 * 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = [x[:, :, i:i + 4, j:j + 4] for i in (0, 4) for j in (0, 4)]
        n = x.shape[0]
        h = x.new_zeros(n, self.hidden, 4, 4)
        c = x.new_zeros(n, self.hidden, 4, 4)
        for step in steps:
            i, f, g, o = torch.chunk(self.gates(torch.cat([torch.relu(self.stem(step)), h], 1)), 4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.fc(h.mean((2, 3)))


class HandLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = 32
        self.x2h, self.h2h = nn.Linear(8, 4 * 32), nn.Linear(32, 4 * 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.flatten(1, 2)  # (batch, 8 rows, 8 pixels)
        h = rows.new_zeros(rows.shape[0], self.hidden)
        c = rows.new_zeros(rows.shape[0], self.hidden)
        for t in range(rows.shape[1]):
            i, f, g, o = (self.x2h(rows[:, t]) + self.h2h(h)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.fc(h)


MODELS = {"conv_lstm": ConvLstm, "hand_lstm": HandLstm}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)
