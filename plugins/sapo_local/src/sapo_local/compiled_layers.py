"""The decoder's layers, ``torch.compile``'d for the learner's forward and backward (``train.compile_layers``).

A small model's learner step on a GPU waits on the host launching kernels, not on the GPU running
them (docs/benchmarks.md: about 5,000 launches a step, the same modules in sapo and TRL). Compiling
each decoder layer fuses its norms, rotary embedding, activation and residual adds into a few
kernels, for the forward and the backward. The layers are compiled one by one ("regional"
compilation): every layer of a model shares one compiled graph, so compiling costs one layer's
time, paid in the first step; shapes are dynamic, so a new micro-batch length does not compile again.

Only the learner runs them: the compiled layers are swapped into the decoder for the length of the
learner's forward, and the model itself is left as it was. Its state dict, its checkpoints, the
bf16 copy that generation runs on and generation's own compiled decode step do not change.
A compile that fails (no C compiler, an operator the compiler does not handle) is reported once
and the learner goes on with the eager layers: the same function, launched kernel by kernel.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

log = logging.getLogger("sapo.local")

__all__ = ["CompiledLayers"]

T = TypeVar("T")


class CompiledLayers:
    """A decoder's layers compiled, and a way to run the decoder with them in place."""

    def __init__(self, layers: torch.nn.ModuleList) -> None:
        self.source = layers
        self.compiled = torch.nn.ModuleList(torch.compile(layer, dynamic=True) for layer in layers)
        self.working = False  # a forward has run compiled (later exceptions are not compile failures)
        self.failed = False  # compiling failed: the eager layers from then on

    def run(self, decoder: Any, forward: Callable[[], T]) -> T:
        """``forward()`` (a call of ``decoder``) with the compiled layers in ``decoder.layers``.

        An exception before the first success is taken for a compile failure: logged, and the
        forward runs again with the eager layers (nothing has happened that needs undoing: the
        backward has not run). After a success, exceptions are the model's and propagate.
        """
        if self.failed or decoder.layers is not self.source:
            return forward()
        try:
            with _layers_in(decoder, self.compiled):
                out = forward()
        except Exception as exc:
            if self.working:
                raise
            self.failed = True
            log.warning(
                "train.compile_layers: compiling the decoder layers failed (%s); training with the eager layers",
                _root_cause(exc),
            )
            return forward()
        self.working = True
        return out


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of an exception, in one line (the compiler wraps the real reason)."""
    while True:  # dynamo keeps a backend's exception as `inner_exception`
        inner = exc.__cause__ or getattr(exc, "inner_exception", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


@contextlib.contextmanager
def _layers_in(decoder: Any, layers: torch.nn.ModuleList) -> Iterator[None]:
    original = decoder.layers
    decoder.layers = layers
    try:
        yield
    finally:
        decoder.layers = original
