"""The entry point of sapo-vllm (group ``sapo``): the ``vllm`` and ``sglang`` inference backends and
``sapo vllm launch``. Torch-free: the servers generate; httpx talks to them. The backends render
prompts with sapo-local's tokenizer, the ``local`` extra (`sapo_vllm.local_policy`)."""

from __future__ import annotations

import click

from sapo_core import hookimpl
from sapo_core.registry import Register
from sapo_vllm.settings import ServerSettings


def build_vllm(settings: ServerSettings | None, context):  # noqa: ANN001, ANN201  (factory signature)
    from sapo_vllm.backend import ServerInference

    return ServerInference("vllm", settings or ServerSettings(), context)


def build_sglang(settings: ServerSettings | None, context):  # noqa: ANN001, ANN201
    from sapo_vllm.backend import ServerInference

    return ServerInference("sglang", settings or ServerSettings(), context)


@hookimpl
def register_inference(register: Register) -> None:
    register(
        "vllm",
        build_vllm,
        settings=ServerSettings,
        description="vLLM servers (OpenAI API, prompt token ids, log-probs), kept on-policy by LoRA or weight reloads",
    )
    register(
        "sglang",
        build_sglang,
        settings=ServerSettings,
        description="SGLang servers (OpenAI API, prompt token ids, log-probs), kept on-policy by LoRA or weight reloads",
    )


@hookimpl
def register_commands(cli: click.Group) -> None:
    from sapo_vllm.launch import vllm_group

    cli.add_command(vllm_group)
