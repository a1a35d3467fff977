"""More architectures nobody had tried (thirtieth session), digits 8x8."""
import torch
import torch.nn.functional as F
from torch import nn


class SharedConv(nn.Module):
    """One convolution applied three times (weights shared across iterations)."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 16, 10)

    def forward(self, x):
        h = F.relu(self.stem(x.view(-1, 1, 8, 8)))
        for _ in range(3):
            h = F.relu(self.conv(h)) + h
        return self.fc(F.max_pool2d(h, 2).flatten(1))


class NormSoftmax(nn.Module):
    """Normalises its input with buffers and returns probabilities (a softmax at the end), as many users' models do."""
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(4.9))
        self.register_buffer("std", torch.tensor(6.0))
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 64), nn.ReLU(),
                                 nn.Linear(64, 10), nn.Softmax(dim=1))

    def forward(self, x):
        return self.net((x.flatten(1) - self.mean) / self.std)


class Scripted(nn.Module):
    """A TorchScript-compiled block inside an eager model."""
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 96)
        self.block = torch.jit.script(nn.Sequential(nn.Linear(96, 96), nn.ReLU()))
        self.out = nn.Linear(96, 10)

    def forward(self, x):
        return self.out(self.block(F.relu(self.inp(x.flatten(1)))))


class AEClassifier(nn.Module):
    """A convolutional autoencoder whose reconstruction and code both feed the classifier."""
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(16 * 16, 32))
        self.dec = nn.Sequential(nn.Linear(32, 16 * 16), nn.ReLU(), nn.Unflatten(1, (16, 4, 4)),
                                 nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1))
        self.head = nn.Linear(32 + 64, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        z = self.enc(x)
        r = self.dec(z)
        return self.head(torch.cat([F.relu(z), (x - r).flatten(1)], 1))


class SiameseFlip(nn.Module):
    """One encoder on the image and on its mirror image, the two codes concatenated."""
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(12 * 16, 48), nn.ReLU())
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        return self.head(torch.cat([self.enc(x), self.enc(torch.flip(x, dims=[3]))], 1))


def shared_conv(): return SharedConv()
def norm_softmax(): return NormSoftmax()
def scripted(): return Scripted()
def ae_classifier(): return AEClassifier()
def siamese_flip(): return SiameseFlip()
