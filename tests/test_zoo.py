"""A corner of the zoo matrix (benchmarks/zoo_matrix.py) in the test suite: torchvision's ResNet-18, MobileNetV2,
ShuffleNetV2 and LR-ASPP segmentation network through convert → training steps → forced pruning → slim → ONNX export → onnxruntime parity.

Skipped where torchvision is not importable (the CPU torch of .venv has none that imports; scripts/setup-zoo.sh
builds .venv-zoo, where these run).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision", exc_type=ImportError)

ROOT = Path(__file__).resolve().parent.parent


def _matrix():
    spec = importlib.util.spec_from_file_location("zoo_matrix", ROOT / "benchmarks" / "zoo_matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("zoo_matrix", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("model", "method"), [("resnet18", "sbp"), ("mobilenet_v2", "group_vd"),
                                               ("lraspp_mobilenet_v3_large", "sbp"),  # a class per pixel
                                               ("shufflenet_v2_x0_5", "sbp")])  # channel split and shuffle
def test_torchvision_network_is_compressed_slimmed_and_exported(model: str, method: str, tmp_path: Path) -> None:
    cell = _matrix().run_cell(model, method, steps=2, fraction=0.5, seed=0, work=tmp_path, size=32)
    assert cell["error"] is None, cell["error"]
    assert cell["passed"] == ["build", "original", "convert", "train", "force", "slim", "export", "parity"]
    assert 0.3 < cell["kept_fraction"] < 0.7  # about half of every noise tensor was forced past the threshold
    units = cell["units"]
    assert units["after"] < units["before"]  # slimming removed units physically ...
    assert cell["slim_diff"] <= 1e-5  # ... and the slim model computes what the masked one does
    assert cell["params_after"] < cell["params"]
    assert cell["parity_max_abs_diff"] < 1e-4


def test_stochastic_depth_is_left_out_of_architecture_json(tmp_path: Path) -> None:
    """EfficientNet's and ConvNeXt's stochastic depth is the identity in eval mode: architecture.json needs no
    torchvision to rebuild them."""
    import torch
    import torchvision

    from prunedrop.storage import load_saved_model, save_model

    torch.manual_seed(0)
    model, x = torchvision.models.efficientnet_b0(num_classes=10).eval(), torch.randn(2, 3, 32, 32)
    save_model(model, tmp_path, x)
    assert "stochastic_depth" not in (tmp_path / "architecture.json").read_text()
    with torch.no_grad():
        assert torch.equal(model(x), load_saved_model(tmp_path)(x))


def test_a_global_context_network_is_traced_in_seconds() -> None:
    """timm's GCResNet-33ts: Torch-Pruning read the global-context block's flatten inside a cycle, each turn
    multiplying the channel indices; building the groups took more than 12 GB and minutes before the machine killed
    the run. Such a group now fails alone, named, and the rest slims."""
    timm = pytest.importorskip("timm")
    import time

    import torch

    from prunedrop.slim import slim, unremovable_layers

    torch.manual_seed(0)
    model, x = timm.create_model("gcresnet33ts", pretrained=False, num_classes=10).eval(), torch.randn(2, 3, 64, 64)
    start = time.perf_counter()
    stuck = unremovable_layers(model, x)
    assert time.perf_counter() - start < 60
    assert any("grew past" in why for why in stuck.values()), stuck
    masks = {}
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, torch.nn.Conv2d) and name not in stuck and layer.out_channels >= 4:
                keep = torch.rand(layer.out_channels) > 0.3
                layer.weight[~keep] = 0
                masks[name] = keep
    result = slim(model, masks, x)
    assert any(after < before for before, after in result.removed.values())
    assert result.max_abs_diff <= 1e-4


def test_a_network_with_relative_position_attention_is_traced_in_seconds() -> None:
    """timm's BoTNet-26t: Torch-Pruning read the relative position embeddings' reshapes inside a cycle that gave a
    new index list each turn, and one group grew without end (its SBP run's early check ran for more than 15
    minutes). A group that outgrows the graph now fails alone, named, and the rest is checked in seconds."""
    timm = pytest.importorskip("timm")
    import time

    import torch

    from prunedrop.slim import unremovable_layers

    torch.manual_seed(0)
    model = timm.create_model("botnet26t_256", pretrained=False, num_classes=10, img_size=64).eval()
    start = time.perf_counter()
    stuck = unremovable_layers(model, torch.randn(2, 3, 64, 64))
    assert time.perf_counter() - start < 120
    assert any("grew past" in why and "entries" in why for why in stuck.values()), stuck
    assert len(stuck) < 40, stuck  # the other layers stay convertible
