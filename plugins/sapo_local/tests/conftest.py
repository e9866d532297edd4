"""Fixtures shared by sapo-local's tests, and the learner tests' helpers (tiny_learner.py) as an importable module."""

from __future__ import annotations

from pathlib import Path

import pytest

from sapo_core.testing import import_by_path

# Tests run with --import-mode=importlib, so the helper module is loaded by path, once.
import_by_path("sapo_local_tiny_learner", Path(__file__).with_name("tiny_learner.py"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """``random:<folder>``: a two-layer model from a config, with the bundled SmolLM2 tokenizer."""
    from sapo_local.models import tiny_model_spec

    return tiny_model_spec(tmp_path_factory.mktemp("tiny"))
