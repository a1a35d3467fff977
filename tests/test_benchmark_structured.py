"""The structured benchmark's model path: ResNet-20 with BatchNorm folded is slimmed exactly, across residuals."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from prunedrop.convert import to_variational
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import slim

ROOT = Path(__file__).resolve().parent.parent


def _benchmark():
    spec = importlib.util.spec_from_file_location("structured_fashion", ROOT / "benchmarks" / "structured_fashion.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("structured_fashion", module)
    spec.loader.exec_module(module)
    return module


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def test_resnet20_with_folded_batchnorm_slims_exactly() -> None:
    from examples.models import resnet20_fashion

    bench = _benchmark()
    dense = _trained_like(resnet20_fashion())
    folded, pairs = bench.fold_batchnorm(dense)
    assert len(pairs) == 1 + 9 * 2 + 2  # stem, two per block, two projection shortcuts
    # frozen folded shifts, as with fuse_conv_bn_eval, which made every committed row and reusable checkpoint
    assert all(not folded.get_submodule(conv).bias.requires_grad for conv, _ in pairs)
    assert all(folded.get_submodule(conv).weight.requires_grad for conv, _ in pairs)
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(folded(x), dense(x), atol=1e-4, rtol=1e-4)

    variational = to_variational(folded, Recipe(method="sbp", exclude=["fc"]))
    with torch.no_grad():
        for name, layer in variational.named_modules():
            if not hasattr(layer, "log_sigma"):
                continue
            pruned = torch.zeros_like(layer.mu, dtype=torch.bool)
            if name.endswith("conv1"):  # inside each block: every other channel
                pruned[::2] = True
            if name in ("conv", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"):
                pruned[:3] = True  # residual stream of stage 1: all its producers agree on channels 0-2
            layer.log_sigma.copy_(torch.where(pruned, 3.0, -5.0))
    result = prune(variational)
    small = slim(result.model, result.unit_masks, x)
    assert small.max_abs_diff <= 1e-5
    model = small.model
    assert model.layer1[0].conv1.out_channels == 8 and model.layer3[2].conv1.out_channels == 32
    assert model.conv.out_channels == 13 and model.layer1[2].conv2.out_channels == 13
    assert model.layer2[0].conv1.in_channels == 13 and model.layer2[0].shortcut[0].in_channels == 13
    arch_before, arch_after = bench.architecture(folded, x), bench.architecture(model, x)
    assert arch_after["macs"] < arch_before["macs"] / 1.5


def test_reuse_variational_takes_only_a_finished_checkpoint_of_the_same_variational_phase(tmp_path: Path) -> None:
    import pytest

    from prunedrop.storage import save_checkpoint

    bench = _benchmark()
    recipe = Recipe(method="sbp", epochs=3, kl_weight=10.0, finetune_epochs=2, threshold=1.0)
    old = tmp_path / "old" / "sbp"
    old.mkdir(parents=True)
    args = type("Args", (), {"reuse_variational": str(tmp_path / "old")})()
    data = type("Data", (), {"num_train": 1000})()

    def saved(epoch: int, **changes) -> None:
        save_checkpoint({"phase": "variational", "epoch": epoch, "recipe": recipe.replace(**changes).to_dict()},
                        old / "checkpoint-variational.pt")

    saved(3, kl_weight=20.0)
    with pytest.raises(SystemExit, match=r"kl_weight \(20.0, here 10.0\)"):
        bench.reuse_variational(args, "sbp", recipe, tmp_path / "new", data)
    saved(2)
    with pytest.raises(SystemExit, match="stopped after epoch 2 of 3"):
        bench.reuse_variational(args, "sbp", recipe, tmp_path / "new", data)
    # what follows the variational phase may differ: the noise-free epochs, the threshold
    saved(3, finetune_epochs=10, threshold=0.4)
    bench.reuse_variational(args, "sbp", recipe, tmp_path / "new", data)
    assert (tmp_path / "new" / "checkpoint-variational.pt").read_bytes() == (old / "checkpoint-variational.pt").read_bytes()
    with pytest.raises(SystemExit, match="already holds checkpoints"):
        bench.reuse_variational(args, "sbp", recipe, tmp_path / "new", data)
    with pytest.raises(SystemExit, match="does not exist"):
        bench.reuse_variational(args, "group_vd", recipe, tmp_path / "other", data)
    # an automatic run plans its own epochs and may stop early: a checkpoint that says it stopped is finished
    auto = recipe.replace(epochs=None, kl_weight=None, max_metric_drop=1.0)
    save_checkpoint({"phase": "variational", "epoch": 2, "recipe": auto.to_dict(), "extra": {"stopped": "settled"}},
                    old / "checkpoint-variational.pt")
    bench.reuse_variational(args, "sbp", auto, tmp_path / "auto", data)
    save_checkpoint({"phase": "variational", "epoch": 2, "recipe": auto.to_dict(), "extra": {"stopped": None}},
                    old / "checkpoint-variational.pt")
    with pytest.raises(SystemExit, match="stopped after epoch 2 of"):
        bench.reuse_variational(args, "sbp", auto, tmp_path / "auto2", data)


def test_median_timing_keeps_the_middle_timing_and_every_speedup() -> None:
    median_timing = _benchmark().median_timing

    def timing(b64: float, when: str) -> dict:
        return {"b1": {"speedup": b64 / 2}, "b64": {"speedup": b64, "after_ms": 1.0 / b64}, "measured": when}

    timings = [timing(6.5, "t0"), timing(6.9, "t1"), timing(6.1, "t2"), timing(6.7, "t3")]
    chosen = median_timing(timings)
    assert chosen["b64"]["speedup"] == 6.5  # the lower middle one of four: 6.1, 6.5, 6.7, 6.9
    assert [r["b64"] for r in chosen["repeats"]] == [6.5, 6.9, 6.1, 6.7]  # in the order they were taken
    assert [r["measured"] for r in chosen["repeats"]] == ["t0", "t1", "t2", "t3"]
    assert "repeats" not in timings[0]  # the inputs are not modified
    single = median_timing([timing(5.0, "t")])
    assert single["b64"]["speedup"] == 5.0 and "repeats" not in single


def test_seed_option_overrides_the_recipe_seed_of_every_row() -> None:
    import argparse

    bench = _benchmark()

    def args(seed):
        return argparse.Namespace(recipe=None, model="lenet5", epochs=None, finetune_epochs=None, kl_weight=None,
                                  device="cpu", threshold=None, seed=seed, finetune_batchnorm=False, smoke=False)

    for method in ("sbp", "group_vd", "torch_pruning"):
        assert bench.method_recipe(args(None), method)[0].seed == 0  # the shipped recipes' seed
        assert bench.method_recipe(args(3), method)[0].seed == 3


def test_every_benchmark_records_the_machine_with_one_set_of_keys() -> None:
    _benchmark()  # puts the repository root on sys.path, as running a script does
    from benchmarks.common import machine

    info = machine("cpu")
    assert set(info) == {"host", "cpu", "cores", "torch_threads", "torch", "python", "device", "gpu"}
    assert (info["device"], info["gpu"], info["torch"]) == ("cpu", None, torch.__version__)
    assert machine()["device"] is None


def test_posterior_bits_script_reads_a_runs_checkpoint_as_the_run_would(tmp_path: Path) -> None:
    import json

    from examples.models import resnet20_fashion
    from prunedrop.quantize import posterior_bits
    from prunedrop.storage import save_checkpoint

    spec = importlib.util.spec_from_file_location("posterior_bits", ROOT / "benchmarks" / "posterior_bits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bench = _benchmark()
    dense = _trained_like(resnet20_fashion())
    torch.save(dense.state_dict(), tmp_path / "dense.pt")
    recipe = Recipe(method="sbp", exclude=["fc"], threshold=1.0)
    folded, _ = bench.fold_batchnorm(dense)
    variational = to_variational(folded, recipe, example_input=torch.zeros(2, 1, 28, 28))
    with torch.no_grad():  # a known posterior: every other channel of each block's first convolution is pruned
        for name, layer in variational.named_modules():
            if hasattr(layer, "log_sigma"):
                layer.log_sigma.copy_(torch.full_like(layer.log_sigma, -4.0))
                if name.endswith("conv1"):
                    layer.log_sigma[::2] = 3.0
    run = tmp_path / "run" / "sbp"
    run.mkdir(parents=True)
    save_checkpoint({"phase": "variational", "epoch": 1, "model": variational.state_dict(),
                     "recipe": recipe.to_dict()}, run / "checkpoint-variational.pt")
    (run / "report.json").write_text(json.dumps({"threshold": 1.0}))
    script.main(["--model", "resnet20", "--run", str(run), "--dense", str(tmp_path / "dense.pt"), "--rule", "weights",
                 "-o", str(tmp_path / "bits.json")])
    rows = {r["layer"]: r for r in json.loads((tmp_path / "bits.json").read_text())["quantization"]["layers"]}
    expected = posterior_bits(variational.eval(), 1.0)
    assert set(rows) == set(expected) and rows
    for name, lb in expected.items():
        assert rows[name]["units"] == lb.units and rows[name]["median_spread"] == pytest.approx(lb.median_spread)
        assert rows[name]["bits_needed"] == lb.bits
    assert rows["layer1.0.conv1"]["units"] == 8 and rows["layer1.0.conv2"]["units"] == 16
