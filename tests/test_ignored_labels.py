"""Labels to ignore: -100 (torch's ``cross_entropy`` default ``ignore_index``, Hugging Face's padding of token
labels) marks a position or a sample with no label. It was refused ("labels … include -100; labels must be class
indices"); it now counts in no loss, no accuracy, no per-class row and no calibration figure, so that a tagger of
padded sequences is compressed on its real tokens alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunedrop.cli import cli
from prunedrop.data import DataBundle, check_labels, load_data
from prunedrop.errors import PrunedropError
from prunedrop.metrics import (
    IGNORED,
    ClassesLast,
    class_changes,
    data_loss,
    evaluate,
    position_class_changes,
    sample_scores,
    scores_metric,
)
from prunedrop.testing import QUICK_RECIPE
from prunedrop.uncertainty import calibration_summary


def test_ignored_labels_count_in_no_loss_and_no_metric() -> None:
    torch.manual_seed(0)
    out = torch.randn(3, 4, 5, requires_grad=True)  # 3 sequences, 4 classes, 5 positions
    y = torch.tensor([[0, 1, 2, IGNORED, IGNORED], [3, 3, 1, 0, 2], [1, IGNORED, IGNORED, IGNORED, IGNORED]])
    kept = y != IGNORED
    expected = F.cross_entropy(out.movedim(1, -1)[kept], y[kept])
    torch.testing.assert_close(data_loss("cross_entropy", out, y), expected)
    nothing = data_loss("cross_entropy", out, torch.full_like(y, IGNORED))
    nothing.backward()
    assert float(nothing.detach()) == 0.0 and torch.equal(out.grad, torch.zeros_like(out))  # no 0/0, no NaN
    # binary cross-entropy of a multi-label model with unknown labels
    z, t = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1, IGNORED, 0]])
    torch.testing.assert_close(data_loss("binary_cross_entropy", z, t),
                               F.binary_cross_entropy_with_logits(z[:, [0, 2]], t[:, [0, 2]].float()))

    model = nn.Identity()
    loader = DataLoader(TensorDataset(out.detach(), y), batch_size=2)
    predicted = out.detach().argmax(1)
    accuracy = 100.0 * float((predicted == y)[kept].double().mean())
    assert evaluate(model, loader)["accuracy"] == pytest.approx(accuracy)
    scores = sample_scores(model, loader)
    assert scores_metric(scores) == pytest.approx(accuracy)  # the mean over samples is the accuracy over labels
    # the per-class rows and the calibration leave the ignored positions out
    rows = position_class_changes(model, model, loader)
    assert sum(r["samples"] for r in rows) == int(kept.sum())
    assert class_changes(torch.tensor([100.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1, IGNORED])) == [
        {"label": 1, "samples": 1, "before": 100.0, "after": 0.0}]
    summary = calibration_summary(ClassesLast(model), loader)
    assert summary["n"] == int(kept.sum()) and summary["accuracy"] == pytest.approx(accuracy)
    with pytest.raises(PrunedropError, match="every label of the evaluation data is -100"):
        evaluate(model, DataLoader(TensorDataset(out.detach(), torch.full_like(y, IGNORED)), batch_size=2))


def test_ignored_labels_are_read_and_other_negatives_refused(tmp_path: Path) -> None:
    x = np.zeros((6, 5), dtype=np.float32)
    y = np.array([[0, 1, 2, IGNORED, IGNORED]] * 6)
    np.savez(tmp_path / "tags.npz", x_train=x, y_train=y)
    bundle = load_data(f"npz:{tmp_path / 'tags.npz'}")
    assert bundle.train.tensors[1].min() == IGNORED
    check_labels(bundle, 3)  # -100 is no class index beyond the outputs
    np.savez(tmp_path / "negative.npz", x_train=x, y_train=np.where(y == IGNORED, y, y - 1))
    with pytest.raises(PrunedropError, match=r"include -1; labels must be class indices 0, 1, ..., C-1 \(or -100"):
        load_data(f"npz:{tmp_path / 'negative.npz'}")
    void = DataBundle("void", TensorDataset(torch.zeros(2, 5), torch.tensor([[0, 1, 2, 255, 255]] * 2)), None,
                      None, (5,), 256)
    with pytest.raises(PrunedropError, match="if 255 marks pixels or positions to ignore .void., give them as -100"):
        check_labels(void, 3)


TAGGER = '''\
import torch
from torch import nn


class Tagger(nn.Module):
    """token ids (N, T) → a tag per token (N, 3, T)"""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 16)
        self.conv = nn.Conv1d(16, 32, 3, padding=1)
        self.out = nn.Conv1d(32, 3, 1)

    def forward(self, x):
        return self.out(torch.relu(self.conv(self.emb(x).transpose(1, 2))))
'''



def _padded(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of 3 to 10 tokens (ids 1 … 11) padded to 10 with id 0; a token's tag is its id mod 3 where the
    token before it is even, else 2 − that; the padding's tag is -100."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 12, (n, 10), generator=g)
    lengths = torch.randint(3, 11, (n,), generator=g)
    pad = torch.arange(10)[None, :] >= lengths[:, None]
    before = torch.cat([torch.zeros(n, 1, dtype=torch.long), x[:, :-1]], 1)
    y = torch.where(before % 2 == 0, x % 3, 2 - x % 3)
    return x.masked_fill(pad, 0), y.masked_fill(pad, IGNORED)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tagger_arch.py").write_text(TAGGER)
    (tmp_path / "quick.yaml").write_text(QUICK_RECIPE)
    x, y = _padded(300, 0)
    np.savez(tmp_path / "tags.npz", x_train=x[:200].numpy(), y_train=y[:200].numpy(), x_val=x[200:].numpy(),
             y_val=y[200:].numpy())
    from tagger_arch import Tagger

    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(x[:200]), y[:200])  # torch ignores the padding (-100) itself
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "tagger.pt")
    yield tmp_path, model.eval(), x[200:], y[200:]
    sys.modules.pop("tagger_arch", None)


def test_compress_a_tagger_of_padded_sequences(folder) -> None:
    path, model, x_val, y_val = folder
    result = CliRunner().invoke(cli, ["compress", "tagger.pt", "--arch", "tagger_arch:Tagger", "--data",
                                      "npz:tags.npz", "--recipe", "quick.yaml", "-o", "out"])
    assert result.exit_code == 0, result.output
    report = json.loads((path / "out" / "report.json").read_text())
    with torch.no_grad():
        predicted = model(x_val).argmax(1)
    labelled = y_val != IGNORED
    expected = 100.0 * float((predicted == y_val)[labelled].double().mean())
    assert report["metric"]["before"] == pytest.approx(expected)  # over the real tokens alone
    assert expected > 80.0
    assert report["metric"]["before"] - report["metric"]["after"] <= 5.0
    rows = report["per_class"]["val"]
    assert sum(r["samples"] for r in rows) == int(labelled.sum()) and {r["label"] for r in rows} == {0, 1, 2}
    assert report["parity_max_abs_diff"] <= 1e-4
