"""The swapping walk: nested models, root swaps, include/exclude, and the way back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunedrop.convert import ConversionSummary, to_deterministic, to_variational, variational_layers
from prunedrop.errors import PrunedropError
from prunedrop.inspection import inspect_model
from prunedrop.layers import Conv2dSVD, LinearSVD
from prunedrop.recipes import Recipe
from prunedrop.testing import TINY_MODELS, TinyGRUClassifier, tiny_model


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_every_tiny_model_converts_and_comes_back_unchanged(name: str) -> None:
    model, x = tiny_model(name)
    expected = model(x)
    summary = ConversionSummary()
    model = to_variational(model, Recipe(init_log_sigma2=-30.0), summary=summary).eval()
    assert summary.converted and set(summary.converted) == set(variational_layers(model))
    assert torch.equal(model(x), expected)
    plain = to_deterministic(model)
    assert not variational_layers(plain)
    assert torch.equal(plain(x), expected)


def test_nested_names_and_left_alone_layers_are_listed() -> None:
    model, _ = tiny_model("residual")
    summary = ConversionSummary()
    to_variational(model, Recipe(), summary=summary)
    assert summary.converted == ["stem", "conv1", "conv2", "head"]
    assert summary.left_alone == {"bn1": "BatchNorm2d", "bn2": "BatchNorm2d"}
    assert isinstance(model.conv1, Conv2dSVD)

    nested = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), nn.Linear(3, 1))
    summary = ConversionSummary()
    to_variational(nested, Recipe(), summary=summary)
    assert summary.converted == ["0.0", "1"]


def test_root_level_swap_returns_the_new_module() -> None:
    layer = nn.Linear(4, 2)
    converted = to_variational(layer, Recipe())
    assert isinstance(converted, LinearSVD)
    assert isinstance(to_deterministic(converted), nn.Linear)


def test_include_and_exclude_globs() -> None:
    model, _ = tiny_model("lenet5")
    summary = ConversionSummary()
    to_variational(model, Recipe(include=["conv*", "fc1"], exclude=["conv2"]), summary=summary)
    assert summary.converted == ["conv1", "fc1"]
    assert summary.excluded == ["conv2", "fc2"]
    assert type(model.conv2) is nn.Conv2d and type(model.fc2) is nn.Linear


def test_nothing_to_convert_is_a_clear_error() -> None:
    with pytest.raises(PrunedropError, match="no layer of the model can be converted.*supported types"):
        to_variational(nn.Sequential(nn.LayerNorm(3), nn.ReLU()), Recipe())
    with pytest.raises(PrunedropError, match="globs exclude 0"):
        to_variational(nn.Sequential(nn.Linear(2, 2)), Recipe(exclude=["*"]))


def test_nothing_to_convert_names_each_reason_apart() -> None:
    # A GRU classifier under sbp: the head is kept whole as the output layer, not by the globs (the message said
    # "the include/exclude globs excluded all of: head"), and the GRU has no sbp version but a sparse_vd one.
    model = TinyGRUClassifier()
    with pytest.raises(PrunedropError) as info:
        to_variational(model, Recipe(method="sbp"), example_input=torch.randn(2, *TINY_MODELS["gru"][1]))
    message = str(info.value)
    assert "globs" not in message
    assert "output layer head stays whole under sbp (keep_output_layers)" in message
    assert "no variational version of GRU (method group_vd or sparse_vd converts it)" in message
    report = inspect_model(TinyGRUClassifier(), torch.randn(2, *TINY_MODELS["gru"][1]), Recipe(method="sbp"))
    assert "globs" not in report["warnings"][0] and "output layer head" in report["warnings"][0]


def test_tracing_a_recurrent_model_for_what_slimming_could_remove_warns_nothing() -> None:
    """The structured conversion traces the model (keep_unremovable); Torch-Pruning's shape inference gave up on a GRU
    classifier with "UserWarning: Maximum recursive depth reached!", shown to the user for nothing."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(PrunedropError):
            to_variational(TinyGRUClassifier(), Recipe(method="sbp"), example_input=torch.randn(2, *TINY_MODELS["gru"][1]))
    assert not [w for w in caught if "recursive depth" in str(w.message)]


class _ProjectedLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 12, batch_first=True, proj_size=3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.filterwarnings("ignore:LSTM with projections")  # torch's own, from the forward
def test_nothing_to_convert_names_a_layer_refused_for_its_settings() -> None:
    # an LSTM with proj_size under group_vd: LSTM is a supported type, so "group_vd has no variational version of
    # LSTM" (what the message said) contradicted the list of supported types after it
    x = torch.randn(2, 5, 4)
    with pytest.raises(PrunedropError) as info:
        to_variational(_ProjectedLSTM(), Recipe(method="group_vd"), example_input=x)
    message = str(info.value)
    assert "no variational version of LSTM" not in message
    assert "group_vd cannot take the settings of rnn (LSTM with proj_size=3" in message
    report = inspect_model(_ProjectedLSTM(), x, Recipe(method="group_vd"))
    assert "cannot take the settings of rnn (LSTM with proj_size=3" in report["warnings"][0]


class _CutOff(nn.Module):
    """a frozen extractor under torch.no_grad(), a detached branch, a frozen layer, and a layer never called"""

    def __init__(self) -> None:
        super().__init__()
        self.frozen_by_no_grad = nn.Linear(6, 8)
        self.detached = nn.Linear(6, 8)
        self.dead = nn.Linear(6, 8)  # called, its output discarded (a WaveNet's last residual 1x1)
        self.frozen = nn.Linear(6, 8).requires_grad_(False)
        self.unused = nn.Linear(6, 8)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            a = torch.relu(self.frozen_by_no_grad(x))
        b = torch.relu(self.detached(x)).detach()
        self.dead(x)
        c = torch.relu(self.frozen(x))
        return self.head(torch.cat([a, b, c], dim=1))


def test_layers_no_gradient_reaches_stay_dense() -> None:
    """Converted, a layer run under torch.no_grad() gets no gradient from the data term: the KL alone pruned it
    whatever it was worth (a digits MLP ended 2.3 points down and the run exported nothing)."""
    from prunedrop.convert import gradient_free_layers
    from prunedrop.layers import LAYER_REGISTRY

    model = _CutOff().train()
    model.register_buffer("calls", torch.zeros(()))
    model.register_forward_pre_hook(lambda module, args: module.calls.add_(1) and None)  # a forward that counts
    model.head.weight.grad = torch.ones_like(model.head.weight)
    x = torch.randn(4, 6)
    assert gradient_free_layers(model, LAYER_REGISTRY["sparse_vd"], x) == ["frozen_by_no_grad", "detached", "dead"]
    # the pass leaves the flags, the gradients and the mode as they were
    assert not model.frozen.weight.requires_grad and model.detached.weight.requires_grad
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert model.detached.weight.grad is None and model.training and float(model.calls) == 0

    summary = ConversionSummary()
    converted = to_variational(model, Recipe(), summary=summary, example_input=x)
    assert summary.cut_off == ["frozen_by_no_grad", "detached", "dead"]
    assert type(converted.frozen_by_no_grad) is nn.Linear and type(converted.detached) is nn.Linear
    assert {"frozen", "unused", "head"} <= set(summary.converted)
    assert any("no gradient reaches their output: frozen_by_no_grad, detached, dead" in n and "not used" in n
               for n in summary.notes)
    report = inspect_model(_CutOff(), x, Recipe())
    reasons = {e["name"]: e.get("reason") for e in report["layers"]}
    assert "no gradient reaches its output" in reasons["detached"] and "no model output uses it" in reasons["dead"]
    # without an example input nothing is run, and every layer converts as before
    assert ConversionSummary().cut_off == []
    bare = ConversionSummary()
    to_variational(_CutOff(), Recipe(), summary=bare)
    assert "detached" in bare.converted

    class Checkpointed(nn.Module):  # recomputed in the backward pass: its forward ran under no_grad first
        def __init__(self) -> None:
            super().__init__()
            self.first, self.inner, self.head = nn.Linear(6, 6), nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from torch.utils.checkpoint import checkpoint

            inner = checkpoint(lambda t: torch.relu(self.inner(t)), self.first(x), use_reentrant=True)
            return self.head(inner)

    assert gradient_free_layers(Checkpointed(), LAYER_REGISTRY["sparse_vd"], x) == []

    class AllCut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x).detach() * 2

    with pytest.raises(PrunedropError, match="no gradient reaches the output of a"):
        to_variational(AllCut(), Recipe(), example_input=x)


def test_converting_twice_is_refused() -> None:
    model = to_variational(nn.Sequential(nn.Linear(2, 2)), Recipe())
    with pytest.raises(PrunedropError, match="already variational"):
        to_variational(model, Recipe())


def test_subclasses_of_registered_types_are_left_alone() -> None:
    class ScaledLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    summary = ConversionSummary()
    model = nn.Sequential(ScaledLinear(2, 2), nn.Linear(2, 2))
    to_variational(model, Recipe(), summary=summary)
    assert summary.converted == ["1"] and summary.left_alone == {"0": "ScaledLinear"}


def test_from_dense_receives_the_settings_it_names() -> None:
    from prunedrop.layers import VariationalLayer, from_dense_options

    class Named(VariationalLayer):
        @classmethod
        def from_dense(cls, module: nn.Module, *, threshold: float = 0.0) -> Named:
            raise NotImplementedError

    class CatchAll(VariationalLayer):
        @classmethod
        def from_dense(cls, module: nn.Module, **options: float) -> CatchAll:
            raise NotImplementedError

    options = Recipe(method="sbp").noise_options()
    assert set(options) >= {"threshold", "init_mu", "init_log_sigma2", "recurrent_noise", "weight_threshold"}
    assert from_dense_options(Named, options) == {"threshold": 1.0}
    assert from_dense_options(CatchAll, options) == options


def test_each_family_gets_its_section_settings() -> None:
    model = nn.Sequential(nn.LSTM(3, 4, batch_first=True))
    recipe = Recipe(method="group_vd", recurrent_noise="batch", init_log_alpha=-5.0, init_log_sigma2=-12.0)
    layer = to_variational(model, recipe)[0]
    assert layer.recurrent_noise == "batch" and layer.threshold == 3.0
    sbp = to_variational(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)),
                         Recipe(method="sbp", init_mu=0.5, keep_output_layers=False))[0]
    assert torch.all(sbp.mu == 0.5) and sbp.threshold == 1.0


class _Tied(nn.Module):
    """Weight tying twice over: ``b`` shares ``a``'s weight, and the output layer shares the embedding's."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5, 6)
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 5, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embedding(tokens).mean(1)
        return self.head(torch.relu(self.mid(torch.relu(self.b(torch.relu(self.a(h)))))))


@pytest.mark.parametrize("method", ["sparse_vd", "group_vd"])
def test_layers_sharing_a_weight_stay_dense_and_tied(method: str) -> None:
    # Each converted layer learnt its own noise over the one weight and pruned it its own way: the pruned model
    # held two different weights where there was one, more parameters than before.
    model, tokens = _Tied(), torch.randint(0, 5, (4, 3))
    summary = ConversionSummary()
    converted = to_variational(model, Recipe(method=method, keep_output_layers=False), summary=summary,
                               example_input=tokens)
    assert summary.converted == ["mid"]
    assert sorted(summary.excluded) == ["a", "b", "embedding", "head"]
    assert "weight tying" in summary.notes[0] and "a with b" in summary.notes[0]
    dense = to_deterministic(converted)
    assert dense.b.weight is dense.a.weight and dense.head.weight is dense.embedding.weight
    report = inspect_model(_Tied(), tokens, Recipe(method=method, keep_output_layers=False))
    reasons = {e["name"]: e["reason"] for e in report["layers"]}
    assert reasons["b"] == "shares parameters with a (weight tying)" and reasons["mid"] == ""
    assert report["summary"]["converted"] == ["mid"]


def test_a_model_whose_layers_all_share_weights_says_so() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    with pytest.raises(PrunedropError, match=r"0, 2 share parameters with other modules or the forward \(weight tying\) and stay dense"):
        to_variational(model, Recipe())


class _TiedDecoder(nn.Module):
    """An autoencoder-style tie: the forward reads the encoder's weight itself, transposed."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.enc(x))
        rec = nn.functional.linear(z, self.enc.weight.t())  # a shape read alone would not count
        return self.head(torch.relu(rec)) * self.head.weight.shape[0]


def test_a_layer_whose_weight_the_forward_reads_stays_dense() -> None:
    # Under sbp, slimming the encoder's pruned units cut the head's inputs instead ("the slimmed model no longer
    # runs ... please report it"); under any method the read saw the plain weight while the layer trained noisy.
    summary = ConversionSummary()
    model = to_variational(_TiedDecoder(), Recipe(method="sparse_vd"), summary=summary)
    assert summary.converted == ["head"] and summary.excluded == ["enc"]
    assert "enc with the model's forward" in summary.notes[0]
    assert type(model.enc) is nn.Linear


class _UnsupportedSettings(nn.Module):
    """Registered types with settings the variational layers do not implement, beside a plain Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5, 4, max_norm=1.0)
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True, add_bias_kv=True)
        self.lstm = nn.LSTM(4, 6, batch_first=True, proj_size=4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embedding(tokens)
        h, _ = self.attention(h, h, h, need_weights=False)
        h, _ = self.lstm(h)
        return self.head(h[:, -1])


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("method", ["sparse_vd", "group_vd"])
def test_registered_layers_with_unsupported_settings_stay_dense(method: str) -> None:
    # The default command stopped at the conversion, after writing run.json and original.onnx: "nn.Embedding with
    # max_norm is not supported by EmbeddingSVD ...; leave it dense with the recipe's exclude globs".
    tokens = torch.randint(0, 5, (2, 3))
    summary = ConversionSummary()
    recipe = Recipe(method=method, keep_output_layers=False)
    assert to_variational(_UnsupportedSettings(), recipe, summary=ConversionSummary(), dry_run=True)
    model = to_variational(_UnsupportedSettings(), recipe, summary=summary, example_input=tokens)
    assert summary.converted == ["head"]
    assert summary.left_alone == {"embedding": "Embedding", "attention": "MultiheadAttention", "lstm": "LSTM"}
    assert [note.split(":")[0] for note in summary.notes] == ["embedding left dense", "attention left dense",
                                                             "lstm left dense", "left dense"]
    assert "the model can become at most" in summary.notes[3]  # they hold most of its parameters
    assert "max_norm" in summary.notes[0] and "add_bias_kv=True" in summary.notes[1] and "proj_size=4" in summary.notes[2]
    assert type(model.embedding) is nn.Embedding and type(model.lstm) is nn.LSTM
    report = inspect_model(_UnsupportedSettings(), tokens, recipe)
    statuses = {e["name"]: (e["status"], e["reason"]) for e in report["layers"]}
    assert statuses["embedding"] == ("unsupported", "Embedding with max_norm (it renormalises rows in place on every "
                                                    "lookup) not supported by EmbeddingSVD")
    assert report["summary"]["left_alone"] == summary.left_alone


# ------------------------------------------------------------------------------- parametrized weights


def _parametrized_mlp() -> nn.Module:
    """A TinyMLP whose layers carry each kind of reparametrized weight: the torch.nn.utils.parametrize ones
    (weight_norm, spectral_norm, orthogonal) and the older hook-based weight_norm."""
    import warnings

    from prunedrop.testing import TinyMLP

    torch.manual_seed(0)
    model = TinyMLP(16, (12, 12), 3)
    p = nn.utils.parametrizations
    p.weight_norm(model.net[1])
    p.spectral_norm(model.net[3])
    p.orthogonal(model.net[5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.net.append(nn.utils.weight_norm(nn.Linear(3, 3)))
    return model.eval()


def test_parametrized_weights_fold_into_plain_ones_with_the_same_outputs() -> None:
    from prunedrop.convert import copy_for_folding, fold_parametrizations, parametrized_tensors

    model = _parametrized_mlp()
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        before = model(x)
    kinds = sorted(kind for _, _, kind in parametrized_tensors(model))
    assert kinds == ["orthogonal", "spectral_norm", "weight_norm", "weight_norm"]
    twin = copy_for_folding(model)
    assert sorted(fold_parametrizations(twin)) == ["net.1.weight (weight_norm)", "net.3.weight (spectral_norm)",
                                                   "net.5.weight (orthogonal)", "net.6.weight (weight_norm)"]
    # the original, whose classes a deepcopy shares, still has its parametrized weights and computes the same
    assert len(parametrized_tensors(model)) == 4 and parametrized_tensors(twin) == []
    with torch.no_grad():
        torch.testing.assert_close(twin(x), before)
        torch.testing.assert_close(model(x), before)
    assert all(type(m) is nn.Linear for m in twin.net if isinstance(m, nn.Linear))
    assert sorted(n for n, _ in twin.named_parameters()) == sorted(
        f"net.{i}.{k}" for i in (1, 3, 5, 6) for k in ("weight", "bias"))
    assert fold_parametrizations(twin) == []  # nothing left to fold


def test_parametrized_layers_are_converted_not_silently_left_dense() -> None:
    """A weight-normed Linear is a class torch makes on the fly (ParametrizedLinear): it was neither converted nor
    listed as left alone; a hook-normed one stopped the conversion with a TypeError."""
    model = _parametrized_mlp()
    dry = ConversionSummary()
    to_variational(model, Recipe(), summary=dry, dry_run=True)
    assert dry.converted == ["net.1", "net.3", "net.5", "net.6"]
    assert len(dry.reparametrized) == 4
    assert type(model.net[1]).__name__ == "ParametrizedLinear"  # the dry run folded a copy
    summary = ConversionSummary()
    variational = to_variational(model, Recipe(), summary=summary)
    assert summary.converted == dry.converted and summary.reparametrized == dry.reparametrized
    assert all(isinstance(variational.net[i], LinearSVD) for i in (1, 3, 5, 6))
    report = inspect_model(_parametrized_mlp(), torch.randn(2, 1, 4, 4), Recipe())
    assert report["summary"]["converted"] == dry.converted
    assert any("folded" in w and "net.3.weight (spectral_norm)" in w for w in report["warnings"])


def _hooked_mlp() -> nn.Module:
    """An MLP whose first layer maps its input to 3x − 1 in a pre-hook and whose head halves its logits in a hook."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    model[1].register_forward_pre_hook(lambda module, args: (args[0] * 3.0 - 1.0,))
    model[5].register_forward_hook(lambda module, args, output: output * 0.5)
    return model


@pytest.mark.parametrize("method", ["sparse_vd", "sbp"])
def test_layers_with_the_users_hooks_stay_dense_and_keep_them(method: str) -> None:
    """A converted layer is a new module: hooks registered on the old one were lost without a word, and the
    compressed model computed something else."""
    model, x = _hooked_mlp(), torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        expected = model(x)
    recipe = Recipe(method=method, init_log_sigma2=-30.0, keep_output_layers=False)
    dry = ConversionSummary()
    to_variational(model, recipe, summary=dry, dry_run=True)
    summary = ConversionSummary()
    variational = to_variational(model, recipe, summary=summary).eval()
    assert summary.converted == dry.converted == ["3"]
    assert sorted(summary.hooked) == ["1", "5"] and summary.hooked["1"][0].startswith("forward pre-hook")
    assert summary.hooked["5"][0].startswith("forward hook")
    assert any("hooks are registered" in note and "1 (forward pre-hook" in note for note in summary.notes)
    assert type(variational[1]) is nn.Linear and type(variational[5]) is nn.Linear
    if method == "sparse_vd":
        with torch.no_grad():  # the noise is off: the same function, hooks included
            torch.testing.assert_close(variational(x), expected)
    assert len(variational[1]._forward_pre_hooks) == len(variational[5]._forward_hooks) == 1
    report = inspect_model(_hooked_mlp(), x, recipe)
    assert report["summary"]["converted"] == ["3"]
    assert any("hooks are registered" in w for w in report["warnings"])


def test_a_model_whose_layers_all_carry_hooks_says_so() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    model[1].register_forward_hook(lambda module, args, output: output.clamp(-5, 5))
    with pytest.raises(PrunedropError, match=r"1 has hooks registered and stays dense"):
        to_variational(model, Recipe())
    report = inspect_model(model, torch.randn(2, 1, 4, 4), Recipe())
    assert any("1 has hooks registered" in w for w in report["warnings"])


def test_weight_norm_and_backward_hooks_are_told_apart() -> None:
    from prunedrop.convert import user_hooks

    layer = nn.utils.weight_norm(nn.Linear(4, 4))  # its own pre-hook: folded before the conversion, not the user's
    assert user_hooks(layer) == []
    layer.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    assert [h.split()[:2] for h in user_hooks(layer)] == [["backward", "hook"]]
    lazy = nn.LazyLinear(3)  # torch's own pre-hook, which infers the input size at the first forward
    assert lazy._forward_pre_hooks and user_hooks(lazy) == []


def test_a_batchnorm_with_hooks_is_neither_folded_nor_moved() -> None:
    from prunedrop.batchnorm import batchnorm_pairs, foldable_batchnorms

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    assert len(foldable_batchnorms(model)) == len(batchnorm_pairs(model)) == 2
    model[4].register_forward_hook(lambda module, args, output: output + 1.0)
    assert foldable_batchnorms(model) == batchnorm_pairs(model) == [("0", "1")]
    model[0].register_forward_pre_hook(lambda module, args: args)
    assert foldable_batchnorms(model) == []  # folding would change what the convolution's hook sees


def test_a_torch_pruned_layer_is_folded_and_converted_not_left_dense() -> None:
    """torch.nn.utils.prune computes ``weight = weight_orig * weight_mask`` in a forward pre-hook: the layer was left
    dense as one with the user's hooks. Its mask is made permanent first, as a parametrization is folded."""
    from torch.nn.utils import prune as torch_prune

    from prunedrop.convert import fold_parametrizations, parametrized_tensors, user_hooks

    def pruned() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
        torch_prune.l1_unstructured(model[1], "weight", amount=0.5)
        return model

    model, x = pruned(), torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        expected = model(x)
    assert parametrized_tensors(model) == [("1", "weight", "torch.nn.utils.prune")]
    assert user_hooks(model[1]) == []  # folded before the conversion, not the user's hook
    dry = ConversionSummary()
    to_variational(model, Recipe(), summary=dry, dry_run=True)  # on a copy: the original keeps its mask
    assert dry.converted == ["1", "3"] and hasattr(model[1], "weight_orig")
    assert fold_parametrizations(model) == ["1.weight (torch.nn.utils.prune)"]
    assert not hasattr(model[1], "weight_orig") and int((model[1].weight == 0).sum()) == 96
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    variational = to_variational(pruned(), Recipe(init_log_sigma2=-30.0))
    assert isinstance(variational[1], LinearSVD)
    with torch.no_grad():
        torch.testing.assert_close(variational.eval()(x), expected)
