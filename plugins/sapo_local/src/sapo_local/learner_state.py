"""A learner's state on disk, in formats that load without pickle.

Weights go by ``save_pretrained`` (safetensors) and come back by `load_weights`; the optimizer's
state is split into named tensors (safetensors) and a JSON skeleton; the RNG states are tensors
too, and Python's `random` state is JSON.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sapo_core.errors import TrainingError


def save_optimizer(folder: Path, state_dict: Mapping[str, Any]) -> None:
    """An optimizer's ``state_dict()`` as named tensors and a JSON skeleton."""
    tensors, structure = _flatten_optimizer(state_dict)
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(structure, indent=1, sort_keys=True))


def read_optimizer(folder: Path, skeleton: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The state dict `save_optimizer` wrote; ``skeleton`` for the older layout that kept it in ``learner.json``."""
    tensors = load_file(str(folder / "optimizer.safetensors"), device="cpu")
    if skeleton is None:
        skeleton = json.loads((folder / "optimizer.json").read_text())
    return _unflatten_optimizer(tensors, skeleton)


def save_rng(path: Path) -> None:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(path))


def load_rng(path: Path) -> None:
    rng = load_file(str(path))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        states = [rng[key] for key in sorted(rng) if key.startswith("cuda.")]
        if states:
            torch.cuda.set_rng_state_all(states)


def python_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_random_state(data: Sequence[Any]) -> None:
    random.setstate((data[0], tuple(data[1]), data[2]))


def load_weights(model: Any, folder: Path, *, lora: bool) -> None:
    """Weights saved by save_pretrained back into the live model (tensors only: no pickle)."""
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = (
        {key for key in missing if key.endswith("lm_head.weight")}
        if getattr(model.config, "tie_word_embeddings", False)
        else set()
    )
    if unexpected or set(missing) - tied:
        raise TrainingError(
            f"{folder}: checkpoint does not match the model (missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )


def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict as named tensors (safetensors) and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, entries in state["state"].items():
        slots = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                key = f"{index}.{name}"
                tensors[key] = value.detach().to("cpu").contiguous()
                slots[name] = {"tensor": key}
            else:
                slots[name] = {"value": value}
        skeleton["state"][str(index)] = slots
    return tensors, skeleton


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], skeleton: Mapping[str, Any]) -> dict[str, Any]:
    state = {}
    for index, slots in skeleton["state"].items():
        state[int(index)] = {
            name: tensors[slot["tensor"]] if "tensor" in slot else slot["value"] for name, slot in slots.items()
        }
    return {"state": state, "param_groups": skeleton["param_groups"]}
