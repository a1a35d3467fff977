"""torch's recurrent cells stepped by hand (thirty-ninth session), as digits 8x8 classifiers (inputs (1, 8, 8)): an
``nn.LSTMCell`` and an ``nn.GRUCell`` over the 8 rows after a Linear, the state started by ``x.new_zeros`` at the
cell's ``hidden_size``, or by the cell itself (no state given)."""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autopilot-thirtyseventh"))
from umodels11 import _factory  # noqa: E402


class LstmCellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.cell, self.fc = nn.Linear(8, 16), nn.LSTMCell(16, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.relu(self.embed(x.flatten(1, 2)))
        h = rows.new_zeros(rows.shape[0], self.cell.hidden_size)
        c = rows.new_zeros(rows.shape[0], self.cell.hidden_size)
        for t in range(8):
            h, c = self.cell(rows[:, t], (h, c))
        return self.fc(h)


class GruCellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.cell, self.fc = nn.Linear(8, 16), nn.GRUCell(16, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.relu(self.embed(x.flatten(1, 2)))
        h = self.cell(rows[:, 0])
        for t in range(1, 8):
            h = self.cell(rows[:, t], h)
        return self.fc(h)


MODELS = {"lstm_cell": LstmCellLoop, "gru_cell": GruCellLoop}

for _name, _cls in MODELS.items():
    globals()[_name] = _factory(_cls)
