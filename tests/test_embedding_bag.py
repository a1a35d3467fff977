"""nn.EmbeddingBag under sparse VD and group VD: per-row noise drawn per lookup, rows removed by remapping."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from prunedrop.convert import to_variational, variational_layers
from prunedrop.data import DataBundle
from prunedrop.errors import PrunedropError
from prunedrop.export import export_onnx, verify_onnx
from prunedrop.layers import EmbeddingBagSVD, RemappedEmbeddingBag
from prunedrop.layers.embedding import remove_zero_rows
from prunedrop.pipeline import compress
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import remove_heads_and_rows
from prunedrop.storage import load_saved_model
from prunedrop.testing import TINY_RECIPE


class BagClassifier(nn.Module):
    """Token ids [B, T] → nn.EmbeddingBag (sum or mean) → Linear: a fastText-style classifier."""

    def __init__(self, vocab: int = 20, mode: str = "mean", padding_idx: int | None = None, sparse: bool = False,
                 dim: int = 6):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode=mode, padding_idx=padding_idx, sparse=sparse)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(ids))


def _inputs(style: str, last: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 20, (4, 5), generator=g)
    ids[0, :2] = 0  # the padding id, where there is one
    if style == "2d":
        return (ids,)
    offsets = torch.tensor([0, 3, 3, 9] + ([20] if last else []))  # an empty bag among them
    return ids.flatten(), offsets


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("style", ["2d", "offsets", "offsets_last"])
def test_noise_free_training_forward_is_the_bag(monkeypatch: pytest.MonkeyPatch, mode: str,
                                                padding_idx: int | None, style: str) -> None:
    """With the noise drawn as zeros, the training forward (a weighted sum, ÷ the non-padding count for a mean) is
    the layer's own: the padding ids stay out of the sum and of the mean's count, and empty bags give zeros."""
    torch.manual_seed(0)
    last = style == "offsets_last"
    bag = nn.EmbeddingBag(20, 6, mode=mode, padding_idx=padding_idx, include_last_offset=last)
    layer = EmbeddingBagSVD.from_dense(copy.deepcopy(bag)).train()
    args = _inputs(style, last)
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    torch.testing.assert_close(layer(*args), bag(*args), atol=1e-6, rtol=0)
    layer.eval()
    torch.testing.assert_close(layer(*args), bag(*args), atol=1e-6, rtol=0)


def test_per_sample_weights_and_per_lookup_noise() -> None:
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(20, 6, mode="sum")
    layer = EmbeddingBagSVD.from_dense(copy.deepcopy(bag)).train()
    with torch.no_grad():
        layer.log_alpha_param.fill_(0.0)  # noise of standard deviation 1: visible
    ids = torch.arange(12).reshape(12, 1)  # bags of one id: the output is that row times its multiplier
    out = layer(ids, per_sample_weights=torch.full((12, 1), 2.0))
    ratio = out / (2 * bag.weight[:12])
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # one draw per lookup, shared by the features
    assert float(ratio[:, 0].detach().std()) > 0.1  # and a different one for each
    (out.sum() + layer.kl()).backward()
    assert layer.log_alpha_param.grad is not None and torch.isfinite(layer.log_alpha_param.grad).all()
    assert float(layer.log_alpha_param.grad[12:].abs().max()) < float(layer.log_alpha_param.grad[:12].abs().max())


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_pruned_rows_leave_and_the_padding_row_keeps_its_own(tmp_path: Path, mode: str) -> None:
    """A mean leaves the padding ids out of its count: the padding row (zero, as padding rows are) must not become
    the shared zero row that the removed ids look up, or the removed ids would leave the count too."""
    torch.manual_seed(0)
    model = BagClassifier(mode=mode, padding_idx=0).eval()
    variational = to_variational(copy.deepcopy(model), Recipe(method="sparse_vd", exclude=["head"])).eval()
    assert isinstance(variational.bag, EmbeddingBagSVD)
    with torch.no_grad():
        variational.bag.log_alpha_param[[3, 12, 13, 19]] = 5.0
    result = remove_heads_and_rows(prune(variational).model, torch.arange(20).reshape(4, 5))
    remapped = result.model.bag
    assert isinstance(remapped, RemappedEmbeddingBag) and result.rows == {"bag": (20, 16)}
    assert remapped.index_map[[3, 12, 13, 19]].tolist() == [0] * 4
    assert int(remapped.index_map[0]) != 0 and remapped.embedding.padding_idx == int(remapped.index_map[0])
    ids = torch.tensor([[0, 0, 3, 5, 12], [1, 2, 3, 4, 5], [0, 19, 19, 13, 6], [7, 8, 9, 10, 11]])
    with torch.no_grad():
        torch.testing.assert_close(result.model(ids), variational(ids), atol=1e-6, rtol=0)
    exported = export_onnx(result.model, ids[:2], tmp_path / "bag.onnx", opset=18, sparse=False)
    assert verify_onnx(exported.path, result.model, ids, atol=1e-5) <= 1e-5


def test_unsupported_bags_stay_dense_with_the_reason() -> None:
    model = nn.Sequential(nn.EmbeddingBag(10, 4, mode="max"))
    assert EmbeddingBagSVD.unsupported(model[0]) is not None and "max" in EmbeddingBagSVD.unsupported(model[0])
    assert EmbeddingBagSVD.unsupported(nn.EmbeddingBag(10, 4, max_norm=1.0)) is not None
    assert EmbeddingBagSVD.unsupported(nn.EmbeddingBag(10, 4, mode="mean")) is None
    with pytest.raises(PrunedropError, match="mode='max'"):
        EmbeddingBagSVD.from_dense(model[0])
    mixed = nn.ModuleDict({"a": nn.EmbeddingBag(10, 4, mode="max"), "b": nn.EmbeddingBag(10, 4)})
    converted = to_variational(copy.deepcopy(mixed), Recipe(method="sparse_vd"))
    assert set(variational_layers(converted)) == {"b"}


def test_remove_zero_rows_of_a_bag_with_offsets() -> None:
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(20, 6, mode="mean", include_last_offset=True)
    with torch.no_grad():
        bag.weight[[1, 4, 9]] = 0.0
    remapped = remove_zero_rows(bag)
    assert isinstance(remapped, RemappedEmbeddingBag) and remapped.embedding.num_embeddings == 18
    flat, offsets = _inputs("offsets", True)
    with torch.no_grad():
        torch.testing.assert_close(remapped(flat, offsets), bag(flat, offsets), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sparse", [False, True])
def test_compress_bag_model_removes_unused_rows(tmp_path: Path, sparse: bool) -> None:
    """With ``sparse=True`` (sparse gradients, as recommender models train their tables) the variational phase
    stopped with "Adam does not support sparse gradients"; the model comes back built as it was."""
    torch.manual_seed(0)
    model = BagClassifier(vocab=4000, dim=32)  # 3,980 unused rows: the id map costs far less than they do
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (160, 7), generator=g)  # ids 20..3999 never occur
    y = (ids[:, 0] % 3).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model.train()(ids[:-40]), y[:-40])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.bag.sparse = sparse
    data = DataBundle(name="tiny", train=TensorDataset(ids[:-40], y[:-40]), val=TensorDataset(ids[-40:], y[-40:]),
                      test=None, input_shape=(7,), num_classes=3)
    recipe = Recipe.from_dict({**yaml.safe_load(TINY_RECIPE), "exclude": ["head"], "epochs": 4,
                               "kl_warmup_epochs": 1, "noise_lr": 1.0, "mc_samples": 0, "plots": False,
                               "sweep_thresholds": [3.0]})
    result = compress(model.eval(), data, recipe, tmp_path, progress=False, log=lambda m: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert "bag" in report["conversion"]["converted"]
    before, after = report["slim"]["embedding_rows"]["bag"]
    assert before == 4000 and after <= 20  # every never-seen row goes
    assert report["parity_max_abs_diff"] <= recipe.parity_atol
    reloaded = load_saved_model(tmp_path)  # the remapped bag reloads from architecture.json, without the class
    assert reloaded.bag.embedding.sparse is sparse and result.model.bag.embedding.sparse is sparse
    every_id = torch.arange(4000).reshape(500, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(every_id), result.model(every_id), atol=1e-6, rtol=0)


def test_an_embedding_s_rows_are_no_output_width() -> None:
    """The note on widths that suit vectorised kernels badly read a remapped embedding bag's 550 rows as a width."""
    from prunedrop.report.render import _latency_notes

    layers = [{"name": "bag", "type": "EmbeddingBag", "shape_before": [1088, 32], "shape_after": [550, 32]},
              {"name": "emb", "type": "Embedding", "shape_before": [40, 6], "shape_after": [17, 6]},
              {"name": "fc", "type": "Linear", "shape_before": [64, 32], "shape_after": [62, 32]}]
    notes = " ".join(_latency_notes({"layers": layers}))
    assert "fc (62)" in notes and "bag" not in notes and "emb" not in notes


class _SparseTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 6, sparse=True)
        self.hidden = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embedding(ids).mean(1))))


def test_a_sparse_embedding_left_dense_trains_with_adam(tmp_path: Path) -> None:
    """Under SBP an embedding has no variational version and trains as it is, beside the noisy layers: with
    ``sparse=True`` its sparse gradients reached Adam."""
    torch.manual_seed(0)
    model = _SparseTokens().eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (120, 7), generator=g)
    y = (ids[:, 0] % 3).long()
    data = DataBundle(name="tiny", train=TensorDataset(ids[:-40], y[:-40]), val=TensorDataset(ids[-40:], y[-40:]),
                      test=None, input_shape=(7,), num_classes=3)
    recipe = Recipe.from_dict({**yaml.safe_load(TINY_RECIPE), "method": "sbp", "epochs": 2, "kl_warmup_epochs": 1,
                               "mc_samples": 0, "plots": False, "sweep_thresholds": [3.0]})
    compress(model, data, recipe, tmp_path, progress=False, log=lambda m: None)
    assert model.embedding.sparse and (tmp_path / "model.onnx").is_file()


def test_rows_stay_as_zeros_where_removing_them_makes_the_file_larger() -> None:
    """A 64-row bag with 17 zero rows: the id map and its lookup cost more than the rows, and the compressed ONNX
    file was larger than the original's (12.76 against 11.40 KiB)."""
    from prunedrop.stages.slimming import slim_pruned

    torch.manual_seed(0)
    model = BagClassifier(vocab=64, mode="sum", dim=16).eval()
    with torch.no_grad():
        model.bag.weight[:17] = 0.0
    logs: list[str] = []
    ids = torch.randint(0, 64, (4, 6))
    slimmed = slim_pruned(model, {}, ids, logs.append, None)
    assert isinstance(slimmed.model.bag, nn.EmbeddingBag) and slimmed.model.bag.num_embeddings == 64
    assert any("zero row(s) stay" in line for line in logs), logs
    torch.testing.assert_close(slimmed.model(ids), model(ids))
    big = BagClassifier(vocab=4000, mode="sum", dim=16).eval()  # 3,983 rows of 16: their bytes dwarf the map
    with torch.no_grad():
        big.bag.weight[17:] = 0.0
    assert isinstance(slim_pruned(big, {}, ids, logs.append, None).model.bag, RemappedEmbeddingBag)


class _Tables(nn.Module):
    """A recommender's small tables, one categorical feature each."""

    def __init__(self, vocab: int = 17, tables: int = 3) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(vocab, 8, mode="sum") for _ in range(tables))
        self.head = nn.Linear(8 * tables, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([t(ids[:, i:i + 1]) for i, t in enumerate(self.tables)], 1))


def test_small_tables_are_judged_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each small table took two exports of the whole model (a DLRM's eight: sixteen); decided together, two."""
    import prunedrop.export as export
    from prunedrop.stages.slimming import slim_pruned

    torch.manual_seed(0)
    model = _Tables().eval()
    with torch.no_grad():
        for table in model.tables:
            table.weight[:6] = 0.0
    exports: list[str] = []
    real = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: exports.append(str(a[2])) or real(*a, **k))
    logs: list[str] = []
    ids = torch.randint(0, 17, (4, 3))
    slimmed = slim_pruned(model, {}, ids, logs.append, None)
    assert len(exports) == 2 and all(isinstance(t, nn.EmbeddingBag) for t in slimmed.model.tables)
    assert any(line.startswith("3 embeddings (tables.0, tables.1, tables.2): 18 zero row(s) stay") for line in logs), logs
    torch.testing.assert_close(slimmed.model(ids), model(ids))
