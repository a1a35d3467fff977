"""Tests for prunedrop.storage: safe model loading, the JSON architecture manifest, checkpoints."""

from __future__ import annotations

import json
import os
import pickletools
import random
import re
import sys
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from prunedrop.errors import PrunedropError
from prunedrop.storage import (
    ARCHITECTURE_FILE,
    WEIGHTS_FILE,
    capture_rng_state,
    load_checkpoint,
    load_model,
    load_saved_model,
    restore_rng_state,
    save_checkpoint,
    save_model,
)
from prunedrop.testing import TINY_MODELS, TinyLeNet5, TinyMLP, tiny_model

MLP_ARCH = "prunedrop.testing:TinyMLP"


def raises_one_line(fn: Callable[[], object], *fragments: str) -> str:
    """Call ``fn``, expect a PrunedropError whose single-line message contains every fragment."""
    with pytest.raises(PrunedropError) as info:
        fn()
    message = info.value.format_message()
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.fixture
def mlp() -> tuple[nn.Module, torch.Tensor]:
    return tiny_model("mlp")


def assert_same_output(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max().item() == 0


# --------------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nesting", [None, "state_dict", "model", "model_state_dict", "net", "weights"])
def test_load_state_dict_with_arch(tmp_path, mlp, nesting):
    model, x = mlp
    state = model.state_dict()
    torch.save(state if nesting is None else {nesting: state, "epoch": 3}, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", arch=MLP_ARCH)
    assert isinstance(loaded, TinyMLP) and not loaded.training
    assert_same_output(model, loaded, x)


def test_a_checkpoint_with_several_state_dicts_under_other_keys_names_them(tmp_path, mlp):
    model, _ = mlp
    torch.save({"live": model.state_dict(), "ema": model.state_dict(), "epoch": 3}, tmp_path / "m.pt")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch=MLP_ARCH), "holds 2 state dicts (under live, ema)",
                    "checkpoint[KEY]")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "module._orig_mod."])
def test_load_strips_a_wrappers_prefix(tmp_path, mlp, prefix):
    """DataParallel's module., torch.compile's _orig_mod. (a compiled model's state dict did not fit its own
    architecture), a Lightning module's model., and both at once."""
    model, x = mlp
    torch.save({f"{prefix}{k}": v for k, v in model.state_dict().items()}, tmp_path / "m.pt")
    assert_same_output(model, load_model(tmp_path / "m.pt", arch=MLP_ARCH), x)


def _lazy() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.LazyLinear(3))


def test_a_lazy_architecture_loads_as_its_plain_layers(tmp_path, monkeypatch):
    """nn.LazyLinear has no shapes before loading (reading them raised a traceback), and stays LazyLinear until
    its first forward, which a conversion need not wait for."""
    from prunedrop.convert import ConversionSummary, to_variational
    from prunedrop.recipes import Recipe

    torch.manual_seed(0)
    model = _lazy()
    x = torch.randn(4, 16)
    model(x)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "lazyarch_for_test", types.SimpleNamespace(build=_lazy))
    loaded = load_model(tmp_path / "m.pt", arch="lazyarch_for_test:build")
    assert [type(m) for m in loaded] == [torch.nn.Flatten, torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert_same_output(model, loaded, x)
    summary = ConversionSummary()
    to_variational(loaded, Recipe(), summary=summary)  # no forward before it
    assert summary.converted == ["1", "3"]


class _LazyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.LazyConv2d(6, 3, padding=1)
        self.bn = nn.LazyBatchNorm2d()
        self.up = nn.LazyConvTranspose2d(4, 2, stride=2)
        self.fc = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.up(F.relu(self.bn(self.conv(x))))).mean((2, 3)))


LAZY_ARCHS = {  # a factory with lazy layers, and the same model with the plain layers they become
    "linear": (lambda: nn.Sequential(nn.Flatten(), nn.LazyLinear(12), nn.ReLU(), nn.LazyLinear(3)),
               lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))),
    "conv": (_LazyConvNet, None),
}


@pytest.mark.parametrize("case", sorted(LAZY_ARCHS))
def test_a_lazy_model_is_compressed_with_its_architecture_json(case, tmp_path, monkeypatch):
    """A lazy layer filled by the state dict kept the input size 0 that only its first forward sets: every copy
    rebuilt from its sizes warned "Initializing zero-element tensors", and architecture.json recorded the 0 (its
    check failed, the file was not written). The loaded layer has the sizes of its weights, and a run writes an
    architecture.json that loads back to the same outputs."""
    import warnings

    from prunedrop.data import DataBundle
    from prunedrop.pipeline import compress
    from prunedrop.recipes import Recipe
    from prunedrop.testing import tiny_classification_data

    build, plain = LAZY_ARCHS[case]
    torch.manual_seed(0)
    model = build()
    x, y = tiny_classification_data(n=96, shape=(1, 4, 4), seed=1)
    model(x[:2])
    torch.save(model.state_dict(), tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "lazyarch_sizes_for_test", types.SimpleNamespace(build=build))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(tmp_path / "m.pt", arch="lazyarch_sizes_for_test:build")
        if plain is not None:
            assert [type(m) for m in loaded] == [type(m) for m in plain()]
            assert repr(loaded) == repr(plain())  # in_features as a forward would have set it
        else:
            assert (loaded.conv.in_channels, loaded.bn.num_features, loaded.up.in_channels, loaded.fc.in_features) \
                == (1, 6, 6, 4)
        assert_same_output(model.eval(), loaded, x[:8])
        data = DataBundle(name="tiny", train=torch.utils.data.TensorDataset(x[:64], y[:64]),
                          val=torch.utils.data.TensorDataset(x[64:], y[64:]), test=None, input_shape=(1, 4, 4),
                          num_classes=3)
        lines: list[str] = []
        recipe = Recipe(epochs=1, batch_size=32, kl_weight=1.0, kl_warmup_epochs=0, finetune_epochs=1,
                        latency_runs=0, plots=False, mc_samples=0, max_metric_drop=None, quantize="none")
        result = compress(loaded, data, recipe, tmp_path / "run", progress=False, log=lines.append)
    assert not [w for w in caught if "zero-element" in str(w.message)], [str(w.message) for w in caught]
    assert not [line for line in lines if "architecture.json not written" in line], lines
    assert (tmp_path / "run" / ARCHITECTURE_FILE).is_file()
    assert_same_output(result.model, load_saved_model(tmp_path / "run"), x[:8])


def test_a_factory_that_compiles_its_model_loads_a_plain_state_dict(tmp_path, mlp, monkeypatch):
    model, x = mlp
    torch.save(model.state_dict(), tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "compiledarch_for_test",
                        types.SimpleNamespace(build=lambda: torch.compile(TinyMLP())))
    loaded = load_model(tmp_path / "m.pt", arch="compiledarch_for_test:build")
    assert type(loaded) is TinyMLP
    assert_same_output(model, loaded, x)


@pytest.mark.parametrize("wrap", ["compile", "data_parallel"])
def test_a_pickled_wrapper_gives_the_model_inside(tmp_path, mlp, wrap):
    """A pickled torch.compile(model) ran its compiled graph: the swapped layers were never called and FLOPs read 0."""
    model, x = mlp
    wrapped = torch.compile(model) if wrap == "compile" else torch.nn.DataParallel(model)
    torch.save(wrapped, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", trust_pickle=True)
    assert isinstance(loaded, TinyMLP)
    assert_same_output(model, loaded, x)


def test_a_prefix_that_does_not_give_the_models_keys_is_not_stripped(tmp_path, mlp):
    model, _ = mlp
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    state["_orig_mod.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "m.pt")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch=MLP_ARCH), "unexpected keys _orig_mod.")


def test_arch_mismatch_is_one_line_listing_keys_and_shapes(tmp_path):
    torch.save(TinyLeNet5().state_dict(), tmp_path / "lenet.pt")
    raises_one_line(
        lambda: load_model(tmp_path / "lenet.pt", arch=MLP_ARCH), "missing keys net.1.weight", "unexpected keys conv1"
    )
    torch.save(TinyMLP(in_features=32).state_dict(), tmp_path / "wide.pt")
    raises_one_line(
        lambda: load_model(tmp_path / "wide.pt", arch=MLP_ARCH),
        "shape mismatches net.1.weight: file has (12, 32), model has (12, 16)",
    )


@pytest.mark.parametrize(
    ("arch", "fragment"),
    [
        ("no_such_module_xyz:build", "cannot import module"),
        ("prunedrop.testing:NoSuchFactory", "has no attribute"),
        ("math:pi", "not callable"),
        ("builtins:dict", "returned an empty dict, not an nn.Module"),
        ("torch.nn:Linear", "failed when called with no arguments"),
        ("no-colon", "module:name"),
    ],
)
def test_bad_arch(tmp_path, mlp, arch, fragment):
    torch.save(mlp[0].state_dict(), tmp_path / "m.pt")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch=arch), fragment)


def test_pickled_module_needs_trust(tmp_path, mlp):
    model, x = mlp
    torch.save(model, tmp_path / "whole.pt")
    raises_one_line(
        lambda: load_model(tmp_path / "whole.pt"),
        "pickled module",
        "TinyMLP",
        "arbitrary code",
        "--arch module:factory",
        "--trust-pickle",
    )
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert not loaded.training
    assert_same_output(model, loaded, x)
    # With --arch too, the weights of the trusted pickle go into the user's architecture.
    assert_same_output(model, load_model(tmp_path / "whole.pt", arch=MLP_ARCH, trust_pickle=True), x)
    raises_one_line(lambda: load_model(tmp_path / "whole.pt", arch=MLP_ARCH), "pickled module", "state_dict()")


def test_pickled_module_whose_class_is_gone(tmp_path):
    # A pickle naming a class this process cannot import: the typical "saved from a notebook" file.
    notebook = types.ModuleType("prunedrop_test_notebook")
    gone = type("Gone", (nn.Linear,), {"__module__": notebook.__name__})
    notebook.Gone = gone
    sys.modules[notebook.__name__] = notebook
    try:
        torch.save(gone(2, 2), tmp_path / "gone.pt")
    finally:
        del sys.modules[notebook.__name__]
    raises_one_line(lambda: load_model(tmp_path / "gone.pt"), "prunedrop_test_notebook.Gone", "--trust-pickle")
    raises_one_line(lambda: load_model(tmp_path / "gone.pt", trust_pickle=True), "cannot unpickle", "--arch")


def test_state_dict_without_arch(tmp_path, mlp):
    torch.save(mlp[0].state_dict(), tmp_path / "m.pt")
    raises_one_line(lambda: load_model(tmp_path / "m.pt"), "state dict", "--arch module:factory")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", trust_pickle=True), "--arch")


def _torchscript(path: Path) -> None:
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), path)


def _exported(path: Path) -> None:
    torch.export.save(torch.export.export(nn.Linear(3, 2), (torch.randn(1, 3),)), path)


def _truncated(path: Path) -> None:
    torch.save(nn.Linear(30, 20).state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize(
    ("name", "make", "fragments"),
    [
        ("missing.pt", lambda p: None, ["does not exist"]),
        ("folder", lambda p: p.mkdir(), ["is a folder"]),
        ("empty.pt", lambda p: p.write_bytes(b""), ["is empty"]),
        ("truncated.pt", _truncated, ["truncated or corrupt"]),
        ("random.pt", lambda p: p.write_bytes(os.urandom(256)), ["not a file written by torch.save"]),
        ("text.pt", lambda p: p.write_text("hello"), ["not a file written by torch.save"]),
        ("model.onnx", lambda p: p.write_bytes(b"\x08\x07\x12\x07pytorch"), ["ONNX file"]),
        ("script.pt", _torchscript, ["TorchScript", "cannot be converted", "state_dict()"]),
        ("program.pt2", _exported, ["torch.export", "cannot be converted", "state_dict()"]),
        ("list.pt", lambda p: torch.save([1, 2, 3], p), ["holds a builtins.list, not a model or a state dict"]),
        ("config.pt", lambda p: torch.save({"lr": 0.1}, p), ["holds a dict with keys 'lr'"]),
    ],
)
@pytest.mark.parametrize("arch", [None, MLP_ARCH])
def test_unusable_model_files(tmp_path, name, make, fragments, arch):
    path = tmp_path / name
    make(path)
    if arch is not None and name in ("list.pt", "config.pt"):
        fragments = ["not a state dict"]
    raises_one_line(lambda: load_model(path, arch=arch), *fragments)


_VALID_BLOBS: dict[str, bytes] = {}


def _valid_blob(kind: str) -> bytes:
    """Bytes of real files, made once: fuzzing their truncations reaches deeper into torch's readers."""
    if kind not in _VALID_BLOBS:
        import io as _io

        buffer = _io.BytesIO()
        model = TinyMLP()
        if kind == "state_dict":
            torch.save(model.state_dict(), buffer)
        elif kind == "module":
            torch.save(model, buffer)
        elif kind == "legacy":
            torch.save(model, buffer, _use_new_zipfile_serialization=False)
        else:
            torch.jit.save(torch.jit.script(model), buffer)
        _VALID_BLOBS[kind] = buffer.getvalue()
    return _VALID_BLOBS[kind]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=2048),
        st.tuples(
            st.sampled_from(["state_dict", "module", "legacy", "torchscript"]), st.floats(0.0, 0.999)
        ).map(lambda t: _valid_blob(t[0])[: max(1, int(len(_valid_blob(t[0])) * t[1]))]),
    ),
    trust_pickle=st.booleans(),
)
def test_fuzzed_bytes_only_raise_prunedrop_error(tmp_path, data, trust_pickle):
    path = tmp_path / "fuzz.pt"
    path.write_bytes(data)
    with pytest.raises(PrunedropError) as info:
        load_model(path, trust_pickle=trust_pickle)
    assert "\n" not in info.value.format_message()


# --------------------------------------------------------------------------------------------------
# save_model / load_saved_model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_every_tiny_model_round_trips_exactly(tmp_path, monkeypatch, name):
    model, x = tiny_model(name)
    weights, manifest_path = save_model(model, tmp_path, x)
    assert sorted(os.listdir(tmp_path)) == [ARCHITECTURE_FILE, WEIGHTS_FILE]  # no temporary files left

    text = manifest_path.read_text()
    for leak in ("prunedrop.testing", "__main__", "pickle", "<class"):
        assert leak not in text
    manifest = json.loads(text)
    assert (manifest["format"], manifest["version"]) == ("prunedrop-architecture", 1)
    assert manifest["input_shape"] == list(x.shape)
    assert manifest["torch_version"] == torch.__version__

    state = torch.load(weights, weights_only=True)
    assert state.keys() == model.state_dict().keys()

    # A None entry makes `import prunedrop.testing` fail: rebuilding must not need the model's code.
    monkeypatch.setitem(sys.modules, "prunedrop.testing", None)
    rebuilt = load_saved_model(tmp_path)
    assert isinstance(rebuilt, torch.fx.GraphModule) and not rebuilt.training
    assert type(rebuilt).__module__.startswith("torch.fx")
    assert_same_output(model, rebuilt, x)
    assert_same_output(model, load_model(tmp_path), x)  # load_model accepts the folder too


class ScaledLinear(nn.Linear):
    """A user subclass with its own forward: fx traces through it instead of treating it as a Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * 0.5, self.bias)


class Everything(nn.Module):
    """Exercises every kind of manifest value: get_attr, tensor constants, slices, lists, kwargs, -inf, dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding="same", padding_mode="reflect", bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.ln = nn.LayerNorm(16, elementwise_affine=True, bias=False)
        self.scaled = ScaledLinear(16, 6)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.register_buffer("offset", torch.arange(6.0))
        self.head = nn.Sequential(nn.GELU(approximate="tanh"), nn.Dropout(0.3), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        h = self.ln(h.view(x.size(0), -1))
        a = self.scaled(h) * self.scale + self.offset
        a = a.masked_fill(a > 3.0, float("-inf")).softmax(dim=-1)
        b = torch.cat([a[:, :3], a[..., 3:]], dim=1).to(torch.float32).to(device=torch.device("cpu"))
        # head.2 is called as a layer and its bias is also read directly
        out = self.head(torch.cat((b, y[:, 0, :]), 1)) + torch.tensor([1.0, 2.0, 3.0]) * self.head[2].bias
        return out, {"probs": b, "n": x.shape[0] * torch.ones(1, device=x.device, dtype=x.dtype)}


def test_round_trip_of_every_argument_kind(tmp_path):
    torch.manual_seed(0)
    model = Everything().eval()
    model.bn.running_mean.uniform_(-1, 1)
    x, y = torch.randn(3, 2, 5, 5), torch.randn(3, 2, 6)
    model.train()  # save_model traces in eval mode and gives the model its modes back
    save_model(model, tmp_path, (x, y))
    assert model.training and model.head[1].training
    text = (tmp_path / ARCHITECTURE_FILE).read_text()
    assert "ScaledLinear" not in text and '"-inf"' in text
    rebuilt = load_saved_model(tmp_path)
    model.eval()
    with torch.no_grad():
        (out, extra), (out2, extra2) = model(x, y), rebuilt(x, y)
    assert torch.equal(out, out2) and torch.equal(extra["probs"], extra2["probs"])
    assert torch.equal(extra["n"], extra2["n"])
    assert isinstance(rebuilt.get_parameter("scale"), nn.Parameter)


class WithDefaults(nn.Module):
    """Defaulted parameters after the inputs: a temperature, a switch, an optional mask."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, y, temperature: float = 2.0, mask=None, *, hard: bool = False):
        out = self.fc(x + y) / temperature
        if mask is not None:  # symbolically, a Proxy is not None: the rebuilt model added None
            out = out + mask
        return out.round() if hard else out


def test_defaulted_parameters_are_saved_as_called(tmp_path):
    torch.manual_seed(0)
    model, x, y = WithDefaults().eval(), torch.randn(5, 4), torch.randn(5, 4)
    save_model(model, tmp_path, (x, y))  # two inputs given, the rest take their defaults
    rebuilt = load_saved_model(tmp_path)
    assert [n.name for n in rebuilt.graph.nodes if n.op == "placeholder"] == ["x", "y"]
    assert "_assert" not in rebuilt.code
    with torch.no_grad():
        assert torch.equal(model(x, y), rebuilt(x, y))


def test_dtype_is_kept_and_global_rng_untouched(tmp_path, mlp):
    model, x = mlp
    model = model.double()
    save_model(model, tmp_path, x.double())
    before = torch.get_rng_state()
    rebuilt = load_saved_model(tmp_path)
    assert torch.equal(before, torch.get_rng_state())
    assert next(rebuilt.parameters()).dtype == torch.float64
    assert_same_output(model, rebuilt, x.double())


def test_views_are_saved_compactly(tmp_path):
    big = nn.Linear(200, 100)
    small = nn.Linear(20, 10)
    small.weight = nn.Parameter(big.weight.detach()[:10, :20])  # what slicing a pruned layer gives
    save_model(small, tmp_path, torch.randn(2, 20))
    assert (tmp_path / WEIGHTS_FILE).stat().st_size < 10_000


class ZooIdioms(nn.Module):
    """What the torchvision and timm zoo writes: a child named with a hyphen (RegNet's "block1-0"), a shape check
    with torch._assert (ViT), nn.MultiheadAttention and F.scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Module()
        self.blocks.add_module("block1-0", nn.Linear(8, 8))
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True, kdim=6, vdim=6)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[-1] == 8, "expected 8 features")
        h = getattr(self.blocks, "block1-0")(x)
        h = h + self.attention(h, memory, memory, need_weights=False)[0]
        q = h.unflatten(-1, (2, 4)).transpose(1, 2)
        h = h + F.scaled_dot_product_attention(q, q, q).transpose(1, 2).flatten(2)
        return self.head(h.mean(1))


def test_zoo_idioms_round_trip(tmp_path):
    torch.manual_seed(0)
    model, x, memory = ZooIdioms().eval(), torch.randn(2, 5, 8), torch.randn(2, 7, 6)
    save_model(model, tmp_path, (x, memory))
    manifest = json.loads((tmp_path / ARCHITECTURE_FILE).read_text())
    assert "blocks.block1-0" in manifest["modules"]
    assert manifest["modules"]["attention"]["args"]["add_bias_kv"] is True
    assert not any("_assert" in str(n["target"]) for n in manifest["graph"])  # the check is not part of the model
    rebuilt = load_saved_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(x, memory), rebuilt(x, memory))


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class WithFunction(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, 4)


class WithMethod(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.histc(4)


class WithRequiresGrad(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.requires_grad


class Hooked(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 2))
        self[0].register_forward_hook(lambda module, args, out: out * 2)


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda: nn.Sequential(nn.RReLU()), ["module '0'", "torch.nn.modules.activation.RReLU",
                                                  "architecture.json"]),
        (WithFunction, ["torch.histc", "not in prunedrop's allowlist"]),
        (WithMethod, ["Tensor.histc", "not in prunedrop's allowlist"]),
        (WithRequiresGrad, ["requires_grad"]),
        (Branchy, ["torch.fx cannot trace"]),
        (Hooked, ["does not compute what the model computes"]),
    ],
)
def test_unsupported_models_are_refused_and_nothing_is_written(tmp_path, make, fragments):
    raises_one_line(lambda: save_model(make(), tmp_path / "out", torch.randn(2, 4)), *fragments)
    assert not (tmp_path / "out").exists()


def _edit_manifest(folder: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((folder / ARCHITECTURE_FILE).read_text())
    edit(manifest)
    (folder / ARCHITECTURE_FILE).write_text(json.dumps(manifest))


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda m: m.__setitem__(key, value)


def _set_graph_target(op: str, value: str) -> Callable[[dict], None]:
    def edit(manifest: dict) -> None:
        next(n for n in manifest["graph"] if n["op"] == op)["target"] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (_set("version", 2), ["version 2", "reads version 1"]),
        (_set("format", "onnx"), ["not a prunedrop architecture manifest"]),
        (_set_graph_target("call_function", "os.system"), ["'os.system'", "not allowed"]),
        (_set_graph_target("call_method", "__reduce__"), ["Tensor.__reduce__", "not allowed"]),
        (lambda m: m["modules"]["conv1"].__setitem__("type", "Evil"), ["'Evil'", "not allowed"]),
        (lambda m: m["modules"]["conv1"]["args"].__setitem__("out_channels", 5), ["does not fit the layers", "conv1.weight: file has (4, 4, 3, 3), model has (5, 4, 3, 3)"]),
        (lambda m: m["graph"][1].__setitem__("args", [{"node": "nowhere"}]), ["malformed", "nowhere"]),
        (lambda m: m.pop("graph"), ["malformed", "graph"]),
        # fx writes these into generated Python source: each would otherwise run code on load
        (lambda m: m["graph"][0].__setitem__("target", "x=print('pwned')"), ["placeholder target", "plain name"]),
        (lambda m: m["graph"][1].__setitem__("name", "a;print(1)"), ["node name", "plain name"]),
        (lambda m: m["graph"][-2]["kwargs"].__setitem__("dim=0,x", 1), ["keyword argument name"]),
        (lambda m: m["modules"].__setitem__('a")+print(1)#', {}), ["module path", "dotted name"]),
        (lambda m: m["modules"].__setitem__('block-0"+print(1)', {}), ["module path", "dotted name"]),
    ],
)
def test_bad_manifests_are_refused(tmp_path, edit, fragments):
    model, x = tiny_model("residual")
    save_model(model, tmp_path, x)
    _edit_manifest(tmp_path, edit)
    raises_one_line(lambda: load_saved_model(tmp_path), *fragments)


def test_broken_saved_folders(tmp_path, mlp):
    model, x = mlp
    raises_one_line(lambda: load_saved_model(tmp_path / "nope"), "does not exist")
    raises_one_line(lambda: load_saved_model(tmp_path), f"has no {ARCHITECTURE_FILE}")
    save_model(model, tmp_path, x)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"garbage")
    raises_one_line(lambda: load_saved_model(tmp_path), "truncated or corrupt")
    (tmp_path / WEIGHTS_FILE).unlink()
    raises_one_line(lambda: load_saved_model(tmp_path), "does not exist")
    (tmp_path / ARCHITECTURE_FILE).write_text("{not json")
    raises_one_line(lambda: load_saved_model(tmp_path), "not valid JSON")


# --------------------------------------------------------------------------------------------------
# Checkpoints and RNG state
# --------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_resume_rng(tmp_path, mlp):
    model, x = mlp
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    model(x).sum().backward()
    optimizer.step()
    scheduler.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
        "epoch": 4,
        "history": [{"epoch": 0, "loss": 1.5, "kl": None}],
        "recipe": {"method": "sparse_vd", "lr": 1e-3, "layers": ["fc*"], "threshold": 3.0},
    }
    path = save_checkpoint(state, tmp_path / "ckpt" / "last.pt")
    draws = (random.random(), np.random.standard_normal(), torch.rand(3))

    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4 and loaded["history"] == state["history"] and loaded["recipe"] == state["recipe"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    restore_rng_state(loaded["rng"])
    again = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert draws[0] == again[0] and draws[1] == again[1] and torch.equal(draws[2], again[2])


def test_checkpoint_refuses_values_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['history'\]\[0\]\['acc'\] is a numpy.float64"):
        save_checkpoint({"history": [{"acc": np.float64(0.9)}]}, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_bad_checkpoints(tmp_path):
    raises_one_line(lambda: load_checkpoint(tmp_path / "none.pt"), "does not exist")
    save_checkpoint({"model": nn.Linear(30, 30).state_dict()}, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    raises_one_line(lambda: load_checkpoint(tmp_path / "c.pt"), "truncated or corrupt")
    torch.save({"when": __import__("fractions").Fraction(1, 3)}, tmp_path / "pickled.pt")
    raises_one_line(lambda: load_checkpoint(tmp_path / "pickled.pt"), "pickled Python objects", "Fraction")
    torch.save([1, 2], tmp_path / "list.pt")
    raises_one_line(lambda: load_checkpoint(tmp_path / "list.pt"), "not a dict")
    raises_one_line(lambda: restore_rng_state({"python": {"version": 3}}), "RNG state is malformed")


def _pickled_names(path: Path) -> set[str]:
    """``module name`` of every class or function that the pickles inside the torch file ``path`` name."""
    names: set[str] = set()
    with zipfile.ZipFile(path) as archive:
        for member in (m for m in archive.namelist() if m.endswith(".pkl")):
            memo: dict[int, object] = {}
            pushed: list[object] = []  # the values pushed so far, enough to read STACK_GLOBAL's two strings
            for op, arg, _ in pickletools.genops(archive.read(member)):
                if op.name in ("GLOBAL", "INST"):
                    names.add(str(arg))
                elif op.name == "STACK_GLOBAL":
                    names.add(f"{pushed[-2]} {pushed[-1]}")
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    pushed.append(arg)
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    pushed.append(memo.get(int(arg)))
    return names


def test_saved_files_name_no_prunedrop_module(tmp_path, mlp):
    """What prunedrop writes names torch and the standard library only, never a prunedrop module, so that
    moving or renaming a module (``prunedrop.io`` became ``prunedrop.storage``) cannot break a saved run."""
    model, x = mlp
    old_run = Path(__file__).parent / "data" / "run-v1"
    weights, manifest = save_model(model, tmp_path / "saved", x)
    optimizer = torch.optim.Adam(model.parameters())
    model(x).sum().backward()
    optimizer.step()
    checkpoint = save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "rng": capture_rng_state(), "epoch": 1}, tmp_path / "checkpoint.pt")
    torch_files = [weights, checkpoint, *sorted(old_run.rglob("*.pt"))]
    assert len(torch_files) >= 5
    for path in torch_files:
        names = _pickled_names(path)
        assert any(name.startswith("torch") for name in names), (path, names)  # the reader found the names
        assert not [name for name in names if name.startswith("prunedrop")], (path, names)
    for path in (manifest, old_run / "run" / "architecture.json"):
        assert not re.search(r"prunedrop\.\w", path.read_text()), path


# --------------------------------------------------------------------------------------------------
# --arch-kwargs, timm:NAME and torchvision.models:NAME (fake zoo packages: nothing is installed or downloaded)
# --------------------------------------------------------------------------------------------------

FAKE_TIMM = '''
from prunedrop.testing import TinyMLP

calls = []


def create_model(name, pretrained="unset", **kwargs):
    calls.append((name, pretrained, kwargs))
    if name != "tiny_mlp":
        raise RuntimeError(f"Unknown model ({name})")
    return TinyMLP(**kwargs)
'''

FAKE_TORCHVISION_MODELS = '''
from prunedrop.testing import TinyMLP


def tiny_mlp(*, weights=None, num_classes=3, **kwargs):
    assert weights is None, "the test must never ask for weights"
    return TinyMLP(num_classes=num_classes, **kwargs)
'''


@pytest.fixture
def fake_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake ``timm`` and ``torchvision`` packages on sys.path, forgotten again after the test."""
    zoo = tmp_path / "zoo"
    (zoo / "timm").mkdir(parents=True)
    (zoo / "timm" / "__init__.py").write_text(FAKE_TIMM)
    (zoo / "torchvision" / "models").mkdir(parents=True)
    (zoo / "torchvision" / "__init__.py").write_text("")
    (zoo / "torchvision" / "models" / "__init__.py").write_text(FAKE_TORCHVISION_MODELS)
    monkeypatch.syspath_prepend(str(zoo))
    for name in ("timm", "torchvision", "torchvision.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield zoo
    for name in ("timm", "torchvision", "torchvision.models"):
        sys.modules.pop(name, None)


def test_arch_kwargs_reach_the_factory(tmp_path):
    model = TinyMLP(16, (5,), 7)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    x = torch.randn(3, 16)
    loaded = load_model(tmp_path / "m.pt", arch=MLP_ARCH, arch_kwargs={"hidden": [5], "num_classes": 7})
    assert_same_output(model, loaded, x)
    # without the kwargs the default architecture does not fit the file
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch=MLP_ARCH), "does not fit --arch")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch=MLP_ARCH, arch_kwargs={"depth": 3}),
                    "rejected --arch-kwargs", '"depth"')
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch_kwargs={"hidden": [5]}), "--arch-kwargs needs --arch")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{num_classes: 10}", "not valid JSON"),
        ("[10]", "not a JSON array"),
        ("10", "not a JSON number"),
        ('"x"', "not a JSON string"),
        ('{"a b": 1}', "not a Python argument name"),
        ("__import__('os')", "not valid JSON"),
        ("null", "not a JSON null"),
        ("true", "not a JSON boolean"),
    ],
)
def test_bad_arch_kwargs(text, fragment):
    from prunedrop.storage import parse_arch_kwargs

    raises_one_line(lambda: parse_arch_kwargs(text), fragment)


def test_arch_kwargs_parse():
    from prunedrop.storage import parse_arch_kwargs

    assert parse_arch_kwargs(None) == {}
    assert parse_arch_kwargs('{"num_classes": 10, "hidden": [4, 2], "flag": true}') == {
        "num_classes": 10, "hidden": [4, 2], "flag": True}


def test_timm_arch(tmp_path, fake_zoo):
    model = TinyMLP(16, (6,), 4)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", arch="timm:tiny_mlp", arch_kwargs={"hidden": [6], "num_classes": 4})
    assert_same_output(model, loaded, torch.randn(2, 16))
    import timm

    assert timm.calls == [("tiny_mlp", False, {"hidden": [6], "num_classes": 4})]
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch="timm:no_such_net"), "timm cannot build",
                    "no_such_net")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch="timm:tiny_mlp", arch_kwargs={"pretrained": True}),
                    "pretrained weights", "nothing is downloaded")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch="timm:tiny_mlp", arch_kwargs={"bogus": 1}),
                    "rejected --arch-kwargs")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch="timm:"), "names no model")


def test_torchvision_arch(tmp_path, fake_zoo):
    model = TinyMLP(16, (12, 8), 10)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", arch="torchvision.models:tiny_mlp", arch_kwargs={"num_classes": 10})
    assert_same_output(model, loaded, torch.randn(2, 16))
    raises_one_line(
        lambda: load_model(tmp_path / "m.pt", arch="torchvision.models:tiny_mlp",
                           arch_kwargs={"weights": "IMAGENET1K_V1"}), "pretrained weights", "'weights'")


@pytest.mark.parametrize(("arch", "package"), [("timm:resnet18", "timm"), ("torchvision.models:resnet18", "torchvision")])
def test_missing_zoo_names_the_extra(tmp_path, mlp, monkeypatch, arch, package):
    torch.save(mlp[0].state_dict(), tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, package, None)  # importing it fails as if it were not installed
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch=arch), f"needs {package}, which is not installed",
                    f"pip install 'prunedrop[{package}]'")


def test_broken_torchvision_is_one_line(tmp_path, mlp, monkeypatch):
    # torchvision's PyPI wheel beside a torch it was not built for fails on import with a RuntimeError
    broken = tmp_path / "broken" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(broken.parent))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    torch.save(mlp[0].state_dict(), tmp_path / "m.pt")
    raises_one_line(lambda: load_model(tmp_path / "m.pt", arch="torchvision.models:resnet18"),
                    "cannot be imported", "torchvision::nms", "prunedrop[torchvision]")
    sys.modules.pop("torchvision", None)


class _GRUCellLoop(nn.Module):
    """A hand-written loop over a sequence's steps, one call of a bias-free cell per step."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(5, 6, bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = None
        for t in range(4):
            h = self.cell(x[:, t], h)
        return self.head(h)


@pytest.mark.parametrize(("make", "shape"), [(lambda: nn.Sequential(nn.LSTM(5, 6, bias=False, batch_first=True)),
                                              (2, 4, 5)),
                                             (lambda: nn.Sequential(nn.RNNCell(5, 6, nonlinearity="relu")), (2, 5)),
                                             (_GRUCellLoop, (2, 4, 5))],
                         ids=["lstm-without-bias", "rnn-cell", "gru-cell-loop"])
def test_recurrent_layers_and_cells_are_described_with_their_bias_flag(tmp_path: Path, make, shape) -> None:
    """A recurrent layer holds ``bias`` as a flag, not a tensor: read as "a bias tensor is there", a bias-free LSTM
    was described as one with biases, whose state dict then did not load (no architecture.json). The cells, which
    sparse VD converts, are in the allowlist."""
    model, x = make().eval(), torch.randn(*shape)
    save_model(model, tmp_path / "out", x)
    assert (tmp_path / "out" / ARCHITECTURE_FILE).is_file()
    back = load_saved_model(tmp_path / "out")
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731 - nn.LSTM's (output, state)
    assert torch.equal(first(back(x)), first(model(x)))


_IMAGE_LAYERS = {  # layers added to the allowlist, each with non-default arguments where it has any
    "instance-norm": lambda: nn.InstanceNorm2d(4, eps=1e-3, affine=True, track_running_stats=True),
    "sync-batchnorm": lambda: nn.SyncBatchNorm(4, eps=1e-3, momentum=0.2),  # (a DDP-trained model's, on a CPU)
    "local-response-norm": lambda: nn.LocalResponseNorm(3, alpha=2e-4, beta=0.7, k=1.5),
    "celu-selu": lambda: nn.Sequential(nn.CELU(0.7), nn.SELU()),
    "glu": lambda: nn.Sequential(nn.GLU(1), nn.Conv2d(2, 4, 1)),
    "shrinks": lambda: nn.Sequential(nn.Hardshrink(0.2), nn.Softshrink(0.1), nn.Tanhshrink(), nn.Softsign(),
                                     nn.LogSigmoid(), nn.Threshold(-0.5, 0.25)),
    "softmin-softmax2d": lambda: nn.Sequential(nn.Softmin(1), nn.Softmax2d()),
    "pixel-shuffles": lambda: nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(16, 16, 1), nn.PixelShuffle(2)),
    "channel-shuffle": lambda: nn.ChannelShuffle(2),
    "upsampling": lambda: nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2), nn.UpsamplingBilinear2d(size=(5, 5))),
    "fold-unfold": lambda: nn.Sequential(nn.Unfold(2, stride=2), nn.Fold((6, 6), 2, stride=2)),
    "pads": lambda: nn.Sequential(nn.ConstantPad2d((1, 0, 2, 1), 0.5), nn.ReflectionPad2d(1), nn.ReplicationPad2d(1),
                                  nn.CircularPad2d((1, 1, 0, 0)), nn.Conv2d(4, 4, 3)),
}


class _NewFunctions(nn.Module):
    """Functions and tensor methods added to the allowlist, as user models call them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.instance_norm(self.conv(torch.flip(x, [3]).roll(1, 2)))
        h = F.glu(F.local_response_norm(h, 2), 1)
        p = F.unfold(h, 2, stride=2).transpose(1, 2)  # (N, tokens, 16)
        a = torch.bmm(p, p.transpose(1, 2)).softmax(-1).tril().triu(-2)
        t = torch.bmm(a, p).square().clamp_min(1e-3).sqrt().sin().cos().erf()
        t = t.index_select(1, torch.arange(t.shape[1] - 1, -1, -1)).repeat_interleave(2, dim=1).cumsum(1)
        return F.selu(F.softsign(t.flatten(1))) + F.logsigmoid(t.mean((1, 2)))[:, None]


@pytest.mark.parametrize("name", sorted(_IMAGE_LAYERS))
def test_more_torch_layers_and_functions_round_trip(tmp_path: Path, name: str) -> None:
    """InstanceNorm2d, the pads, pixel and channel shuffles, fold/unfold, the rarer activations: a model holding one
    got no architecture.json (not in the allowlist), only a state dict to load with the factory."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(4, 4, 1), _IMAGE_LAYERS[name]()).eval(), torch.randn(2, 4, 6, 6)
    save_model(model, tmp_path / "out", x)
    assert (tmp_path / "out" / ARCHITECTURE_FILE).is_file(), name
    back = load_saved_model(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_more_functions_and_methods_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _NewFunctions().eval(), torch.randn(2, 4, 6, 6)
    save_model(model, tmp_path / "out", x)
    assert (tmp_path / "out" / ARCHITECTURE_FILE).is_file()
    back = load_saved_model(tmp_path / "out")
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-6)


class _RoutedBag(nn.Module):
    """Pixels quantized to token ids for an EmbeddingBag (round, long), and a top-2 gated mixture (topk, scatter,
    sort): the calls a fastText-style or mixture-of-experts model makes, absent from the allowlist before."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(16 * 5, 6, mode="mean")
        self.gate = nn.Linear(6, 3)
        self.experts = nn.Linear(6, 3 * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = (x.flatten(1).sigmoid() * 4).round().long().clamp(0, 4)
        h = self.bag(torch.arange(16, device=x.device) * 5 + levels)
        logits = self.gate(h)
        top, idx = logits.topk(2, dim=1)
        gates = torch.zeros_like(logits).scatter(1, idx, top.softmax(1))
        out = torch.einsum("be,bec->bc", gates, self.experts(h).view(-1, 3, 4))
        return out + out.sort(dim=1).values.floor().ceil().trunc().int().float()


def test_quantized_ids_and_top_k_routing_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _RoutedBag().eval(), torch.randn(5, 1, 4, 4)
    save_model(model, tmp_path / "out", x)
    assert (tmp_path / "out" / ARCHITECTURE_FILE).is_file()
    back = load_saved_model(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


class _ZerosFromBatch(nn.Module):
    """Padding and a state made from the batch size, as separate size arguments (torch.fx refused the call)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x).mean((2, 3))
        extra = torch.zeros(x.shape[0], 2, device=x.device) + torch.ones(x.size(0), 1, dtype=x.dtype)
        return self.fc(torch.cat([pooled, extra], 1))


def test_sizes_from_the_batch_as_separate_arguments_round_trip(tmp_path: Path) -> None:
    from prunedrop.outputs import output_layers

    torch.manual_seed(0)
    model, x = _ZerosFromBatch().eval(), torch.randn(5, 1, 6, 6)
    save_model(model, tmp_path / "out", x)
    assert (tmp_path / "out" / ARCHITECTURE_FILE).is_file()
    back = load_saved_model(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(back(x), model(x)) and back(x[:2]).shape == (2, 3)
    assert torch.zeros(2, 3).shape == (2, 3)  # the factories are torch's own again after tracing
    assert output_layers(model) == ["fc"]  # read from the graph (no example input to fall back on)


class _TorchTransformers(nn.Module):
    """nn.TransformerEncoder under a causal mask buffer, a norm-first nn.TransformerDecoder with GELU reading it
    through learned queries, and an nn.Transformer; the first encoder layer's feed-forward narrower than the
    second's, as slimming leaves them."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.embed = nn.Linear(4, 16)
        self.register_buffer("mask", torch.triu(torch.full((6, 6), float("-inf")), 1))
        self.queries = nn.Parameter(torch.randn(1, 3, 16))
        if kind == "stacks":
            layer = nn.TransformerEncoderLayer(16, 2, 24, dropout=0.1, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)
            self.enc.layers[0].linear1 = nn.Linear(16, 5)
            self.enc.layers[0].linear2 = nn.Linear(5, 16)
            self.dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(
                16, 4, 20, dropout=0.1, activation="gelu", batch_first=True, norm_first=True), 1)
        else:
            self.tf = nn.Transformer(16, 2, 1, 1, 12, dropout=0.1, batch_first=True)
        self.fc = nn.Linear(3 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.reshape(-1, 6, 4))
        q = self.queries.expand(t.shape[0], -1, -1)
        if self.kind == "stacks":
            out = self.dec(q, self.enc(t, mask=self.mask, is_causal=True))
        else:
            out = self.tf(t, q, src_mask=self.mask)
        return self.fc(out.flatten(1))


@pytest.mark.parametrize("kind", ["stacks", "transformer"])
def test_torch_transformer_layers_round_trip_as_the_layers_they_hold(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    model, x = _TorchTransformers(kind).eval(), torch.randn(5, 1, 6, 4)
    save_model(model, tmp_path / "out", x)
    manifest = json.loads((tmp_path / "out" / ARCHITECTURE_FILE).read_text())
    assert not re.search(r'"Transformer(Encoder|Decoder)?(Layer)?"', json.dumps(manifest))  # traced through
    back = load_saved_model(tmp_path / "out")
    fresh = torch.randn(7, 1, 6, 4)
    with torch.no_grad():
        assert torch.allclose(back(fresh), model(fresh), atol=1e-5)
    if kind == "stacks":
        assert back.get_submodule("enc.layers.0.linear1").out_features == 5
        assert back.get_submodule("enc.layers.1.linear1").out_features == 24


class _Unpooled(nn.Module):
    """SegNet-style: max-pooling indices (the module, or the function with ``return_indices=True``) and MaxUnpool."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3)
        self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.functional:
            h, idx = F.max_pool2d(self.conv(x), 2, return_indices=True)
            h = F.max_unpool2d(h, idx, 2, output_size=x.shape[-2:])
        else:
            h, idx = self.pool(self.conv(x))
            h = self.unpool(h, idx, output_size=x.shape[-2:])
        return self.fc(h.mean((2, 3)))


class _InPlace(nn.Module):
    """In-place methods on a view and on a layer's output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        h[:, :3].relu_()
        g = self.c2(h)
        g.add_(h).mul_(0.5).clamp_(min=-1.0)
        return self.fc(g.mean((2, 3)))


class _CommonIdioms(nn.Module):
    """Tensor idioms models write, each of which a manifest could not name: ``new_zeros``/``new_full``, ``clone``,
    ``movedim``/``swapaxes``, ``prod``, ``sign``, ``log1p``, ``F.one_hot``, ``Tensor.unfold``, ``lerp``,
    ``addcmul``, ``diff``, ``cummax``, ``isfinite``, ``linspace``, ``F.celu``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.reshape(x.shape[0], 4, 16))
        h = h + h.new_zeros(h.shape) + h.new_full((1,), 0.5) + torch.linspace(0, 1, h.shape[-1])
        h = h.clone().movedim(1, 2).swapaxes(1, 2)
        h = h + torch.sign(h) * torch.log1p(h.abs()) + h.tanh().prod(-1, keepdim=True)
        h = h + F.one_hot(h.argmax(-1), h.shape[-1]).float()
        h = h + h.unfold(-1, 4, 4).mean(-1).repeat_interleave(4, -1)
        h = torch.lerp(h, torch.addcmul(h, h.tanh(), h.sigmoid(), value=0.1), 0.5)
        h = h + F.pad(torch.diff(h, dim=-1), (1, 0)) + torch.cummax(h, -1)[0] * 0.1
        h = torch.where(torch.isfinite(h), F.celu(h), 0.0)
        return self.b(h.mean(1))


@pytest.mark.parametrize(("build", "shape"), [
    (lambda: _Unpooled(functional=False), (1, 7, 7)), (lambda: _Unpooled(functional=True), (1, 7, 7)),
    (_InPlace, (1, 5, 5)), (_CommonIdioms, (1, 8, 8))])
def test_layers_and_idioms_a_manifest_could_not_name_round_trip(tmp_path: Path, build: Callable[[], nn.Module],
                                                                shape: tuple[int, ...]) -> None:
    """Max-pooling indices with MaxUnpool (module and function), in-place methods, common tensor idioms: each
    stopped ``save_model`` ("not in prunedrop's allowlist"); each rebuilt model computes what the model does."""
    torch.manual_seed(0)
    model = build().eval()
    save_model(model, tmp_path / "out", torch.randn(3, *shape))
    back = load_saved_model(tmp_path / "out")
    fresh = torch.randn(5, *shape)
    with torch.no_grad():
        assert torch.allclose(back(fresh), model(fresh), atol=1e-6)
