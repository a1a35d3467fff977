"""Finding the layers that produce a model's outputs, and leaving them without unit noise."""

from __future__ import annotations

import torch
from torch import nn

from prunedrop.convert import ConversionSummary, to_variational, variational_layers
from prunedrop.outputs import output_layers
from prunedrop.recipes import Recipe
from prunedrop.testing import TinyLeNet5, TinyMLP, TinyResidual, TransformerClassifier


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it; the head's output is returned through a view."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x.flatten(1)))
        if h.sum() > -1e9:
            h = h * 1.0
        return self.head(h).view(x.shape[0], 3)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 12)
        self.cls = nn.Linear(12, 3)
        self.box = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x.flatten(1)))
        return self.cls(h), torch.sigmoid(self.box(h))


class ConvHead(nn.Module):
    """A 1x1 convolution classifier followed by global average pooling and flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.classifier = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(torch.relu(self.conv(x))).mean(dim=(2, 3)), 1)


def test_output_layers_of_common_shapes() -> None:
    assert output_layers(TinyMLP()) == ["net.5"]
    assert output_layers(TinyLeNet5()) == ["fc2"]
    assert output_layers(TransformerClassifier()) == ["head"]
    assert output_layers(TwoHeads()) == ["cls", "box"]
    assert output_layers(ConvHead()) == ["classifier"]
    assert output_layers(TinyResidual()) != []


def test_untraceable_models_fall_back_to_forward_hooks() -> None:
    x = torch.randn(2, 1, 4, 4)
    assert output_layers(Untraceable(), x) == ["head"]
    assert output_layers(Untraceable()) == []  # no example input, no trace: nothing can be said


def test_structured_methods_leave_the_output_layer_dense_and_sparse_vd_does_not() -> None:
    for method in ("sbp", "group_vd", "sbp_sparse_vd"):
        summary = ConversionSummary()
        model = to_variational(TinyMLP(), Recipe(method=method), summary=summary)
        assert summary.output_layers == ["net.5"]
        assert "net.5" not in variational_layers(model) and "net.1" in variational_layers(model)
    assert "net.5" in variational_layers(to_variational(TinyMLP(), Recipe(method="sparse_vd")))
    kept = to_variational(TinyMLP(), Recipe(method="sbp", keep_output_layers=False))
    assert "net.5" in variational_layers(kept)


def test_inspect_shows_the_output_layer_as_excluded_with_the_reason() -> None:
    from prunedrop.inspection import inspect_model

    result = inspect_model(TinyMLP(), torch.randn(2, 1, 4, 4), Recipe(method="sbp"))
    row = next(e for e in result["layers"] if e["name"] == "net.5")
    assert row["status"] == "excluded" and "outputs" in row["reason"]
