"""Keeping generation servers on-policy: exporting the learner's weights and loading them into the servers.

After a learner step the servers sample from an older policy. Before each `generate`, the
backend compares the learner's step count (``policy.version``) with the one the servers hold;
when they lag by more than ``inference.max_staleness`` steps, the current weights are exported
to ``sync_dir/vNNNNNN`` (safetensors, written under a temporary name and renamed) and loaded:

* ``lora`` (the learner trains a LoRA adapter): the adapter folder is hot-loaded under a new
  name, ``sapo-vN``, which the next requests ask for; the previous adapter is then unloaded.
  vLLM: ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` (needs ``--enable-lora`` and
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); SGLang: ``POST /load_lora_adapter`` likewise.
* ``full``: the whole model is reloaded from the folder. SGLang: ``POST /update_weights_from_disk
  {"model_path"}``; vLLM: ``POST /collective_rpc {"method": "reload_weights", "kwargs":
  {"weights_path"}}`` (a development endpoint: ``VLLM_SERVER_DEV_MODE=1``), then
  ``POST /reset_prefix_cache`` so no KV cache computed with the old weights is reused.

The folder must be readable by the servers under the same path (one machine, or a shared disk).
The exact request and response shapes, with their sources, are recorded in the tests
(``plugins/sapo_vllm/tests/fixtures/endpoints.json``).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
import httpx

from sapo_core.errors import BackendError
from sapo_vllm.servers import ServerPool

log = logging.getLogger("sapo.vllm")


@attrs.frozen
class Engine:
    """One server family's routes for weight sync, and what to do when they are missing."""

    name: str
    load_lora: str
    unload_lora: str
    reload_full: str
    lora_hint: str
    full_hint: str
    reset_cache: str = ""  # a route to POST after a full reload, when the engine needs it

    def full_body(self, folder: str) -> dict[str, Any]:
        if self.name == "vllm":
            return {"method": "reload_weights", "kwargs": {"weights_path": folder}}
        return {"model_path": folder}


ENGINES = {
    "vllm": Engine(
        name="vllm",
        load_lora="/v1/load_lora_adapter",
        unload_lora="/v1/unload_lora_adapter",
        reload_full="/collective_rpc",
        reset_cache="/reset_prefix_cache",
        lora_hint="start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (`sapo vllm launch --lora` does)",
        full_hint="start vLLM with VLLM_SERVER_DEV_MODE=1, which serves /collective_rpc (`sapo vllm launch` does)",
    ),
    "sglang": Engine(
        name="sglang",
        load_lora="/load_lora_adapter",
        unload_lora="/unload_lora_adapter",
        reload_full="/update_weights_from_disk",
        lora_hint="start SGLang with --enable-lora and --max-lora-rank (`sapo vllm launch --engine sglang --lora` does)",
        full_hint="use an SGLang version that serves /update_weights_from_disk",
    ),
}


class WeightSync:
    """The servers' copy of the policy: which learner step they hold, and bringing them up to date."""

    def __init__(
        self,
        engine: Engine,
        pool: ServerPool,
        *,
        mode: str,
        max_staleness: int,
        folder: Path,
        keep: int = 2,
        timeout: float = 600.0,
    ) -> None:
        self.engine, self.pool, self.mode = engine, pool, mode
        self.max_staleness, self.folder, self.keep, self.timeout = max_staleness, folder, keep, timeout
        self.server_version = 0  # the servers start from the base model, the learner's version 0
        self.adapter: str | None = None  # the LoRA adapter name requests must ask for, once one is loaded
        self.syncs = 0
        self.seconds = 0.0
        self.last_lag = 0

    def before_generate(self, policy: Any) -> None:
        """Enforce the staleness bound: sync when the servers lag the learner by more than ``max_staleness`` steps."""
        if policy is None:  # no learner in this process: the servers' weights are the policy
            return
        lag = int(policy.version) - self.server_version
        if lag > self.max_staleness:
            if self.mode == "none":
                raise BackendError(
                    f"the inference servers are {lag} learner steps behind, more than inference.max_staleness = "
                    f"{self.max_staleness}, and inference.weight_sync = none. Set inference.weight_sync = auto (lora "
                    "or full) so they load the new weights, or raise inference.max_staleness to train off-policy on "
                    "purpose."
                )
            self.sync(policy)
        self.last_lag = int(policy.version) - self.server_version  # what this generation samples with

    def resolve_mode(self, policy: Any) -> str:
        lora = hasattr(policy.model, "peft_config")
        mode = ("lora" if lora else "full") if self.mode == "auto" else self.mode
        if mode == "full" and lora:
            raise BackendError(
                "inference.weight_sync = full, but the learner trains a LoRA adapter: set "
                "inference.weight_sync = lora (or auto) to hot-load the adapter"
            )
        if mode == "lora" and not lora:
            raise BackendError(
                "inference.weight_sync = lora, but the learner trains all weights: set train.lora = true, "
                "or inference.weight_sync = full (or auto)"
            )
        return mode

    def sync(self, policy: Any) -> None:
        started = time.perf_counter()
        version = int(policy.version)
        mode = self.resolve_mode(policy)
        folder = self.export(policy, version)
        with httpx.Client(headers=self.pool.headers, timeout=self.timeout) as client:
            if mode == "lora":
                name = f"sapo-v{version}"
                for server in self.pool.servers:
                    self._post(
                        client,
                        server.url,
                        self.engine.load_lora,
                        {"lora_name": name, "lora_path": str(folder)},
                        self.engine.lora_hint,
                    )
                previous, self.adapter = self.adapter, name
                if previous is not None:
                    for server in self.pool.servers:
                        self._post(
                            client, server.url, self.engine.unload_lora, {"lora_name": previous}, self.engine.lora_hint
                        )
            else:
                for server in self.pool.servers:
                    self._post(
                        client,
                        server.url,
                        self.engine.reload_full,
                        self.engine.full_body(str(folder)),
                        self.engine.full_hint,
                    )
                    if self.engine.reset_cache:
                        self._post(client, server.url, self.engine.reset_cache, None, self.engine.full_hint)
        self.server_version = version
        self.syncs += 1
        self.seconds += time.perf_counter() - started
        self._prune()
        log.info(
            "inference servers now hold learner step %d (%s sync, %.1f s)", version, mode, time.perf_counter() - started
        )

    def export(self, policy: Any, version: int) -> Path:
        """The policy's weights (or LoRA adapter) as a Hugging Face folder in safetensors, complete or absent."""
        final = (self.folder / f"v{version:06d}").resolve()
        if final.exists():
            return final
        temporary = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        policy.model.save_pretrained(str(temporary), safe_serialization=True)
        policy.tokenizer.save_pretrained(str(temporary))
        temporary.rename(final)
        return final

    def _prune(self) -> None:
        versions = sorted(p for p in self.folder.glob("v[0-9]*") if p.is_dir())
        for old in versions[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _post(self, client: httpx.Client, base: str, route: str, body: dict[str, Any] | None, hint: str) -> None:
        url = f"{base}{route}"
        try:
            response = client.post(url, json=body) if body is not None else client.post(url)
        except httpx.HTTPError as exc:
            raise BackendError(f"weight sync: {url} failed ({type(exc).__name__}: {exc}); is the server up?") from exc
        answer = response.text[:500]
        failed = response.status_code != 200
        if not failed and response.headers.get("content-type", "").startswith("application/json"):
            data = response.json()
            failed = isinstance(data, dict) and data.get("success") is False
        if failed:
            what = "the route does not exist" if response.status_code == 404 else f"it answered {response.status_code}"
            raise BackendError(f"weight sync: POST {url}: {what} ({answer!r}); {hint}")

    def metrics(self) -> dict[str, float]:
        return {
            "weight_syncs": float(self.syncs),
            "weight_sync_seconds": self.seconds,
            "staleness": float(self.last_lag),
            "server_version": float(self.server_version),
        }
