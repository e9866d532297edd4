"""sapo-core: the torch-free kernel of sapo, swarm reinforcement learning of language models."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pluggy

hookimpl = pluggy.HookimplMarker("sapo")
"""Decorate a plugin's hook implementations with this (``@sapo_core.hookimpl``)."""

try:
    __version__ = version("sapo-core")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = ["hookimpl", "__version__"]
