"""Train a small network with each method of ``prunedrop.dropout`` on scikit-learn's digits; print accuracy.

The 8x8 digit images (1797 of them, bundled with scikit-learn, no download) are fed to an MLP, a
small CNN or an LSTM (one image row per time step), whichever the method applies to, and each
run is seeded. It takes a minute or two on two CPU cores:

    python examples/dropout_zoo.py [--epochs 30] [--seed 0]

On data this small the differences between methods are within a point or two of noise; the
script shows every method training and evaluating end to end, not a benchmark.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from prunedrop.dropout import (
    ConcreteDropout,
    Cutout,
    DropConnectLinear,
    Dropout,
    FastDropoutLinear,
    GaussianDropout,
    MaxDrop,
    MaxPoolingDropout2d,
    RecurrentDropoutLSTM,
    RNNDropLSTM,
    SpatialDropout,
    StandoutLinear,
    VariationalDropoutLinear,
    VariationalLSTM,
    mc_predict,
)


@dataclass
class Data:
    x_train: torch.Tensor  # (N, 1, 8, 8), standardised per pixel so that 0 is the mean (for cutout)
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(seed: int) -> Data:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )
    x_train = torch.tensor(x_train, dtype=torch.float32).unsqueeze(1)
    x_test = torch.tensor(x_test, dtype=torch.float32).unsqueeze(1)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0) + 1.0  # +1: corner pixels are always 0
    return Data((x_train - mean) / std, torch.tensor(y_train), (x_test - mean) / std, torch.tensor(y_test))


def mlp(block: Callable[[], list[nn.Module]] | None = None) -> nn.Module:
    """64 -> 128 -> 10; ``block`` replaces the default ``Linear(64, 128), ReLU()`` hidden layer."""
    hidden = block() if block is not None else [nn.Linear(64, 128), nn.ReLU()]
    return nn.Sequential(nn.Flatten(), *hidden, nn.Linear(128, 10))


def cnn(
    stem: nn.Module | None = None, pool: nn.Module | None = None, after_pool: nn.Module | None = None
) -> nn.Module:
    """conv16-pool-conv32-pool-fc on 1x8x8; the dropout goes on the input, in or after the first pool."""
    return nn.Sequential(
        stem or nn.Identity(),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        pool or nn.MaxPool2d(2),
        after_pool or nn.Identity(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


class RowLSTM(nn.Module):
    """Reads the image one row (8 pixels) per time step and classifies from the last hidden state."""

    def __init__(self, lstm: nn.Module):
        super().__init__()
        self.lstm = lstm
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x.squeeze(1))
        return self.head(h[-1])


def regularizer(model: nn.Module, n_train: int) -> torch.Tensor:
    """The per-example training penalty of the learned-rate methods (zero for the others)."""
    total = torch.zeros(())
    for m in model.modules():
        if isinstance(m, VariationalDropoutLinear):
            total = total + m.kl() / n_train  # ELBO per example: mean CE + KL / N
        elif isinstance(m, ConcreteDropout):
            total = total + m.regularizer()  # its coefficients already contain 1 / N
    return total


def train(model: nn.Module, data: Data, epochs: int, lr: float, batch_size: int = 64) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = data.x_train.shape[0]
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n).split(batch_size):
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]) + regularizer(model, n)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def learned_rates(model: nn.Module) -> str:
    """The dropout rates the learned-rate methods ended with, for the table."""
    rates = [
        f"{m.p.item():.3f}" if isinstance(m, ConcreteDropout) else f"{m.dropout_rate.mean().item():.3f}"
        for m in model.modules()
        if isinstance(m, ConcreteDropout | VariationalDropoutLinear)
    ]
    return f"learned p per layer: {', '.join(rates)}" if rates else ""


@torch.no_grad()
def accuracy(model: nn.Module, data: Data) -> float:
    model.eval()
    return (model(data.x_test).argmax(dim=1) == data.y_test).float().mean().item()


def concrete_mlp(n_train: int) -> nn.Module:
    # the paper's settings for a length-scale prior l = 1e-4 and precision tau = 1
    wr, dr = 1e-4**2 / n_train, 2.0 / n_train
    return nn.Sequential(
        nn.Flatten(),
        ConcreteDropout(nn.Linear(64, 128), weight_regularizer=wr, dropout_regularizer=dr),
        nn.ReLU(),
        ConcreteDropout(nn.Linear(128, 10), weight_regularizer=wr, dropout_regularizer=dr),
    )


def zoo(n_train: int) -> list[tuple[str, str, Callable[[], nn.Module], float]]:
    """(method, network, factory, learning rate) for every run."""
    return [
        ("none", "MLP", lambda: mlp(), 1e-3),
        (
            "dropout (test-time scaling)",
            "MLP",
            lambda: mlp(lambda: [nn.Linear(64, 128), nn.ReLU(), Dropout(0.5)]),
            1e-3,
        ),
        (
            "dropout (inverted)",
            "MLP",
            lambda: mlp(lambda: [nn.Linear(64, 128), nn.ReLU(), Dropout(0.5, inverted=True)]),
            1e-3,
        ),
        (
            "DropConnect",
            "MLP",
            lambda: mlp(lambda: [DropConnectLinear(64, 128, 0.5, activation=nn.ReLU())]),
            1e-3,
        ),
        ("standout", "MLP", lambda: mlp(lambda: [StandoutLinear(64, 128, alpha=1.0, beta=0.0)]), 1e-3),
        (
            "Gaussian dropout",
            "MLP",
            lambda: mlp(lambda: [nn.Linear(64, 128), nn.ReLU(), GaussianDropout(0.5)]),
            1e-3,
        ),
        (
            "fast dropout (inputs)",
            "MLP",
            lambda: mlp(lambda: [FastDropoutLinear(64, 128, 0.2), nn.ReLU()]),
            1e-3,
        ),
        (
            "variational dropout (per weight)",
            "MLP",
            lambda: nn.Sequential(
                nn.Flatten(), VariationalDropoutLinear(64, 128), nn.ReLU(), VariationalDropoutLinear(128, 10)
            ),
            1e-3,
        ),
        (
            "variational dropout (per unit)",
            "MLP",
            lambda: nn.Sequential(
                nn.Flatten(),
                VariationalDropoutLinear(64, 128, mode="unit"),
                nn.ReLU(),
                VariationalDropoutLinear(128, 10, mode="unit"),
            ),
            1e-3,
        ),
        ("concrete dropout", "MLP", lambda: concrete_mlp(n_train), 1e-3),
        ("none", "CNN", lambda: cnn(), 2e-3),
        ("max-pooling dropout", "CNN", lambda: cnn(pool=MaxPoolingDropout2d(2, p=0.3)), 2e-3),
        ("spatial dropout", "CNN", lambda: cnn(after_pool=SpatialDropout(0.2)), 2e-3),
        ("cutout (4x4)", "CNN", lambda: cnn(stem=Cutout(4)), 2e-3),
        ("max-drop (feature-wise)", "CNN", lambda: cnn(after_pool=MaxDrop(0.3, mode="feature")), 2e-3),
        ("max-drop (channel-wise)", "CNN", lambda: cnn(after_pool=MaxDrop(0.3, mode="channel")), 2e-3),
        ("none", "LSTM", lambda: RowLSTM(nn.LSTM(8, 64, batch_first=True)), 5e-3),
        ("RNNDrop", "LSTM", lambda: RowLSTM(RNNDropLSTM(8, 64, batch_first=True, p=0.25)), 5e-3),
        (
            "recurrent dropout",
            "LSTM",
            lambda: RowLSTM(RecurrentDropoutLSTM(8, 64, batch_first=True, p=0.25)),
            5e-3,
        ),
        ("variational RNN dropout", "LSTM", lambda: RowLSTM(VariationalLSTM(8, 64, batch_first=True)), 5e-3),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per method")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, the weights and the masks")
    parser.add_argument("--mc-samples", type=int, default=50, help="forward passes for MC dropout")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny networks: threads cost more than they save

    data = load_data(args.seed)
    n_train = data.x_train.shape[0]
    rows: list[tuple[str, ...]] = []
    for method, network, factory, lr in zoo(n_train):
        torch.manual_seed(args.seed)
        model = factory()
        seconds = train(model, data, args.epochs, lr)
        rows.append(
            (method, network, f"{100 * accuracy(model, data):.2f}", f"{seconds:.1f}", learned_rates(model))
        )
        print(f"  {network:4s} {method:34s} {rows[-1][2]:>6s}%  ({rows[-1][3]} s)", flush=True)
        if method == "dropout (inverted)":
            pred = mc_predict(model, data.x_test, samples=args.mc_samples)
            predicted = pred.mean.argmax(dim=1)
            right = predicted == data.y_test
            mi_right = pred.mutual_information[right].mean().item()
            mi_wrong = pred.mutual_information[~right].mean().item() if (~right).any() else float("nan")
            note = f"mean mutual information {mi_right:.3f} nats (right) / {mi_wrong:.3f} (wrong)"
            method = f"MC dropout ({args.mc_samples} samples)"
            rows.append((method, network, f"{100 * right.float().mean().item():.2f}", "-", note))
            print(f"  {network:4s} {method:34s} {rows[-1][2]:>6s}%", flush=True)

    header = ("method", "network", "test accuracy (%)", "train time (s)", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\ndigits: {n_train} train / {data.x_test.shape[0]} test images, {args.epochs} epochs each\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


if __name__ == "__main__":
    main()
