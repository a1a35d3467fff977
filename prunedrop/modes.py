"""A model's modes (and buffers) kept across a pass that changes them: the checks and measurements that run the
user's model before, beside or after the pipeline put it in eval or training mode, and a training-mode forward
updates its buffers (BatchNorm statistics, a spectral norm's vectors); the caller's model comes back as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def kept(model: nn.Module, *, buffers: bool = False) -> Iterator[nn.Module]:
    """Inside, ``model`` may change modes (and with ``buffers``, its buffers' values); afterwards every module's own
    training flag is as it was (a caller may have frozen some submodules in eval mode on purpose), and so are the
    buffers."""
    modes = {module: module.training for module in model.modules()}
    saved = [(b, b.clone()) for b in model.buffers()] if buffers else []
    try:
        yield model
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, a check may run ``model`` in any mode without gradients; afterwards its modes, its buffers and the
    caller's random stream (dropout, noise drawn in ``forward``) are as they were."""
    with kept(model, buffers=True), torch.no_grad(), torch.random.fork_rng(devices=[]):
        yield model


@contextlib.contextmanager
def dense_gradients(model: nn.Module) -> Iterator[None]:
    """Inside, every ``nn.Embedding`` / ``nn.EmbeddingBag`` (variational or not) built with ``sparse=True`` gives
    dense gradients: the same values, in the form Adam takes ("Adam does not support sparse gradients" stopped a
    recommender's run after its baseline). Their ``sparse`` is restored afterwards, so the compressed model is
    built as the user's was."""
    from .data.token_ids import embeddings

    sparse = [m for m in embeddings(model).values() if m.sparse]
    for module in sparse:
        module.sparse = False
    try:
        yield
    finally:
        for module in sparse:
            module.sparse = True
