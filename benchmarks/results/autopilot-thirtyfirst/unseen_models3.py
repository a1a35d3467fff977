"""More architectures nobody had tried (thirty-first session), digits 8x8 (inputs flat, 64 values)."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class ViewFixed(nn.Module):
    """The classic tutorial CNN: x.view(-1, C*H*W) with the size written out."""
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 32 * 2 * 2)
        return self.fc2(F.relu(self.fc1(x)))


class ChannelBuffer(nn.Module):
    """A fixed per-channel scale kept as a buffer in the middle of the network."""
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 3, padding=1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 24).view(1, 24, 1, 1))
        self.conv2 = nn.Conv2d(24, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h = F.relu(self.conv1(x.view(-1, 1, 8, 8))) * self.scale
        h = F.relu(self.conv2(h))
        return self.fc(h.mean((2, 3)))


class InstanceNormNet(nn.Module):
    """InstanceNorm2d with affine parameters between convolutions."""
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.in1 = nn.InstanceNorm2d(16, affine=True)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.in2 = nn.InstanceNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.in1(self.conv1(x.view(-1, 1, 8, 8))))
        h = F.relu(self.in2(self.conv2(F.max_pool2d(h, 2))))
        return self.fc(h.mean((2, 3)))


class UpsampleSkip(nn.Module):
    """Down, F.interpolate back up, added to the skip: a U-Net-like classifier."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.mix = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        s = F.relu(self.stem(x.view(-1, 1, 8, 8)))
        d = F.relu(self.down(s))
        h = s + F.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=False) + self.up(d)
        return self.fc(F.adaptive_max_pool2d(F.relu(self.mix(h)), 1).flatten(1))


class CheckpointedMlp(nn.Module):
    """Activation checkpointing (torch.utils.checkpoint) around a block, Softplus and Dropout2d-free MLP."""
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 128)
        self.block = nn.Sequential(nn.Linear(128, 128), nn.Softplus(), nn.Linear(128, 64), nn.Softplus())
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        h = F.softplus(self.a(x.flatten(1)))
        if self.training:
            h = checkpoint(self.block, h, use_reentrant=False)
        else:
            h = self.block(h)
        return self.out(h)


class PatchAttention(nn.Module):
    """Patches by F.unfold, single-head self-attention written with bmm, mean over tokens."""
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 32)
        self.q = nn.Linear(32, 32)
        self.k = nn.Linear(32, 32)
        self.v = nn.Linear(32, 32)
        self.ff = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        p = F.unfold(x.view(-1, 1, 8, 8), kernel_size=2, stride=2).transpose(1, 2)  # (N, 16, 4)
        t = self.embed(p)
        a = torch.bmm(self.q(t), self.k(t).transpose(1, 2)) / 32 ** 0.5
        t = t + torch.bmm(a.softmax(-1), self.v(t))
        t = t + self.ff(t)
        return self.head(t.mean(1))


class BiGRU(nn.Module):
    """A bidirectional GRU over the 8 rows, the last step of both directions."""
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 48, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        out, _ = self.gru(x.view(-1, 8, 8))
        return self.fc(out[:, -1])


class Dropout2dCnn(nn.Module):
    """Dropout2d, ELU, AdaptiveMaxPool2d and a channel concat of two pooled views."""
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.drop = nn.Dropout2d(0.1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = self.drop(F.elu(self.conv1(x.view(-1, 1, 8, 8))))
        h = F.elu(self.conv2(h))
        return self.fc(torch.cat([self.pool(h).flatten(1), h.mean((2, 3))], 1))


class Conv1dRows(nn.Module):
    """Conv1d over the rows (8 channels of 8 steps), BatchNorm1d, global max."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(8, 32, 3, padding=1)
        self.bn = nn.BatchNorm1d(32)
        self.c2 = nn.Conv1d(32, 32, 3, padding=2, dilation=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x.view(-1, 8, 8))))
        h = F.relu(self.c2(h))
        return self.fc(h.amax(2))


def view_fixed(): return ViewFixed()
def channel_buffer(): return ChannelBuffer()
def instance_norm(): return InstanceNormNet()
def upsample_skip(): return UpsampleSkip()
def checkpointed_mlp(): return CheckpointedMlp()
def patch_attention(): return PatchAttention()
def bigru(): return BiGRU()
def dropout2d_cnn(): return Dropout2dCnn()
def conv1d_rows(): return Conv1dRows()


class _BlockA(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(h + short)


class ResNetA(nn.Module):
    """A CIFAR ResNet with option-A shortcuts (zero-padded channels), three stages of two blocks, 16/32/64."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layers = nn.Sequential(_BlockA(16, 16, 1), _BlockA(16, 16, 1), _BlockA(16, 32, 2), _BlockA(32, 32, 1),
                                    _BlockA(32, 64, 2), _BlockA(64, 64, 1))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x.view(-1, 1, 8, 8))))
        return self.fc(F.adaptive_avg_pool2d(self.layers(h), 1).flatten(1))


def resnet_a(): return ResNetA()
