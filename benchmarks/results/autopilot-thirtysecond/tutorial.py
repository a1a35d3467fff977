"""The canonical PyTorch tutorial RNN: explicit zero initial states made from the batch size."""
import torch
from torch import nn


class TutorialLSTM(nn.Module):
    def __init__(self, input_size=8, hidden_size=64, num_layers=2, num_classes=10):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        x = x.reshape(-1, 8, 8)
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(x.device)
        c0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(x.device)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


def tutorial_lstm():
    return TutorialLSTM()


class TokenCnn(nn.Module):
    """A CNN whose pooled features are concatenated with zeros made from the batch size (a fixed-width head)."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(36, 10)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        pooled = h.mean((2, 3))
        extra = torch.zeros(x.shape[0], 4, device=x.device)
        return self.fc(torch.cat([pooled, extra], 1))


def token_cnn():
    return TokenCnn()
