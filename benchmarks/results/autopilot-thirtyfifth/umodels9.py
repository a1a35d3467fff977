"""Quick hostile-ish models for the default command on digits (thirty-fifth session)."""
from torch import nn


class SyncBn(nn.Module):
    """A CNN trained with DDP whose BatchNorms were converted to SyncBatchNorm, loaded on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.net(x).mean((2, 3)))


class BnMlpDropout(nn.Module):
    """An MLP with BatchNorm1d and dropout between its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)
