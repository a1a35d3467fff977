"""The :class:`DataBundle` that every data spec becomes, and the seeded generators behind its order."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import PrunedropError

SPLITS = ("train", "val", "test")
"""The names of a bundle's splits, in order."""


@dataclass
class DataBundle:
    """Train/validation/test data plus what the pipeline needs to know about it."""

    name: str
    """The data spec it came from, e.g. ``fashion-mnist`` or ``npz:data.npz``; used in reports."""
    train: Dataset | DataLoader
    """Training data: a map-style Dataset, or a DataLoader only when the user's python: function returned one."""
    val: Dataset | DataLoader
    """Validation data, used to measure the metric before and after compression."""
    test: Dataset | DataLoader | None
    """Test data, or None when the spec has none."""
    input_shape: tuple[int, ...]
    """The shape of one input sample, without the batch dimension."""
    num_classes: int | None
    """Number of classes (largest label + 1, or ``len(dataset.classes)``) when it is known, else None."""
    class_names: list[str] | None = None
    """The names the class indices stand for, where the labels were names numbered by the recipe's ``class_names``."""
    val_split_off: bool = False
    """Whether the validation data was split off the training data (the spec gave none): samples a model trained on
    the whole training data has seen (:func:`prunedrop.metrics.seen_validation_note`)."""

    @property
    def num_train(self) -> int:
        """Training-set size N, the factor of the data term in the ELBO."""
        size = samples_in(self.train)
        if size is None:
            raise PrunedropError(
                f"the training data of {self.name!r} has no length, which the ELBO needs; "
                "use a map-style Dataset (with __len__) rather than an IterableDataset"
            )
        return size

    @property
    def num_val(self) -> int:
        """Validation samples (0 when the validation data has no length)."""
        return samples_in(self.val) or 0

    def split(self, split: str) -> Dataset | DataLoader:
        """The data of ``split`` (``train``, ``val`` or ``test``); an error when that split is absent."""
        if split not in SPLITS:
            raise PrunedropError(f"unknown data split {split!r}; use one of: {', '.join(SPLITS)}")
        data = getattr(self, split)
        if data is None:
            raise PrunedropError(
                f"data {self.name!r} has no {split} split; use a data spec that provides one "
                "(e.g. npz with x_test/y_test, or a python: function returning (train, val, test))"
            )
        return data

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
    ) -> DataLoader:
        """A DataLoader over ``split`` in a deterministic order.

        When shuffling, the permutation comes from a ``torch.Generator`` seeded from ``(seed, epoch)`` alone,
        not from global RNG state, so a resumed run sees exactly the order an uninterrupted one would have.
        A DataLoader the user gave is returned as is: its own batch size and order win (for training, ``shuffle``,
        a batch of one sample that follows larger ones, its last, is left out, as below; a loader of ``batch_size=1``
        keeps every batch, and a model that cannot train on one sample is refused before any file:
        :func:`prunedrop.task.check_single_sample_batches`).

        A shuffled loader (training) whose last batch would hold one sample drops it: a BatchNorm in training mode
        cannot normalise one value per channel, and a training set of 1,137 samples in batches of 8 stopped the run
        with a traceback at its last step ("Expected more than 1 value per channel when training"). The order is
        shuffled each epoch, so a different sample sits out each time.
        """
        data = self.split(split)
        if isinstance(data, DataLoader):
            return _WithoutLoneBatches(data) if shuffle else data  # type: ignore[return-value]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PrunedropError(f"batch size must be a positive integer, got {batch_size!r}")
        if len(data) == 0:  # a bundle built in Python, unchecked: no loop over its batches may wait for one
            raise PrunedropError(f"the {split} data of {self.name!r} is empty; the data must have at least one sample")
        order = torch.randperm(len(data), generator=seeded_generator(seed, epoch)).tolist() if shuffle else None
        if shuffle and len(data) > batch_size and len(data) % batch_size == 1:
            drop_last = True
        # A generator of its own: a DataLoader without one draws its base seed from the global RNG on every
        # iteration, which would shift the noise of a resumed run against an uninterrupted one.
        return DataLoader(data, batch_size=batch_size, sampler=order, drop_last=drop_last,
                          generator=seeded_generator(seed, epoch, "loader"))

    def single_sample_batches(self, batch_size: int) -> str | None:
        """Why the training batches hold one sample each (every one, or the first of a loader's), with the
        recipe's ``batch_size``; None where they hold more. What :meth:`loader` leaves out is not counted: a last
        batch of one after larger ones."""
        data = self.train
        if samples_in(data) == 1:
            return "the training data holds one sample"
        if isinstance(data, DataLoader):
            if data.batch_size == 1:
                return "the training DataLoader's batch_size is 1"
            if data.batch_size is None:  # a batch_sampler of its own: its first batch tells
                with torch.random.fork_rng(devices=[]):  # peeking must not shift the caller's random stream
                    batch = next(iter(data), None)
                target = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
                if isinstance(target, torch.Tensor) and target.dim() > 0 and len(target) == 1:
                    return "the training DataLoader's first batch holds one sample"
            return None
        return "recipe key batch_size is 1" if batch_size == 1 else None

    def example_batch(self, n: int = 8, split: str = "val") -> torch.Tensor:
        """The first ``n`` inputs of ``split`` (fewer if the split is smaller), for export, parity and FLOPs."""
        if n < 1:
            raise PrunedropError(f"an example batch needs at least one sample, got n={n}")
        data = self.split(split)
        if isinstance(data, DataLoader):
            parts: list[torch.Tensor] = []
            count = 0
            for batch in data:
                inputs = torch.as_tensor(batch[0])
                parts.append(inputs)
                count += len(inputs)
                if count >= n:
                    break
            return torch.cat(parts)[:n]
        if isinstance(data, TensorDataset):
            return data.tensors[0][:n].clone()
        return torch.stack([torch.as_tensor(data[i][0]) for i in range(min(n, len(data)))])


def seeded_generator(*key: object) -> torch.Generator:
    """A generator seeded from ``key`` by hashing, so that nearby keys such as (0, 1) and (1, 0) give
    unrelated streams, and the result is the same on every platform and Python version."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def samples_in(split: Any) -> int | None:
    """Samples in a Dataset or in a DataLoader's dataset; None when it has no length (an IterableDataset)."""
    data = split.dataset if isinstance(split, DataLoader) else split
    try:
        return len(data)
    except TypeError:
        return None


def first_batches(loader: Iterable[Any], samples: int) -> Iterator[Any]:
    """The first (input, target) batches of ``loader`` holding at most about ``samples`` samples (whole batches; at
    least one)."""
    seen = 0
    for x, y in loader:
        if seen and seen + len(y) > samples:
            break
        yield x, y
        seen += len(y)


class _WithoutLoneBatches:
    """A user's training DataLoader whose batch of one sample after larger ones (its last) is left out, as for
    the recipe's ``batch_size`` (a BatchNorm in training mode cannot normalise one value per channel: a loader of
    1,137 samples in batches of 8 stopped the run at its last step). Batches of one sample that follow none larger
    are kept: a loader of ``batch_size=1`` lost every batch, and the autopilot's probe went round empty epochs for
    ever, deaf to Ctrl-C and SIGTERM. An epoch that yields no batch at all is an error, never an empty epoch (a
    loop that counts steps would wait for ever). Its length and attributes are the loader's."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        larger = yielded = False
        for batch in self.loader:
            target = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
            size = len(target) if isinstance(target, torch.Tensor) and target.dim() > 0 else None
            if size == 1 and larger:
                continue
            larger = larger or (size is not None and size > 1)
            yielded = True
            yield batch
        if not yielded:
            raise PrunedropError(NO_TRAINING_BATCH)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def no_batch(where: str, loader: str = "a DataLoader that yields at least one batch") -> str:
    """The error for data (``where``) that yields no batch: a DataLoader with ``drop_last=True`` and fewer samples
    than its batch size, a sampler that selects nothing, an iterator spent after its first pass."""
    return (f"{where} yields no batch (a DataLoader with drop_last=True and fewer samples than its batch size, or a "
            f"sampler that selects nothing?); give {loader}")


#: the error for training data that yields no batch in an epoch
NO_TRAINING_BATCH = no_batch("the training data", "a training DataLoader that yields at least one batch in every epoch")
