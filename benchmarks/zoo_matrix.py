"""The torchvision and timm zoo as a test matrix: does each method carry each network through the whole pipeline?

    python benchmarks/zoo_matrix.py                        # every model x sparse_vd, sbp, group_vd -> docs/zoo.md
    python benchmarks/zoo_matrix.py --models resnet18 vit_b_16 --methods sbp --no-docs

Needs torchvision and timm beside torch (``scripts/setup-zoo.sh`` builds ``.venv-zoo``). Every model is a small,
randomly initialised instance (``weights=None`` / ``pretrained=False``, ``num_classes=10``; nothing is downloaded)
at a small input. For each method, one cell runs the stages of :func:`prunedrop.pipeline.compress` through their
public functions, on random inputs and labels:

1. ``original``: export the plain model to ONNX and check it with onnxruntime (the pipeline's check before training);
2. ``convert``: :func:`prunedrop.convert.to_variational` with the shipped recipe ``recipes/<method>.yaml`` (so
   ``sbp`` and ``group_vd`` fold BatchNorms and tie residual streams as a user's run would);
3. ``train``: :func:`prunedrop.train.finetune`, one epoch of ``--steps`` steps at batch 2, β fixed at 1 (the
   autopilot needs validation data worth the name); the losses must stay finite;
4. ``force``: a few steps prune nothing, so a seeded random ``--fraction`` of every noise tensor is set deep into
   the pruned region (sparse VD: log α = 6; group VD: log α = 6; SBP: μ = −10, log σ = 2, SNR ≈ 0.3), then
   :func:`prunedrop.prune.prune` thresholds the model as the recipe says;
5. ``slim``: :func:`prunedrop.slim.slim` removes the pruned units (per-unit methods) and
   :func:`prunedrop.slim.remove_heads_and_rows` silent attention heads; both check the slim model against the
   masked one;
6. ``export`` and ``parity``: :func:`prunedrop.export.export_onnx` (exported at batch 2) and
   :func:`prunedrop.export.verify_onnx` at batch 3 with the recipe's tolerance.

``architecture.json`` (:func:`prunedrop.storage.save_model`, a torch.fx trace) is tried as well; the pipeline falls back to
a state dict when it fails, so its failure is a note, not a failed cell. Each model runs in its own subprocess (one
thread), so that a crash or a timeout loses one row only. The JSON goes to ``benchmarks/results/zoo.json`` and the
table to ``docs/zoo.md``, with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sparse_vd", "sbp", "group_vd")
RECIPE_FILES = {"sparse_vd": "sparse-vd.yaml", "sbp": "sbp.yaml", "group_vd": "group-vd.yaml"}
STAGES = ("build", "original", "convert", "train", "force", "slim", "export", "parity")
# Where forcing puts a pruned entry: well past every shipped threshold (log α > 3; SBP: SNR ≤ 1).
FORCED_LOG_ALPHA = 6.0
FORCED_SBP_MU, FORCED_SBP_LOG_SIGMA = -10.0, 2.0

# name -> (library, constructor, keyword arguments, input size, what is worth knowing about it)
MODELS: dict[str, tuple[str, str, dict, int, str]] = {
    "resnet18": ("torchvision", "resnet18", {}, 64, "BasicBlock residuals, BatchNorm"),
    "resnet50": ("torchvision", "resnet50", {}, 64, "Bottleneck residuals, projection shortcuts"),
    "mobilenet_v2": ("torchvision", "mobilenet_v2", {}, 64, "depthwise convolutions, inverted residuals, ReLU6"),
    "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small", {}, 64, "squeeze-excitation, hardswish"),
    "efficientnet_b0": ("torchvision", "efficientnet_b0", {}, 64, "MBConv, squeeze-excitation, SiLU, stochastic depth"),
    "regnet_y_400mf": ("torchvision", "regnet_y_400mf", {}, 64, "the smallest RegNet: grouped convolutions, SE"),
    "densenet121": ("torchvision", "densenet121", {}, 64, "dense concatenations, BatchNorm before convolutions"),
    "convnext_tiny": ("torchvision", "convnext_tiny", {}, 64, "LayerNorm, depthwise 7x7, layer scale"),
    "vit_b_16": ("torchvision", "vit_b_16", {"image_size": 32}, 32,
                 "ViT-B/16 (12 layers, width 768, 12 heads) at image_size=32: 4 patches + class token; "
                 "nn.MultiheadAttention"),
    "shufflenet_v2_x0_5": ("torchvision", "shufflenet_v2_x0_5", {}, 64,
                           "channel split (chunk), concatenation and channel shuffle (a view into 2 groups)"),
    "mnasnet0_5": ("torchvision", "mnasnet0_5", {}, 64, "NAS-found inverted residuals, depthwise 5x5"),
    "googlenet": ("torchvision", "googlenet", {"aux_logits": False, "init_weights": False}, 64,
                  "Inception blocks: four branches concatenated"),
    "squeezenet1_1": ("torchvision", "squeezenet1_1", {}, 64,
                      "Fire modules (1x1 and 3x3 expansions concatenated), a convolutional classifier"),
    "timm_resnet18d": ("timm", "resnet18d", {}, 64, "deep stem, average-pool shortcuts"),
    "timm_tf_efficientnet_b0": ("timm", "tf_efficientnet_b0", {}, 64,
                                "TF 'SAME' padding computed from the input shape (Conv2dSame): torch.fx cannot trace it"),
    "timm_vit_tiny": ("timm", "vit_tiny_patch16_224", {"img_size": 32}, 32,
                      "timm's own Attention (fused qkv Linear, scaled_dot_product_attention) at img_size=32"),
    # segmentation: 10 classes per pixel, (N, 10, H, W) logits against (N, H, W) masks; the model's dict output is
    # read as a user is told to (a module whose forward returns model(x)["out"])
    "lraspp_mobilenet_v3_large": ("torchvision.segmentation", "lraspp_mobilenet_v3_large", {}, 64,
                                  "segmentation: LR-ASPP head (a sigmoid gate over pooled features, two classifiers "
                                  "added), bilinear upsampling to the input size"),
    "deeplabv3_mobilenet_v3_large": ("torchvision.segmentation", "deeplabv3_mobilenet_v3_large", {}, 64,
                                     "segmentation: ASPP (dilated branches and an image-pooling branch, concatenated)"),
    "fcn_resnet50": ("torchvision.segmentation", "fcn_resnet50", {}, 64,
                     "segmentation: dilated ResNet-50 backbone, FCN head"),
}


def _segmentation_logits(model):
    """A torchvision segmentation model whose forward returns ``model(x)["out"]``."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, x):
            return self.model(x)["out"]

    return Logits(model)


def build_model(name: str, size: int | None = None):
    """The randomly initialised model and its input shape (``size``: another input size than the table's)."""
    library, constructor, kwargs, default_size, _ = MODELS[name]
    size = size or default_size
    kwargs = {k: (size if k in ("image_size", "img_size") else v) for k, v in kwargs.items()}
    if library == "torchvision":
        import torchvision.models as tvm

        model = getattr(tvm, constructor)(weights=None, num_classes=10, **kwargs)
    elif library == "torchvision.segmentation":
        import torchvision.models.segmentation as tvs

        model = _segmentation_logits(getattr(tvs, constructor)(weights=None, weights_backbone=None, num_classes=10,
                                                               **kwargs))
    else:
        import timm

        model = timm.create_model(constructor, pretrained=False, num_classes=10, **kwargs)
    return model.eval(), (3, size, size)


def force_pruning(model, method: str, fraction: float, seed: int) -> int:
    """Set a seeded random ``fraction`` of every noise tensor deep into the pruned region; returns how many
    entries were set. A tied noise (one Parameter shared by several layers) is set once."""
    import torch

    from prunedrop.convert import variational_layers

    generator = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    forced = 0
    with torch.no_grad():
        for name, layer in variational_layers(model).items():
            params = dict(layer.named_parameters())
            picks: dict[tuple[int, ...], torch.Tensor] = {}  # SBP's μ and log σ must pick the same units
            for noise in layer.noise_parameters():
                if id(noise) in seen:
                    continue
                seen.add(id(noise))
                if tuple(noise.shape) not in picks or method != "sbp":
                    picks[tuple(noise.shape)] = torch.rand(noise.shape, generator=generator) < fraction
                pick = picks[tuple(noise.shape)]
                noise_name = next(n for n, p in params.items() if p is noise)
                if noise_name.endswith("log_sigma2"):  # sparse VD: log α = log σ² − log θ²
                    weight = params[{"log_sigma2": "weight", "in_proj_log_sigma2": "in_proj_weight",
                                     "out_proj_log_sigma2": "out_proj.weight"}[noise_name]]
                    value = torch.log(weight * weight + 1e-8) + FORCED_LOG_ALPHA
                elif noise_name.startswith("log_sigma2_") and noise_name[len("log_sigma2_"):] in params:
                    weight = params[noise_name[len("log_sigma2_"):]]  # a recurrent layer's weight_ih_l0, …
                    value = torch.log(weight * weight + 1e-8) + FORCED_LOG_ALPHA
                elif noise_name == "log_alpha_param" or noise_name.startswith("log_alpha_"):  # group VD's per-unit ones
                    value = torch.full_like(noise, FORCED_LOG_ALPHA)
                elif noise_name == "mu":
                    value = torch.full_like(noise, FORCED_SBP_MU)
                elif noise_name == "log_sigma":
                    value = torch.full_like(noise, FORCED_SBP_LOG_SIGMA)
                else:
                    raise RuntimeError(f"{name}: no rule to force its noise parameter {noise_name!r} ({method})")
                noise[pick] = value[pick]
                forced += int(pick.sum())
    return forced


class Stage:
    """Times a stage and records where a cell failed."""

    def __init__(self, cell: dict) -> None:
        self.cell = cell

    def __call__(self, name: str):
        self.name = name
        return self

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, kind, error, tb) -> bool:
        self.cell["times"][self.name] = round(time.perf_counter() - self.t0, 2)
        if error is None:
            self.cell["passed"].append(self.name)
            return False
        from prunedrop.errors import describe

        frames = traceback.extract_tb(tb)
        where = next((f for f in reversed(frames) if "/prunedrop/" in f.filename), frames[-1] if frames else None)
        self.cell["error"] = {"stage": self.name, "what": describe(error, 300),
                              "where": f"{Path(where.filename).name}:{where.lineno} ({where.name})" if where else ""}
        return isinstance(error, Exception)


def run_cell(name: str, method: str, steps: int, fraction: float, seed: int, work: Path,
             size: int | None = None) -> dict:
    """One model × method: the stages of the module docstring, each timed; the first failure is recorded (stage,
    ``Type: message``, the innermost prunedrop frame) and ends the cell."""
    import torch
    from torch.utils.data import TensorDataset

    from prunedrop.convert import ConversionSummary, to_variational
    from prunedrop.data import DataBundle
    from prunedrop.export import export_onnx, verify_onnx
    from prunedrop.prune import prune
    from prunedrop.recipes import load_recipe
    from prunedrop.report import count_parameters
    from prunedrop.slim import remove_heads_and_rows, slim
    from prunedrop.storage import save_model
    from prunedrop.train import finetune

    cell: dict = {"model": name, "method": method, "passed": [], "times": {}, "notes": [], "error": None}
    stage = Stage(cell)
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    recipe = load_recipe(ROOT / "recipes" / RECIPE_FILES[method])
    for key, value in {"epochs": 1, "batch_size": 2, "kl_weight": 1.0, "kl_warmup_epochs": 0.0,
                       "max_metric_drop": None, "target": None, "compile": "never", "device": "cpu",
                       "seed": seed}.items():
        setattr(recipe, key, value)
    recipe.validate()
    cell["recipe"] = {k: getattr(recipe, k) for k in ("fold_batchnorm", "tie_residual", "keep_output_layers",
                                                       "threshold", "onnx_exporter", "parity_atol")}
    while True:  # one pass; `break` at the first failed stage
        with stage("build"):
            model, shape = build_model(name, size)
            cell["input"] = list(shape)
            cell["params"] = sum(p.numel() for p in model.parameters())
            x = torch.randn(3 * steps, *shape, generator=torch.Generator().manual_seed(seed))
            per_pixel = MODELS[name][0] == "torchvision.segmentation"  # a class per pixel: (N, H, W) masks
            y = torch.randint(0, 10, (3 * steps, *(shape[1:] if per_pixel else ())),
                              generator=torch.Generator().manual_seed(seed + 1))
            train = TensorDataset(x[: 2 * steps], y[: 2 * steps])
            data = DataBundle(name="random", train=train, val=TensorDataset(x, y), test=None, input_shape=shape,
                              num_classes=10)
            example = x[:3]
        if cell["error"]:
            break
        with stage("original"):
            path = work / f"{name}-{method}-original.onnx"
            export_onnx(model, example[:2], path, opset=recipe.onnx_opset, sparse=False, exporter=recipe.onnx_exporter)
            verify_onnx(path, model, example, atol=recipe.parity_atol)
            path.unlink()
        if cell["error"]:
            break
        with stage("convert"):
            summary = ConversionSummary()
            variational = to_variational(model, recipe, summary=summary, example_input=example[:2])
            cell["converted"] = len(summary.converted)
            cell["left_alone"] = sorted(set(summary.left_alone.values()))
            cell["folded"] = len(summary.folded)
            cell["tied_groups"] = len(summary.tied)
            cell["output_layers"] = summary.output_layers
            cell["unremovable"] = sorted(summary.unremovable)  # left dense: no unit of theirs could ever leave
        if cell["error"]:
            break
        with stage("train"):
            result = finetune(variational, data, recipe, progress=False, compile="never")
            losses = [h["loss"] for h in result.history]
            cell["train_loss"] = losses
            if not all(torch.isfinite(torch.tensor(losses))):
                raise FloatingPointError(f"non-finite training loss: {losses}")
        if cell["error"]:
            break
        with stage("force"):
            variational.eval()
            cell["forced_entries"] = force_pruning(variational, method, fraction, seed)
            pruned = prune(variational)
            cell["kept_fraction"] = round(pruned.kept_fraction, 4)
            if pruned.kept_fraction >= 1.0:
                raise AssertionError("forcing pruned nothing")
            masked = pruned.model.eval()
        if cell["error"]:
            break
        with stage("slim"):
            final = masked
            if pruned.unit_masks:
                slimmed = slim(masked, pruned.unit_masks, example, channel_multiple=recipe.channel_multiple or 1)
                final = slimmed.model.eval()
                before = sum(a for a, _ in slimmed.removed.values())
                after = sum(b for _, b in slimmed.removed.values())
                masked_units = sum(m.numel() for m in pruned.unit_masks.values())
                kept_units = sum(int(m.sum()) for m in pruned.unit_masks.values())
                cell["units"] = {"masked_layers": masked_units, "kept_by_mask": kept_units,
                                 "before": before, "after": after}
                cell["slim_diff"] = slimmed.max_abs_diff
                cell["notes"] += [f"slim: {n}" for n in slimmed.notes[:3]]
                if len(slimmed.notes) > 3:
                    cell["notes"].append(f"slim: ... {len(slimmed.notes) - 3} more notes")
            structures = remove_heads_and_rows(final, example)
            final = structures.model.eval()
            if structures.heads:
                cell["heads"] = [sum(a for a, _ in structures.heads.values()),
                                 sum(b for _, b in structures.heads.values())]
            cell["params_after"] = count_parameters(final)[1]
        if cell["error"]:
            break
        with stage("export"):
            path = work / f"{name}-{method}.onnx"
            exported = export_onnx(final, example[:2], path, opset=recipe.onnx_opset, sparse="auto",
                                   exporter=recipe.onnx_exporter)
            cell["onnx_bytes"] = exported.num_bytes
        if cell["error"]:
            break
        with stage("parity"):
            cell["parity_max_abs_diff"] = verify_onnx(path, final, example, atol=recipe.parity_atol)
        t0 = time.perf_counter()
        try:
            save_model(final, work / f"{name}-{method}", example)
            cell["architecture_json"] = True
        except Exception as e:  # noqa: BLE001 - recorded, as the pipeline logs it and saves a state dict instead
            from prunedrop.errors import describe

            cell["architecture_json"] = False
            cell["notes"].append(f"architecture.json not written: {describe(e, 200)}")
        cell["times"]["architecture_json"] = round(time.perf_counter() - t0, 2)
        break
    cell["ok"] = cell["error"] is None
    cell["seconds"] = round(time.perf_counter() - t_start, 1)
    return cell


def child(name: str, methods: list[str], steps: int, fraction: float, seed: int, out: Path) -> None:
    """One model, every method, in this process; one JSON line per cell appended to ``out`` as it finishes."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as work:
        for method in methods:
            cell = run_cell(name, method, steps, fraction, seed, Path(work))
            with open(out, "a") as f:
                f.write(json.dumps(cell) + "\n")


def own_models(models: dict[str, Any], shape: tuple[int, ...], names: list[str], jsonl: Path) -> None:
    """Networks defined in a script (``models``: name → class, inputs of ``shape`` without the batch) through every
    method's cell, each built with seed 0; each cell's one-line verdict and notes printed, its JSON line appended to
    ``jsonl``. A model whose cells could not run is printed as FAILED."""
    import torch

    global build_model

    def build(name: str, size: int | None = None):
        torch.manual_seed(0)
        return models[name]().eval(), shape

    build_model = build
    for name in names or list(models):
        MODELS[name] = ("custom", name, {}, shape[-1], models[name].__doc__)
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
            out = Path(f.name)
        try:
            child(name, list(METHODS), 2, 0.5, 0, out)
        except Exception as e:  # noqa: BLE001 - a model the cells could not run is a finding, printed
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
        for line in out.read_text().splitlines():
            cell = json.loads(line)
            print(f"{name:>18} {cell['method']:>10}: {_cell_text(cell)}", flush=True)
            for note in cell.get("notes", []):
                print(f"{'':>30} note: {note[:400]}", flush=True)
            with open(jsonl, "a") as fh:
                fh.write(json.dumps(cell) + "\n")
        out.unlink()


def _versions() -> dict:
    import onnxruntime
    import timm
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)"}


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "not run"
    if cell.get("ok"):
        units = cell.get("units")
        shrink = f", units {units['before']}→{units['after']}" if units else ""
        heads = f", heads {cell['heads'][0]}→{cell['heads'][1]}" if cell.get("heads") else ""
        heads += f", {len(cell['unremovable'])} left dense" if cell.get("unremovable") else ""
        state_only = "" if cell.get("architecture_json", True) else "; no architecture.json"
        return f"works ({cell['seconds']:.0f} s{shrink}{heads}{state_only})"
    error = cell["error"]
    what = error["what"] if len(error["what"]) <= 150 else error["what"][:147] + "..."
    return f"**fails at {error['stage']}**: {what}".replace("|", "\\|")


def write_docs(results: dict, path: Path) -> None:
    cells = {(c["model"], c["method"]): c for c in results["cells"]}
    methods = results["methods"]
    lines = [
        "# The zoo: torchvision and timm networks through the pipeline",
        "",
        "Small, randomly initialised instances of the torchvision and timm networks (no downloads, `num_classes=10`),",
        "carried through every stage of `prunedrop compress` by `benchmarks/zoo_matrix.py`: ONNX check of the",
        "original → convert (the shipped `recipes/<method>.yaml`) → a few training steps on random data → forced",
        f"pruning (a random {results['fraction']:.0%} of every noise tensor set past the threshold) → slim → ONNX export →",
        "onnxruntime parity. A cell *works* when every stage passed; otherwise it names the first stage that failed and",
        "its error. `units a→b`: output units of the Linear/Conv layers that were masked or shrank, before and after",
        "slimming (pruned units that slimming had to keep stay as exact zeros); `heads a→b`: attention heads;",
        "`N left dense`: layers none of whose units slimming could ever remove, which sbp and group_vd leave dense",
        "(`keep_unremovable`). The segmentation networks (torchvision's LR-ASPP, DeepLabV3, FCN) return a dict: they",
        "run as a user is told to run them, in a module whose forward returns `model(x)[\"out\"]`, with random masks",
        "of a class per pixel as labels.",
        "\"no architecture.json\": `prunedrop.storage.save_model` could not describe the slim model (see the notes), so a",
        "run saves its state dict only. Times are this machine's (2 shared cores, one thread), so only a guide.",
        "",
        "Produced by",
        "",
        f"    {results['command']}",
        "",
        f"in the zoo environment: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}.",
        "",
        "The environment: PyPI's torchvision does not import beside the CPU build of torch in `.venv` (torch",
        "2.13.0+cpu: \"operator torchvision::nms does not exist\"; its `_C.so` links `libtorch_cuda.so`).",
        "`bash scripts/setup-zoo.sh` builds `.venv-zoo`: the CPU builds of torch and torchvision from",
        "download.pytorch.org when that index is reachable, otherwise PyPI's CUDA builds of torch 2.14.1 and",
        "torchvision 0.29.1 (they run on a CPU), then timm and prunedrop. Measured here, where only the package",
        "mirror is reachable: 4 min 19 s for a fresh `.venv-zoo` (138 s of it torch and torchvision, 5.7 GB). Then:",
        "",
        "    .venv-zoo/bin/python benchmarks/zoo_matrix.py                 # the whole table, about 20 min here",
        "    .venv-zoo/bin/python -m pytest tests/test_zoo.py              # ResNet-18, MobileNetV2, ShuffleNetV2, LR-ASPP (skipped without torchvision)",
        "",
        "Reading the notes: slimming keeps a pruned channel (as exact zeros) where removing it is not exact or not",
        "possible: a residual stream that another producer still writes (forcing picks units at random, so only",
        "the streams that `tie_residual` ties agree), or a constant that zero padding makes position-dependent. Layers",
        "none of whose channels could ever leave (through a LayerNorm over channels in ConvNeXt and ViT, a channel",
        "shuffle in ShuffleNetV2, which keeps its branches' outputs and the stem while their inner 1x1 and depthwise",
        "channels go) are left dense by sbp and group_vd before training (`keep_unremovable`). A grouped convolution",
        "(RegNet's) keeps its groups equal in size: a group leaves whole where all of its channels are pruned, in and out,",
        "and every other group loses the fewest pruned channels that any group has, in and out; the others stay as zeros",
        "(named below), so that RegNet's forced units, pruned one by one at random, leave about half of them. A",
        "squeeze-excitation product (MobileNetV3, EfficientNet) loses the channels whose depthwise unit is pruned",
        "(a zero factor silences the product); a channel that only the excitation's fc2 prunes stays (gate(0) ≠ 0).",
        "Layers are converted by exact type: a subclass (timm's `Conv2dSame`, the `out_proj` of an",
        "`nn.MultiheadAttention` under sbp, which registers no attention layer) stays dense and is listed below.",
        "",
        "| model | input | params | " + " | ".join(methods) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for name in results["models"]:
        any_cell = next((cells[(name, m)] for m in methods if (name, m) in cells), {})
        shape = "×".join(str(s) for s in any_cell.get("input", [])) or "?"
        params = f"{any_cell['params'] / 1e6:.1f}M" if any_cell.get("params") else "?"
        row = [_cell_text(cells.get((name, m))) for m in methods]
        lines.append(f"| {name} | {shape} | {params} | " + " | ".join(row) + " |")
    lines += ["", "## Models", ""]
    lines += [f"- `{name}`: {MODELS[name][0]} `{MODELS[name][1]}`"
              + (f" with {MODELS[name][2]}" if MODELS[name][2] else "") + f"; {MODELS[name][4]}"
              for name in results["models"]]
    failures = [c for c in results["cells"] if not c.get("ok")]
    if failures:
        lines += ["", "## Failures, where they happen", ""]
        for c in failures:
            error = c.get("error") or {}
            lines.append(f"- {c['model']} × {c['method']}: {error.get('stage')}, `{error.get('where')}`: "
                         f"{error.get('what')}".replace("|", "\\|"))
    left = [(c, c["left_alone"]) for c in results["cells"] if c.get("left_alone")]
    if left:
        lines += ["", "## Layers with parameters that the method left dense (no registered variational type)", ""]
        lines += [f"- {c['model']} × {c['method']}: {', '.join(types)}" for c, types in left]
    notes = [(c, n) for c in results["cells"] for n in c.get("notes", [])]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {c['model']} × {c['method']}: {n}".replace("|", "\\|") for c, n in notes]
    lines += ["", "`benchmarks/results/zoo.json` holds every cell (stage times, kept fractions, parity, notes).", ""]
    kept = path.read_text(encoding="utf-8").partition(HAND_WRITTEN)[1:] if path.is_file() else ("", "")
    path.write_text("\n".join(lines) + "".join(kept))  # the hand-written sections after the table's stay


#: where the hand-written part of docs/zoo.md starts (kept as it is when the table is written again)
HAND_WRITTEN = "\n## Hugging Face transformers"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="models to run (default: all)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to run (default: all three)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per cell, at batch 2 (default 2)")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="share of every noise tensor forced past the threshold (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models, the data and the forcing")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one model (all its methods) may take before it is stopped (default 1800)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "zoo.json",
                        help="where the results go (default benchmarks/results/zoo.json)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "zoo.md",
                        help="the Markdown table to write (default docs/zoo.md)")
    parser.add_argument("--no-docs", action="store_true", help="write the JSON only, not the Markdown table")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="run nothing: write the Markdown table (--docs) from the results of an earlier run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.fraction < 1:
        parser.error(f"--fraction must lie between 0 and 1, got {args.fraction}")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.child:
        child(args.child, args.methods, args.steps, args.fraction, args.seed, args.child_out)
        return 0
    if args.render:
        write_docs(json.loads(args.render.read_text()), args.docs)
        print(f"wrote {args.docs}")
        return 0
    try:
        versions = _versions()
    except ImportError as e:
        parser.error(f"the zoo needs torchvision and timm ({e}); build the environment with scripts/setup-zoo.sh")
    command = "python benchmarks/zoo_matrix.py" + "".join(
        f" {flag} {value}" for flag, value, default in (
            ("--models", " ".join(args.models), " ".join(MODELS)), ("--methods", " ".join(args.methods), " ".join(METHODS)),
            ("--steps", args.steps, 2), ("--fraction", args.fraction, 0.5), ("--seed", args.seed, 0))
        if value != default)
    cells: list[dict] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    for name in args.models:
        with tempfile.NamedTemporaryFile("w+", suffix=".jsonl", delete=False) as f:
            out = Path(f.name)
        cmd = [sys.executable, __file__, "--child", name, "--child-out", str(out), "--methods", *args.methods,
               "--steps", str(args.steps), "--fraction", str(args.fraction), "--seed", str(args.seed)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            problem = None if proc.returncode == 0 else (
                f"the process exited with status {proc.returncode}: "
                + ((proc.stderr.strip().splitlines() or [""])[-1])[:200])
        except subprocess.TimeoutExpired:
            problem = f"stopped after --timeout {args.timeout:g} s"
        done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        out.unlink()
        for method in args.methods[len(done):]:
            done.append({"model": name, "method": method, "ok": False, "passed": [], "notes": [],
                         "error": {"stage": "process", "what": problem or "no result", "where": ""}})
            problem = "not reached: an earlier method of this model ended the process"
        for cell in done:
            print(f"{name:>24} {cell['method']:>10}: {_cell_text(cell)}", flush=True)
        print(f"{name:>24} {'':>10}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        cells += done
    results = {"command": command, "models": args.models, "methods": args.methods, "steps": args.steps,
               "fraction": args.fraction, "seed": args.seed, "versions": versions, "cells": cells}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_docs:
        write_docs(results, args.docs)
    failed = sum(not c.get("ok") for c in cells)
    print(f"{len(cells) - failed} of {len(cells)} cells work; {args.json}" + ("" if args.no_docs else f", {args.docs}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
