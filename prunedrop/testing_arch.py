"""Tiny versions of the common CNN families, for the slimming tests.

Each one has the structure that makes physical removal of units hard in its family — BatchNorm after the
convolutions, residual additions with projection shortcuts, depthwise convolutions inside inverted residuals,
concatenation, flatten→linear, activations whose value at 0 is not 0 — and nothing more, so that a test on it
runs in milliseconds. :data:`TINY_ARCHS` maps a name to ``(factory, example input shape without the batch)``
like :data:`prunedrop.testing.TINY_MODELS`; :func:`tiny_arch` builds one with seeded weights, random
BatchNorm statistics and an example batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .testing import TinyConvZoo, TinyLeNet5, TinyMLP

__all__ = [
    "TINY_ARCHS",
    "TinyDenseNet",
    "TinyGELUNet",
    "TinyMobileNetV2",
    "TinyResNetBasic",
    "TinyResNetBottleneck",
    "TinySigmoidMLP",
    "TinyVGGBN",
    "randomize_batchnorm",
    "tiny_arch",
]


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class TinyVGGBN(nn.Module):
    """VGG-style: three conv-BN-ReLU stages with max pooling, then flatten → linear → linear."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * 2 * 2, 12), nn.ReLU(), nn.Linear(12, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN projects the shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1 reduce, 3x3, 1x1 expand) with a projection shortcut when needed."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1):
        super().__init__()
        self.reduce = _conv_bn(cin, mid, 1)
        self.conv = _conv_bn(mid, mid, 3, stride)
        self.expand = _conv_bn(mid, cout, 1)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(torch.relu(self.reduce(x))))
        return torch.relu(self.expand(y) + self.shortcut(x))


class TinyResNetBasic(nn.Module):
    """Stem, an identity basic block, a strided basic block with a projection shortcut, pool, linear."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 6, 3), nn.ReLU())
        self.layer1 = BasicBlock(6, 6)
        self.layer2 = BasicBlock(6, 8, stride=2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class TinyResNetBottleneck(nn.Module):
    """Stem, a bottleneck with a projection, an identity bottleneck, a strided one with a projection."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 6, 3), nn.ReLU())
        self.layer1 = nn.Sequential(Bottleneck(6, 4, 8), Bottleneck(8, 4, 8))
        self.layer2 = Bottleneck(8, 4, 10, stride=2)
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1):
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(_conv_bn(cin, hidden, 1), nn.ReLU6())
        self.depthwise = nn.Sequential(_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6())
        self.project = _conv_bn(hidden, cout, 1)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.use_residual else y


class TinyMobileNetV2(nn.Module):
    """Stem, two inverted residual blocks (one with the residual add, one strided), 1x1 head conv, linear."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 6, 3), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(6, 6, 3), InvertedResidual(6, 8, 2, stride=2))
        self.head = nn.Sequential(_conv_bn(8, 12, 1), nn.ReLU6())
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class DenseLayer(nn.Module):
    """DenseNet layer (pre-activation BN-ReLU-conv); its output is concatenated to its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], dim=1)


class TinyDenseNet(nn.Module):
    """Stem, a dense block of two layers (concatenation), a 1x1 transition with pooling, linear."""

    def __init__(self, num_classes: int = 3, growth: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Sequential(DenseLayer(6, growth), DenseLayer(6 + growth, growth))
        cout = 6 + 2 * growth
        self.transition = nn.Sequential(
            nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, 8, 1), nn.AvgPool2d(2)
        )
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transition(self.block(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class TinyGELUNet(nn.Module):
    """Convolutions with GELU and SiLU (not ReLU) and no BatchNorm, then flatten → linear with GELU."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.conv2(nn.functional.gelu(self.conv1(x))))
        return self.fc2(nn.functional.gelu(self.fc1(x.flatten(1))))


class TinySigmoidMLP(nn.Module):
    """An MLP with a sigmoid hidden layer: a pruned unit outputs sigmoid(0) = 0.5, not 0."""

    def __init__(self, in_features: int = 10, hidden: int = 8, num_classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.sigmoid(self.fc1(x)))))


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics.

    Freshly built BatchNorms (γ = 1, β = 0, mean 0, var 1) map a pruned unit's 0 to 0, which would hide the
    constant that a trained BatchNorm turns it into; random ones make that constant non-zero and of either
    sign, as after training.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator))
            m.bias.copy_(torch.randn(n, generator=generator) * 0.5)
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=generator))
    return model


# name -> (factory, example input shape without the batch dimension)
TINY_ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (TinyMLP, (1, 4, 4)),
    "lenet5": (TinyLeNet5, (1, 14, 14)),
    "vgg_bn": (TinyVGGBN, (3, 8, 8)),
    "resnet_basic": (TinyResNetBasic, (3, 8, 8)),
    "resnet_bottleneck": (TinyResNetBottleneck, (3, 8, 8)),
    "mobilenet_v2": (TinyMobileNetV2, (3, 8, 8)),
    "densenet": (TinyDenseNet, (3, 8, 8)),
    "gelu": (TinyGELUNet, (3, 8, 8)),
    "sigmoid_mlp": (TinySigmoidMLP, (10,)),
    "convzoo": (TinyConvZoo, (2, 8, 8)),
}


def tiny_arch(name: str, seed: int = 0, batch: int = 4) -> tuple[nn.Module, torch.Tensor]:
    """Build architecture ``name`` with seeded weights, random BatchNorm statistics and an example batch."""
    factory, shape = TINY_ARCHS[name]
    torch.manual_seed(seed)
    model = factory()
    randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + 2))
    return model.eval(), x
