"""A bundle assembled from its splits: each split checked (in full where it is held in tensors, else through
its first item), validation data split off when none is given, the training limit applied, the input shape and
the class count found; and :func:`check_labels`, the data checked against the model's outputs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import PrunedropError
from ..modes import kept
from .bundle import SPLITS, DataBundle, no_batch, seeded_generator
from .checks import IGNORED, ClassesDataset, check_finite, check_non_negative, describe_value


def _split_labels(bundle: DataBundle) -> list[torch.Tensor]:
    """Each split's labels: all of them where they are cheap to get (tensor datasets, ``targets`` attributes),
    else those of the first sample or batch; a dataset that must be iterated in full is not, since that may mean
    decoding every image."""
    found = []
    for split in SPLITS:
        data = getattr(bundle, split)
        if data is not None:
            labels = labels_of(data)
            found.append(torch.as_tensor(first_item(data)[1]) if labels is None else labels)
    return found


def binary_labels(bundle: DataBundle) -> bool:
    """Whether the data's class labels are 0 and 1 and nothing else (what a one-logit binary classifier, or a
    multi-label one's outputs, trained with ``BCEWithLogitsLoss``, predict), read as :func:`check_labels` reads
    them (a Dataset's first item alone may hold only one of the two); float labels count where they are vectors of
    0.0 and 1.0 (a multi-label data set's targets), not one number per sample (a regression's)."""
    shape = label_shape(bundle)
    vectors = shape is not None and len(shape) == 1 and shape[0] > 1
    values: set[float] = set()
    for labels in _split_labels(bundle):
        if labels.is_floating_point() and not vectors:
            return False
        values |= {float(v) for v in labels[labels != IGNORED].unique()[:3]}
    return bool(values) and values <= {0.0, 1.0}  # a Dataset's first item may hold one of the two alone


def multi_hot_labels(bundle: DataBundle) -> bool:
    """Whether the data's labels are vectors of 0s and 1s, one label per output of a multi-label model: 0 and 1
    only, a vector per sample, and at least one vector (of those read as :func:`check_labels` reads them) with
    other than a single 1, which tells them from one-hot vectors."""
    shape = label_shape(bundle)
    if shape is None or len(shape) != 1 or shape[0] < 2 or not binary_labels(bundle):
        return False
    return any(not _one_hot(labels) for labels in _split_labels(bundle))


def label_shape(bundle: DataBundle) -> tuple[int, ...] | None:
    """The shape of one sample's label in the training data: () for one label per sample, (H, W) for a mask of a
    class per pixel; None where the first item has no label tensor to read."""
    try:
        label = torch.as_tensor(first_item(bundle.train)[1])
    except Exception:  # noqa: BLE001 - items of another form: the data checks speak for these
        return None
    shape = tuple(int(d) for d in label.shape)
    return shape[1:] if isinstance(bundle.train, DataLoader) else shape


def _largest_below(bundle: DataBundle, limit: int) -> int:
    """The largest label below ``limit`` (-1 where none is), read as :func:`check_labels` reads them."""
    found = [int(labels[labels < limit].max()) for labels in _split_labels(bundle)
             if not labels.is_floating_point() and bool((labels < limit).any())]
    return max(found, default=-1)


def check_labels(bundle: DataBundle, num_outputs: int, loss: str = "cross_entropy") -> None:
    """Raise :class:`PrunedropError` when the data has labels the model cannot output (``loss``
    ``binary_cross_entropy``: one output, labels 0 and 1), read as :func:`_split_labels` reads them."""
    largest, smallest = -1, None
    for labels in _split_labels(bundle):
        if labels.is_floating_point() and loss != "binary_cross_entropy":
            continue  # regression targets (loss: mse), not class indices
        labels = labels[labels != IGNORED]  # a position or sample with no label (a tagger's padding)
        if labels.numel():
            largest = max(largest, int(labels.max()))
            smallest = int(labels.min()) if smallest is None else min(smallest, int(labels.min()))
    if loss == "binary_cross_entropy":
        if num_outputs != 1 and label_shape(bundle) != (num_outputs,):
            raise PrunedropError(f"loss binary_cross_entropy needs a model with one output (the logit of class 1), "
                                 f"or one output per label with labels of 0s and 1s shaped (N, {num_outputs}) (a "
                                 f"multi-label model); this one has {num_outputs} outputs and the labels are shaped "
                                 f"(N{''.join(f', {d}' for d in label_shape(bundle) or ())}): use loss "
                                 "cross_entropy for one output per class")
        if largest > 1:
            raise PrunedropError(f"loss binary_cross_entropy needs labels 0 and 1, the data's go up to {largest}")
        return
    if largest == 1 and num_outputs == 1:
        # A binary classifier with one logit (trained with BCEWithLogitsLoss): told "the model has 1 outputs".
        raise PrunedropError(
            "the model has one output and the labels are 0 and 1: a one-logit binary classifier; set loss: "
            "binary_cross_entropy in the recipe (prunedrop compress chooses it by itself)"
        )
    if largest >= num_outputs:
        counted_from_one = largest == num_outputs and smallest == 1
        void = largest == 255 and _largest_below(bundle, largest) < num_outputs
        raise PrunedropError(
            f"labels go up to {largest} but the model has {num_outputs} output{'s' if num_outputs > 1 else ''}; "
            + (f"they run from 1 to {largest}: class indices count from 0, so subtract 1 from every label"
               if counted_from_one else
               f"the others are below {num_outputs}: if 255 marks pixels or positions to ignore (void), give "
               f"them as {IGNORED}, the label prunedrop (and torch's cross_entropy) ignores" if void else
               "check that --data matches the model")
        )
    if bundle.num_classes is not None and bundle.num_classes > num_outputs:
        raise PrunedropError(
            f"the data has {bundle.num_classes} classes but the model has {num_outputs} outputs; "
            "check that --data matches the model"
        )


def assemble(
    name: str,
    train: Dataset | DataLoader,
    val: Dataset | DataLoader | None,
    test: Dataset | DataLoader | None,
    *,
    val_fraction: float,
    seed: int,
    train_limit: int | None,
    regression: bool = False,
    tags: bool = False,
) -> DataBundle:
    """Validate the splits, split off validation data if needed, apply ``train_limit``, fill in the shapes.
    With ``regression`` labels may be real numbers and there are no classes; with ``tags`` (``loss:
    binary_cross_entropy``) float vectors of 0s and 1s are a multi-label model's labels, one-hot ones too."""
    # labels that were names, numbered by the recipe's class_names (an image folder's classes are its sub-folders)
    class_names = list(train.classes) if isinstance(train, ClassesDataset) and not regression else None
    if not regression:  # whole-number float labels in tensors are class indices, as the npz reader reads them
        train, val, test = (_integer_labels(data) for data in (train, val, test))
    shapes = {}
    for split, data in (("train", train), ("val", val), ("test", test)):
        if data is not None:
            shapes[split] = _validate_split(data, f"the {split} data of {name!r}", regression=regression, tags=tags)
    if len(set(shapes.values())) > 1:
        raise PrunedropError(f"the inputs of {name!r} differ in sample shape between splits: {shapes}")
    split_off = val is None
    if split_off:
        train, val = _split_off_validation(train, val_fraction, seed, name)  # type: ignore[arg-type]
    if train_limit is not None:
        if isinstance(train, DataLoader):
            raise PrunedropError(
                f"a training limit cannot be applied to the DataLoader that {name!r} returned; "
                "drop the limit or return a Dataset"
            )
        train = _take(train, range(min(train_limit, len(train))))  # type: ignore[arg-type]
    return DataBundle(
        name=name,
        train=train,
        val=val,
        test=test,
        input_shape=shapes["train"],
        num_classes=None if regression else max(_num_classes(train, val, test) or 0, len(class_names or ())) or None,
        class_names=class_names,
        val_split_off=split_off,
    )


def _integer_labels(data: Any) -> Any:
    """A TensorDataset whose float labels all hold whole numbers, with int64 labels (one per sample, or one per
    position: a segmentation mask saved as floats); one-hot vectors, refused later, and anything else as it is."""
    if not isinstance(data, TensorDataset) or len(data.tensors) != 2:
        return data
    x, y = data.tensors
    if not y.is_floating_point() or y.dim() < 1 or not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
        return data
    if y.dim() > 1 and _one_hot(y):
        return data
    return TensorDataset(x, y.to(torch.int64))


def _one_hot(labels: torch.Tensor) -> bool:
    """Whether ``labels`` (one item's, or a batch's) look like one-hot vectors: 0s and 1s, a single 1 per vector."""
    return labels.dim() >= 1 and labels.shape[-1] > 1 and bool(((labels == 0) | (labels == 1)).all()) \
        and bool((labels.sum(-1) == 1).all())


def _validate_split(data: Dataset | DataLoader, where: str, *, regression: bool = False,
                    tags: bool = False) -> tuple[int, ...]:
    """Check one split and return its sample shape.

    Tensor-backed data is checked in full; any other dataset only through its first sample, since
    iterating it could mean decoding every image. Float labels are regression targets with ``regression``, and
    a multi-label model's targets where they are vectors of 0s and 1s that are not one-hot (one-hot ones too with
    ``tags``: ``loss: binary_cross_entropy``).
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
        if not isinstance(data, DataLoader):
            raise PrunedropError(
                f"{where} has no length; use a map-style Dataset (with __len__), not an IterableDataset"
            ) from None
    if size == 0:
        raise PrunedropError(f"{where} is empty; the data must have at least one sample")
    inputs, labels = first_item(data, where)
    try:
        inputs = torch.as_tensor(inputs)
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise PrunedropError(
            f"{where} yields ({type(inputs).__name__}, {type(labels).__name__}) items; "
            "inputs and labels must be tensors, arrays or numbers"
        ) from None
    vectors = labels.dim() == (2 if isinstance(data, DataLoader) else 1)  # a vector per sample, not a mask
    multi_hot = (not labels.is_complex() and labels.is_floating_point() and vectors and labels.shape[-1] > 1
                 and bool(((labels == 0) | (labels == 1) | (labels == IGNORED)).all())
                 and (tags or not _one_hot(labels)))
    if labels.is_complex() or (labels.is_floating_point() and not regression and not multi_hot):
        if not labels.is_complex() and _one_hot(labels):
            raise PrunedropError(f"labels in {where} are one-hot vectors over {labels.shape[-1]} classes; labels must "
                                 "be class indices: give labels.argmax(-1) (for a multi-label model, an independent "
                                 "0/1 label per output, pass --loss binary_cross_entropy)")
        raise PrunedropError(f"labels in {where} are {labels.dtype}; labels must be integer class indices"
                             + ("" if labels.is_complex() else " (for real-valued regression targets pass --loss mse, "
                                "or set loss: mse in the recipe)"))
    all_inputs, all_labels = _inputs_of(data), labels_of(data)
    check_finite(inputs if all_inputs is None else all_inputs, where)
    if regression:
        check_finite(labels if all_labels is None else all_labels, where)
    else:
        check_non_negative(labels if all_labels is None else all_labels, where)
    shape = tuple(inputs.shape)
    return shape[1:] if isinstance(data, DataLoader) else shape


def first_item(data: Dataset | DataLoader, where: str = "the data") -> Sequence[Any]:
    """The first ``(input, label)`` sample of a Dataset, or the first batch of a DataLoader."""
    if isinstance(data, DataLoader):
        # A shuffling DataLoader draws its seed from the global RNG; peeking at it must not shift the
        # random stream that the caller seeded for training.
        with torch.random.fork_rng(devices=[]):
            item = next(iter(data), None)
        if item is None:  # drop_last with fewer samples than a batch, a sampler that selects nothing
            raise PrunedropError(no_batch(where))
    else:
        item = data[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise PrunedropError(
            f"each item of {where} is {describe_value(item)}; it must be an (input, label) pair{_pair_hint(item)}"
        )
    return item


def _pair_hint(item: Any) -> str:
    """How to make an (input, label) pair of what ``item`` is: a dict's keys (a Hugging Face style sample) or a
    tuple's extra entries (sample weights, a second input)."""
    if isinstance(item, Mapping):
        keys = [str(k) for k in item][:6]
        label = next((k for k in keys if k.lower() in ("label", "labels", "target", "targets", "y")), None)
        inputs = [k for k in keys if k != label]
        if label and len(inputs) == 1:
            return (f" (its keys: {', '.join(keys)}): return (item[{inputs[0]!r}], item[{label!r}]) from your "
                    "Dataset's __getitem__ (or a Dataset that wraps it)")
        return (f" (its keys: {', '.join(keys)}): return (input, label) from your Dataset's __getitem__; the model "
                "takes one input tensor")
    if isinstance(item, (tuple, list)) and len(item) > 2:
        return ("; the entries after the label (sample weights, masks, a second input) are not read: return (input, "
                "label), and the model takes one input tensor")
    return ""


def _split_off_validation(
    train: Dataset, val_fraction: float, seed: int, name: str
) -> tuple[Dataset, Dataset]:
    """Split a seeded random ``val_fraction`` (at least one sample) off ``train``: (rest, validation). A fraction
    of 0 (the recipe allows it, for data that brings its own validation split) is an error here, where one is
    needed."""
    if not val_fraction > 0:
        raise PrunedropError(
            f"the data {name!r} has no validation split and val_fraction is {val_fraction}: prunedrop measures the "
            "model before and after on validation data; give a validation split (x_val/y_val in an npz, val.csv, "
            "val/ in an image folder, a python: function's val) or set val_fraction above 0 (e.g. 0.1)")
    size = len(train)  # type: ignore[arg-type]
    n_val = max(1, round(size * val_fraction))
    if n_val >= size:
        raise PrunedropError(
            f"the training data of {name!r} has {size} samples, too few to split off a validation set; "
            "add data or give a validation set"
        )
    order = torch.randperm(size, generator=seeded_generator(seed, "validation split"))
    return _take(train, order[n_val:]), _take(train, order[:n_val])


def _take(data: Dataset, indices: torch.Tensor | range) -> Dataset:
    """The samples at ``indices``; tensor data stays a TensorDataset (so it is still checked and fast)."""
    if isinstance(data, TensorDataset):
        index = torch.as_tensor(indices, dtype=torch.long) if isinstance(indices, range) else indices
        return TensorDataset(*(t[index] for t in data.tensors))
    return Subset(data, list(indices) if isinstance(indices, range) else indices.tolist())


def _inputs_of(data: Dataset | DataLoader) -> torch.Tensor | None:
    """All inputs when they are held in one tensor, else None."""
    if isinstance(data, DataLoader):
        return _inputs_of(data.dataset)
    if isinstance(data, TensorDataset):
        return data.tensors[0]
    if isinstance(data, Subset):
        inner = _inputs_of(data.dataset)
        return None if inner is None else inner[torch.as_tensor(data.indices, dtype=torch.long)]
    return None


def labels_of(data: Dataset | DataLoader) -> torch.Tensor | None:
    """All labels when they are at hand without loading the inputs, else None."""
    if isinstance(data, DataLoader):
        return labels_of(data.dataset)
    if isinstance(data, TensorDataset):
        return data.tensors[-1] if len(data.tensors) >= 2 else None
    if isinstance(data, Subset):
        inner = labels_of(data.dataset)
        return None if inner is None else inner[torch.as_tensor(data.indices, dtype=torch.long)]
    targets = getattr(data, "targets", None)  # torchvision-style datasets keep their labels here
    if targets is None:
        return None
    try:
        labels = torch.as_tensor(targets)
        size = len(data)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return None
    if labels.ndim != 1 or len(labels) != size or labels.is_floating_point():
        return None
    return labels


def _num_classes(*splits: Dataset | DataLoader | None) -> int | None:
    """Largest label + 1 over the splits, else ``len(dataset.classes)``, else None when unknown."""
    largest = -1
    for data in splits:
        if data is None:
            continue
        labels = labels_of(data)
        if labels is None:
            dataset = data.dataset if isinstance(data, DataLoader) else data
            classes = getattr(dataset, "classes", None)
            return len(classes) if isinstance(classes, Sequence) and classes else None
        if labels.numel():
            largest = max(largest, int(labels.max()))
    return largest + 1 if largest >= 0 else None


def fit_inputs(model: torch.nn.Module, bundle: DataBundle) -> tuple[DataBundle, str | None]:
    """``bundle`` with its inputs in the type ``model`` takes, and a line saying so when they were changed.

    The file readers (``npz:``, ``csv:``, ``hf:``) give float32 inputs, which a model that indexes with them (an
    ``nn.Embedding`` of token ids) cannot take: a token classifier stopped with "Expected tensor for argument #1
    'indices' to have one of the following scalar types: Long, Int". When the model fails on the float inputs,
    every split is held in tensors and every input is a whole number, the inputs become int64 token ids, provided
    the model runs on them; anything else is left as it was (the model's error is then the caller's to report).
    Models that run on the float inputs are never changed. Inputs in another layout than the model's (no channel
    axis, or channels last) are laid out as the model takes them (:func:`_fit_layout`).
    """
    x = bundle.example_batch(2)
    if runs_on(model, x):
        return bundle, None
    held = {split: getattr(bundle, split) for split in SPLITS if getattr(bundle, split) is not None}
    if not all(isinstance(data, TensorDataset) for data in held.values()):
        return bundle, None
    inputs = [data.tensors[0] for data in held.values()]
    laid_out = _fit_layout(model, bundle, held)
    if laid_out is not None:
        return laid_out
    if not x.is_floating_point():
        return bundle, None
    if not all(_whole_ids(t) for t in inputs):
        lowest = _negative_ids(model, inputs)
        if lowest is not None:
            raise PrunedropError(
                f"the model does not take float inputs, and every input of {bundle.name} is a whole number, but some "
                f"are negative (down to {lowest}): its embeddings look token ids up from 0; a padding id of {lowest}? "
                "give padding an id of its own (the embedding's padding_idx) and write that instead")
        return bundle, None
    ids = {split: TensorDataset(data.tensors[0].to(torch.int64), *data.tensors[1:]) for split, data in held.items()}
    candidate = dataclasses.replace(bundle, **ids)
    if not runs_on(model, candidate.example_batch(2)):
        from .token_ids import check_token_ids

        check_token_ids(model, candidate)  # ids beyond an embedding's rows: that, not that floats are refused
        return bundle, None
    largest = max(int(t.max()) for t in inputs if t.numel())
    return candidate, (f"the model does not take float inputs, and every input of {bundle.name} is a whole number "
                       f"(0 … {largest}): they are fed as int64 token ids")


#: layouts tried for inputs a model rejects: (what changes, the change, whether it applies to a batch's shape)
_LAYOUTS: tuple[tuple[str, Any, Any], ...] = (
    ("a channel axis added, (N, H, W) → (N, 1, H, W)", lambda t: t.unsqueeze(1), lambda s: len(s) in (2, 3)),
    ("channels moved first, (N, H, W, C) → (N, C, H, W)", lambda t: t.permute(0, 3, 1, 2),
     lambda s: len(s) == 4 and s[-1] in (1, 2, 3, 4) and s[1] > 4),
    ("channels moved first, (N, L, C) → (N, C, L)", lambda t: t.permute(0, 2, 1),
     lambda s: len(s) == 3 and s[-1] in (1, 2, 3, 4) and s[1] > 4),
    # a grey image stored as one row of pixels (MNIST and Fashion-MNIST as CSV: 784 columns)
    ("each row of pixels read as a square grey image, (N, H·W) → (N, 1, H, H)",
     lambda t: t.reshape(t.shape[0], 1, math.isqrt(t.shape[1]), math.isqrt(t.shape[1])),
     lambda s: len(s) == 2 and s[1] >= 16 and math.isqrt(s[1]) ** 2 == s[1]),
)


def _fit_layout(model: torch.nn.Module, bundle: DataBundle,
                held: dict[str, TensorDataset]) -> tuple[DataBundle, str] | None:
    """``bundle`` with its inputs laid out as ``model`` takes them, when exactly one of :data:`_LAYOUTS` makes the
    model run on inputs it rejects as given: image arrays saved without their channel axis, or channels last as
    NumPy, PIL and TensorFlow keep them (a CNN stopped with "expected input[2, 8, 8, 1] to have 1 channels, but got 8
    channels instead"). The tensors are views: nothing is copied."""
    x = bundle.example_batch(3)  # three samples: an unbatched reading (a Conv2d takes (C, H, W)) shows in the output
    fits = [(what, change) for what, change, applies in _LAYOUTS
            if applies(tuple(x.shape)) and runs_on(model, change(x), batched=True)]
    if len(fits) != 1:  # none, or more than one reading: not guessed
        return None
    what, change = fits[0]
    moved = {split: TensorDataset(change(data.tensors[0]), *data.tensors[1:]) for split, data in held.items()}
    candidate = dataclasses.replace(bundle, **moved, input_shape=tuple(change(x).shape[1:]))
    return candidate, (f"the model does not take the inputs of {bundle.name} as they are, shape "
                       f"{tuple(x.shape[1:])} per sample; it takes them with {what}: they are fed so "
                       f"({tuple(candidate.input_shape)} per sample, the shape model.onnx expects)")


def _negative_ids(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> int | None:
    """The lowest input where the inputs would be token ids but for negative ones (a padding of -1) and the model
    holds an embedding; else None."""
    from .token_ids import embeddings

    if not embeddings(model):
        return None
    if not all(_whole_ids(t.abs()) for t in inputs):
        return None
    lowest = min((int(t.min()) for t in inputs if t.numel()), default=0)
    return lowest if lowest < 0 else None


def _whole_ids(x: torch.Tensor) -> bool:
    """Whether ``x`` holds only whole numbers from 0 to 2**24 (exact in float32), as token ids would be."""
    return not x.numel() or bool((x >= 0).all() and (x <= 2**24).all() and (x == x.round()).all())


def runs_on(model: torch.nn.Module, x: torch.Tensor, *, batched: bool = False) -> bool:
    """Whether ``model`` computes an output for ``x`` in eval mode (the modes are restored); with ``batched``, one
    that has a row per sample (a Conv2d also takes an unbatched (C, H, W) input, and then answers with none)."""
    try:
        with kept(model), torch.no_grad():
            out = model.eval()(x)
        return not batched or (isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] == x.shape[0])
    except Exception:  # noqa: BLE001 - any failure means "not these inputs"; the caller reports the model's own error
        return False
