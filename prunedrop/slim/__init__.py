"""The slim stage: physically remove pruned units, so that the smaller model computes the same function.

Input: the masked deterministic model (plain layers; a pruned unit outputs exactly 0 because its weight row
and bias are zero) and a keep mask per output unit of each Linear/Conv layer. Output: a smaller plain model
that computes the same function in eval mode, checked on the example input.

Which layers a unit touches is the job of a dependency graph, and we do not write our own: Torch-Pruning's
``DependencyGraph`` traces the model once and, for every channel of every Linear/Conv layer, lists each
place it reaches — the producer's weight row and bias, the BatchNorm entry, the consumers' weight columns (a
block of ``H·W`` columns after flatten→linear; every C-th column where a Linear's (batch, tokens, C) output is
flattened), offsets through concatenations, the input *and* output
channel of a depthwise convolution, and the other producers that a residual addition couples to it. Its
pruning functions do the index surgery. What it does not know is whether removing a channel is *exact*;
that is this module's part:

* **Coupling.** A channel goes only when every layer that produces it agrees: walking back from each
  consumer through the channel's group, every path must end at a pruned unit (a producer or a depthwise
  convolution whose unit is pruned) or at a parameter. One live producer keeps the channel in all members,
  except behind a product: a factor that is exact zeros whatever the input (a pruned unit carried through
  operations that keep 0 as 0 — ReLU, SiLU, hardswish, pooling, reshapes, a cumulative sum, flip or roll along
  an axis other than the channels) silences it, so a squeeze-excitation's
  ``x · sigmoid(fc2(…))`` loses the channels that x's depthwise convolution prunes, fc2's unit with them.
* **Constants.** A pruned unit outputs 0, but what its consumers see may not be 0: a BatchNorm turns it into
  ``β − γ·μ/√(σ²+ε)``, and an activation with ``f(0) ≠ 0`` (sigmoid) or a constant turns it into ``f(c)``.
  Such a channel is input-independent, so its consumer's share is a fixed tensor, measured on the example
  input. For a Linear consumer (including flatten→linear) that share is a vector: it is folded into the
  bias exactly. For a convolution it is folded exactly when it is the same at every output position — no
  zero padding, or the constant is 0. When zero padding makes it position-dependent, no bias can replace it;
  the channel is then kept (and the case named in ``notes``), or, with ``fold_borders=True``, removed with
  its interior value folded in, the border outputs differing by a measured amount. (A share is measured at
  the example input's resolution. In one rare layout — a constant through a kept, zero-padded depthwise
  convolution, then global pooling, then a Linear — the pooled constant depends on the resolution, so the
  fold is exact at the example's resolution only.)
* **Grouped convolutions.** A grouped convolution's groups must stay equal in size: a group leaves whole where all
  of its input and output channels go (``groups`` shrinks; a depthwise convolution with a channel multiplier loses an
  input channel with its k outputs), and every other group loses as many input channels, and as many output
  channels, as the fewest any group prunes; the pruned channels beyond that stay as zeros (named in ``notes``), and
  the producers of the input channels that stay keep them. :func:`grouped_slots` lists the layers whose units the
  recipe key ``tie_grouped`` ties in slots (channel t of every group one noise), so that what is pruned there leaves
  every group alike.
* **Unsupported places.** A channel that reaches the model output, passes through a grouped transposed
  convolution, a LayerNorm/GroupNorm/RMSNorm (which mix channels), an embedding, an attention
  layer, a recurrent layer's output or a parameter read other than element-wise, or meets the others in a mean, maximum, variance,
  cumulative sum or softmax over the channels (which a removed channel changes; a sum or norm over them,
  F.normalize's, it does not change), or a flip or roll that moves them to other numbers, is kept; ``notes`` says so. A parameter of the model's own code that only scales or shifts each channel (a
  layer scale ``x * γ``, ``x + b``) is sliced with the channels, along the axis the graph guesses (the last that is
  not 1; a wrong guess fails the final check, and the channels stay). A one-channel tensor spread over the channels (a spatial attention map, a per-example scale)
  is no channel of theirs: a product with it lets a pruned channel go, a sum with it does not. So are the
  weights of attention pooling written as a batched matmul (``h.flatten(2) @ w``, ``torch.bmm``, or
  ``torch.einsum("nchw,nhw->nc", h, w)``, GCNet's ``h.view(n, c, -1).unsqueeze(1) @ attention``): row c of the
  result reads channel c of the map alone, and a channel of zeros there leaves. So is a fixed or learned matrix
  on the left of features whose last axis holds the channels (a graph convolution's adjacency ``A @ h``, token
  mixing written as a matmul): column c of the result reads column c of h alone. An ungrouped transposed convolution is a unit
  layer like a convolution: its own output channels (its weight's axis 1) leave, and a channel it reads leaves
  with that slice of its weight where the channel is exactly 0 there (it would spread a constant unevenly over its
  output).
* **Recurrent layers.** Masks of ``nn.LSTM`` / ``nn.GRU`` layers (pruned hidden units) are handled first, by
  :mod:`.recurrent`, which shrinks ``hidden_size`` and the consumers' columns. A channel that an ``nn.LSTM``,
  ``nn.GRU`` or ``nn.RNN`` reads at its input (a convolutional front end before it) leaves like one a Linear reads:
  with its column of the first layer's ``weight_ih`` in each direction, ``input_size`` shrinking; a constant it
  carries goes into the input-gate biases (``bias_ih_l0``), or, where the layer has no biases, it stays. While
  Torch-Pruning traces the model, each recurrent layer runs as one autograd node, so that the graph reads it as it
  reads a Linear (a GRU's traced gates had broken its index mappings); one called with a packed sequence or with
  an initial state another layer computes is traced as it is, and its input channels stay.

Finally the masked and the slim model run on the example input; a difference above ``atol`` that the notes
do not explain raises :class:`PrunedropError` (it means the graph tracing missed something, e.g. an
operation that mixes channels but looks element-wise to Torch-Pruning).

The package, each job in its own module and every public name re-exported here: :mod:`.stage` (the public
:func:`slim`), :mod:`.coupling` (the dependency graph, which channels may leave, :func:`coupled_producers`),
:mod:`.constants` (constant folding), :mod:`.recurrent` (``nn.LSTM`` / ``nn.GRU``), :mod:`.heads` (attention
heads and embedding rows, :func:`remove_heads_and_rows`) and :mod:`.common` (what they share).
"""

from .common import WEIGHT_LAYERS, silent_units
from .coupling import coupled_producers, grouped_slots
from .heads import HeadsAndRowsResult, remove_heads_and_rows
from .recurrent import RecurrentSlimResult, slim_recurrent, split_recurrent_masks
from .stage import MisreadUnits, SlimResult, dead_units, slim, unremovable_layers

__all__ = [
    "WEIGHT_LAYERS",
    "HeadsAndRowsResult",
    "RecurrentSlimResult",
    "SlimResult",
    "coupled_producers",
    "grouped_slots",
    "remove_heads_and_rows",
    "silent_units",
    "slim",
    "slim_recurrent",
    "unremovable_layers",
    "MisreadUnits",
    "dead_units",
    "split_recurrent_masks",
]
