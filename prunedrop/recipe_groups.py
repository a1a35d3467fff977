"""The groups of a recipe: one small dataclass per stage of a run, each key declared once with its checks.

The grouped YAML form (``version: 2``) has one section per group below (and per noise family,
:mod:`prunedrop.layers.configs`); :class:`prunedrop.recipes.Recipe` is their fields side by side, the flat form
that run folders store and that code reads (``recipe.lr``). A key keeps its name in both forms. Checks that
involve several keys (a threshold inside ``±log_alpha_clip``, ``target`` without a fixed β) live in
:mod:`prunedrop.recipes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import PrunedropError
from .recipe_fields import NON_NEGATIVE, POSITIVE, Cli, setting

Method = Literal["sparse_vd", "sbp", "group_vd", "sbp_sparse_vd"]
Schedule = Literal["cosine", "linear", "constant"]
Loss = Literal["cross_entropy", "binary_cross_entropy", "mse"]
#: the losses whose metric is accuracy: class labels, one output per class or one logit for two classes
CLASSIFICATION_LOSSES = ("cross_entropy", "binary_cross_entropy")


def is_classification(loss: str) -> bool:
    """Whether ``loss`` fits class labels (metric accuracy, higher is better), not regression targets."""
    return loss in CLASSIFICATION_LOSSES
Exporter = Literal["auto", "torchscript", "dynamo"]
SparseStorage = Literal["auto", "always", "never"]
Quantize = Literal["none", "int8", "bayes"]
Precision = Literal["fp32", "bf16", "fp16"]
CompileMode = Literal["auto", "always", "never"]
Normalize = Literal["none", "imagenet", "custom"]
#: the largest image side (pixels) of a sample, asked for with ``image_size`` or, without it, the images' own: bigger
#: is almost surely a mistake (one 4096 x 4096 RGB sample is 200 MB as float32)
MAX_IMAGE_SIDE = 4096


# -- checks of one key (called with the key's name and its typed value)


def _selects_layers(name: str, value: list[str]) -> None:
    if not value:
        raise PrunedropError(f"recipe key '{name}' is empty: no layer would be converted; use ['*'] for all")


def _thresholds_given(name: str, value: list[float] | None) -> None:
    if value is not None and not value:
        raise PrunedropError(f"recipe key '{name}' is empty; give thresholds or null for the default")


def _factors_not_negative(name: str, value: dict[str, float]) -> None:
    for pattern, factor in value.items():
        if factor < 0:
            raise PrunedropError(f"recipe key '{name}' gives {pattern!r} the factor {factor}; it must be ≥ 0")


def _seed_range(name: str, value: int) -> None:
    if not -(2**63) <= value < 2**64:
        raise PrunedropError(f"recipe key '{name}' = {value} is outside what a random generator takes "
                             "(-2**63 to 2**64 - 1)")


def _device(name: str, value: str) -> None:
    head, _, index = value.partition(":")
    if not (value in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit())):
        raise PrunedropError(f"recipe key '{name}' = {value!r} must be auto, cpu, cuda or cuda:N")


def _budget_range(name: str, value: float | None) -> None:
    if value is not None and not 0.0 < value <= 100.0:
        raise PrunedropError(f"recipe key '{name}' = {value} must be in (0, 100]: the points of the metric the run "
                             "may lose (null for no budget)")


def _confidence_range(name: str, value: float | None) -> None:
    if value is not None and not 0.5 <= value < 1.0:
        raise PrunedropError(f"recipe key '{name}' = {value} must be in [0.5, 1): the one-sided confidence with which "
                             "the budget must hold, e.g. 0.9 (null: the measured drop alone)")


def _parses_as_target(name: str, value: str | None) -> None:
    if value is not None:
        from .autopilot import parse_target

        parse_target(value)


def _not_one_run(name: str, value: int) -> None:
    if value == 1:
        raise PrunedropError(f"recipe key '{name}' = 1: use 0 to skip timing or at least 2 (a spread needs two)")


def _batch_sizes(name: str, value: list[int]) -> None:
    if not value or min(value) < 1:
        raise PrunedropError(f"recipe key '{name}' = {value} must list positive batch sizes")


def _opset_range(name: str, value: int) -> None:
    if not 7 <= value <= 23:
        raise PrunedropError(f"recipe key '{name}' = {value} must be between 7 and 23")


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise PrunedropError(f"recipe key '{name}' = {value} must be in [0, 1)")


def _image_size(name: str, value: list[int] | None) -> None:
    if value is not None and (len(value) not in (1, 2) or not all(1 <= v <= MAX_IMAGE_SIDE for v in value)):
        raise PrunedropError(f"recipe key '{name}' = {value} must be one size or [height, width], "
                             f"each between 1 and {MAX_IMAGE_SIDE}")


def _image_channels(name: str, value: int | None) -> None:
    if value not in (None, 1, 3):
        raise PrunedropError(f"recipe key '{name}' = {value} must be 1 (grayscale), 3 (RGB) or null")


#: the recipe key ``class_names`` that numbers names in sorted order
SORTED = "sorted"


def class_order(value: list[str] | None) -> list[str] | str | None:
    """The recipe key ``class_names`` as a rule: None, :data:`SORTED`, or the names in the model's output order (one
    comma-separated entry, as ``--class-names A,B,C`` gives it, is split)."""
    if value is None:
        return None
    names = [n.strip() for n in value[0].split(",")] if len(value) == 1 else [n.strip() for n in value]
    return SORTED if names == [SORTED] else names


def _class_names(name: str, value: list[str] | None) -> None:
    names = class_order(value)
    if names is None or names == SORTED:
        return
    if not names or not all(names):
        raise PrunedropError(f"recipe key '{name}' = {value} holds an empty name; give 'sorted' or the class names")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PrunedropError(f"recipe key '{name}' names {repeated[0]!r} twice; name every class once")


def _column_named(name: str, value: str) -> None:
    if not value.strip():
        raise PrunedropError(f"recipe key '{name}' is empty; name the column that holds the labels")


def _token_id(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise PrunedropError(f"recipe key '{name}' is {value}; a pad id is a token id, 0 or more")


@dataclass
class ConversionConfig:
    """What is converted, and with which noise: the top of a grouped recipe (no section)."""

    method: Method = setting("sparse_vd")
    """Noise family: ``sparse_vd`` = per-weight sparse variational dropout (Molchanov et al. 2017; zeros single
    weights: smaller files); ``sbp`` = per-unit log-normal noise, structured Bayesian pruning (Neklyudov et al.
    2017) and ``group_vd`` = per-unit Gaussian noise, group variational dropout: both remove whole neurons and
    channels (smaller layers: faster); ``sbp_sparse_vd`` = both granularities: sbp's noise per unit over sparse VD
    per weight (smaller layers whose remaining weights are stored sparsely). ``nn.LSTM`` / ``nn.GRU`` convert under
    ``sparse_vd`` (per-weight noise, drawn once per sequence) and ``group_vd`` (that plus group noise on inputs, hidden
    units and gates; removes hidden units); ``nn.MultiheadAttention`` under ``sparse_vd`` (per weight), ``group_vd``
    and ``sbp`` (per head: removes heads)."""

    include: list[str] = setting(factory=lambda: ["*"], check=_selects_layers)
    """Glob patterns over qualified module names (``features.0``, ``fc1``); only matching layers are converted."""

    exclude: list[str] = setting(factory=list)
    """Glob patterns of layers to leave dense even when ``include`` matches them (e.g. the output layer)."""


@dataclass
class TrainingConfig:
    """``training``: the variational fine-tuning (the ELBO, its optimizer and schedule) and where it runs."""

    epochs: int | None = setting(None, check=NON_NEGATIVE,
            cli=Cli("--epochs", "Override the recipe's variational fine-tuning epochs."))
    """Variational fine-tuning epochs; null = automatic: enough for at least 10,000 optimizer steps and 10 epochs
    (at most 300), ended early when the autopilot has settled (β and the kept fraction flat over 1,000 steps)."""

    batch_size: int = setting(100, check=POSITIVE,
            cli=Cli("--batch-size", "Override the recipe's training batch size."))
    """Training batch size. A last batch of one sample is left out of that epoch (a BatchNorm cannot train on one)."""

    eval_batch_size: int = setting(1000, check=POSITIVE)
    """Batch size for evaluation, export checks and reports."""

    lr: float = setting(1e-3, check=POSITIVE, cli=Cli("--lr", "Override the recipe's learning rate."))
    """Adam learning rate of the weights and biases."""

    noise_lr: float | None = setting(0.01, check=POSITIVE)
    """Adam learning rate of the noise parameters (log σ², SBP's μ and log σ, group log α); null means the same as
    ``lr``. The noise starts far below the weights (log σ² = −10) and Adam moves it by about one learning rate per
    step, so it wants a larger rate than the weights."""

    weight_decay: float = setting(0.0, check=NON_NEGATIVE)
    """Adam weight decay of the weights (never of the noise parameters)."""

    lr_schedule: Schedule = setting("cosine")
    """Learning-rate schedule over the fine-tuning steps: cosine to zero, linear to zero, or constant."""

    kl_weight: float | None = setting(None, check=NON_NEGATIVE,
            cli=Cli("--kl-weight", 'Expert option: fix the KL weight β yourself (switches the autopilot off; not with '
                                '--target).'))
    """Expert option: a fixed β (the KL weight) at the end of the warm-up; 1 is the true ELBO, larger values prune
    more at some accuracy cost. null = automatic: with ``max_metric_drop`` or ``target`` set, the autopilot moves β
    during training to meet them (:mod:`prunedrop.autopilot`); with neither, β = 1. Cannot be combined with
    ``target``."""

    kl_warmup_epochs: float = setting(2.0, check=NON_NEGATIVE)
    """With a fixed ``kl_weight``: β rises linearly from 0 to it over this many epochs (0 = no warm-up). The
    autopilot has no warm-up: it starts β small and raises it while the constraints allow."""

    kl_weights: dict[str, float] = setting(factory=dict, check=_factors_not_negative)
    """Expert option: extra KL factor per layer group: qualified-name glob → factor (first match wins), e.g.
    {"conv*": 5} as SBP's SBPa variant scales early layers' KL by 5-10 to prune them harder. Layers matching none
    get 1. Setting it switches the autopilot off (β is then ``kl_weight``, or 1); without it, an automatic run
    weighs each unit's KL by what the unit costs (see ``target``)."""

    grad_clip: float | None = setting(None, check=POSITIVE)
    """Clip the gradient norm to this value; null disables clipping."""

    loss: Loss = setting("cross_entropy",
                         cli=Cli("--loss", "Override the recipe's data term: cross_entropy (classes), "
                                           "binary_cross_entropy (one logit, labels 0/1, or a logit per label of "
                                           "a multi-label model; chosen by itself for such models) or mse "
                                           "(regression: real-valued targets, the budget in percent more error)."))
    """Data term of the ELBO: ``cross_entropy`` (classification, metric accuracy), ``binary_cross_entropy`` (a
    one-logit binary classifier, as trained with ``BCEWithLogitsLoss``: labels 0 and 1, the output the logit of
    class 1; or a multi-label model, a logit and a 0/1 label per output, the accuracy over every label; chosen by
    itself for a model with one output and labels 0/1, and for labels that are 0/1 vectors, one per output, not
    one-hot) or ``mse`` (regression)."""

    seed: int = setting(0, check=_seed_range, cli=Cli("--seed", "Override the recipe's random seed."))
    """Seed of every random number (data order, noise, splits); a fixed seed makes CPU runs repeatable."""

    device: str = setting("auto", check=_device,
            cli=Cli("--device", "Override the recipe's device: auto, cpu, cuda or cuda:N."))
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""

    precision: Precision = setting("fp32",
            cli=Cli("--precision", "Override the recipe's training precision (bf16/fp16 autocast; log α and KL stay fp32)."))
    """Training precision: ``fp32``, or autocast ``bf16`` (CPU and recent GPUs) or ``fp16`` (CUDA only, with a
    gradient scaler). log α, the KL and the noise always stay in float32."""

    compile: CompileMode = setting("auto",
            cli=Cli("--compile", "Override the recipe's torch.compile setting for the variational layers."))
    """Fuse the sparse VD layers' elementwise work (log α, KL, noise) with ``torch.compile``: ``auto`` when the run
    is long enough to repay compiling (sparse VD weights × steps ≥ 1e9), ``always``, or ``never``. If compiling
    fails (e.g. no C++ compiler) training goes on eagerly after a one-line warning."""


@dataclass
class FinetuneConfig:
    """``finetune``: the noise-free fine-tuning of what survives the threshold."""

    finetune_epochs: int | None = setting(None, check=NON_NEGATIVE,
            cli=Cli("--finetune-epochs", "Override the recipe's noise-free fine-tuning epochs after thresholding."))
    """After thresholding, fine-tune the surviving weights without noise for this many epochs (pruned stay 0);
    null = automatic: at least 3 epochs and 500 optimizer steps (at most 50 epochs); 0 = none."""

    finetune_lr: float | None = setting(None, check=POSITIVE)
    """Adam learning rate of that noise-free fine-tuning (cosine to zero). null = decided from the weights' ``lr``:
    that rate where the budget is judged after the fine-tuning (each probe's fine-tuned model is measured against
    it, and the fine-tuning must win back what a lower threshold cost), 0.3 of it elsewhere (threshold judged before
    the fine-tuning, fixed β), where nothing would see the accuracy Adam at the full rate first costs a converged
    network. So a model given a small ``lr`` (a delicate pretrained network) is fine-tuned gently too. Where the
    autopilot found training at ``lr`` overfitting the model (a model trained past its best), the rate it backed
    off to (docs/autopilot.md)."""

    finetune_batchnorm: bool = setting(False)
    """Noise-free fine-tuning with BatchNorm: every convolution that no BatchNorm follows (BatchNorms are folded into
    the convolutions at thresholding, or before the conversion by ``batchnorm_noise: fold``) gets one for the
    fine-tuning, calibrated on training batches so that the function does not change, and folded back into the
    convolution afterwards, so the exported layers stay the same. Normalised, a pruned deep network recovers faster
    from the noise. Needs a torch.fx trace. Without it, the convolutions whose BatchNorm joined their noise
    (``batchnorm_noise: after``) get theirs back all the same."""


@dataclass
class SelectionConfig:
    """``selection``: what is pruned: the threshold, the accuracy budget, the size target and the sweep."""

    threshold: float | None = setting(None,
            cli=Cli("--threshold", "Override the recipe's pruning threshold (log α)."))
    """Pruning threshold; null = the method's default. sparse_vd / group_vd: prune where log α exceeds it (3 ⇔
    α ≈ 20: the noise is 4.5× the signal). sbp, sbp_sparse_vd: prune a unit where its signal-to-noise ratio is at
    most it (1)."""

    max_metric_drop: float | None = setting(1.0, check=_budget_range,
            cli=Cli("--max-drop", 'Accuracy budget: the validation accuracy points the run may lose (for loss mse: percent '
                                'more error). The autopilot chooses β to compress as much as this allows. Default: the '
                                "recipe's (1 point without a recipe); none: no budget (with --target, the target "
                                "alone decides).", metavar="POINTS", none=True))
    """The accuracy budget: how much of the validation metric the run may lose, in points of accuracy (for
    ``loss: mse``: the relative increase of the validation error, in percent). The autopilot moves β during training
    to spend about half of it, then the threshold sweep takes the threshold that prunes most within all of it, and a
    run with an automatic β never exports a model over it. null = no budget: ``threshold`` is kept as it is."""

    budget_confidence: float | None = setting(None, check=_confidence_range,
            cli=Cli("--confidence", "Judge the budget with this one-sided confidence, e.g. 0.9: a model is within it only "
                                    "when its validation drop plus z standard errors is (z = 1.28 at 0.9). For data like "
                                    "the validation data. Default: the measured drop alone.", metavar="P"))
    """How surely the budget must hold: a model is within ``max_metric_drop`` only when its measured validation drop
    plus ``z`` paired standard errors of it is (``z`` = the standard normal quantile of this confidence: 0.84 → 1,
    0.9 → 1.28, 0.95 → 1.64). The validation data measures a drop only to a few tenths of a point on 6,000 images,
    and the search takes the most pruning model that reads within the budget, so a measured drop near the budget's
    edge may be over it on new data (LeNet-300-100 at ``--max-drop 0.5``: −0.47 ± 0.28 points on validation data,
    −1.02 on the test images; BENCHMARKS.md). Judged so are the probes after fine-tuning, the verdict on
    the exported model and the quantized file; the threshold sweep before fine-tuning and the autopilot's aim while
    training read the measured drop. null (the default) = 0.5: the measured drop alone (docs/budget.md)."""

    target: str | None = setting(None, check=_parses_as_target,
            cli=Cli("--target", 'Size or speed target: flops=10x, params=50x, bytes=5x or bytes=200KB. The autopilot '
                                'raises β until the model reaches it, within the budget; the run says which of the two '
                                'bound.', metavar="KIND=VALUE"))
    """A size or speed target: ``flops=10x`` (ten times fewer multiply-adds), ``params=50x`` (non-zero
    parameters), ``bytes=5x`` or ``bytes=200KB`` (the parameters' storage; KB/MB/GB or KiB/MiB/GiB). The autopilot
    raises β until the kept model reaches it (weighing each unit's KL by its FLOPs or parameters); with a budget as
    well, β rises only while both allow, and the run says which one bound. null = no target."""

    strict: bool = setting(False,
            cli=Cli("--strict", 'Exit with status 3 (after writing everything) when the target was not reached within the'
                                ' budget.'))
    """Exit non-zero (after writing everything) when the run could not reach its ``target`` within the budget."""

    budget_after_finetune: bool | None = setting(None)
    """Judge ``max_metric_drop`` after the noise-free fine-tuning instead of before it: bisect the swept thresholds
    that prune more than the sweep's choice (where none holds after it, then those that prune less), each probe
    pruned, fine-tuned (``finetune_epochs``; a probe stops at the first epoch within the budget, and the one chosen
    is continued to the end and judged there) and evaluated on validation data; about log2(n) + 1 fine-tunings instead of one, and up to 3 more past the default grid's most
    pruning end when that is within the budget. null (the default): on for automatic runs
    (the autopilot spends part of the budget while training and counts on the fine-tuning to win it back, so the
    budget is judged where the model ends) whose validation data resolves the budget (one sample weighs at most
    half of it; a coarser set would favour the probe that happened to lose no sample), off with a fixed β. Judged before the fine-tuning, a noise-trained
    LeNet-5 had no SNR threshold within 1 point and pruned nothing; after it, the same model kept the budget at
    several times fewer FLOPs (BENCHMARKS.md)."""

    sweep_thresholds: list[float] | None = setting(None, check=_thresholds_given)
    """Thresholds the sweep evaluates (log α; SNR for SBP); null = −2 to 6 in steps of 0.5 (for SBP, whose SNR
    is positive, 0.5 to 6), extended past its most pruning end when that end is within ``max_metric_drop`` (docs/autopilot.md). The sweep runs in every run and its curve goes
    into the report; it chooses the threshold only when ``max_metric_drop`` is set."""


@dataclass
class StructureConfig:
    """``structure``: how structured noise treats the network's structure (outputs, residual streams, BatchNorms) and
    how slimming removes pruned units."""

    keep_output_layers: bool = setting(True)
    """Structured methods (sbp, group_vd, sbp_sparse_vd): leave the layers that produce the model's outputs (the
    classes, the regression targets) without unit noise, found from the graph (:mod:`prunedrop.outputs`), so that no
    class is pruned away. sparse_vd prunes single weights and converts them as usual."""

    keep_unremovable: bool = setting(True)
    """Structured methods (sbp, group_vd): leave dense the layers none of whose units slimming could ever remove,
    found from the graph before training (:func:`prunedrop.slim.unremovable_layers`: their outputs pass through a
    LayerNorm or GroupNorm that mixes channels, an attention block, a forward that fixes their number). Their pruned
    units would stay in the model as zeros: fewer non-zero weights, no smaller file or faster model, and unit noise
    that costs accuracy there. ``false`` converts them (the zeros count as non-zero savings). sbp_sparse_vd converts
    them either way: its per-weight noise prunes their single weights, which are stored sparsely. The model's output
    layers are ``keep_output_layers``'s."""

    tie_residual: bool = setting(False)
    """Structured methods (sbp, group_vd, sbp_sparse_vd): give the layers that write one residual stream (a ResNet
    stage's stem or projection and its blocks' last convolutions) one shared noise per channel, found by tracing the
    model once. A stream channel can leave only when all of its producers prune it, and separate noises rarely all
    agree; tied, the channel is one decision. Each member still adds the shared KL with its own ``kl_weights`` factor."""

    tie_grouped: bool = setting(False)
    """Structured methods (sbp, group_vd, sbp_sparse_vd): around a grouped convolution (ResNeXt's, RegNet's), tie
    channel t of every group to one noise (a slot): its own output channels, in slots of ``out_channels / groups``,
    and the layer that writes its input channels, in slots of ``in_channels / groups`` (found by tracing the model
    once; a depthwise convolution with a channel multiplier is left per channel). Its groups must stay equal in size,
    so slimming removes a pruned channel only as far as every group lost as many and keeps the rest as zeros; a slot
    leaves from every group at once, exactly. No effect on a model without grouped convolutions. Off by default: on
    a ResNeXt-style digits CNN it left no zeros but pruned less, and compressed no more at the same budget
    (docs/structured-pruning.md)."""

    batchnorm_noise: Literal["after", "fold", "before"] = setting("after")
    """Structured methods (sbp, group_vd, sbp_sparse_vd): where a convolution's unit noise goes when a BatchNorm alone
    follows it (found with a torch.fx trace). ``after``: on the BatchNorm's output; the pair is one unit, so the
    variational phase trains the network as it was trained (normalised), a pruned channel outputs exact zeros, and
    the BatchNorm is folded into the convolution exactly when the model is thresholded. ``fold``: fold the
    BatchNorm into the convolution before the conversion and train without it (what the deprecated
    ``fold_batchnorm: true`` did); Adam's steps then change size per channel, which can wreck training or help it as
    a smaller learning rate would (docs/structured.md; BENCHMARKS.md, "BatchNorm-safe structured noise").
    ``before``: on the convolution's output, before the BatchNorm (prunedrop's placement before this key; a pruned
    channel then carries the BatchNorm's shift). A model that torch.fx cannot trace keeps ``before`` (logged).
    docs/structured.md."""

    fold_batchnorm: bool | None = setting(None)
    """Deprecated: ``fold_batchnorm: true`` is read as ``batchnorm_noise: fold`` (with a warning). Run folders
    written before ``batchnorm_noise`` existed are read with the placement they were trained with."""

    channel_multiple: int | None = setting(None, check=POSITIVE)
    """Slimming: keep each layer's (or residual group's) width a multiple of this by leaving some pruned channels in
    place (they output exact zeros, so the function is unchanged). Convolution kernels that work in blocks of
    channels can run odd widths on a slower path (onnxruntime's NCHWc blocks of 8 on AVX2, 16 on AVX-512); 1 removes
    every pruned channel. null (the default): measured: where removing every pruned channel leaves a convolution's
    width off a multiple of 8, the slim model is built both ways, each is timed with onnxruntime on this CPU, and the
    rounded one is kept when it is at least 10% faster at batch 16 (and not slower at batch 1); logged, and recorded
    in ``report["slim"]["widths"]``. With a target (``flops``, ``params``, ``bytes``), null removes every pruned channel
    (the target is counted on the exported widths, and rounding adds to each), and so it does with ``latency_runs: 0``
    (nothing is timed)."""


@dataclass
class ExportConfig:
    """``export``: the ONNX file, its check against PyTorch and its int8 copy."""

    onnx_opset: int = setting(18, check=_opset_range)
    """ONNX opset of the exported model."""

    onnx_exporter: Exporter = setting("auto")
    """``torchscript`` (fast, torch.onnx's classic exporter), ``dynamo`` (torch.export based), or ``auto``:
    TorchScript, and dynamo for a model TorchScript cannot export (an operator it lacks, as ``nn.Bilinear``'s
    ``aten::bilinear``; said in the log and the report's ``onnx_exporter``)."""

    sparse_storage: SparseStorage = setting("auto")
    """Store pruned initializers as ONNX sparse tensors: ``auto`` where that is smaller, ``always``, ``never``."""

    quantize: Quantize = setting("bayes",
            cli=Cli("--quantize", "Override the recipe's quantize (default bayes): also write model-int8.onnx "
                                '(int8 = every layer onnxruntime can quantize, bayes = the layers whose posterior allows '
                                '8 bits, int4 where 4; none = no int8 file); a layer whose integer form runs slower here '
                                'stays float32, and no file is written that is neither smaller nor faster.'))
    """Also write an int8 ONNX file beside the float one (``model-int8.onnx``, onnxruntime's QDQ quantizer):
    ``int8`` quantizes every layer onnxruntime can, ``bayes`` only the layers whose posterior allows 8 bits (the
    rest stay float32), ``none`` writes no quantized file. Its accuracy is measured with onnxruntime and kept within
    ``max_metric_drop`` by reverting the most sensitive layers to float32; a layer whose integer form runs slower
    than float32 on this CPU (timed with onnxruntime, ``latency_runs``) stays float32 too, and ``bayes`` stores a
    layer in int4 where its posterior allows 4 bits and that is smaller (docs/quantization.md). No file is written
    when the result is neither smaller nor faster than the float32 file, and a model onnxruntime cannot quantize
    keeps its float32 file alone; the report says why either way."""

    parity_atol: float = setting(1e-4, check=POSITIVE)
    """Largest allowed difference between onnxruntime's and PyTorch's outputs, relative to the output's scale:
    an output may differ by ``parity_atol · max(1, its largest |value|)``; above it the run fails. Checked on the
    original model before fine-tuning and on the compressed one after."""


@dataclass
class ReportConfig:
    """``report``: what the report measures beside sizes: calibration, plots and latency."""

    mc_samples: int = setting(20, check=NON_NEGATIVE)
    """Monte Carlo forward passes of the variational model for the calibration report (ECE, NLL); 0 skips it."""

    plots: bool = setting(True)
    """Write PNG plots (kept fraction per layer, log α histograms, sweep curve, training curves) into
    ``plots/``; needs matplotlib (``pip install prunedrop[plots]``)."""

    latency_runs: int = setting(30, check=(NON_NEGATIVE, _not_one_run))
    """Timed onnxruntime runs per model and batch size (original and compressed alternated); 0 skips timing."""

    latency_batch_sizes: list[int] = setting(factory=lambda: [1, 64], check=_batch_sizes)
    """Batch sizes at which the latency of the original and the compressed ONNX model is measured."""

    latency_threads: int = setting(1, check=POSITIVE)
    """onnxruntime intra-op threads for the latency measurement."""


@dataclass
class DataConfig:
    """``data``: how the data spec is read: the validation split, a training subset, images and tables."""

    val_fraction: float = setting(0.1, check=_fraction)
    """Share of the training data held out for validation when the data spec has no validation split."""

    train_limit: int | None = setting(None, check=POSITIVE,
            cli=Cli("--train-limit", 'Use only the first N training samples.'))
    """Use only the first n training samples (quick trials); null uses all."""

    image_size: list[int] | None = setting(None, check=_image_size)
    """``imagefolder:`` and ``hf:`` images: resize every image to this size, one number (a square) or [height,
    width], at most 4096 a side; null = the images' own size, which must then be the same for all of them."""

    image_channels: int | None = setting(None, check=_image_channels)
    """``imagefolder:`` and ``hf:`` images: 1 = grayscale, 3 = RGB (images are converted, alpha dropped); null = 3
    when any image has colour, else 1."""

    normalize: Normalize = setting("none")
    """Image inputs are scaled to [0, 1]; then ``none`` leaves them so, ``imagenet`` subtracts ImageNet's mean
    (0.485, 0.456, 0.406) and divides by its std (0.229, 0.224, 0.225) per RGB channel, as torchvision's and timm's
    pretrained networks expect, and ``custom`` uses ``normalize_mean`` / ``normalize_std``."""

    normalize_mean: list[float] | None = setting(None)
    """``normalize: custom``: the mean to subtract, one number per channel (or one for all)."""

    normalize_std: list[float] | None = setting(None)
    """``normalize: custom``: the std to divide by, one positive number per channel (or one for all)."""

    class_names: list[str] | None = setting(None, check=_class_names, cli=Cli(
        "--class-names", "Labels that are names (a CSV column of cat/dog, strings in an npz): 'sorted' numbers them "
        "in sorted order (as scikit-learn's LabelEncoder and np.unique do), or give the names in the order of the "
        "model's outputs, comma-separated.", metavar="sorted|A,B,..."))
    """``csv:`` and ``npz:`` labels that are names, not class indices: ``sorted`` numbers them in sorted order over
    every split, as scikit-learn's ``LabelEncoder`` and ``np.unique`` do; a list gives the names in the order of the
    model's outputs. null: names are refused, since how they are numbered is the model's, not a guess."""

    label_column: str = setting("label", check=_column_named)
    """``csv:`` and ``hf:`` data: the column that holds the labels (class indices 0..C-1, or numbers to predict
    with ``loss: mse``); every other column is an input."""

    pad_token_id: int | None = setting(None, check=_token_id)
    """``hf:`` data with an ``input_ids`` column (a tokenized dataset): the id that pads every id list to the
    longest one; null = the model's config ``pad_token_id`` when the model is a Hugging Face folder, else 0."""


#: section name → group, in the order of the grouped recipe (None: the top, no section); the noise families'
#: sections (prunedrop.layers.configs.NOISE_CONFIGS) follow the top
GROUPS: dict[str | None, type] = {
    None: ConversionConfig,
    "training": TrainingConfig,
    "finetune": FinetuneConfig,
    "selection": SelectionConfig,
    "structure": StructureConfig,
    "export": ExportConfig,
    "report": ReportConfig,
    "data": DataConfig,
}
