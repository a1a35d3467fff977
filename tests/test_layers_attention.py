"""Attention heads and embedding rows: the variational layers, their removal, and a whole compress run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunedrop.convert import to_variational, variational_layers
from prunedrop.data import DataBundle
from prunedrop.errors import PrunedropError
from prunedrop.export import export_onnx, verify_onnx
from prunedrop.layers import (
    EmbeddingSVD,
    HeadPrunedMultiheadAttention,
    LinearGroupVD,
    MultiheadAttentionGroupVD,
    MultiheadAttentionSBP,
    MultiheadAttentionSVD,
    RemappedEmbedding,
    from_dense_options,
)
from prunedrop.pipeline import compress
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import remove_heads_and_rows
from prunedrop.storage import load_saved_model
from prunedrop.testing import TINY_RECIPE, tiny_token_model, tiny_transformer

ATTENTION_LAYERS = [MultiheadAttentionSVD, MultiheadAttentionGroupVD, MultiheadAttentionSBP]
# sparse VD prunes a weight whose log α = log σ² − log θ² > 3: with log σ² = −30 no trained weight is pruned; SBP's
# log θ ~ N(0, e⁻⁴⁰) truncated to [−20, 0] has E[θ] = 1 − 1e-18
NEGLIGIBLE = {"init_log_sigma2": -30.0, "init_log_alpha": -30.0, "log_alpha_clip": 40.0, "init_mu": 0.0,
              "init_log_sigma": -20.0}


def _inputs(batch_first: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 5, 8, generator=g)  # 5 × 5: batch and sequence swap roles with batch_first
    attn_mask = torch.rand(5, 5, generator=g) > 0.7
    attn_mask.fill_diagonal_(False)
    padding = torch.zeros(5, 5, dtype=torch.bool)
    padding[0, -2:] = True
    return x, attn_mask, padding


@pytest.mark.parametrize("cls", ATTENTION_LAYERS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_negligible_noise_equals_plain_attention(cls: type, batch_first: bool, bias: bool) -> None:
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(8, 2, bias=bias, batch_first=batch_first).eval()
    layer = cls.from_dense(copy.deepcopy(plain), **from_dense_options(cls, NEGLIGIBLE)).eval()
    x, attn_mask, padding = _inputs(batch_first)
    for kwargs in ({}, {"attn_mask": attn_mask, "key_padding_mask": padding}, {"average_attn_weights": False}):
        want, got = plain(x, x, x, **kwargs), layer(x, x, x, **kwargs)
        torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=0)
    # unbatched input, and the dense layer it turns back into
    torch.testing.assert_close(layer(x[0], x[0], x[0])[0], plain(x[0], x[0], x[0])[0], atol=1e-6, rtol=0)
    dense = layer.to_dense()
    assert type(dense) is nn.MultiheadAttention
    torch.testing.assert_close(dense(x, x, x)[0], layer(x, x, x)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls", ATTENTION_LAYERS)
def test_kl_finite_and_gradients_flow(cls: type) -> None:
    torch.manual_seed(0)
    layer = cls.from_dense(nn.MultiheadAttention(8, 2, batch_first=True)).train()
    x = torch.randn(3, 4, 8)
    out, _ = layer(x, x, x, need_weights=False)
    kl = layer.kl()
    assert torch.isfinite(kl) and kl > 0
    (out.square().mean() + kl).backward()
    for p in [layer.in_proj_weight, layer.out_proj.weight, *layer.noise_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert not torch.equal(layer(x, x, x)[0], layer(x, x, x)[0])  # training samples noise


def test_unsupported_attention_settings_are_errors() -> None:
    for plain in (nn.MultiheadAttention(8, 2, kdim=4, vdim=4), nn.MultiheadAttention(8, 2, add_bias_kv=True),
                  nn.MultiheadAttention(8, 2, add_zero_attn=True)):
        with pytest.raises(PrunedropError, match="not supported"):
            MultiheadAttentionSVD.from_dense(plain)


def test_transformer_layers_convert_and_skip_the_fused_path() -> None:
    """In eval mode under no_grad nn.TransformerEncoderLayer takes a fused path that reads in_proj_weight
    directly; the variational attention must not be bypassed by it (its masks would be ignored)."""
    model, x = tiny_transformer()
    want = model(x)
    variational = to_variational(copy.deepcopy(model), Recipe(method="sparse_vd", **NEGLIGIBLE))
    kinds = {name: type(m) for name, m in variational_layers(variational).items()}
    assert kinds["encoder.layers.0.self_attn"] is MultiheadAttentionSVD
    assert "encoder.layers.1.linear1" in kinds
    variational.eval()
    with torch.no_grad():
        torch.testing.assert_close(variational(x), want, atol=1e-5, rtol=0)
        attention = variational.encoder.layers[0].self_attn
        attention.out_proj_log_sigma2.fill_(20.0)  # prunes every out_proj weight: output must change
        assert not torch.allclose(variational(x), want, atol=1e-3)
        torch.testing.assert_close(variational(x), prune(variational).model(x), atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_padding_mask_through_the_nested_inference_path() -> None:
    """With src_key_padding_mask, nn.TransformerEncoder turns the batch into a nested tensor at inference; the
    variational and the head-pruned attention take it (padded internally) and give the plain model's outputs."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2).eval()
    assert encoder.use_nested_tensor
    x = torch.randn(3, 5, 8)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    padding[1, 4:] = True
    real = ~padding[..., None]  # outputs at padded positions are undefined (0 on the nested path)
    with torch.no_grad():
        want = encoder(x, src_key_padding_mask=padding)
    recipe = Recipe(method="group_vd", exclude=["*linear*"], **NEGLIGIBLE)
    variational = to_variational(copy.deepcopy(encoder), recipe).eval()
    with torch.no_grad():
        variational.layers[0].self_attn.log_alpha_param[0] = 35.0
        masked = variational(x, src_key_padding_mask=padding)
        slim = remove_heads_and_rows(prune(variational).model, x).model
        assert isinstance(slim.layers[0].self_attn, HeadPrunedMultiheadAttention)
        got = slim(x, src_key_padding_mask=padding)
    assert ((got - masked) * real).abs().max() <= 1e-5
    assert ((masked - want) * real).abs().max() > 1e-3  # the pruned head really changed the output
    sparse = to_variational(copy.deepcopy(encoder), Recipe(method="sparse_vd", **NEGLIGIBLE)).eval()
    with torch.no_grad():
        assert ((sparse(x, src_key_padding_mask=padding) - want) * real).abs().max() <= 1e-5


def _group_transformer() -> tuple[nn.Module, torch.Tensor, nn.Module]:
    model, x = tiny_transformer()
    variational = to_variational(copy.deepcopy(model), Recipe(method="group_vd", exclude=["head"])).eval()
    with torch.no_grad():
        for name, layer in variational_layers(variational).items():
            if isinstance(layer, MultiheadAttentionGroupVD) and name.startswith("encoder.layers.0"):
                layer.log_alpha_param[1] = 5.0
            if isinstance(layer, LinearGroupVD) and name.endswith("linear1"):
                layer.log_alpha_param[:6] = 5.0
    return variational, x, model


def test_head_removal_is_exact(tmp_path: Path) -> None:
    variational, x, _ = _group_transformer()
    pruned = prune(variational)
    assert pruned.masks["encoder.layers.0.self_attn.in_proj_weight"].shape == (24, 8)
    result = remove_heads_and_rows(pruned.model, x)
    assert result.heads == {"encoder.layers.0.self_attn": (2, 1), "encoder.layers.1.self_attn": (2, 2)}
    attention = result.model.encoder.layers[0].self_attn
    assert isinstance(attention, HeadPrunedMultiheadAttention)
    assert attention.in_proj_weight.shape == (12, 8) and attention.out_proj.weight.shape == (8, 4)
    with torch.no_grad():
        assert (result.model(x) - variational(x)).abs().max() <= 1e-5
        batch = torch.randn(16, 5, 6)
        assert (result.model(batch) - variational(batch)).abs().max() <= 1e-5
    exported = export_onnx(result.model, x[:2], tmp_path / "heads.onnx", opset=18, sparse=False)
    assert verify_onnx(exported.path, result.model, batch, atol=1e-5) <= 1e-5


def test_sbp_heads_fold_their_expected_noise_and_pruned_heads_leave(tmp_path: Path) -> None:
    """Under sbp a head keeps E[θ] of its log-normal noise as its output's factor (folded into its value rows by
    to_dense) and a head whose SNR is at most the threshold outputs zeros and leaves the slim model."""
    model, x = tiny_transformer()
    variational = to_variational(copy.deepcopy(model), Recipe(method="sbp", exclude=["head"])).eval()
    attention = variational.encoder.layers[0].self_attn
    assert isinstance(attention, MultiheadAttentionSBP)
    with torch.no_grad():
        attention.mu.copy_(torch.tensor([-0.7, -9.0]))
        attention.log_sigma.copy_(torch.tensor([-3.0, 1.0]))
    snr = attention.snr()
    assert snr[0] > attention.threshold >= snr[1]
    expected = attention._eval_head_multiplier(None)
    assert expected[1] == 0 and 0.45 < expected[0] < 0.55
    dense = attention.to_dense()
    h = torch.randn(4, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(dense(h, h, h)[0], attention(h, h, h)[0], atol=1e-6, rtol=0)
        result = remove_heads_and_rows(prune(variational).model, x)
        assert result.heads["encoder.layers.0.self_attn"] == (2, 1)
        batch = torch.randn(16, 5, 6)
        assert (result.model(batch) - variational(batch)).abs().max() <= 1e-5
    variational.train()
    draws = attention._sample_head_multiplier(64)
    assert draws.shape == (64, 2, 1, 1) and (draws > 0).all() and (draws <= 1).all()
    assert draws[:, 0].std() > 0  # one draw per example and head


class _MaskedAttention(nn.Module):
    """Sequence-first attention under a bool mask buffer (True: not allowed), and a causal mask built in the forward
    from the sequence length."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.MultiheadAttention(8, 2, batch_first=False), nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)
        self.register_buffer("mask", torch.ones(5, 5, dtype=torch.bool).triu(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.reshape(-1, 5, 8)
        t = self.a(t.transpose(0, 1), t.transpose(0, 1), t.transpose(0, 1), attn_mask=self.mask)[0].transpose(0, 1)
        causal = nn.Transformer.generate_square_subsequent_mask(5)
        return self.fc(self.b(t, t, t, attn_mask=causal, is_causal=True, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("method", ["group_vd", "sbp"])
@pytest.mark.parametrize("case", ["transformer", "masks"])
def test_a_model_whose_heads_left_has_an_architecture_json(tmp_path: Path, method: str, case: str) -> None:
    """A head-pruned attention is no torch.nn layer and torch.fx could not trace its forward: every model whose
    heads left was saved as a state dict alone. It is traced as what it computes."""
    from prunedrop.storage import load_saved_model, save_model

    torch.manual_seed(0)
    model, x = tiny_transformer() if case == "transformer" else (_MaskedAttention().eval(), torch.randn(4, 40))
    variational = to_variational(copy.deepcopy(model), Recipe(method=method, exclude=["head", "fc"])).eval()
    with torch.no_grad():
        for layer in variational_layers(variational).values():
            if isinstance(layer, MultiheadAttentionGroupVD):
                layer.log_alpha_param[0] = 5.0
            elif isinstance(layer, MultiheadAttentionSBP):
                layer.mu[0], layer.log_sigma[0] = -9.0, 1.0
    result = remove_heads_and_rows(prune(variational).model, x)
    assert all(after < before for before, after in result.heads.values())
    save_model(result.model, tmp_path / "out", x)
    back = load_saved_model(tmp_path / "out")
    fresh = torch.randn(*x.shape)
    with torch.no_grad():
        torch.testing.assert_close(back(fresh), result.model(fresh), atol=1e-6, rtol=0)


def test_embedding_rows_removed_with_remap(tmp_path: Path) -> None:
    model, ids = tiny_token_model()
    variational = to_variational(copy.deepcopy(model), Recipe(method="sparse_vd", exclude=["head"])).eval()
    layer = variational.embedding
    assert isinstance(layer, EmbeddingSVD) and layer.keep_mask().shape == (20,)
    with torch.no_grad():
        layer.log_alpha_param[[3, 12, 13, 19]] = 5.0
    pruned = prune(variational)
    result = remove_heads_and_rows(pruned.model, ids)
    remapped = result.model.embedding
    assert isinstance(remapped, RemappedEmbedding)
    assert result.rows == {"embedding": (20, 16)}
    assert remapped.embedding.num_embeddings == 17  # 16 kept rows and the shared zero row
    assert remapped.index_map[[3, 12, 13, 19]].tolist() == [0] * 4  # the shared zero row is row 0
    assert remapped.index_map[[0, 4, 14]].tolist() == [1, 4, 12]
    assert float(remapped.embedding.weight.detach()[0].abs().max()) == 0.0
    every_id = torch.arange(20).reshape(4, 5)  # the original ids go in, removed ones included
    with torch.no_grad():
        torch.testing.assert_close(result.model(every_id), variational(every_id), atol=1e-6, rtol=0)
    state = result.model.state_dict()
    assert "embedding.index_map" in state  # the remapping travels with the weights
    exported = export_onnx(result.model, every_id[:2], tmp_path / "rows.onnx", opset=18, sparse=False)
    assert verify_onnx(exported.path, result.model, every_id, atol=1e-5) <= 1e-5


def test_embedding_noise_trains_per_row() -> None:
    model, ids = tiny_token_model()
    layer = EmbeddingSVD.from_dense(model.embedding).train()
    out = layer(ids)
    assert out.shape == (4, 7, 6)
    ratio = out / model.embedding.weight[ids]  # one multiplier per looked-up row: equal across features
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))
    (out.sum() + layer.kl()).backward()
    assert layer.log_alpha_param.grad is not None and torch.isfinite(layer.log_alpha_param.grad).all()


def _bundle(x: torch.Tensor, y: torch.Tensor, n_val: int) -> DataBundle:
    return DataBundle(name="tiny", train=TensorDataset(x[:-n_val], y[:-n_val]),
                      val=TensorDataset(x[-n_val:], y[-n_val:]), test=None, input_shape=tuple(x.shape[1:]),
                      num_classes=3)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model.train()(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("method", ["group_vd", "sparse_vd", "sbp"])
def test_compress_transformer_end_to_end(tmp_path: Path, method: str) -> None:
    model, _ = tiny_transformer()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 5, 6, generator=g)
    y = (x.mean(dim=(1, 2)) > 0).long() + (x[:, 0, 0] > 1).long()
    _fit(model, x[:-40], y[:-40])
    recipe = Recipe.from_dict({**_tiny_recipe(), "method": method, "exclude": ["head"], "epochs": 3,
                               "kl_warmup_epochs": 1, "mc_samples": 0, "plots": False,
                               "sweep_thresholds": [3.0]})
    result = compress(model, _bundle(x, y, 40), recipe, tmp_path, progress=False, log=lambda m: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["parity_max_abs_diff"] <= recipe.parity_atol
    assert "encoder.layers.0.self_attn" in report["conversion"]["converted"]
    if method == "group_vd":
        assert set(report["slim"]["heads"]) == {"encoder.layers.0.self_attn", "encoder.layers.1.self_attn"}
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.pt").is_file()
    # nn.TransformerEncoder is traced as the layers it holds (prunedrop.fxtrace.THROUGH): the manifest rebuilds
    # the slim model, heads removed or not, without its class (before, the state dict alone was saved)
    from prunedrop.storage import load_saved_model

    with torch.no_grad():
        assert torch.allclose(load_saved_model(tmp_path)(x), result.model.eval()(x), atol=1e-5)
    assert result.model(x[:2]).shape == (2, 3)


def test_compress_token_model_removes_unused_rows(tmp_path: Path) -> None:
    from prunedrop.testing import TokenClassifier

    torch.manual_seed(0)
    model = TokenClassifier(vocab=400, dim=32)  # 380 unused rows of 32: the id map costs less than they do
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (160, 7), generator=g)  # ids 20..399 never occur
    y = (ids[:, 0] % 3).long()
    _fit(model, ids[:-40], y[:-40])
    recipe = Recipe.from_dict({**_tiny_recipe(), "exclude": ["head"], "epochs": 4, "kl_warmup_epochs": 1,
                               "noise_lr": 1.0, "mc_samples": 0, "plots": False, "sweep_thresholds": [3.0]})
    result = compress(model, _bundle(ids, y, 40), recipe, tmp_path, progress=False, log=lambda m: None)
    report = json.loads((tmp_path / "report.json").read_text())
    before, after = report["slim"]["embedding_rows"]["embedding"]
    assert before == 400 and after <= 20  # every never-seen row goes (and perhaps some seen ones)
    assert report["parity_max_abs_diff"] <= recipe.parity_atol
    reloaded = load_saved_model(tmp_path)  # the remapped embedding reloads without its class
    every_id = torch.arange(400).reshape(50, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(every_id), result.model(every_id), atol=1e-6, rtol=0)


def _tiny_recipe() -> dict:
    import yaml

    return yaml.safe_load(TINY_RECIPE)


class _UserAttention(nn.Module):
    """A user's attention block written with nn.Linear projections (not nn.MultiheadAttention)."""

    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).reshape(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        weights = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        return self.o((weights @ v).transpose(1, 2).reshape(b, t, d))


def test_user_attention_block_from_linear_layers() -> None:
    torch.manual_seed(0)
    block = _UserAttention().eval()
    x = torch.randn(3, 5, 8)
    variational = to_variational(copy.deepcopy(block), Recipe(method="sparse_vd", **NEGLIGIBLE)).eval()
    assert set(variational_layers(variational)) == {"q", "k", "v", "o"}
    with torch.no_grad():
        torch.testing.assert_close(variational(x), block(x), atol=1e-6, rtol=0)
        variational.v.log_sigma2.fill_(20.0)  # every value weight pruned: only the biases remain
        torch.testing.assert_close(prune(variational).model(x), variational(x), atol=1e-6, rtol=0)


def test_a_large_vocabulary_s_id_map_is_stored_sparsely(tmp_path: Path) -> None:
    """A 200,000-id embedding with 30 rows kept: its ONNX file held the dense id → row map (1.6 MB, int64) for
    25 kB of weights. With the zero row first the map is mostly zeros, stored as a sparse Constant."""
    import onnx

    from prunedrop.export.sparse import lookup_tables
    from prunedrop.testing import TokenClassifier

    torch.manual_seed(0)
    model = TokenClassifier(200_000, 8, 3).eval()
    with torch.no_grad():
        keep = torch.zeros(200_000, dtype=torch.bool)
        keep[torch.randperm(200_000)[:30]] = True
        model.embedding.weight[~keep] = 0
    ids = torch.randint(0, 200_000, (4, 7))
    ids[0, :3] = torch.nonzero(keep).flatten()[:3]
    slim = remove_heads_and_rows(model, ids).model
    dense = export_onnx(slim, ids[:2], tmp_path / "dense.onnx", opset=18, sparse=False)
    packed = export_onnx(slim, ids[:2], tmp_path / "packed.onnx", opset=18)
    assert dense.num_bytes > 1_600_000 and packed.num_bytes < 20_000, (dense.num_bytes, packed.num_bytes)
    assert lookup_tables(onnx.load(dense.path).graph)  # the map, found as the data of a Gather
    every = torch.cat([torch.nonzero(keep).flatten()[:7], torch.arange(7)]).reshape(2, 7)
    assert verify_onnx(packed.path, slim, every, atol=1e-6) <= 1e-6
    onnx.checker.check_model(onnx.load(packed.path), full_check=True)


def test_the_python_api_feeds_whole_float_inputs_to_a_token_model_as_ids(tmp_path: Path) -> None:
    """`load_data("npz:...")` gives float32 inputs; compress() now fits them to the model as the CLI does."""
    model, _ = tiny_token_model(vocab=40)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (160, 7), generator=g)
    y = (ids[:, 0] % 3).long()
    _fit(model, ids[:-40], y[:-40])
    data = _bundle(ids.float(), y, 40)
    logs: list[str] = []
    recipe = Recipe.from_dict({**_tiny_recipe(), "epochs": 1, "mc_samples": 0, "plots": False})
    result = compress(model, data, recipe, tmp_path, progress=False, log=logs.append)
    assert any("fed as int64 token ids" in line for line in logs), logs
    assert result.report["parity_max_abs_diff"] <= recipe.parity_atol


@pytest.mark.parametrize("method", ["group_vd", "sbp"])
def test_a_head_costs_its_projection_rows_and_output_columns(method: str) -> None:
    """A params target counted an attention head as costing nothing (its parameters are not named weight or bias),
    so the autopilot gave the heads the smallest KL factor."""
    from prunedrop.autopilot import layer_costs

    model, x = tiny_transformer()
    variational = to_variational(copy.deepcopy(model), Recipe(method=method, exclude=["head"]))
    d, e = 4, 8  # head_dim, embed_dim of tiny_transformer: 2 heads
    per_head = 3 * d * e + 3 * d + e * d  # its q, k, v rows and biases, and its out_proj columns
    assert layer_costs(variational, x, "params")["encoder.layers.0.self_attn"] == per_head
