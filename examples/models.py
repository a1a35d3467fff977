"""Architectures of the example and benchmark models (factories for ``--arch``)."""

from __future__ import annotations

import torch
from torch import nn


def lenet300(in_features: int = 784, num_classes: int = 10) -> nn.Module:
    """LeNet-300-100: the fully connected network of the sparse VD paper (784-300-100-10)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def digits_mlp() -> nn.Module:
    """LeNet-300-100 for scikit-learn's 8x8 digits (64 inputs): the shipped example model."""
    return lenet300(in_features=64)


class LeNet5(nn.Module):
    """LeNet-5-Caffe (20-50-800-500) for 28x28 inputs, as in the sparse VD and SBP papers."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


def lenet5() -> nn.Module:
    return LeNet5()


class RowLSTM(nn.Module):
    """An image read row by row: ``[B, 1, 28, 28]`` → 28 time steps of 28 features → LSTM → Linear on the
    output of the last step (the sequential Fashion-MNIST classifier of the recurrent benchmark)."""

    def __init__(self, rows: int = 28, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(rows, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.flatten(1, -2))  # [B, 1, 28, 28] -> [B, 28 steps, 28 features]
        return self.head(out[:, -1])


def lstm_fashion() -> nn.Module:
    """LSTM(128) on row-sequential Fashion-MNIST (``benchmarks/lstm_fashion.py``)."""
    return RowLSTM()

def transformer_fashion() -> nn.Module:
    """A small transformer encoder for Fashion-MNIST read row by row: each image is 28 steps of 28 pixels.

    Linear(28 → 64) token embedding plus a learned positional embedding, ``nn.TransformerEncoder`` with 2
    post-norm layers (4 heads of 16, feed-forward 128, batch_first), mean over the 28 steps, Linear(64 → 10).
    It takes the ``[B, 1, 28, 28]`` batches of the ``fashion-mnist`` data spec unchanged. Dropout 0.1 in the
    encoder (the nn.TransformerEncoderLayer default), only active while training.
    """
    from prunedrop.testing import TransformerClassifier

    return TransformerClassifier(in_features=28, seq_len=28, d_model=64, num_heads=4, ff=128, num_layers=2,
                                 num_classes=10, dropout=0.1)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BatchNorm; a 1x1 projection (option B) where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 (He et al. 2016, CIFAR variant): a 3x3 stem, 3 stages of 3 basic blocks (16/32/64 channels,
    strides 1/2/2), global average pooling and a linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64),
                 blocks: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        stages = []
        channels = widths[0]
        for i, width in enumerate(widths):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(channels, width, stride=2 if i > 0 and j == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet20_fashion() -> nn.Module:
    """ResNet-20 for 28x28 grey images (Fashion-MNIST): 1 input channel, 10 classes."""
    return ResNet20(in_channels=1, num_classes=10)
