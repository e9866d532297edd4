"""sapo-local is sapo-vllm's ``local`` extra: the shared policy is found under sapo-local's own key,
and without sapo-local the backends say what to install while the rest of sapo-vllm still imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sapo_core.errors import BackendError
from sapo_core.interfaces import BackendContext
from sapo_core.records import Message, Problem
from sapo_vllm import local_policy
from sapo_vllm.backend import ServerInference
from sapo_vllm.settings import ServerSettings

EXTRA = r"pip install 'sapo-vllm\[local\]'"


@pytest.fixture
def without_sapo_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sapo_local", "sapo_local.policy", "sapo_local.models"):
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes `import` raise ImportError


def test_the_shared_policy_is_under_sapo_locals_key(tmp_path):
    from sapo_local.policy import SHARED_KEY

    context = BackendContext(model="smollm2-135m", workdir=tmp_path)
    assert local_policy.shared_policy(context) is None
    policy = object()
    context.shared[SHARED_KEY] = policy
    assert local_policy.shared_policy(context) is policy


def test_without_sapo_local_each_use_names_the_extra(without_sapo_local, tmp_path):
    context = BackendContext(model="smollm2-135m", workdir=tmp_path)
    problem = Problem(task="t", id="p", messages=(Message("user", "hi"),))
    with pytest.raises(BackendError, match=EXTRA):
        local_policy.shared_policy(context)
    with pytest.raises(BackendError, match=EXTRA):
        local_policy.load_tokenizer("smollm2-135m")
    with pytest.raises(BackendError, match=EXTRA):
        local_policy.prompt_ids(object(), problem)
    with pytest.raises(BackendError, match=EXTRA):
        ServerInference("vllm", ServerSettings(), context).tokenizer()


def test_sapo_vllm_imports_without_sapo_local():
    code = (
        "import sys\n"
        "for name in ('sapo_local', 'sapo_local.policy', 'sapo_local.models'):\n"
        "    sys.modules[name] = None\n"
        "import sapo_vllm.backend, sapo_vllm.launch, sapo_vllm.plugin, sapo_vllm.weightsync\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
