"""Fixtures shared by sapo-local's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """``random:<folder>``: a two-layer model from a config, with the bundled SmolLM2 tokenizer."""
    from sapo_local.models import tiny_model_spec

    return tiny_model_spec(tmp_path_factory.mktemp("tiny"))
