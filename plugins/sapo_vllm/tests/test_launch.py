"""`sapo vllm launch`: the flags each engine gets, and a clear answer where no engine is installed."""

from __future__ import annotations

import sys

import pytest

from sapo_vllm.launch import build_launch, engine_installed, resolved


def test_vllm_flags_for_lora_and_full_reloads():
    plan = build_launch(
        "vllm", "Qwen/Qwen2.5-0.5B-Instruct", port=8001, gpu="0", lora=True, max_lora_rank=32, seed=7, python="python"
    )
    assert plan.argv == (
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--seed",
        "7",
        "--enable-lora",
        "--max-lora-rank",
        "32",
    )
    assert plan.env == {
        "CUDA_VISIBLE_DEVICES": "0",
        "VLLM_SERVER_DEV_MODE": "1",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }
    full = build_launch("vllm", "m", python="python", extra=("--max-model-len", "4096"))
    assert "--enable-lora" not in full.argv and full.argv[-2:] == ("--max-model-len", "4096")
    assert full.env == {"VLLM_SERVER_DEV_MODE": "1"}, "full reloads go through the development routes"


def test_sglang_flags():
    plan = build_launch("sglang", "m", host="0.0.0.0", port=30000, lora=True, python="python")
    assert plan.argv == (
        "python",
        "-m",
        "sglang.launch_server",
        "--model-path",
        "m",
        "--host",
        "0.0.0.0",
        "--port",
        "30000",
        "--random-seed",
        "0",
        "--enable-lora",
        "--max-lora-rank",
        "64",
        "--lora-target-modules",
        "all",
    )


def test_api_keys_stay_out_of_the_printed_command():
    vllm = build_launch("vllm", "m", api_key_env="MY_KEY", python="python")
    sglang = build_launch("sglang", "m", api_key_env="MY_KEY", python="python")
    environ = {"MY_KEY": "s3cret-value-123", "PATH": "/bin"}
    assert "s3cret" not in vllm.describe() and "s3cret" not in sglang.describe()
    argv, env = resolved(vllm, environ)
    assert env["VLLM_API_KEY"] == "s3cret-value-123" and "s3cret-value-123" not in argv, "vLLM reads it from its env"
    argv, _ = resolved(sglang, environ)
    assert argv[argv.index("--api-key") + 1] == "s3cret-value-123"


def test_dry_run_prints_the_command(sapo_cli):
    result = sapo_cli("vllm", "launch", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--gpu", "1", "--lora", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "CUDA_VISIBLE_DEVICES=1" in result.output and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in result.output
    assert f"{sys.executable} -m vllm.entrypoints.openai.api_server --model Qwen/Qwen2.5-0.5B-Instruct" in result.output


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_without_the_engine_it_says_what_to_install(sapo_cli, engine):
    if engine_installed(engine):
        pytest.skip(f"{engine} is installed here")
    result = sapo_cli("vllm", "launch", "--engine", engine, "--model", "m")
    assert result.exit_code == 1
    assert f"{engine} is not installed in this Python environment" in result.output
    assert ("pip install vllm" if engine == "vllm" else "pip install 'sglang[all]'") in result.output
    assert "--dry-run" in result.output
