"""Model loading and saving (the package: each job in its own module, every public name re-exported here).
It was called ``prunedrop.io``, renamed so as not to shadow the standard library's :mod:`io`; nothing that
prunedrop writes names a prunedrop module (checkpoints and ``model.pt`` hold tensors and plain values,
``architecture.json`` names torch's types), so files written before the rename read as ever.

Three jobs, all of them safe by default (no pickle unless the user says they trust a file):

- :func:`load_model` reads the user's trained model: a state dict plus ``--arch module:factory``, or a
  whole pickled module when the user passes ``trust_pickle=True``.
- :func:`save_model` / :func:`load_saved_model` write and read the compressed model as ``model.pt`` (a
  state dict) and ``architecture.json`` (the torch.fx graph with allowlisted layer types, functions and
  methods), so that it can be rebuilt without the original class and without unpickling anything.
- :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`capture_rng_state` /
  :func:`restore_rng_state` keep fine-tuning resumable with ``torch.load(weights_only=True)``.

Modules: :mod:`.load` (the user's model), :mod:`.manifest` (``architecture.json``), :mod:`.allowlist` (the layer
types, functions and methods a manifest may name), :mod:`.saved` (save_model / load_saved_model),
:mod:`.checkpoint`, and :mod:`.read` (torch.load without pickle). torch is imported inside the functions so that
importing this package (and the CLI's ``--help``) stays instant.
"""

from .allowlist import METHODS, MODULE_ARGS
from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .load import import_object, load_model, parse_arch_kwargs, strip_wrapper_prefix, unwrap_compiled
from .manifest import ARCHITECTURE_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, WEIGHTS_FILE
from .saved import load_saved_model, save_model

__all__ = [
    "ARCHITECTURE_FILE",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "METHODS",
    "MODULE_ARGS",
    "WEIGHTS_FILE",
    "capture_rng_state",
    "import_object",
    "load_checkpoint",
    "load_model",
    "load_saved_model",
    "parse_arch_kwargs",
    "restore_rng_state",
    "save_checkpoint",
    "save_model",
    "strip_wrapper_prefix",
    "unwrap_compiled",
]
