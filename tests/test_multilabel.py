"""Multi-label classifiers: a logit per output and an independent 0/1 label per output (as trained with
``BCEWithLogitsLoss`` on multi-hot targets). ``prunedrop compress`` chooses binary cross-entropy by itself for labels
that are vectors of 0s and 1s, one per output, not one-hot (it refused them: "give one class index per sample
(one-hot labels: labels.argmax(-1))", advice that would have lost every label but one); the accuracy counts every
label of every sample, and report.md lists each label's recall."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.utils.data import DataLoader, Dataset, TensorDataset

from prunedrop.cli import cli
from prunedrop.data import load_data
from prunedrop.data.assemble import multi_hot_labels
from prunedrop.errors import PrunedropError
from prunedrop.metrics import (
    as_classifier,
    class_drop_note,
    class_logits,
    correct,
    data_loss,
    evaluate,
    position_class_changes,
    sample_scores,
)
from prunedrop.recipes import Recipe
from prunedrop.stages.baseline import probabilities_note
from prunedrop.testing import QUICK_RECIPE, TinyMLP, fit
from prunedrop.uncertainty import calibration_summary

ARCH_MODULE = "multilabel_arch"


def _tags(n: int = 240, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """16 features, 3 labels: label j is whether features 4j … 4j+3 sum above 0 (independent, about half each)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = torch.stack([x[:, 4 * j:4 * j + 4].sum(1) > 0 for j in range(3)], 1).long()
    return x, y


def test_a_logit_per_label_reads_as_that_many_binary_predictions() -> None:
    z = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.5]])
    y = torch.tensor([[1, 1, 0], [0, 1, 1]])
    two = class_logits(z, "binary_cross_entropy")
    assert two.shape == (2, 2, 3) and torch.equal(two[:, 0], torch.zeros(2, 3)) and torch.equal(two[:, 1], z)
    assert correct(z, y, "binary_cross_entropy").tolist() == [[True, False, False], [True, True, False]]
    torch.testing.assert_close(data_loss("binary_cross_entropy", z, y),
                               F.binary_cross_entropy_with_logits(z, y.float()))
    model = torch.nn.Identity()
    loader = DataLoader(TensorDataset(z, y), batch_size=1)
    assert evaluate(model, loader, loss="binary_cross_entropy")["accuracy"] == pytest.approx(50.0)  # 3 of 6 labels
    scores = sample_scores(model, loader, loss="binary_cross_entropy")
    assert scores.tolist() == pytest.approx([100 / 3, 200 / 3])
    # float labels (a Dataset of BCE targets) read the same
    floats = DataLoader(TensorDataset(z, y.float()), batch_size=2)
    assert evaluate(model, floats, loss="binary_cross_entropy")["accuracy"] == pytest.approx(50.0)
    summary = calibration_summary(as_classifier(model, "binary_cross_entropy"), loader)
    assert summary["n"] == 6 and summary["accuracy"] == pytest.approx(50.0)
    # the one-logit reading is unchanged
    assert class_logits(torch.tensor([[2.0], [-1.0]]), "binary_cross_entropy").shape == (2, 2)


def test_each_label_s_recall_is_listed_and_named_when_it_falls() -> None:
    x = torch.arange(4.0)[:, None]  # each sample's index, which the fixed models answer
    y = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0]])

    class Fixed(torch.nn.Module):
        def __init__(self, out: list[list[float]]) -> None:
            super().__init__()
            self.out = torch.tensor(out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out[x[:, 0].long()]

    before = Fixed([[1, -1], [1, 1], [-1, 1], [1, -1]])  # every label right
    after = Fixed([[1, -1], [-1, 1], [-1, 1], [-1, 1]])  # label 0 found in 1 of 3, label 1 in 2 of 2 (a false 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    rows = position_class_changes(before, after, loader, loss="binary_cross_entropy")
    assert rows == [{"label": 0, "samples": 3, "before": 100.0, "after": pytest.approx(100 / 3), "of": "positives"},
                    {"label": 1, "samples": 2, "before": 100.0, "after": 100.0, "of": "positives"}]
    note = class_drop_note({"val": rows}, -25.0, 1.0)
    assert note is not None and note.startswith("label 0 lost 66.7 points of recall on validation data (3 samples")


def test_probabilities_from_a_final_sigmoid_are_warned_about() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 3) * 3
    note = probabilities_note(torch.sigmoid(logits), "binary_cross_entropy")
    assert note is not None and "every label counts as predicted 1" in note
    assert probabilities_note(logits, "binary_cross_entropy") is None
    assert probabilities_note(torch.sigmoid(logits[:2, :1]), "binary_cross_entropy") is None  # too few to say


class _FloatTags(Dataset):
    """A multi-label Dataset as PyTorch users write them: float targets for BCEWithLogitsLoss, not a TensorDataset
    (so that only its first item is checked)."""

    def __init__(self, y: torch.Tensor) -> None:
        self.x, self.y = torch.randn(len(y), 4), y.float()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


@pytest.fixture
def data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "multitag_data.py").write_text(
        "import torch\n"
        "from tests.test_multilabel import _FloatTags\n\n"
        "def multi_hot():\n"
        "    y = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]] * 5)\n"
        "    return _FloatTags(y), _FloatTags(y)\n\n"
        "def all_ones_first():\n"
        "    y = torch.tensor([[1, 1, 1], [0, 1, 0], [0, 0, 0]] * 5)\n"
        "    return _FloatTags(y), _FloatTags(y)\n\n"
        "def one_hot():\n"
        "    y = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]] * 5)\n"
        "    return _FloatTags(y), _FloatTags(y)\n")
    yield "multitag_data"
    sys.modules.pop("multitag_data", None)


def test_float_label_vectors_of_a_dataset(data_module: str) -> None:
    """Float 0/1 vectors that are not one-hot are a multi-label model's targets (they were refused as "labels
    must be integer class indices"); one-hot ones keep the refusal, which now names the multi-label reading, and
    pass where the loss says so."""
    bundle = load_data(f"python:{data_module}:multi_hot")
    assert bundle.val[0][1].tolist() == [1.0, 1.0, 0.0] and multi_hot_labels(bundle)
    # only a Dataset's first item is read: one holding 1s alone (or 0s alone) is still a multi-label model's
    every = load_data(f"python:{data_module}:all_ones_first")
    assert every.train[0][1].tolist() == [1.0, 1.0, 1.0] and multi_hot_labels(every)
    with pytest.raises(PrunedropError, match=r"give labels.argmax\(-1\) \(for a multi-label model, an independent "
                                             r"0/1 label per output, pass --loss binary_cross_entropy\)"):
        load_data(f"python:{data_module}:one_hot")
    assert load_data(f"python:{data_module}:one_hot", recipe=Recipe(loss="binary_cross_entropy")).input_shape == (4,)
    # a float mask per position is still no label vector (a model per position takes integer classes)
    with pytest.raises(PrunedropError, match="labels must be integer class indices"):
        from prunedrop.data.assemble import _validate_split

        _validate_split(_FloatTags(torch.ones(4, 2, 2)), "the masks")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{ARCH_MODULE}.py").write_text(
        "from prunedrop.testing import TinyMLP\n\n\ndef build():\n    return TinyMLP(16, (24, 12), 3)\n")
    (tmp_path / "quick.yaml").write_text(QUICK_RECIPE)
    x, y = _tags(240)
    np.savez(tmp_path / "data.npz", x_train=x[:160].numpy(), y_train=y[:160].numpy(), x_val=x[160:].numpy(),
             y_val=y[160:].numpy())
    one_hot = F.one_hot(y.argmax(1), 3)
    np.savez(tmp_path / "onehot.npz", x_train=x[:160].numpy(), y_train=one_hot[:160].numpy(),
             x_val=x[160:].numpy(), y_val=one_hot[160:].numpy())
    torch.manual_seed(0)
    torch.save(fit(TinyMLP(16, (24, 12), 3), x[:160], y[:160], 200, loss="binary_cross_entropy").state_dict(),
               tmp_path / "model.pt")
    yield tmp_path
    sys.modules.pop(ARCH_MODULE, None)


def test_compress_a_multi_label_classifier_end_to_end(folder: Path) -> None:
    args = ["compress", "model.pt", "--arch", f"{ARCH_MODULE}:build", "--data", "npz:data.npz", "--recipe",
            "quick.yaml", "-o", "out"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "a multi-label model, trained with binary cross-entropy per output" in result.output
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["recipe"]["loss"] == "binary_cross_entropy"
    assert report["metric"]["before"] > 85.0  # every label of every sample, as the model was trained to predict
    assert report["metric"]["before"] - report["metric"]["after"] <= 5.0
    assert report["params"]["after"] < report["params"]["before"]
    assert report["parity_max_abs_diff"] <= 1e-4
    rows = report["per_class"]["val"]
    assert [r["label"] for r in rows] == [0, 1, 2] and all(r["of"] == "positives" for r in rows)
    y = np.load(folder / "data.npz")["y_val"]
    assert [r["samples"] for r in rows] == y.sum(0).tolist()
    assert "Recall per label before and after" in (folder / "out" / "report.md").read_text()
    again = CliRunner().invoke(cli, ["export", "out", "--threshold", "2", "-o", "again.onnx"])
    assert again.exit_code == 0, again.output
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_one_hot_labels_name_both_readings_and_the_loss_takes_them(folder: Path) -> None:
    args = ["compress", "model.pt", "--arch", f"{ARCH_MODULE}:build", "--data", "npz:onehot.npz", "--recipe",
            "quick.yaml"]
    refused = CliRunner().invoke(cli, [*args, "-o", "refused"])
    assert refused.exit_code != 0 and not (folder / "refused").exists()
    assert "(one-hot labels: labels.argmax(-1); for a multi-label model, an independent 0/1 label per output, " \
           "pass --loss binary_cross_entropy)" in refused.output
    taken = CliRunner().invoke(cli, [*args, "--loss", "binary_cross_entropy", "-o", "taken", "--epochs", "1"])
    assert taken.exit_code == 0, taken.output
    assert json.loads((folder / "taken" / "report.json").read_text())["recipe"]["loss"] == "binary_cross_entropy"
    # a label per output is what binary cross-entropy needs from a model of several outputs
    one_per_sample = folder / "classes.npz"
    x, y = _tags(40)
    np.savez(one_per_sample, x_train=x.numpy(), y_train=y[:, 0].numpy())
    wrong = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", f"{ARCH_MODULE}:build", "--data",
                                     f"npz:{one_per_sample}", "--loss", "binary_cross_entropy", "-o", "wrong"])
    assert wrong.exit_code != 0 and not (folder / "wrong").exists()
    assert "or one output per label with labels of 0s and 1s shaped (N, 3)" in wrong.output


def test_the_python_api_checks_the_labels_and_chooses_the_loss(tmp_path: Path) -> None:
    """``prunedrop.pipeline.compress`` checked nothing of the labels: a multi-label model stopped deep in the
    accuracy with "The size of tensor a (80) must match the size of tensor b (3)" after its folder was made."""
    from prunedrop.data import DataBundle
    from prunedrop.pipeline import compress

    x, y = _tags(240)
    torch.manual_seed(0)
    model = fit(TinyMLP(16, (24, 12), 3), x[:160], y[:160], 200, loss="binary_cross_entropy").eval()

    def bundle(labels: torch.Tensor) -> DataBundle:
        return DataBundle("tags", TensorDataset(x[:160], labels[:160]), TensorDataset(x[160:], labels[160:]), None,
                          (16,), None)

    recipe = Recipe(epochs=1, finetune_epochs=0, latency_runs=0, plots=False, mc_samples=0, quantize="none")
    logs: list[str] = []
    result = compress(model, bundle(y), recipe, tmp_path / "run", progress=False, log=logs.append)
    assert result.report["recipe"]["loss"] == "binary_cross_entropy"
    assert any("a multi-label model, trained with binary cross-entropy" in line for line in logs), logs
    assert result.report["metric"]["before"] > 85.0
    with pytest.raises(PrunedropError, match="labels go up to 5 but the model has 3 outputs"):
        compress(model, bundle(y.sum(1) + 2), recipe, tmp_path / "wrong", progress=False, log=logs.append)
    assert not (tmp_path / "wrong").exists()
