"""Model shapes the benchmarks run, as folders that ``random:<folder>`` loads (config + tokenizer).

Throughput does not depend on the weights, so a shape is a config and a tokenizer: no download,
nothing large to carry to the GPU machine. ``qwen2-0.5b`` is Qwen2.5-0.5B's architecture (its
151,936-token vocabulary included) with SmolLM2's tokenizer: the benchmarks feed token ids, and
every id the tokenizer makes is below both vocabularies' size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
QWEN2_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
# Small enough for the 2-core CPU: the CPU variants of the learner and generation benchmarks.
TINY = {
    **SMOLLM2_135M,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
}
# The tiny trunk with Qwen2's 151,936-token vocabulary: on the CPU, the LM head's log-probs dominate.
TINY_151K = {**TINY, "vocab_size": QWEN2_05B["vocab_size"]}

SHAPES = {"smollm2-135m": SMOLLM2_135M, "qwen2-0.5b": QWEN2_05B, "tiny": TINY, "tiny-151k": TINY_151K}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def default_tokenizer_folder() -> Path:
    """SmolLM2's tokenizer: ``build/smollm2-shape`` when carried there, else sapo's converted copy of the bundled model."""
    carried = Path(__file__).resolve().parent.parent / "build" / "smollm2-shape"
    if (carried / "tokenizer.json").is_file():
        return carried
    from sapo_local.models import converted, resolve

    return Path(converted(resolve("smollm2-135m")).path)


def shape_folder(name: str, root: Path, tokenizer: Path | None = None) -> Path:
    """``root/<name>`` holding the shape's config.json and the tokenizer's files; written once."""
    if name not in SHAPES:
        raise SystemExit(f"unknown shape {name!r}; choose one of: {', '.join(SHAPES)}")
    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    source = tokenizer or default_tokenizer_folder()
    if not (source / "tokenizer.json").is_file():
        raise SystemExit(f"{source} holds no tokenizer.json; pass --tokenizer <folder of SmolLM2's tokenizer files>")
    folder.mkdir(parents=True, exist_ok=True)
    for file in TOKENIZER_FILES:
        if (source / file).is_file():
            shutil.copy(source / file, folder / file)
    (folder / "config.json").write_text(json.dumps(SHAPES[name], indent=1))
    return folder


def parameters(config: dict) -> tuple[int, int]:
    """(all parameters, parameters outside the embedding) of a shape, for FLOP counts."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    if config["model_type"] == "qwen2":  # q, k, v biases
        attention += heads * head_dim + 2 * kv * head_dim
    trunk = layers * (attention + 3 * h * i + 2 * h) + h
    embedding = config["vocab_size"] * h
    return trunk + embedding * (1 if config["tie_word_embeddings"] else 2), trunk


def add_arguments(parser: argparse.ArgumentParser, *, tokens_help: str) -> None:
    """The shape and the batch: problems x completions rows of up to ``--tokens`` completion tokens."""
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256, help=tokens_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="folder with SmolLM2's tokenizer files (default: found locally)")
    parser.add_argument("--shapes-root", default=str(Path(tempfile.gettempdir()) / "sapo-bench-shapes"))


def from_arguments(args: argparse.Namespace) -> Path:
    """The folder of the shape the arguments name."""
    return shape_folder(args.shape, Path(args.shapes_root), Path(args.tokenizer) if args.tokenizer else None)
