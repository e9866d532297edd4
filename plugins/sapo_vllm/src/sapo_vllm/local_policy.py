"""What the vllm and sglang backends take from sapo-local: the policy its learner shares in this
process, its tokenizer and its prompt rendering (the documented surface of `sapo_local.policy`
and `sapo_local.models`).

sapo-local brings torch, so it is sapo-vllm's ``local`` extra: ``sapo vllm launch`` and the
plugin's registration work without it, and generation, which needs it, says how to install it.
The imports are here, each where it is used, so that nothing else in sapo-vllm imports sapo-local.
"""

from __future__ import annotations

from typing import Any

from sapo_core.errors import BackendError
from sapo_core.interfaces import BackendContext
from sapo_core.records import Problem

INSTALL = "pip install 'sapo-vllm[local]'"


def _missing(exc: ImportError) -> BackendError:
    return BackendError(
        "the vllm and sglang inference backends render prompts to token ids with sapo-local's tokenizer "
        f"and chat template, and find the learner's policy through it: {INSTALL} ({exc})"
    )


def shared_policy(context: BackendContext) -> Any:
    """The `sapo_local.policy.Policy` this node's learner trains, or None when the node does not train."""
    try:
        from sapo_local.policy import SHARED_KEY
    except ImportError as exc:
        raise _missing(exc) from exc
    return context.shared.get(SHARED_KEY)


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of the model ``spec`` names, loaded as sapo-local's learner loads it."""
    try:
        from sapo_local.models import load_tokenizer as load
    except ImportError as exc:
        raise _missing(exc) from exc
    return load(spec)


def prompt_ids(tokenizer: Any, problem: Problem) -> list[int]:
    """The problem's chat as the learner renders it: one chat template, one truth."""
    try:
        from sapo_local.policy import prompt_ids as render
    except ImportError as exc:
        raise _missing(exc) from exc
    return render(tokenizer, problem)
