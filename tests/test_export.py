"""Tests for prunedrop.export: ONNX export, sparse storage, onnxruntime verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import numpy_helper
from torch import nn

import prunedrop
from prunedrop.errors import ParityError, PrunedropError
from prunedrop.export import (
    ExportResult,
    export_onnx,
    run_onnx,
    verify_onnx,
)
from prunedrop.export.sparse import sparse_constant
from prunedrop.testing import TINY_MODELS, TinyMLP, tiny_model

REPO = Path(prunedrop.__file__).resolve().parents[1]
PATH_MARKERS = (str(REPO).encode(), b"site-packages", b"/home", b"/root", b"/tmp")


def _pruned(model: nn.Module, fraction: float, seed: int = 0) -> nn.Module:
    """Zero ``fraction`` of every weight matrix / kernel, the way unstructured pruning leaves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() > 1:
                param.mul_((torch.rand(param.shape, generator=g) >= fraction).to(param.dtype))
    return model


def _sparse_constants(proto: onnx.ModelProto) -> dict[str, onnx.SparseTensorProto]:
    return {
        node.output[0]: attr.sparse_tensor
        for node in proto.graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "sparse_value"
    }


def _debug_fields(proto: onnx.ModelProto) -> list[str]:
    """Every non-empty doc_string / metadata_props below the model level."""
    found = []
    graph = proto.graph
    for message in (graph, *graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if message.doc_string:
            found.append(f"doc_string of {type(message).__name__}")
        if "metadata_props" in message.DESCRIPTOR.fields_by_name and len(message.metadata_props):
            found.append(f"metadata_props of {type(message).__name__}: {message.metadata_props[0].key}")
    return found


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_every_tiny_model_exports_with_parity(name: str, tmp_path: Path) -> None:
    model, x = tiny_model(name)
    result = export_onnx(model, x, tmp_path / "model.onnx")
    assert isinstance(result, ExportResult)
    assert result.path.is_file() and result.num_bytes == result.path.stat().st_size
    assert result.max_abs_diff is None
    # No temporary file left behind by the atomic write.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    onnx.checker.check_model(onnx.load(result.path), full_check=True)
    real_inputs = torch.randn(5, *x.shape[1:])
    assert verify_onnx(result.path, model, real_inputs) <= 1e-4


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_dynamic_batch(name: str, tmp_path: Path) -> None:
    model, x = tiny_model(name)
    assert x.shape[0] == 4
    path = export_onnx(model, x, tmp_path / "model.onnx").path
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 7):
        inputs = torch.randn(batch, *x.shape[1:])
        out = run_onnx(path, inputs)
        assert out.shape[0] == batch
        with torch.no_grad():
            np.testing.assert_allclose(out, model(inputs).numpy(), atol=1e-5)


def test_static_batch(tmp_path: Path) -> None:
    model, x = tiny_model("mlp")
    path = export_onnx(model, x, tmp_path / "model.onnx", dynamic_batch=False).path
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    with pytest.raises(PrunedropError, match="onnxruntime failed to run"):
        run_onnx(path, torch.randn(7, *x.shape[1:]))


def test_dynamo_exporter(tmp_path: Path) -> None:
    """The torch.export-based exporter (slow: one tiny model only), exported with a batch of 1."""
    model = _pruned(tiny_model("lenet5")[0], 0.9)
    x = torch.randn(1, *TINY_MODELS["lenet5"][1])
    result = export_onnx(
        model, x, tmp_path / "model.onnx", exporter="dynamo", metadata={"exporter": "dynamo"}
    )
    data = result.path.read_bytes()
    assert not [marker for marker in PATH_MARKERS if marker in data]
    proto = onnx.load(result.path)
    assert not _debug_fields(proto)
    assert {p.key: p.value for p in proto.metadata_props} == {"exporter": "dynamo"}
    assert result.sparse_initializers and result.num_bytes < result.dense_bytes
    onnx.checker.check_model(proto, full_check=True)
    for batch in (1, 7):
        assert verify_onnx(result.path, model, torch.randn(batch, *x.shape[1:])) <= 1e-4


class _WithDefaults(TinyMLP):
    """A forward with keyword arguments that have defaults, as users write them (a temperature, a switch, a mask)."""

    def forward(self, x: torch.Tensor, temperature: float = 2.0, hard: bool = False,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x) / temperature
        return out.round() if hard else out if mask is None else out + mask


def test_defaults_of_forward_stay_constants_of_the_export(tmp_path: Path) -> None:
    # The TorchScript exporter passed every defaulted parameter as one more graph input: two inputs here, and
    # onnxruntime, fed the batch alone, refused the file.
    torch.manual_seed(0)
    model, x = _WithDefaults().eval(), torch.randn(4, *TINY_MODELS["mlp"][1])
    path = export_onnx(model, x, tmp_path / "m.onnx").path
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert verify_onnx(path, model, torch.randn(7, *x.shape[1:])) <= 1e-5
    # the names are those of the model exported directly (the quantizer maps them to modules)
    torch.manual_seed(0)
    plain = onnx.load(export_onnx(TinyMLP().eval(), x, tmp_path / "plain.onnx").path)
    assert sorted(t.name for t in proto.graph.initializer) == sorted(t.name for t in plain.graph.initializer)
    assert {n.name for n in plain.graph.node if n.op_type == "Gemm"} <= {n.name for n in proto.graph.node}


def test_sparse_storage_is_smaller_identical_and_valid(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _pruned(TinyMLP(64, (48, 32), 10).eval(), 0.9)
    x = torch.randn(4, 64)
    dense = export_onnx(model, x, tmp_path / "dense.onnx", sparse=False)
    sparse = export_onnx(model, x, tmp_path / "sparse.onnx", sparse="auto")

    assert sparse.num_bytes < dense.num_bytes / 3
    assert sparse.dense_bytes == dense.num_bytes == dense.dense_bytes
    weights = [f"net.{i}.weight" for i in (1, 3, 5)]
    assert sparse.sparse_initializers == weights  # the biases have no zeros

    proto = onnx.load(sparse.path)
    onnx.checker.check_model(proto, full_check=True)
    assert sorted(_sparse_constants(proto)) == sorted(weights)
    assert not set(weights) & {init.name for init in proto.graph.initializer}

    inputs = torch.randn(9, 64)
    np.testing.assert_array_equal(run_onnx(sparse.path, inputs), run_onnx(dense.path, inputs))
    assert verify_onnx(sparse.path, model, inputs) <= 1e-5


def test_sparse_indices_are_linearized_int64_varints(tmp_path: Path) -> None:
    """The smallest layout the onnx checker accepts: [NNZ] INT64 indices, packed varints, ascending."""
    model = _pruned(TinyMLP(64, (48, 32), 10).eval(), 0.9)
    path = export_onnx(model, torch.randn(4, 64), tmp_path / "m.onnx").path
    proto = onnx.load(path)
    dense_names = {init.name for init in proto.graph.initializer}
    for name, sparse in _sparse_constants(proto).items():
        indices = sparse.indices
        assert indices.data_type == onnx.TensorProto.INT64 and not indices.raw_data
        assert list(indices.dims) == [len(indices.int64_data)] == list(sparse.values.dims)
        assert np.all(np.diff(np.asarray(indices.int64_data)) > 0)
        assert name not in dense_names


def test_sparse_false_leaves_everything_dense(tmp_path: Path) -> None:
    model, x = tiny_model("lenet5")
    _pruned(model, 0.95)
    result = export_onnx(model, x, tmp_path / "m.onnx", sparse=False)
    proto = onnx.load(result.path)
    assert result.sparse_initializers == []
    assert result.num_bytes == result.dense_bytes
    assert not _sparse_constants(proto)
    names = {name for name, _ in model.named_parameters()}
    assert names <= {init.name for init in proto.graph.initializer}


def test_sparse_auto_keeps_dense_tensors_and_true_forces(tmp_path: Path) -> None:
    model, x = tiny_model("mlp")
    with torch.no_grad():
        model.net[1].weight[0, 0] = 0.0  # one zero: sparse is far bigger
        model.net[3].weight.zero_()  # no non-zero at all: NNZ = 0
    auto = export_onnx(model, x, tmp_path / "auto.onnx", sparse="auto")
    assert auto.sparse_initializers == ["net.3.weight"]
    forced = export_onnx(model, x, tmp_path / "forced.onnx", sparse=True)
    assert forced.sparse_initializers == ["net.1.weight", "net.3.weight"]
    assert forced.num_bytes > auto.num_bytes
    onnx.checker.check_model(onnx.load(forced.path), full_check=True)
    inputs = torch.randn(3, *x.shape[1:])
    np.testing.assert_array_equal(run_onnx(auto.path, inputs), run_onnx(forced.path, inputs))


def test_sparse_needs_opset_11(tmp_path: Path) -> None:
    model, x = tiny_model("mlp")
    _pruned(model, 0.95)
    assert export_onnx(model, x, tmp_path / "a.onnx", opset=9).sparse_initializers == []
    with pytest.raises(PrunedropError, match="opset 11"):
        export_onnx(model, x, tmp_path / "b.onnx", opset=9, sparse=True)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
        elements=st.sampled_from([0.0, 0.0, 0.0, 1.5, -2.0, 3e-8]),
    )
)
def test_sparse_constant_round_trip(array: np.ndarray) -> None:
    node = sparse_constant(numpy_helper.from_array(array, name="w"))
    if np.all(array != 0):
        assert node is None
        return
    assert node is not None
    sparse = node.attribute[0].sparse_tensor
    dense = np.zeros(array.size, np.float32)
    dense[np.asarray(sparse.indices.int64_data, dtype=np.int64)] = numpy_helper.to_array(sparse.values)
    np.testing.assert_array_equal(dense.reshape(tuple(sparse.dims)), array)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("shape", [(300, 784), (10, 100), (16, 8, 3, 3)])
def test_stored_bytes_is_what_the_file_spends_on_a_tensor(shape: tuple[int, ...], density: float) -> None:
    from prunedrop.export.sparse import index_bytes, stored_bytes

    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)
    init = numpy_helper.from_array(array, name="w")
    node = sparse_constant(init)
    # the file keeps the smaller of the two forms (sparsify_initializers' "auto")
    spent = min(init.ByteSize(), node.ByteSize()) if node is not None else init.ByteSize()
    estimate = stored_bytes(array)
    assert abs(estimate - spent) <= 0.02 * spent + 64, (estimate, spent)
    assert stored_bytes(torch.from_numpy(array).numpy()) == estimate
    assert list(index_bytes(np.array([0, 127, 128, 16383, 16384, 2**21]))) == [1, 1, 2, 2, 3, 4]


def test_metadata_props(tmp_path: Path) -> None:
    model, x = tiny_model("mlp")
    metadata = {"prunedrop.version": prunedrop.__version__, "params.kept": "123/456"}
    path = export_onnx(model, x, tmp_path / "m.onnx", metadata=metadata).path
    assert {p.key: p.value for p in onnx.load(path).metadata_props} == metadata
    with pytest.raises(TypeError, match="metadata"):
        export_onnx(model, x, tmp_path / "m.onnx", metadata={"params": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize("name", ["lenet5", "residual"])
def test_file_holds_no_local_paths(name: str, tmp_path: Path) -> None:
    model, x = tiny_model(name)
    path = export_onnx(model, x, tmp_path / "m.onnx").path
    data = path.read_bytes()
    assert not [marker for marker in PATH_MARKERS if marker in data]
    assert not _debug_fields(onnx.load(path))


class _Eig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eig(self.fc(x).reshape(-1, 2, 2)).eigenvalues.real


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_unsupported_operator_is_a_one_line_error(
    exporter: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(PrunedropError, match="linalg_eig") as info:
        export_onnx(_Eig().eval(), torch.randn(4, 4), tmp_path / "m.onnx", exporter=exporter)
    assert "\n" not in info.value.message
    assert not (tmp_path / "m.onnx").exists()
    # The exporters' own dumps (the TorchScript one prints the whole graph from C++) stay hidden.
    out, err = capfd.readouterr()
    assert "graph" not in out and "graph" not in err


class _Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bl = nn.Bilinear(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bl(torch.relu(self.fc(x)), x)


def test_auto_exports_with_dynamo_what_torchscript_cannot(tmp_path: Path) -> None:
    """``nn.Bilinear`` (aten::bilinear) has no TorchScript export: such a model was refused before any training."""
    torch.manual_seed(0)
    model, x = _Bilinear().eval(), torch.randn(5, 4)
    with pytest.raises(PrunedropError, match="bilinear"):
        export_onnx(model, x[:2], tmp_path / "ts.onnx", exporter="torchscript")
    result = export_onnx(model, x[:2], tmp_path / "m.onnx")  # auto, the default
    assert result.exporter == "dynamo" and "aten::bilinear" in (result.fallback or "")
    assert verify_onnx(result.path, model, x) <= 1e-4
    plain = export_onnx(nn.Linear(4, 3).eval(), x[:2], tmp_path / "plain.onnx")
    assert plain.exporter == "torchscript" and plain.fallback is None


def test_auto_says_both_exporters_when_neither_can(tmp_path: Path) -> None:
    with pytest.raises(PrunedropError, match="linalg_eig") as info:
        export_onnx(_Eig().eval(), torch.randn(4, 4), tmp_path / "m.onnx", exporter="auto")
    assert "torchscript exporter" in info.value.message and "the dynamo exporter failed too" in info.value.message
    assert "\n" not in info.value.message and not (tmp_path / "m.onnx").exists()


def test_unwritable_folder_is_an_error(tmp_path: Path) -> None:
    model, x = tiny_model("mlp")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(PrunedropError, match="cannot write"):
        export_onnx(model, x, blocker / "m.onnx")
    with pytest.raises(PrunedropError, match="cannot write"):
        export_onnx(model, x, tmp_path)  # an existing folder, not a file


def test_parity_error_for_the_wrong_model(tmp_path: Path) -> None:
    model, x = tiny_model("lenet5", seed=0)
    other, _ = tiny_model("lenet5", seed=1)
    path = export_onnx(model, x, tmp_path / "m.onnx").path
    with pytest.raises(
        ParityError, match=r"ONNX output differs from PyTorch by .* \(> atol 0.0001\)"
    ) as info:
        verify_onnx(path, other, x)
    assert "\n" not in info.value.message


def test_parity_error_for_a_shape_mismatch(tmp_path: Path) -> None:
    model, x = tiny_model("mlp")
    path = export_onnx(model, x, tmp_path / "m.onnx").path
    with pytest.raises(ParityError, match="shape"):
        verify_onnx(path, TinyMLP(num_classes=5).eval(), x)


def test_export_restores_training_modes(tmp_path: Path) -> None:
    model, x = tiny_model("residual")
    model.train()
    model.bn1.eval()  # a caller's frozen BatchNorm must stay frozen
    export_onnx(model, x, tmp_path / "m.onnx")
    verify_onnx(tmp_path / "m.onnx", model, x)
    assert model.training and model.stem.training and not model.bn1.training


def test_run_onnx_numpy_input_and_threads(tmp_path: Path) -> None:
    model, x = tiny_model("conv1d")
    path = export_onnx(model, x, tmp_path / "m.onnx").path
    from_numpy = run_onnx(path, x.numpy().astype(np.float64), threads=1)
    np.testing.assert_array_equal(from_numpy, run_onnx(path, x))
    with pytest.raises(PrunedropError, match="not found"):
        run_onnx(tmp_path / "missing.onnx", x)


def test_bad_arguments(tmp_path: Path) -> None:
    model, x = tiny_model("mlp")
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model, x, tmp_path / "m.onnx", exporter="tflite")
    with pytest.raises(ValueError, match="sparse"):
        export_onnx(model, x, tmp_path / "m.onnx", sparse="yes")


class _Autocast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.fc(x)


def test_a_graph_onnxruntime_cannot_run_in_half_precision_names_the_cause(tmp_path: Path) -> None:
    """torch.autocast in the forward exports bfloat16 Gemms that onnxruntime's CPU provider lacks; the error said
    only "re-export the model"."""
    from prunedrop.export.runtime import _half_precision, open_session

    result = export_onnx(_Autocast().eval(), torch.randn(2, 4), tmp_path / "m.onnx", sparse=False)
    assert _half_precision(result.path)
    assert not _half_precision(export_onnx(nn.Linear(4, 3).eval(), torch.randn(2, 4), tmp_path / "f.onnx").path)
    try:
        open_session(result.path)
    except PrunedropError as e:
        assert "NOT_IMPLEMENTED" in e.message and "\n" not in e.message
        assert "float16/bfloat16 (torch.autocast or .half() in the forward?)" in e.message
    else:
        pytest.skip("this onnxruntime runs bfloat16 Gemm on the CPU")


def _rejected_graph() -> onnx.ModelProto:
    """A graph onnx's checker rejects as the dynamo exporter wrote nn.LSTM(proj_size=…): a Concat of ranks 1 and 2."""
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Concat", ["a", "b"], ["out"], axis=0)], "g", [a, b], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_graph_onnx_rejects_is_an_export_failure_in_one_line(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The dynamo exporter wrote an LSTM with projections as a graph that onnx's shape inference rejects, and the
    run stopped with onnx's traceback; under "auto" a graph the TorchScript exporter wrote wrongly goes to dynamo."""
    import prunedrop.export.trace as trace

    model, x = nn.Linear(3, 2).eval(), torch.randn(2, 3)
    monkeypatch.setattr(trace, "_trace_dynamo", lambda *a, **k: _rejected_graph())
    with pytest.raises(PrunedropError, match="dynamo exporter") as info:
        export_onnx(model, x, tmp_path / "m.onnx", exporter="dynamo")
    assert "\n" not in info.value.message and not (tmp_path / "m.onnx").exists()
    monkeypatch.undo()
    monkeypatch.setattr(trace, "_trace_torchscript", lambda *a, **k: _rejected_graph())
    result = export_onnx(model, x, tmp_path / "auto.onnx")
    assert result.exporter == "dynamo" and "torchscript exporter" in (result.fallback or "")
    assert verify_onnx(result.path, model, x) <= 1e-5


def test_the_dynamo_exporter_s_graph_passes_say_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """onnx_ir's initializer deduplication warned "Skipped deduplication of initializer 'row_result' ..." on the
    terminal when the dynamo exporter wrote an EmbeddingBag with padding_idx (which TorchScript cannot write)."""
    import logging

    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(12, 4, mode="mean", padding_idx=0), nn.Linear(4, 2)).eval()
    ids = torch.randint(0, 12, (3, 5))
    with caplog.at_level(logging.DEBUG):
        result = export_onnx(model, ids[:2], tmp_path / "bag.onnx")
    assert result.exporter == "dynamo"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("onnx")]


class _KMaxInOrder(nn.Module):
    """k-max pooling that keeps the largest values in their time order: topk's positions, sorted, then gathered."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv1d(4, 8, 3, padding=1), nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        positions = h.topk(3, dim=2).indices.sort(dim=2).values
        return self.fc(h.gather(2, positions).flatten(1))


def test_a_parity_failure_from_ties_names_the_selection(tmp_path: Path) -> None:
    """ReLU's zeros tie, onnxruntime's TopK picks other positions among them than PyTorch's, and the gathered values
    come out in another order: the parity error said only "operators whose ONNX version behaves differently"."""
    torch.manual_seed(0)
    model, x = _KMaxInOrder().eval(), torch.randn(16, 4, 12)
    path = export_onnx(model, x, tmp_path / "kmax.onnx").path
    with pytest.raises(ParityError, match=r"selects by rank \(TopK\)"):
        verify_onnx(path, model, x)


def test_the_tie_hint_is_given_only_where_the_file_selects_by_rank(tmp_path: Path) -> None:
    from prunedrop.export.runtime import _tie_hint

    x = torch.randn(4, 4, 12)
    ranked = export_onnx(_KMaxInOrder().eval(), x, tmp_path / "kmax.onnx").path
    plain = export_onnx(nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU()).eval(), x, tmp_path / "plain.onnx").path
    assert "TopK" in _tie_hint(ranked) and _tie_hint(plain) == ""
    assert _tie_hint(tmp_path / "missing.onnx") == ""


class _AutocastConv(torch.nn.Module):
    """A convolution under torch.autocast (bfloat16 on the CPU), cast back to float32 for the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.relu(self.conv(x))
        return self.fc(h.float().mean((2, 3)))


def test_a_graph_in_bfloat16_is_named_in_the_export_error(tmp_path: Path) -> None:
    """Both exporters fail on a convolution under autocast (ONNX's Conv takes no bfloat16), and the error said to
    "simplify the model's forward or try the other exporter", which both had been. It names bfloat16 and autocast."""
    with pytest.raises(PrunedropError, match=r"computes in bfloat16 \(a torch.autocast in the forward"):
        export_onnx(_AutocastConv().eval(), torch.randn(2, 1, 6, 6), tmp_path / "model.onnx")
