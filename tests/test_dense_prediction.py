"""Models that predict per position: a segmentation's (N, C, H, W) logits against (N, H, W) masks, a one-logit mask
model's (N, 1, H, W), a value per pixel with ``loss: mse``. ``prunedrop compress`` refused them ("the model must
return a (batch, classes) tensor"), the npz reader refused their labels ("labels must be shaped (N,)") and the
calibration report stopped on them ("need probs (N, C) and labels (N,)")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunedrop.cli import cli
from prunedrop.data import load_data
from prunedrop.metrics import as_classifier, correct, evaluate, sample_scores
from prunedrop.testing import QUICK_RECIPE, fit
from prunedrop.uncertainty import calibration_summary

ARCH = '''\
from torch import nn


def segmenter(classes=3):
    """a class per pixel: (N, 2, 8, 8) → (N, classes, 8, 8)"""
    return nn.Sequential(nn.Conv2d(2, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(12, classes, 1))


def mask():
    return segmenter(1)


def pooled():
    """a classifier that forgot to flatten: (N, 3, 1, 1)"""
    return nn.Sequential(nn.Conv2d(2, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 3, 1))


def flat():
    """one class per sample: (N, 3)"""
    return nn.Sequential(pooled(), nn.Flatten())


class ClassesLast(nn.Module):
    """(N, 8, 8, 3): the classes on the last axis, as a Linear over each position's features gives them"""

    def __init__(self):
        super().__init__()
        self.inner = segmenter()

    def forward(self, x):
        return self.inner(x).permute(0, 2, 3, 1)


def classes_last():
    return ClassesLast()
'''

ARCH_MODULE = "densepred_arch"


def _segments(n: int, seed: int = 0, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, 2, 8, 8) and a class per pixel: the argmax of a fixed 3x3 convolution of the inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 8, 8, generator=g)
    rule = torch.randn(classes, 2, 3, 3, generator=torch.Generator().manual_seed(99))
    return x, torch.nn.functional.conv2d(x, rule, padding=1).argmax(dim=1)


def _segmenter(classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(12, classes, 1))


def test_accuracy_and_calibration_count_every_position() -> None:
    logits, labels = torch.randn(10, 3, 4, 5), torch.randint(0, 3, (10, 4, 5))
    right = logits.argmax(dim=1) == labels
    assert torch.equal(correct(logits, labels, "cross_entropy"), right)
    loader = [(logits[:6], labels[:6]), (logits[6:], labels[6:])]
    accuracy = evaluate(nn.Identity(), loader)["accuracy"]
    assert accuracy == pytest.approx(100.0 * float(right.double().mean()))
    # calibration: every pixel a prediction, its softmax over the class axis (the second), not the last (width)
    summary = calibration_summary(as_classifier(nn.Identity(), "cross_entropy"), loader)
    assert summary["n"] == labels.numel() and summary["accuracy"] == pytest.approx(accuracy)
    probs = logits.softmax(dim=1).movedim(1, -1).reshape(-1, 3)
    nll = float(-probs.gather(1, labels.reshape(-1, 1)).log().mean())
    assert summary["nll"] == pytest.approx(nll, rel=1e-6)
    # a one-logit mask model: (N, 1, H, W) logits against (N, H, W) or (N, 1, H, W) masks, class 1 where z > 0
    z = torch.randn(10, 1, 4, 5)
    masks = torch.randint(0, 2, (10, 4, 5))
    expected = (z[:, 0] > 0).long() == masks
    for shaped in (masks, masks[:, None]):
        assert torch.equal(correct(z, shaped, "binary_cross_entropy"), expected)
        scores = sample_scores(nn.Identity(), [(z, shaped)], loss="binary_cross_entropy")
        torch.testing.assert_close(scores, 100.0 * expected.reshape(10, -1).double().mean(dim=1))
        mask_summary = calibration_summary(as_classifier(nn.Identity(), "binary_cross_entropy"), [(z, shaped)])
        assert mask_summary["n"] == masks.numel()
        assert mask_summary["accuracy"] == pytest.approx(100.0 * float(expected.double().mean()))


def test_the_npz_reader_takes_a_class_per_position(tmp_path: Path) -> None:
    x, y = _segments(40)
    np.savez(tmp_path / "seg.npz", x_train=x.numpy(), y_train=y.numpy(), x_val=x[:10].numpy(),
             y_val=y[:10].numpy().astype(np.float32))  # whole-number floats, as a mask saved from an image
    data = load_data(f"npz:{tmp_path / 'seg.npz'}")
    assert data.train.tensors[1].shape == (40, 8, 8) and data.val.tensors[1].dtype == torch.int64
    assert torch.equal(data.val.tensors[1], y[:10])
    names = np.array(["sky", "road", "car"])[y.numpy()]
    np.savez(tmp_path / "named.npz", x_train=x.numpy(), y_train=names)
    named = load_data(f"npz:{tmp_path / 'named.npz'}", recipe=_recipe(class_names=["sky", "road", "car"]))
    together = torch.cat([named.train.tensors[1], named.val.tensors[1]])
    assert together.shape == (40, 8, 8) and sorted(together.unique().tolist()) == [0, 1, 2]
    # non-integer labels of more than one axis are neither classes nor (without loss: mse) regression targets
    np.savez(tmp_path / "soft.npz", x_train=x.numpy(), y_train=np.full((40, 8, 8), 0.5, dtype=np.float32))
    with pytest.raises(Exception, match="labels must be shaped"):
        load_data(f"npz:{tmp_path / 'soft.npz'}")


def _recipe(**keys):
    from prunedrop.recipes import Recipe

    return Recipe().replace(**keys)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{ARCH_MODULE}.py").write_text(ARCH)
    (tmp_path / "quick.yaml").write_text(QUICK_RECIPE)
    x, y = _segments(300)
    np.savez(tmp_path / "seg.npz", x_train=x[:180].numpy(), y_train=y[:180].numpy(), x_val=x[180:240].numpy(),
             y_val=y[180:240].numpy(), x_test=x[240:].numpy(), y_test=y[240:].numpy())
    torch.manual_seed(0)
    model = fit(_segmenter(), x[:180], y[:180], 300)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    yield tmp_path
    sys.modules.pop(ARCH_MODULE, None)


def test_compress_a_segmentation_model_end_to_end(folder: Path) -> None:
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", f"{ARCH_MODULE}:segmenter", "--data",
                                      "npz:seg.npz", "--recipe", "quick.yaml", "-o", "out"])
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["metric"]["name"] == "accuracy"
    assert 80.0 < report["metric"]["before"] <= 100.0  # pixel accuracy, not a count of pixels per image
    assert report["metric"]["before"] - report["metric"]["after"] <= 5.0
    assert report["params"]["after"] < report["params"]["before"]
    assert report["parity_max_abs_diff"] <= 1e-4
    assert report["calibration"]["original"]["n"] == 60 * 8 * 8
    # each class's accuracy over the pixels labelled with it, before and after
    rows = report["per_class"]["val"]
    assert [r["label"] for r in rows] == [0, 1, 2] and sum(r["samples"] for r in rows) == 60 * 8 * 8
    assert all(0.0 <= r["before"] <= 100.0 and 0.0 <= r["after"] <= 100.0 for r in rows)
    assert sum(r["samples"] * r["before"] for r in rows) / (60 * 64) == pytest.approx(report["metric"]["before"])
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((5, 2, 8, 8), np.float32)})[0]
    assert out.shape == (5, 3, 8, 8)


def test_a_one_logit_mask_model_is_trained_with_binary_cross_entropy(folder: Path) -> None:
    x, y = _segments(200, classes=2)
    np.savez(folder / "mask.npz", x_train=x[:150].numpy(), y_train=y[:150, None].numpy(), x_val=x[150:].numpy(),
             y_val=y[150:, None].numpy())  # masks (N, 1, H, W), as the logits
    torch.manual_seed(0)
    torch.save(fit(_segmenter(1), x[:150], y[:150, None], 300, loss="binary_cross_entropy").state_dict(),
               folder / "mask.pt")
    result = CliRunner().invoke(cli, ["compress", "mask.pt", "--arch", f"{ARCH_MODULE}:mask", "--data",
                                      "npz:mask.npz", "--recipe", "quick.yaml", "-o", "out"])
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["recipe"]["loss"] == "binary_cross_entropy"
    assert 80.0 < report["metric"]["before"] <= 100.0
    assert report["metric"]["before"] - report["metric"]["after"] <= 5.0


def test_a_value_per_pixel_with_mse(folder: Path) -> None:
    x, _ = _segments(160)
    # the target: a smoothed first channel, with noise no model can predict (an error floor for the budget)
    clean = torch.nn.functional.avg_pool2d(x[:, :1], 3, 1, 1)
    clean = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    np.savez(folder / "smooth.npz", x_train=x[:120].numpy(), y_train=clean[:120, 0].numpy(), x_val=x[120:].numpy(),
             y_val=clean[120:, 0].numpy())  # (N, H, W) targets for (N, 1, H, W) outputs
    torch.manual_seed(0)
    torch.save(fit(_segmenter(1), x[:120], clean[:120], 300, loss="mse").state_dict(), folder / "smooth.pt")
    args = ["compress", "smooth.pt", "--arch", f"{ARCH_MODULE}:mask", "--data", "npz:smooth.npz", "--loss", "mse",
            "--recipe", "quick.yaml", "--max-drop", "50"]
    result = CliRunner().invoke(cli, [*args, "-o", "out"])
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "out" / "report.json").read_text())["metric"]["name"] == "mse"
    # targets of another shape than the outputs: one line before any file
    np.savez(folder / "wide.npz", x_train=x.numpy(), y_train=np.zeros((160, 2, 8, 8), np.float32))
    wrong = CliRunner().invoke(cli, [*args[:5], "npz:wide.npz", *args[6:], "-o", "wrong"])
    assert wrong.exit_code != 0 and "shaped (N, 1, 8, 8)" in wrong.output and "(2, 8, 8)" in wrong.output
    assert not (folder / "wrong").exists()


@pytest.mark.parametrize(("arch", "labels", "says"), [
    ("segmenter", "one per sample", "the labels must be one class per position, shaped (N, 8, 8)"),
    ("pooled", "one per sample", "flatten the model's output to (N, 3)"),
    ("flat", "one per pixel", "the model predicts one class per sample (outputs (N, 3))"),
    ("classes_last", "one per pixel", "its classes on the last axis"),
])
def test_outputs_and_labels_that_do_not_pair_up_stop_before_any_file(folder: Path, arch: str, labels: str,
                                                                     says: str) -> None:
    x, y = _segments(60)
    y = y[:, 0, 0] if labels == "one per sample" else y
    np.savez(folder / "other.npz", x_train=x.numpy(), y_train=y.numpy())
    torch.save(getattr(sys.modules.get(ARCH_MODULE) or _import_arch(folder), arch)().state_dict(), folder / "m.pt")
    result = CliRunner().invoke(cli, ["compress", "m.pt", "--arch", f"{ARCH_MODULE}:{arch}", "--data",
                                      "npz:other.npz", "--recipe", "quick.yaml", "-o", "out"])
    assert result.exit_code != 0
    assert says in result.output and "Traceback" not in result.output
    assert not (folder / "out").exists()


def _import_arch(folder: Path):
    import importlib

    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(ARCH_MODULE)
    finally:
        sys.path.remove(str(folder))


def test_a_dataloader_of_masks_reads_its_label_shape() -> None:
    from prunedrop.data.assemble import label_shape
    from prunedrop.data.bundle import DataBundle

    x, y = _segments(20)
    for train, shape in ((TensorDataset(x, y), (8, 8)), (DataLoader(TensorDataset(x, y), batch_size=4), (8, 8)),
                         (TensorDataset(x, y[:, 0, 0]), ())):
        bundle = DataBundle(name="t", train=train, val=TensorDataset(x, y), test=None, input_shape=(2, 8, 8),
                            num_classes=3)
        assert label_shape(bundle) == shape
