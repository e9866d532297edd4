"""The client of a remote trainer (`sapo serve`): completions from the server, rewards from your code.

It lives in sapo-core, not beside the server in sapo-local, because the machine that computes
rewards needs neither torch nor a model: ``pip install sapo-core`` is enough. It speaks JSON
over HTTP with httpx::

    from sapo_core.remote import RemoteTrainer

    with RemoteTrainer("http://127.0.0.1:8080") as trainer:  # key: $SAPO_SERVE_API_KEY or `sapo keys`
        groups = trainer.rollouts(["Sort these words: pear apple fig"])
        trainer.post_rewards({r.rollout_id: my_reward(r.text) for g in groups for r in g.rollouts})

Posting rewards is idempotent (the server counts a reward once), so `post_rewards` retries on a
lost connection; `rollouts` does not retry a request that reached the server, since a retry would
open new groups (the unanswered ones expire on the server, untrained).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import httpx

from sapo_core.errors import SapoError
from sapo_core.keys import find_key
from sapo_core.records import Message, as_tuple

API_KEY_ENV = "SAPO_SERVE_API_KEY"


class RemoteError(SapoError):
    """The server refused a request (``status`` 4xx/5xx, with its reason) or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@attrs.frozen
class Rollout:
    rollout_id: str
    text: str
    finish_reason: str
    num_tokens: int | None = None


@attrs.frozen
class RemoteGroup:
    """One prompt's G completions; post a reward for every rollout before ``expires_at`` (epoch seconds)."""

    index: int  # the prompt's position in the request (a prompt whose generation failed has no group)
    group_id: str
    rollouts: tuple[Rollout, ...] = attrs.field(converter=as_tuple)
    expires_at: float = 0.0


Prompt = str | Sequence[Message] | Sequence[Mapping[str, str]]


def _prompt_json(prompt: Prompt) -> dict[str, Any]:
    if isinstance(prompt, str):
        return {"prompt": prompt}
    return {"messages": [{"role": m.role, "content": m.content} if isinstance(m, Message) else dict(m) for m in prompt]}


class RemoteTrainer:
    """A `sapo serve` server. ``api_key`` defaults to the environment variable ``SAPO_SERVE_API_KEY``."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 600.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        found = find_key(API_KEY_ENV) if api_key is None else (api_key, "argument")
        key = found[0] if found else ""
        if not key:
            raise RemoteError(
                f"no API key: pass api_key=, export {API_KEY_ENV}=... or `sapo keys set {API_KEY_ENV}` "
                "with the key the server was started with"
            )
        self.url = url.rstrip("/")
        self.retries = retries
        self._client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout, transport=transport
        )

    def __enter__(self) -> RemoteTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # --------------------------------------------------------------------------- the API

    def rollouts(self, prompts: Iterable[Prompt], num_completions: int | None = None) -> list[RemoteGroup]:
        """G completions for each prompt (a string, or chat messages): one group per prompt, in order,
        each with its prompt's ``index`` (a prompt whose generation failed on the server is left out)."""
        body: dict[str, Any] = {"prompts": [_prompt_json(p) for p in prompts]}
        if num_completions is not None:
            body["num_completions"] = num_completions
        data = self._call("POST", "/v1/rollouts", body, retry=False)
        return [
            RemoteGroup(
                index=int(g["index"]),
                group_id=g["group_id"],
                expires_at=float(g["expires_at"]),
                rollouts=[
                    Rollout(r["rollout_id"], r["text"], r["finish_reason"], r.get("num_tokens")) for r in g["rollouts"]
                ],
            )
            for g in data["groups"]
        ]

    def post_rewards(self, rewards: Mapping[str, float] | Iterable[tuple[str, float]]) -> dict[str, Any]:
        """Rewards by rollout id; returns the server's accepted / duplicates / groups_completed counts."""
        pairs = rewards.items() if isinstance(rewards, Mapping) else rewards
        body = {"rewards": [{"rollout_id": rid, "reward": float(value)} for rid, value in pairs]}
        return self._call("POST", "/v1/rewards", body, retry=True)

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status", None, retry=True)

    def metrics(self) -> dict[str, Any]:
        return self._call("GET", "/v1/metrics", None, retry=True)

    def checkpoint(self) -> dict[str, Any]:
        """Save a checkpoint of the server's learner now; returns its round (learner steps) and location."""
        return self._call("POST", "/v1/checkpoints", None, retry=True)

    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/checkpoints", None, retry=True)["checkpoints"])

    def wait_for_steps(self, steps: int, timeout: float = 600.0, poll: float = 0.5) -> dict[str, Any]:
        """Block until the server has taken ``steps`` learner steps; returns its status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["learner_steps"] >= steps or not status["training"]:
                return status
            if time.monotonic() > deadline:
                raise RemoteError(
                    f"the server took {status['learner_steps']} of {steps} learner steps in {timeout:.0f} s"
                )
            time.sleep(poll)

    # --------------------------------------------------------------------------- plumbing

    def _call(self, method: str, path: str, body: Any, *, retry: bool) -> Any:
        """One API call. A connection that never reached the server, a 429 or a 503 is tried again;
        a timeout or another 5xx only when ``retry`` (the call is idempotent)."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            try:
                response = self._client.request(method, path, json=body)
            except httpx.ConnectError as exc:
                if not last:
                    continue
                raise RemoteError(f"cannot reach {self.url}: {exc}") from exc
            except httpx.HTTPError as exc:
                if retry and not last:
                    continue
                raise RemoteError(f"{method} {self.url}{path} failed: {type(exc).__name__}: {exc}") from exc
            # 429 and 503 mean the request was not processed (rate limit, learner busy): always safe again.
            again = response.status_code in (429, 503) or (retry and response.status_code >= 500)
            if again and not last:
                wait = response.headers.get("retry-after", "")
                if wait.isdigit():
                    time.sleep(min(float(wait), 30.0))
                continue
            return self._answer(method, path, response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _answer(self, method: str, path: str, response: httpx.Response) -> Any:
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 200 and data is not None:
            return data
        reason = data.get("error") or data.get("detail") if isinstance(data, dict) else response.text[:300]
        raise RemoteError(f"{method} {path}: {response.status_code}: {reason}", response.status_code, data)
