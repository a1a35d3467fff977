"""A Hugging Face ``transformers`` model folder (``save_pretrained``: ``config.json`` plus ``model.safetensors``) as
a model that takes token ids and returns logits (:class:`HFTextModel`), loaded from the folder alone: no network,
no code from the folder (``trust_remote_code`` stays off).

An HF model returns a ``ModelOutput`` and takes an ``attention_mask``; prunedrop trains, counts and exports a module
of one tensor in, one tensor out. :class:`HFTextModel` is that module: ``forward(input_ids)`` masks the positions that
hold the config's ``pad_token_id`` and returns ``.logits``. The HF layers are its submodules (``model.bert...``), so
that conversion, FLOPs, slimming and ONNX export see every one of them. GPT-2's ``Conv1D`` (a Linear whose weight is
stored transposed) is replaced by the ``nn.Linear`` it computes, so that it is converted like any Linear.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import PrunedropError
from .read import reason

if TYPE_CHECKING:
    from ..recipes import Recipe

CONFIG_FILE = "config.json"
#: the weight files ``save_pretrained`` writes (one of them, or the index of a sharded checkpoint)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
#: the task heads prunedrop runs: the mapping in transformers.models.auto.modeling_auto -> the Auto class loading it
_HEADS = {
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "AutoModelForSequenceClassification",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "AutoModelForTokenClassification",
}


class HFTextModel(nn.Module):
    """A ``transformers`` model with a task head, as one tensor in (``input_ids``, int64, batch × length), one out
    (the head's ``logits``: batch × classes; with ``per_token``, a token classifier's, batch × classes × length, the
    classes on the second axis as torch's ``cross_entropy`` reads them). Positions holding ``pad_token_id`` are
    masked out of attention (``attention_mask``); with no pad id every position is attended to."""

    def __init__(self, model: nn.Module, pad_token_id: int | None, per_token: bool = False,
                 max_length: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = pad_token_id
        self.per_token = per_token
        self.max_length = max_length

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.max_length is not None and input_ids.shape[-1] > self.max_length:
            raise PrunedropError(f"the inputs hold {input_ids.shape[-1]} tokens per sample but the model has "
                                 f"{self.max_length} positions (config.json max_position_embeddings): truncate the "
                                 f"sentences to {self.max_length} tokens when tokenizing (truncation=True)")
        if self.pad_token_id is None:
            logits = self.model(input_ids=input_ids).logits
        else:
            logits = self.model(input_ids=input_ids, attention_mask=(input_ids != self.pad_token_id).long()).logits
        return logits.transpose(1, 2) if self.per_token else logits  # (N, L, C) -> (N, C, L)


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """``path`` is a folder holding an HF ``config.json``: a JSON object with a ``model_type``, or a file that is no
    JSON (:func:`load_hf_model` says so)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    text = _read_json(config)
    return text is None or (isinstance(text, dict) and "model_type" in text)


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None where it cannot be read as JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def model_pad_token_id(model: nn.Module) -> int | None:
    """The pad id that ``model`` masks: an :class:`HFTextModel`'s config ``pad_token_id``; None for any other."""
    return model.pad_token_id if isinstance(model, HFTextModel) else None


def load_hf_model(path: Path, log: Callable[[str], None] | None = None) -> HFTextModel:
    """The model of the ``save_pretrained`` folder ``path``, with its task head, in eval mode on the CPU, wrapped in
    :class:`HFTextModel`. Every problem is one :class:`PrunedropError` line saying what to do."""
    transformers = _import_transformers(path)
    with _quiet(transformers):
        config = _config(transformers, path)
        cls = _head_class(transformers, config, path)
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise PrunedropError(f"HF model folder {path} holds {CONFIG_FILE} but no weights ({WEIGHT_FILES[0]}); "
                                 "save the model with model.save_pretrained(folder)")
        try:
            model, info = cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                              output_loading_info=True, attn_implementation="eager",
                                              dtype=torch.float32)  # a bf16 / fp16 checkpoint trains in float32
        except Exception as e:
            raise PrunedropError(f"transformers cannot load the weights of {path} into {cls.__name__} "
                                 f"({reason(e)}); save the model again with save_pretrained") from None
    missing = list(info.get("missing_keys") or []) + [str(k[0]) if isinstance(k, tuple) else str(k)
                                                       for k in info.get("mismatched_keys") or []]
    if missing:
        raise PrunedropError(f"the weights in {path} lack {len(missing)} of {cls.__name__}'s tensors (e.g. "
                             f"{missing[0]}): save the fine-tuned model with its head, model.save_pretrained(folder)")
    replaced = _linear_for_conv1d(model, transformers)
    if replaced and log is not None:
        log(f"{path.name}: {replaced} transformers Conv1D layer(s) (a Linear with its weight transposed) run as "
            "nn.Linear with the same weights, so that they are converted like every Linear")
    pad = config.pad_token_id
    per_token = _heads()[cls.__name__] == "AutoModelForTokenClassification"
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    wrapped = HFTextModel(model, None if pad is None else int(pad), per_token,
                          int(positions) if isinstance(positions, int) else None).to("cpu").eval()
    _check_batches_run(wrapped, cls.__name__, path)
    return wrapped


def _check_batches_run(model: HFTextModel, name: str, path: Path) -> None:
    """A batch of two id lists runs: GPT-2's sequence classifier finds each sentence's last token by the pad id,
    and without one refuses every batch of more than one ("Cannot handle batch sizes > 1 if no padding token")."""
    try:
        with torch.no_grad():
            model(torch.ones(2, 2, dtype=torch.long))
    except Exception as e:
        fix = ("set pad_token_id in its config.json (GPT-2's tokenizer has none: use the id the data pads with, "
               "often the eos id)") if model.pad_token_id is None else "check the folder's config.json"
        raise PrunedropError(f"{name} of {path} fails on a batch of two sentences ({reason(e)}): {fix}") from None


def _import_transformers(path: Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder never needs the network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise PrunedropError(f"{path} is a Hugging Face model folder, which needs transformers: "
                             "pip install 'prunedrop[transformers]'") from None
    except Exception as e:
        raise PrunedropError(f"{path} is a Hugging Face model folder, but transformers cannot be imported "
                             f"({reason(e)}): pip install 'prunedrop[transformers]'") from None
    return transformers


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """Inside, ``transformers`` logs errors only and shows no progress bar (its 'newly initialized weights' warning
    is an error here, raised by :func:`load_hf_model`)."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()  # "Loading weights: 100%" for a local folder
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _config(transformers: Any, path: Path) -> Any:
    text = _read_json(path / CONFIG_FILE)
    if not isinstance(text, dict):
        raise PrunedropError(f"{path / CONFIG_FILE} is not a JSON object; save the model again with save_pretrained")
    if "auto_map" in text:
        raise PrunedropError(f"{path / CONFIG_FILE} names custom code (auto_map), which prunedrop does not run; "
                             "use a model type that transformers ships, or pass --arch module:factory")
    try:
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise PrunedropError(f"transformers {transformers.__version__} cannot read {path / CONFIG_FILE} (model_type "
                             f"{text.get('model_type')!r}: {reason(e)}); upgrade transformers or check the "
                             "model_type") from None


def _heads() -> dict[str, str]:
    """Each task-head class name that prunedrop runs -> the Auto class that loads it."""
    from transformers.models.auto import modeling_auto

    return {name: auto for table, auto in _HEADS.items() for name in getattr(modeling_auto, table, {}).values()}


def _head_class(transformers: Any, config: Any, path: Path) -> type:
    """The class named by the config's ``architectures``, when it is one of the task heads prunedrop runs."""
    heads = _heads()
    named = list(getattr(config, "architectures", None) or [])
    autos = " or ".join(_HEADS.values())
    if not named:
        raise PrunedropError(f"{path / CONFIG_FILE} names no architectures, so its task head is unknown: save a model "
                             f"loaded with {autos} (save_pretrained records its class)")
    name = named[0]
    if name not in heads or not hasattr(transformers, name):
        raise PrunedropError(f"{path / CONFIG_FILE} names {name}, which has no classification head (prunedrop needs "
                             f"logits): load it with {autos}, fine-tune and save_pretrained that model")
    return getattr(transformers, name)


def _linear_for_conv1d(model: nn.Module, transformers: Any) -> int:
    """Replace each ``transformers.pytorch_utils.Conv1D`` in ``model`` by the ``nn.Linear`` it computes (weight
    transposed, same bias); the number replaced."""
    conv1d = transformers.pytorch_utils.Conv1D
    count = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is conv1d:
                setattr(parent, child_name, _as_linear(child))
                count += 1
    return count


def _as_linear(layer: nn.Module) -> nn.Linear:
    weight = layer.weight.detach()
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=layer.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias.detach())
    return linear


def data_recipe(model: nn.Module, recipe: Recipe) -> Recipe:
    """``recipe`` to read the data for ``model`` with: an :class:`HFTextModel`'s config pad id pads a tokenized
    ``hf:`` dataset (the id its forward masks); a different ``pad_token_id`` in the recipe is refused."""
    pad = model_pad_token_id(model)
    if pad is None:
        return recipe
    if recipe.pad_token_id is not None and recipe.pad_token_id != pad:
        raise PrunedropError(f"recipe key pad_token_id is {recipe.pad_token_id} but the model's config.json pads with "
                             f"{pad}, the id it masks: drop the key (the model's pad id is used)")
    return recipe.replace(pad_token_id=pad)
