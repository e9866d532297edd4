"""The entry point of sapo-local (group ``sapo``): local generation and the GRPO learner.

torch and transformers are imported inside the factories, when a run needs them, so that
``sapo plugins`` and API-only commands stay fast.
"""

from __future__ import annotations

from typing import Any

from sapo_core import hookimpl
from sapo_core.config import Config
from sapo_core.interfaces import BackendContext
from sapo_core.registry import Register
from sapo_local.settings import GRPOSettings, LocalInferenceSettings


def build_local_inference(settings: LocalInferenceSettings, context: BackendContext) -> Any:
    from sapo_local.generation import build_local_inference as build

    return build(settings, context)


def build_grpo(settings: GRPOSettings, context: BackendContext) -> Any:
    from sapo_local.learner import build_grpo as build

    return build(settings, context)


@hookimpl
def register_inference(register: Register) -> None:
    register(
        "local",
        build_local_inference,
        settings=LocalInferenceSettings,
        description="Hugging Face transformers on this machine; the model the learner trains",
    )


@hookimpl
def register_learners(register: Register) -> None:
    register(
        "grpo",
        build_grpo,
        settings=GRPOSettings,
        description="GRPO / Dr. GRPO / DAPO policy-gradient steps, optional LoRA and KL, accelerate DDP",
    )


@hookimpl
def inference_device(config: Config) -> str | None:
    """The device type the ``local`` backend will generate on, found as it will find it (the core
    sizes a run whose round sizes are left at their GPU-sized defaults by it: sapo_core.sizing)."""
    if config.inference.backend != "local":
        return None
    from sapo_local.models import choose_device

    try:
        return choose_device(str(config.extras("inference").get("device", "auto"))).type
    except (RuntimeError, ValueError):  # a device torch does not know: building the backend says so
        return None


@hookimpl
def register_commands(cli: Any) -> None:
    from sapo_local.serve_command import serve

    cli.add_command(serve)
