"""The recipe: every setting of a compression run, typed and validated; YAML is only its file form.

YAML keys are the field names of :class:`Recipe`. Unknown keys, wrong types and out-of-range values are
errors that name the key (and suggest the closest valid key for a typo).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .errors import PrunedropError

Method = Literal["sparse_vd", "sbp", "group_vd", "sbp_sparse_vd"]
#: default threshold of each method: log α for the variational-dropout families, SNR for log-normal noise
#: (sbp_sparse_vd: the units' SNR; its weights have ``weight_threshold``)
DEFAULT_THRESHOLDS = {"sparse_vd": 3.0, "group_vd": 3.0, "sbp": 1.0, "sbp_sparse_vd": 1.0}
#: methods whose ``threshold`` is a signal-to-noise ratio (log-normal unit noise), not a log α
SNR_METHODS = ("sbp", "sbp_sparse_vd")
Schedule = Literal["cosine", "linear", "constant"]
Loss = Literal["cross_entropy", "mse"]
Exporter = Literal["torchscript", "dynamo"]
SparseStorage = Literal["auto", "always", "never"]
Quantize = Literal["none", "int8", "bayes"]
Precision = Literal["fp32", "bf16", "fp16"]
RecurrentNoise = Literal["sequence", "batch"]
CompileMode = Literal["auto", "always", "never"]
Normalize = Literal["none", "imagenet", "custom"]
#: the largest image side (pixels) of a sample, asked for with ``image_size`` or, without it, the images' own: bigger
#: is almost surely a mistake (one 4096 x 4096 RGB sample is 200 MB as float32)
MAX_IMAGE_SIDE = 4096


@dataclass
class Recipe:
    """A compression recipe. Each field is one YAML key."""

    method: Method = "sparse_vd"
    """Noise family: ``sparse_vd`` = per-weight sparse variational dropout (Molchanov et al. 2017; zeros single
    weights: smaller files); ``sbp`` = per-unit log-normal noise, structured Bayesian pruning (Neklyudov et al.
    2017) and ``group_vd`` = per-unit Gaussian noise, group variational dropout: both remove whole neurons and
    channels (smaller layers: faster); ``sbp_sparse_vd`` = both granularities: sbp's noise per unit over sparse VD
    per weight (smaller layers whose remaining weights are stored sparsely). ``nn.LSTM`` / ``nn.GRU`` convert under
    ``sparse_vd`` (per-weight noise, drawn once per sequence) and ``group_vd`` (that plus group noise on inputs, hidden
    units and gates; removes hidden units)."""

    include: list[str] = field(default_factory=lambda: ["*"])
    """Glob patterns over qualified module names (``features.0``, ``fc1``); only matching layers are converted."""

    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layers to leave dense even when ``include`` matches them (e.g. the output layer)."""

    threshold: float | None = None
    """Pruning threshold; null = the method's default. sparse_vd / group_vd: prune where log α exceeds it (3 ⇔
    α ≈ 20: the noise is 4.5× the signal). sbp, sbp_sparse_vd: prune a unit where its signal-to-noise ratio is at
    most it (1)."""

    weight_threshold: float = 3.0
    """sbp_sparse_vd: prune a single weight (of a unit that stays) where its log α exceeds this; ``threshold``
    decides the units. The other methods ignore it."""

    init_log_sigma2: float = -10.0
    """Initial log σ² of every weight; very low, so fine-tuning starts from the trained network."""

    log_alpha_clip: float = 10.0
    """log α is clipped to [−clip, clip] (8 or 10 in the paper) for stable training (sparse_vd, group_vd)."""

    init_log_alpha: float = -8.0
    """group_vd: initial log α of every unit (tiny noise, so training starts from the trained network)."""

    init_mu: float = 0.0
    """sbp: initial μ of every unit's log-normal noise (log θ ~ N(μ, σ²) truncated to [−20, 0])."""

    init_log_sigma: float = -5.0
    """sbp: initial log σ of every unit's log-normal noise."""

    recurrent_noise: RecurrentNoise = "sequence"
    """nn.LSTM / nn.GRU: how the weight noise is drawn (it is always fixed along the time steps of a sequence).
    ``sequence``: every sequence of a mini-batch draws its own weights (lower-variance gradients; the time loop
    runs unrolled in Python). ``batch``: one draw per mini-batch shared by its sequences, as Lobacheva et al.
    train; the layer then runs torch's fused LSTM/GRU kernel, which makes a training step many times cheaper
    (measured in BENCHMARKS.md, LSTM section)."""

    kl_weights: dict[str, float] = field(default_factory=dict)
    """Expert option: extra KL factor per layer group: qualified-name glob → factor (first match wins), e.g.
    {"conv*": 5} as SBP's SBPa variant scales early layers' KL by 5-10 to prune them harder. Layers matching none
    get 1. Setting it switches the autopilot off (β is then ``kl_weight``, or 1); without it, an automatic run
    weighs each unit's KL by what the unit costs (see ``target``)."""

    epochs: int | None = None
    """Variational fine-tuning epochs; null = automatic: enough for at least 10,000 optimizer steps and 10 epochs
    (at most 300), ended early when the autopilot has settled (β and the kept fraction flat over 1,000 steps)."""

    batch_size: int = 100
    """Training batch size."""

    eval_batch_size: int = 1000
    """Batch size for evaluation, export checks and reports."""

    lr: float = 1e-3
    """Adam learning rate of the weights and biases."""

    noise_lr: float | None = 0.01
    """Adam learning rate of the noise parameters (log σ², SBP's μ and log σ, group log α); null means the same as
    ``lr``. The noise starts far below the weights (log σ² = −10) and Adam moves it by about one learning rate per
    step, so it wants a larger rate than the weights."""

    weight_decay: float = 0.0
    """Adam weight decay of the weights (never of the noise parameters)."""

    lr_schedule: Schedule = "cosine"
    """Learning-rate schedule over the fine-tuning steps: cosine to zero, linear to zero, or constant."""

    kl_weight: float | None = None
    """Expert option: a fixed β (the KL weight) at the end of the warm-up; 1 is the true ELBO, larger values prune
    more at some accuracy cost. null = automatic: with ``max_metric_drop`` or ``target`` set, the autopilot moves β
    during training to meet them (:mod:`prunedrop.autopilot`); with neither, β = 1. Cannot be combined with
    ``target``."""

    kl_warmup_epochs: float = 2.0
    """With a fixed ``kl_weight``: β rises linearly from 0 to it over this many epochs (0 = no warm-up). The
    autopilot has no warm-up: it starts β small and raises it while the constraints allow."""

    grad_clip: float | None = None
    """Clip the gradient norm to this value; null disables clipping."""

    finetune_epochs: int | None = None
    """After thresholding, fine-tune the surviving weights without noise for this many epochs (pruned stay 0);
    null = automatic: at least 3 epochs and 500 optimizer steps (at most 50 epochs); 0 = none."""

    finetune_lr: float = 3e-4
    """Adam learning rate of that noise-free fine-tuning (cosine to zero)."""

    loss: Loss = "cross_entropy"
    """Data term of the ELBO: ``cross_entropy`` (classification, metric accuracy) or ``mse`` (regression)."""

    val_fraction: float = 0.1
    """Share of the training data held out for validation when the data spec has no validation split."""

    train_limit: int | None = None
    """Use only the first n training samples (quick trials); null uses all."""

    seed: int = 0
    """Seed of every random number (data order, noise, splits); a fixed seed makes CPU runs repeatable."""

    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""

    precision: Precision = "fp32"
    """Training precision: ``fp32``, or autocast ``bf16`` (CPU and recent GPUs) or ``fp16`` (CUDA only, with a
    gradient scaler). log α, the KL and the noise always stay in float32."""

    compile: CompileMode = "auto"
    """Fuse the sparse VD layers' elementwise work (log α, KL, noise) with ``torch.compile``: ``auto`` when the run
    is long enough to repay compiling (sparse VD weights × steps ≥ 1e9), ``always``, or ``never``. If compiling
    fails (e.g. no C++ compiler) training goes on eagerly after a one-line warning."""

    onnx_opset: int = 18
    """ONNX opset of the exported model."""

    onnx_exporter: Exporter = "torchscript"
    """``torchscript`` (fast, torch.onnx's classic exporter) or ``dynamo`` (torch.export based)."""

    sparse_storage: SparseStorage = "auto"
    """Store pruned initializers as ONNX sparse tensors: ``auto`` where that is smaller, ``always``, ``never``."""

    quantize: Quantize = "none"
    """Also write an int8 ONNX file beside the float one (``model-int8.onnx``, onnxruntime's QDQ quantizer):
    ``int8`` quantizes every layer onnxruntime can, ``bayes`` only the layers whose posterior allows 8 bits (the
    rest stay float32), ``none`` writes no quantized file. Its accuracy is measured with onnxruntime and kept within
    ``max_metric_drop`` by reverting the most sensitive layers to float32 (docs/quantization.md)."""

    parity_atol: float = 1e-4
    """Largest allowed difference between onnxruntime's and PyTorch's outputs, relative to the output's scale:
    an output may differ by ``parity_atol · max(1, its largest |value|)``; above it the run fails. Checked on the
    original model before fine-tuning and on the compressed one after."""

    max_metric_drop: float | None = 1.0
    """The accuracy budget: how much of the validation metric the run may lose, in points of accuracy (for
    ``loss: mse``: the relative increase of the validation error, in percent). The autopilot moves β during training
    to spend about half of it, then the threshold sweep takes the threshold that prunes most within all of it, and a
    run with an automatic β never exports a model over it. null = no budget: ``threshold`` is kept as it is."""

    target: str | None = None
    """A size or speed target: ``flops=10x`` (ten times fewer multiply-adds), ``params=50x`` (non-zero
    parameters), ``bytes=5x`` or ``bytes=200KB`` (the parameters' storage; KB/MB/GB or KiB/MiB/GiB). The autopilot
    raises β until the kept model reaches it (weighing each unit's KL by its FLOPs or parameters); with a budget as
    well, β rises only while both allow, and the run says which one bound. null = no target."""

    strict: bool = False
    """Exit non-zero (after writing everything) when the run could not reach its ``target`` within the budget."""

    channel_multiple: int = 1
    """Slimming: keep each layer's (or residual group's) width a multiple of this by leaving some pruned channels in
    place (they output exact zeros, so the function is unchanged). Convolution kernels that work in blocks of
    channels run odd widths on a slower path: onnxruntime on AVX2 uses blocks of 8 (16 on AVX-512); 1 removes
    every pruned channel."""

    keep_output_layers: bool = True
    """Structured methods (sbp, group_vd, sbp_sparse_vd): leave the layers that produce the model's outputs (the
    classes, the regression targets) without unit noise, found from the graph (:mod:`prunedrop.outputs`), so that no
    class is pruned away. sparse_vd prunes single weights and converts them as usual."""

    tie_residual: bool = False
    """Structured methods (sbp, group_vd, sbp_sparse_vd): give the layers that write one residual stream (a ResNet
    stage's stem or projection and its blocks' last convolutions) one shared noise per channel, found by tracing the
    model once. A stream channel can leave only when all of its producers prune it, and separate noises rarely all
    agree; tied, the channel is one decision. Each member still adds the shared KL with its own ``kl_weights`` factor."""

    batchnorm_noise: Literal["after", "fold", "before"] = "after"
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

    fold_batchnorm: bool | None = None
    """Deprecated: ``fold_batchnorm: true`` is read as ``batchnorm_noise: fold`` (with a warning). Run folders
    written before ``batchnorm_noise`` existed are read with the placement they were trained with."""

    finetune_batchnorm: bool = False
    """Noise-free fine-tuning with BatchNorm: every convolution that no BatchNorm follows (BatchNorms are folded into
    the convolutions at thresholding, or before the conversion by ``batchnorm_noise: fold``) gets one for the
    fine-tuning, calibrated on training batches so that the function does not change, and folded back into the
    convolution afterwards, so the exported layers stay the same. Normalised, a pruned deep network recovers faster
    from the noise. Needs a torch.fx trace. Without it, the convolutions whose BatchNorm joined their noise
    (``batchnorm_noise: after``) get theirs back all the same."""

    budget_after_finetune: bool = False
    """Judge ``max_metric_drop`` after the noise-free fine-tuning instead of before it: bisect the swept thresholds
    that prune more than the sweep's choice, each probe pruned, fine-tuned (``finetune_epochs``) and evaluated on
    validation data; about log2(n) + 1 fine-tunings instead of one. Worth it where the fine-tuning wins back much
    of a low threshold's loss (the LSTM benchmark in BENCHMARKS.md)."""

    sweep_thresholds: list[float] | None = None
    """Thresholds the sweep evaluates (log α); null = −2 to 6 in steps of 0.5. The sweep runs in every run and
    its curve goes into the report; it chooses the threshold only when ``max_metric_drop`` is set."""

    mc_samples: int = 20
    """Monte Carlo forward passes of the variational model for the calibration report (ECE, NLL); 0 skips it."""

    plots: bool = True
    """Write PNG plots (kept fraction per layer, log α histograms, sweep curve, training curves) into
    ``plots/``; needs matplotlib (``pip install prunedrop[plots]``)."""

    latency_runs: int = 30
    """Timed onnxruntime runs per model and batch size (original and compressed alternated); 0 skips timing."""

    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    """Batch sizes at which the latency of the original and the compressed ONNX model is measured."""

    latency_threads: int = 1
    """onnxruntime intra-op threads for the latency measurement."""

    image_size: list[int] | None = None
    """``imagefolder:`` and ``hf:`` images: resize every image to this size, one number (a square) or [height,
    width], at most 4096 a side; null = the images' own size, which must then be the same for all of them."""

    image_channels: int | None = None
    """``imagefolder:`` and ``hf:`` images: 1 = grayscale, 3 = RGB (images are converted, alpha dropped); null = 3
    when any image has colour, else 1."""

    normalize: Normalize = "none"
    """Image inputs are scaled to [0, 1]; then ``none`` leaves them so, ``imagenet`` subtracts ImageNet's mean
    (0.485, 0.456, 0.406) and divides by its std (0.229, 0.224, 0.225) per RGB channel, as torchvision's and timm's
    pretrained networks expect, and ``custom`` uses ``normalize_mean`` / ``normalize_std``."""

    normalize_mean: list[float] | None = None
    """``normalize: custom``: the mean to subtract, one number per channel (or one for all)."""

    normalize_std: list[float] | None = None
    """``normalize: custom``: the std to divide by, one positive number per channel (or one for all)."""

    label_column: str = "label"
    """``csv:`` and ``hf:`` data: the column that holds the labels (class indices 0..C-1, or numbers to predict
    with ``loss: mse``); every other column is an input."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check types and ranges; raise PrunedropError naming the key."""
        hints = typing.get_type_hints(Recipe)
        for f in fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(f.name, value, hints[f.name])
            object.__setattr__(self, f.name, coerced)
        if self.epochs is not None:
            _positive(self, "epochs", allow_zero=True)
        _positive(self, "batch_size")
        _positive(self, "eval_batch_size")
        _positive(self, "lr")
        if self.noise_lr is not None:
            _positive(self, "noise_lr")
        _positive(self, "finetune_lr")
        if self.finetune_epochs is not None:
            _positive(self, "finetune_epochs", allow_zero=True)
        if self.kl_weight is not None:
            _positive(self, "kl_weight", allow_zero=True)
        _positive(self, "kl_warmup_epochs", allow_zero=True)
        _positive(self, "weight_decay", allow_zero=True)
        _positive(self, "log_alpha_clip")
        if self.threshold is None:
            self.threshold = DEFAULT_THRESHOLDS[self.method]
        if self.fold_batchnorm is not None:  # deprecated: consumed here, so that to_dict and replace never carry it
            if self.fold_batchnorm and self.batchnorm_noise == "before":
                raise PrunedropError("recipe keys fold_batchnorm: true and batchnorm_noise: before contradict each "
                                     "other; fold_batchnorm is deprecated, keep batchnorm_noise only")
            if self.fold_batchnorm:
                self.batchnorm_noise = "fold"
            self.fold_batchnorm = None
        for pattern, factor in self.kl_weights.items():
            if factor < 0:
                raise PrunedropError(f"recipe key 'kl_weights' gives {pattern!r} the factor {factor}; it must be ≥ 0")
        _positive(self, "parity_atol")
        if self.grad_clip is not None:
            _positive(self, "grad_clip")
        if self.train_limit is not None:
            _positive(self, "train_limit")
        if not -(2**63) <= self.seed < 2**64:
            raise PrunedropError(f"recipe key 'seed' = {self.seed} is outside what a random generator takes "
                                 "(-2**63 to 2**64 - 1)")
        _positive(self, "latency_runs", allow_zero=True)
        _positive(self, "mc_samples", allow_zero=True)
        _positive(self, "channel_multiple")
        if self.max_metric_drop is not None and not 0.0 < self.max_metric_drop <= 100.0:
            raise PrunedropError(f"recipe key 'max_metric_drop' = {self.max_metric_drop} must be in (0, 100]: the "
                                 "points of the metric the run may lose (null for no budget)")
        if self.target is not None:
            from .autopilot import parse_target

            parse_target(self.target)
            if self.kl_weight is not None or self.kl_weights:
                raise PrunedropError("recipe key 'target' cannot be combined with a fixed 'kl_weight' or "
                                     "'kl_weights': the autopilot chooses β to reach the target; remove one")
        if self.sweep_thresholds is not None:
            if not self.sweep_thresholds:
                raise PrunedropError("recipe key 'sweep_thresholds' is empty; give thresholds or null for the default")

        _positive(self, "latency_threads")
        if self.latency_runs == 1:
            raise PrunedropError("recipe key 'latency_runs' = 1: use 0 to skip timing or at least 2 (a spread needs two)")
        if not self.latency_batch_sizes or min(self.latency_batch_sizes) < 1:
            raise PrunedropError(f"recipe key 'latency_batch_sizes' = {self.latency_batch_sizes} must list "
                                 "positive batch sizes")
        for t in [self.threshold, *(self.sweep_thresholds or [])]:
            self._check_threshold(t, "threshold" if t == self.threshold else "sweep_thresholds")
        if not -self.log_alpha_clip < self.weight_threshold < self.log_alpha_clip:
            raise PrunedropError(
                f"recipe key 'weight_threshold' = {self.weight_threshold} must lie inside (−log_alpha_clip, "
                f"log_alpha_clip) = (−{self.log_alpha_clip}, {self.log_alpha_clip}), else no or every weight is pruned"
            )
        if not -30.0 <= self.init_log_sigma2 <= 0.0:
            raise PrunedropError(f"recipe key 'init_log_sigma2' = {self.init_log_sigma2} must be in [−30, 0]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise PrunedropError(f"recipe key 'val_fraction' = {self.val_fraction} must be in [0, 1)")
        if not 7 <= self.onnx_opset <= 23:
            raise PrunedropError(f"recipe key 'onnx_opset' = {self.onnx_opset} must be between 7 and 23")
        if not (self.device in ("auto", "cpu", "cuda") or _is_cuda_index(self.device)):
            raise PrunedropError(f"recipe key 'device' = {self.device!r} must be auto, cpu, cuda or cuda:N")
        if self.epochs is not None and self.kl_warmup_epochs > self.epochs > 0 and not self.automatic:
            raise PrunedropError(
                f"recipe key 'kl_warmup_epochs' = {self.kl_warmup_epochs} is longer than 'epochs' = {self.epochs}: "
                "the KL term would never reach its full weight; shorten the warm-up or train longer"
            )
        if not self.include:
            raise PrunedropError("recipe key 'include' is empty: no layer would be converted; use ['*'] for all")
        self._validate_data_keys()

    def _validate_data_keys(self) -> None:
        if self.image_size is not None and (
            len(self.image_size) not in (1, 2) or not all(1 <= v <= MAX_IMAGE_SIDE for v in self.image_size)
        ):
            raise PrunedropError(f"recipe key 'image_size' = {self.image_size} must be one size or [height, width], "
                                 f"each between 1 and {MAX_IMAGE_SIDE}")
        if self.image_channels not in (None, 1, 3):
            raise PrunedropError(f"recipe key 'image_channels' = {self.image_channels} must be 1 (grayscale), "
                                 "3 (RGB) or null")
        given = [k for k in ("normalize_mean", "normalize_std") if getattr(self, k) is not None]
        if self.normalize == "custom" and len(given) < 2:
            missing = "normalize_std" if given == ["normalize_mean"] else "normalize_mean"
            raise PrunedropError(f"recipe key 'normalize' = 'custom' needs '{missing}' too")
        if self.normalize != "custom" and given:
            raise PrunedropError(f"recipe key '{given[0]}' is only used with normalize: custom (normalize is "
                                 f"{self.normalize!r}); set normalize: custom or drop it")
        for key in given:
            if not getattr(self, key):
                raise PrunedropError(f"recipe key '{key}' is empty; give one number per channel")
        if self.normalize_std is not None and min(self.normalize_std) <= 0:
            raise PrunedropError(f"recipe key 'normalize_std' = {self.normalize_std} must hold positive numbers")
        if not self.label_column.strip():
            raise PrunedropError("recipe key 'label_column' is empty; name the column that holds the labels")

    def _check_threshold(self, t: float, key: str) -> None:
        if self.method in SNR_METHODS:
            if not t > 0:
                raise PrunedropError(f"recipe key '{key}' = {t}: a signal-to-noise threshold (method "
                                     f"{self.method}) must be > 0")
        elif not -self.log_alpha_clip < t < self.log_alpha_clip:
            raise PrunedropError(
                f"recipe key '{key}' = {t} must lie inside (−log_alpha_clip, log_alpha_clip) = "
                f"(−{self.log_alpha_clip}, {self.log_alpha_clip}), else nothing or everything is pruned"
            )

    @property
    def automatic(self) -> bool:
        """Whether the autopilot chooses β: no fixed ``kl_weight`` or ``kl_weights``, and a budget or a target."""
        return (self.kl_weight is None and not self.kl_weights
                and (self.max_metric_drop is not None or self.target is not None))

    def finetune_epochs_for(self, num_train: int) -> int:
        """``finetune_epochs``, or its automatic value for a training set of ``num_train`` samples."""
        if self.finetune_epochs is not None:
            return self.finetune_epochs
        steps_per_epoch = max(1, math.ceil(num_train / self.batch_size))
        return int(min(50, max(3, math.ceil(500 / steps_per_epoch))))

    @property
    def fixed_beta(self) -> float:
        """β of a run without the autopilot: ``kl_weight``, or 1 (the true ELBO) when it is null."""
        return 1.0 if self.kl_weight is None else self.kl_weight

    def pruning_rule(self, threshold: float | None = None) -> str:
        """What is pruned, in words: ``log α > 3``, ``SNR ≤ 1``, or both rules of ``sbp_sparse_vd``."""
        t = self.threshold if threshold is None else threshold
        if self.method == "sbp_sparse_vd":
            return f"SNR ≤ {t:g} (units) and log α > {self.weight_threshold:g} (weights)"
        return f"SNR ≤ {t:g}" if self.method in SNR_METHODS else f"log α > {t:g}"

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (validated); ``None`` values are ignored (CLI overrides)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise PrunedropError(f"unknown recipe key(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe", saved_run: bool = False) -> Recipe:
        """A recipe from a mapping (a YAML file's). ``saved_run``: the mapping is a run folder's recorded recipe; one
        written before ``batchnorm_noise`` existed gets the placement that run trained with (``fold`` where it set
        ``fold_batchnorm``, else ``before``), so that its checkpoints load as they were saved."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PrunedropError(f"{source} must be a mapping of recipe keys to values, not a {type(data).__name__}")
        if "fold_batchnorm" in data and "batchnorm_noise" not in data and (saved_run or data["fold_batchnorm"]):
            data = dict(data)
            if saved_run:
                data["batchnorm_noise"] = "fold" if data.pop("fold_batchnorm") else "before"
            else:
                warnings.warn(f"{source}: recipe key fold_batchnorm is deprecated; it is read as batchnorm_noise: fold. "
                              "The default batchnorm_noise: after keeps the BatchNorms while training and folds them at "
                              "export (docs/structured.md)", FutureWarning, stacklevel=2)
        elif data.get("fold_batchnorm") and data.get("batchnorm_noise") not in (None, "fold"):
            raise PrunedropError(f"{source}: fold_batchnorm: true and batchnorm_noise: {data['batchnorm_noise']} "
                                 "contradict each other; fold_batchnorm is deprecated, keep batchnorm_noise only")
        names = [f.name for f in fields(cls)]
        for key in data:
            if not isinstance(key, str) or key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
                raise PrunedropError(f"{source}: unknown key '{key}'{hint}")
        return cls(**data)


def _is_cuda_index(device: str) -> bool:
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


def _positive(recipe: Recipe, name: str, *, allow_zero: bool = False) -> None:
    value = getattr(recipe, name)
    if value < 0 or (value == 0 and not allow_zero) or (isinstance(value, float) and not math.isfinite(value)):
        need = "≥ 0" if allow_zero else "> 0"
        raise PrunedropError(f"recipe key '{name}' = {value} must be {need}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's annotation; ints are accepted for floats."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise PrunedropError(f"recipe key '{name}' = {value!r} must be one of {allowed}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for k, v in value.items()
        ):
            raise PrunedropError(f"recipe key '{name}' must map layer-name globs to numbers, not {value!r}")
        return {k: float(v) for k, v in value.items()}
    if origin is list:
        item = args[0]
        accepted = (int, float) if item is float else item
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, accepted) and not isinstance(v, bool) for v in value
        ):
            kind = {str: "strings", int: "whole numbers", float: "numbers"}[item]
            raise PrunedropError(f"recipe key '{name}' must be a list of {kind}, not {value!r}")
        if item is float:
            if not all(math.isfinite(v) for v in value):
                raise PrunedropError(f"recipe key '{name}' must hold finite numbers, not {value!r}")
            return [float(v) for v in value]
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise PrunedropError(f"recipe key '{name}' must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PrunedropError(f"recipe key '{name}' must be a whole number, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PrunedropError(f"recipe key '{name}' must be a number, not {value!r}")
        if not math.isfinite(value):
            raise PrunedropError(f"recipe key '{name}' must be a finite number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PrunedropError(f"recipe key '{name}' must be a string, not {value!r}")
        return value
    raise TypeError(f"unhandled recipe annotation {hint!r} for {name}")  # a bug in Recipe, not a user error


def load_recipe(path: str | os.PathLike[str] | None) -> Recipe:
    """Load a YAML recipe with the safe loader; ``None`` gives the defaults."""
    if path is None:
        return Recipe()
    from .safety import load_yaml_file

    path = Path(path)
    if not path.is_file():
        raise PrunedropError(f"recipe file {path} does not exist; see `prunedrop recipes` for the shipped ones")
    data = load_yaml_file(path, where=f"recipe {path.name}")  # safe_load, bounded, no aliases
    return Recipe.from_dict(data, source=f"recipe {path.name}")


def shipped_recipes_dir() -> Path | None:
    """The ``recipes/`` folder of a source checkout, where the shipped YAML files live."""
    here = Path(__file__).resolve().parent.parent / "recipes"
    return here if here.is_dir() else None


def recipe_keys() -> list[tuple[str, str, str]]:
    """(key, default, documentation) for every recipe key, from the field docstrings in this file."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Recipe))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[attr-defined]
    defaults = Recipe()
    return [(f.name, repr(getattr(defaults, f.name)), docs.get(f.name, "")) for f in fields(Recipe)]
