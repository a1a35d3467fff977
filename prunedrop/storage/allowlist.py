"""What ``architecture.json`` may name: the layer types (with the constructor arguments read back from each
layer), the functions and the tensor methods. Both writing a manifest and rebuilding one (an untrusted file)
resolve every name through these tables; nothing else is imported.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
              "padding_mode")
_CONV_T_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups",
                "bias", "dilation", "padding_mode")
_BN_ARGS = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_MAXPOOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVGPOOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
_DROPOUT_ARGS = ("p", "inplace")

# torch.nn type name -> constructor arguments, read back from the module's attributes of the same name
# ("bias" is special: the constructor takes a bool, the module holds a tensor or None). Everything else a
# module holds must be in its state dict; save_model checks the rebuilt model's outputs to make sure.
_RNN_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
MODULE_ARGS: dict[str, tuple[str, ...]] = {
    "Linear": ("in_features", "out_features", "bias"),
    "Bilinear": ("in1_features", "in2_features", "out_features", "bias"),
    "Conv1d": _CONV_ARGS,
    "Conv2d": _CONV_ARGS,
    "Conv3d": _CONV_ARGS,
    "ConvTranspose1d": _CONV_T_ARGS,
    "ConvTranspose2d": _CONV_T_ARGS,
    "ConvTranspose3d": _CONV_T_ARGS,
    "BatchNorm1d": _BN_ARGS,
    "BatchNorm2d": _BN_ARGS,
    "BatchNorm3d": _BN_ARGS,
    "SyncBatchNorm": _BN_ARGS,  # a DDP-trained model's; on one process it is a BatchNorm (its group is not stored)
    "InstanceNorm1d": _BN_ARGS,
    "InstanceNorm2d": _BN_ARGS,
    "InstanceNorm3d": _BN_ARGS,
    "LocalResponseNorm": ("size", "alpha", "beta", "k"),
    "LayerNorm": ("normalized_shape", "eps", "elementwise_affine", "bias"),
    "RMSNorm": ("normalized_shape", "eps", "elementwise_affine"),
    "GroupNorm": ("num_groups", "num_channels", "eps", "affine"),
    "Embedding": ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                  "scale_grad_by_freq", "sparse"),
    "EmbeddingBag": ("num_embeddings", "embedding_dim", "max_norm", "norm_type", "scale_grad_by_freq", "mode",
                     "sparse", "include_last_offset", "padding_idx"),
    "ReLU": ("inplace",),
    "ReLU6": ("inplace",),
    "LeakyReLU": ("negative_slope", "inplace"),
    "PReLU": ("num_parameters",),
    "GELU": ("approximate",),
    "SiLU": ("inplace",),
    "Mish": ("inplace",),
    "Sigmoid": (),
    "Tanh": (),
    "Hardswish": ("inplace",),
    "Hardsigmoid": ("inplace",),
    "Hardtanh": ("min_val", "max_val", "inplace"),
    "ELU": ("alpha", "inplace"),
    "CELU": ("alpha", "inplace"),
    "SELU": ("inplace",),
    "GLU": ("dim",),
    "LogSigmoid": (),
    "Softsign": (),
    "Tanhshrink": (),
    "Hardshrink": ("lambd",),
    "Softshrink": ("lambd",),
    "Threshold": ("threshold", "value", "inplace"),
    "Softplus": ("beta", "threshold"),
    "Softmax": ("dim",),
    "Softmin": ("dim",),
    "Softmax2d": (),
    "LogSoftmax": ("dim",),
    "MaxPool1d": _MAXPOOL_ARGS,
    "MaxPool2d": _MAXPOOL_ARGS,
    "MaxPool3d": _MAXPOOL_ARGS,
    "MaxUnpool1d": ("kernel_size", "stride", "padding"),
    "MaxUnpool2d": ("kernel_size", "stride", "padding"),
    "MaxUnpool3d": ("kernel_size", "stride", "padding"),
    "AvgPool1d": _AVGPOOL_ARGS,
    "AvgPool2d": (*_AVGPOOL_ARGS, "divisor_override"),
    "AvgPool3d": (*_AVGPOOL_ARGS, "divisor_override"),
    "AdaptiveAvgPool1d": ("output_size",),
    "AdaptiveAvgPool2d": ("output_size",),
    "AdaptiveAvgPool3d": ("output_size",),
    "AdaptiveMaxPool1d": ("output_size", "return_indices"),
    "AdaptiveMaxPool2d": ("output_size", "return_indices"),
    "AdaptiveMaxPool3d": ("output_size", "return_indices"),
    "Flatten": ("start_dim", "end_dim"),
    "Unflatten": ("dim", "unflattened_size"),
    "Dropout": _DROPOUT_ARGS,
    "Dropout1d": _DROPOUT_ARGS,
    "Dropout2d": _DROPOUT_ARGS,
    "Dropout3d": _DROPOUT_ARGS,
    "AlphaDropout": _DROPOUT_ARGS,
    "Identity": (),
    "Upsample": ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor"),
    "UpsamplingNearest2d": ("size", "scale_factor"),
    "UpsamplingBilinear2d": ("size", "scale_factor"),
    "PixelShuffle": ("upscale_factor",),
    "PixelUnshuffle": ("downscale_factor",),
    "ChannelShuffle": ("groups",),
    "Fold": ("output_size", "kernel_size", "dilation", "padding", "stride"),
    "Unfold": ("kernel_size", "dilation", "padding", "stride"),
    "ZeroPad1d": ("padding",),
    "ZeroPad2d": ("padding",),
    "ZeroPad3d": ("padding",),
    "ConstantPad1d": ("padding", "value"),
    "ConstantPad2d": ("padding", "value"),
    "ConstantPad3d": ("padding", "value"),
    "ReflectionPad1d": ("padding",),
    "ReflectionPad2d": ("padding",),
    "ReflectionPad3d": ("padding",),
    "ReplicationPad1d": ("padding",),
    "ReplicationPad2d": ("padding",),
    "ReplicationPad3d": ("padding",),
    "CircularPad1d": ("padding",),
    "CircularPad2d": ("padding",),
    "CircularPad3d": ("padding",),
    "LSTM": (*_RNN_ARGS, "proj_size"),
    "GRU": _RNN_ARGS,
    "RNN": (*_RNN_ARGS, "nonlinearity"),
    "LSTMCell": ("input_size", "hidden_size", "bias"),
    "GRUCell": ("input_size", "hidden_size", "bias"),
    "RNNCell": ("input_size", "hidden_size", "bias", "nonlinearity"),
    "MultiheadAttention": ("embed_dim", "num_heads", "dropout", "bias", "add_bias_kv", "add_zero_attn", "kdim",
                           "vdim", "batch_first"),
}
# Constructor arguments that a module does not hold under their own name: (type name, argument) -> reader.
ARG_READERS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("MultiheadAttention", "bias"): lambda m: m.in_proj_bias is not None,
    ("MultiheadAttention", "add_bias_kv"): lambda m: m.bias_k is not None,
}

_OPERATOR_FUNCTIONS = (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "neg", "pos", "abs", "getitem",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "invert",
)
_TORCH_FUNCTIONS = (
    "abs", "acos", "adaptive_avg_pool1d", "adaptive_max_pool1d", "add", "addbmm", "addcdiv", "addcmul", "addmm",
    "all", "amax", "amin", "any", "arange", "argmax", "argmin", "argsort", "asin", "atan", "atan2", "avg_pool1d",
    "baddbmm", "batch_norm", "bmm", "bucketize", "cat", "cdist", "ceil", "chunk", "clamp", "clip", "concat",
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "cos", "cosh",
    "count_nonzero", "cross", "cummax", "cummin", "cumprod", "cumsum", "diag", "diag_embed", "diagonal", "diff",
    "dist", "div", "dot", "dropout", "dstack", "einsum", "eq", "erf", "erfc", "erfinv", "exp", "exp2", "expm1",
    "eye", "flatten", "flip", "fliplr", "flipud", "floor", "floor_divide", "fmax", "fmin", "fmod", "frac", "full",
    "full_like", "gather", "ge", "group_norm", "gt", "heaviside", "hstack", "hypot", "index_add", "index_fill",
    "index_select", "instance_norm", "isfinite", "isinf", "isnan", "kron", "layer_norm", "le", "lerp", "linspace",
    "log", "log10", "log1p", "log2", "log_softmax", "logaddexp", "logcumsumexp", "logical_and", "logical_not",
    "logical_or", "logical_xor", "logspace", "logsumexp", "lt", "masked_fill", "matmul", "max", "max_pool1d",
    "max_pool2d", "max_pool3d", "maximum", "mean", "meshgrid", "min", "minimum", "mm", "moveaxis", "movedim",
    "mul", "nan_to_num", "nanmean", "nansum", "narrow", "ne", "neg", "norm", "ones", "ones_like", "outer",
    "permute", "pixel_shuffle", "pixel_unshuffle", "pow", "prod", "reciprocal", "relu", "remainder",
    "repeat_interleave", "reshape", "roll", "rot90", "round", "rsqrt", "scatter", "scatter_add", "scatter_reduce",
    "searchsorted", "select", "sigmoid", "sign", "sin", "sinc", "sinh", "softmax", "sort", "split", "sqrt",
    "square", "squeeze", "stack", "std", "std_mean", "sub", "sum", "swapaxes", "swapdims", "t", "take_along_dim",
    "tan", "tanh", "tensor_split", "tensordot", "tile", "topk", "transpose", "tril", "triu", "true_divide",
    "trunc", "unbind", "unflatten", "unsqueeze", "var", "var_mean", "vstack", "where", "zeros", "zeros_like",
)
_FUNCTIONAL_FUNCTIONS = (
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices",
    "adaptive_max_pool3d", "adaptive_max_pool3d_with_indices", "affine_grid", "alpha_dropout", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "batch_norm", "bilinear", "celu", "channel_shuffle", "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "cosine_similarity", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "elu", "embedding", "embedding_bag", "feature_alpha_dropout", "fold", "gelu", "glu",
    "grid_sample", "group_norm", "hardshrink", "hardsigmoid", "hardswish", "hardtanh", "instance_norm",
    "interpolate", "layer_norm", "leaky_relu", "linear", "local_response_norm", "log_softmax", "logsigmoid",
    "lp_pool1d", "lp_pool2d", "max_pool1d", "max_pool1d_with_indices", "max_pool2d", "max_pool2d_with_indices",
    "max_pool3d", "max_pool3d_with_indices", "max_unpool1d", "max_unpool2d", "max_unpool3d", "mish", "normalize",
    "one_hot", "pad", "pairwise_distance", "pdist", "pixel_shuffle", "pixel_unshuffle", "prelu", "relu", "relu6",
    "rms_norm", "scaled_dot_product_attention", "selu", "sigmoid", "silu", "softmax", "softmin", "softplus",
    "softshrink", "softsign", "tanh", "tanhshrink", "threshold", "unfold",
)
# Tensor methods a graph may call; checked again on load, since the manifest is untrusted input.
METHODS: frozenset[str] = frozenset((
    "abs", "acos", "add", "addcdiv", "addcmul", "all", "amax", "amin", "any", "argmax", "argmin", "argsort",
    "asin", "atan", "atan2", "bfloat16", "bmm", "bool", "ceil", "chunk", "clamp", "clamp_max", "clamp_min", "clip",
    "clone", "contiguous", "cos", "cosh", "count_nonzero", "cummax", "cummin", "cumprod", "cumsum", "detach",
    "diag", "diagonal", "diff", "dim", "div", "dot", "double", "eq", "erf", "erfc", "erfinv", "exp", "exp2",
    "expand", "expand_as", "expm1", "flatten", "flip", "fliplr", "flipud", "float", "floor", "fmax", "fmin",
    "fmod", "frac", "gather", "ge", "gt", "half", "hypot", "index_add", "index_fill", "index_select", "int",
    "isfinite", "isinf", "isnan", "le", "lerp", "log", "log10", "log1p", "log2", "log_softmax", "logcumsumexp",
    "logical_and", "logical_not", "logical_or", "logical_xor", "logsumexp", "long", "lt", "masked_fill", "matmul",
    "max", "maximum", "mean", "min", "minimum", "mm", "moveaxis", "movedim", "mul", "nan_to_num", "nanmean",
    "nansum", "narrow", "ne", "neg", "new_full", "new_ones", "new_tensor", "new_zeros", "norm", "numel", "outer",
    "permute", "pow", "prod", "reciprocal", "relu", "remainder", "repeat", "repeat_interleave", "reshape",
    "reshape_as", "roll", "rot90", "round", "rsqrt", "scatter", "scatter_add", "scatter_reduce", "select",
    "sigmoid", "sign", "sin", "sinh", "size", "softmax", "sort", "split", "sqrt", "square", "squeeze", "std",
    "sub", "sum", "swapaxes", "swapdims", "t", "take_along_dim", "tan", "tanh", "tensor_split", "tile", "to",
    "topk", "transpose", "tril", "triu", "trunc", "type", "type_as", "unbind", "unflatten", "unfold", "unsqueeze",
    "var", "view", "view_as",
    # in place (``h[:, :8].relu_()``, ``g.add_(h).mul_(0.5)``): the graph replays them in order, as the forward did
    "abs_", "add_", "clamp_", "clamp_max_", "clamp_min_", "copy_", "div_", "exp_", "fill_", "masked_fill_", "mul_",
    "neg_", "pow_", "relu_", "sigmoid_", "sqrt_", "sub_", "tanh_", "zero_",
))
# builtins.getattr is how fx records ``x.shape``; only harmless tensor attributes may be read (and the ``values`` and
# ``indices`` of what sort, topk or max return).
GETATTR_NAMES = frozenset(("shape", "dtype", "device", "ndim", "T", "mT", "values", "indices"))


@functools.cache
def function_table() -> tuple[dict[str, Callable[..., Any]], dict[Any, str]]:
    """name -> function and function -> name for every allowlisted ``call_function`` target."""
    import builtins

    import torch
    import torch.nn.functional as F

    by_name: dict[str, Callable[..., Any]] = {}
    for prefix, namespace, names in (
        ("operator", operator, _OPERATOR_FUNCTIONS),
        ("torch", torch, _TORCH_FUNCTIONS),
        ("torch.nn.functional", F, _FUNCTIONAL_FUNCTIONS),
    ):
        for name in names:
            fn = getattr(namespace, name, None)
            if fn is not None:  # older torch versions lack a few of these
                by_name[f"{prefix}.{name}"] = fn
    by_name["builtins.getattr"] = builtins.getattr
    by_function: dict[Any, str] = {}
    for name, fn in by_name.items():
        by_function.setdefault(fn, name)  # F.conv2d is torch.conv2d: the first name is the one written
    return by_name, by_function


def module_type(name: str) -> type[nn.Module] | None:
    """The ``torch.nn`` class of an allowlisted layer type name, else None."""
    import torch

    cls = getattr(torch.nn, name, None) if name in MODULE_ARGS else None
    return cls if isinstance(cls, type) and issubclass(cls, torch.nn.Module) else None
