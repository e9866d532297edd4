"""Bad files injected into a running swarm (issue 4): refused with warnings, no node crashes, nothing valid lost.

Three workers and a coordinator run as threads over one signed swarm folder. Before any worker
generates a round, an adversary thread drops into that round's folder each kind of bad file a
shared folder can hold: corrupt gzip, a truncated payload, a wrong schema version, NaN rewards,
oversized text, an oversized file, a node id with ``../`` (inside the payload and as a hidden
file name), conflict copies of a real peer's file (replayed from the previous round, tampered,
or unsigned), an unsigned payload, a FIFO and a file name that is not UTF-8. The workers'
inference waits for the adversary, so every round's files are in place before anyone collects.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import attrs
from sapo_gdrive_swarm_doubles import Oracle, run_threads  # loaded by conftest.py

from sapo_core import codec, hookimpl, rundir
from sapo_core.config import load_config
from sapo_core.logsafe import quoted
from sapo_core.node import Node
from sapo_core.records import Completion, Group, Message, Problem, RoundPayload
from sapo_gdrive.folder import FolderTransport

SECRET = "s3cret"
ROUNDS = 3
WORKERS = ("alice", "bob", "carol")
PROBLEMS = 4


def forged(node: str, round: int, *, text: str = "<answer>2</answer>") -> RoundPayload:
    """A well-formed payload of ``node`` that no worker of the swarm wrote."""
    problem = Problem(
        task="arithmetic", id=f"arithmetic-forged-{round}-1", messages=[Message("user", "1 + 1?")], answer=2
    )
    group = Group(
        problem=problem,
        completions=[Completion(text), Completion("3")],
        rewards=[1.0, 0.0],
        advantages=[1.0, -1.0],
        node=node,
    )
    return RoundPayload(experiment="default", round=round, node=node, groups=[group], created_at=time.time())


def gz(data: dict) -> bytes:
    return gzip.compress(json.dumps(data).encode())


class Adversary:
    """Injects every kind of bad file into each round's folder as soon as the coordinator opens it."""

    def __init__(self, root: Path) -> None:
        self.transport = FolderTransport(root.as_posix(), "default")
        self.folder = root / "default" / "rounds"
        self.injected: dict[int, list[str]] = {}
        self.ready = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def bad_files(self, round: int) -> dict[str, bytes]:
        signed = codec.to_data(codec.sign_payload(forged("mallory", round), SECRET))
        files = {
            "mallory-corrupt.json.gz": b"\x1f\x8b\x08\x00 this is not deflate data",
            "mallory-truncated.json.gz": codec.write_gz(codec.sign_payload(forged("mallory-truncated", round), SECRET))[
                :40
            ],
            "mallory-schema.json.gz": gz({**signed, "node": "mallory-schema", "schema_version": 99}),
            "mallory-nan.json.gz": gzip.compress(
                json.dumps({**signed, "node": "mallory-nan"}).replace('"rewards": [1.0', '"rewards": [NaN').encode()
            ),
            "mallory-big.json.gz": codec.write_gz(
                codec.sign_payload(forged("mallory-big", round, text="x" * 200_001), SECRET),
                codec.Limits(max_text_chars=10**6),
            ),
            "mallory-escape.json.gz": gz({**signed, "node": "../alice"}),
            "..alice.json.gz": codec.write_gz(codec.sign_payload(forged("mallory", round), SECRET)),
            "mallory-unsigned.json.gz": codec.write_gz(forged("mallory-unsigned", round)),
            "carol (2).json.gz": codec.write_gz(forged("carol", round)),  # impersonation, unsigned
            "bob (1).json.gz": codec.write_gz(codec.sign_payload(forged("bob", round), "not-the-secret")),
        }
        previous = self.folder / str(round - 1) / "bob.json.gz"
        if previous.exists():  # a sync client's stale copy of bob's last payload, and a tampered one
            replayed = codec.read_gz(previous.read_bytes())
            files["bob (conflicted copy 2026-11-25).json.gz"] = previous.read_bytes()
            files["bob.json (1).gz"] = codec.write_gz(attrs.evolve(replayed, round=round))
        return files

    def inject(self, round: int) -> None:
        folder = self.folder / str(round)
        folder.mkdir(parents=True, exist_ok=True)
        files = self.bad_files(round)
        for name, blob in files.items():
            (folder / name).write_bytes(blob)
        with open(folder / "mallory-huge.json.gz", "wb") as f:  # sparse: over 64 MiB, costs no disk
            f.truncate(codec.DEFAULT_LIMITS.max_payload_bytes + 1)
        names = [*files, "mallory-huge.json.gz"]
        if hasattr(os, "mkfifo"):
            os.mkfifo(folder / "mallory-pipe.json.gz")  # a reader that opens it waits forever
            names.append("mallory-pipe.json.gz")
        if sys.platform.startswith("linux"):  # other systems refuse non-UTF-8 names outright
            os.close(os.open(os.fsencode(folder) + b"/mallory-\xff.json.gz", os.O_WRONLY | os.O_CREAT, 0o644))
            names.append(os.fsdecode(b"mallory-\xff.json.gz"))
        with self.ready:
            self.injected[round] = names
            self.ready.notify_all()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                state = self.transport.read_state()
                if state is not None and state.round < ROUNDS and state.round not in self.injected:
                    self.inject(state.round)
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test and by the waiting workers
            self.error = exc
            with self.ready:
                self.ready.notify_all()

    def wait_for(self, round: int) -> None:
        with self.ready:
            if not self.ready.wait_for(lambda: round in self.injected or self.error is not None, timeout=30):
                raise TimeoutError(f"the adversary injected nothing into round {round}")


class WaitingOracle(Oracle):
    """The test oracle, which first waits until the adversary has filled the current round's folder."""

    def __init__(self, adversary: Adversary) -> None:
        super().__init__()
        self.adversary = adversary

    def generate(self, problems, n, params):
        state = self.adversary.transport.read_state()
        if state.round < ROUNDS:  # after the last round: the final evaluation
            self.adversary.wait_for(state.round)
        return super().generate(problems, n, params)


class Hostile:
    def __init__(self, adversary: Adversary) -> None:
        self.adversary = adversary

    @hookimpl
    def register_inference(self, register):
        register("waiting-oracle", lambda settings, context: WaitingOracle(self.adversary))


def test_bad_files_injected_into_a_running_swarm_are_refused_and_nothing_valid_is_lost(
    tmp_path, swarm_plugins, caplog, monkeypatch
):
    plugins, backends = swarm_plugins
    monkeypatch.setattr(logging.getLogger("sapo"), "propagate", True)  # the CLI's set-up turns it off
    root = tmp_path / "drive"
    adversary = Adversary(root)
    plugins.register(Hostile(adversary), name="hostile")

    def cfg(node, role):
        return load_config(
            env={},
            sets=[
                "inference.backend=waiting-oracle",
                "train.backend=recorder",
                "inference.num_completions=4",
                f"tasks.problems_per_round={PROBLEMS}",
                "tasks.resample=0",  # each worker publishes exactly PROBLEMS groups: the counts below are exact
                f"run.workdir={(tmp_path / 'work').as_posix()}",
                "swarm.transport=gdrive",
                f"swarm.root={root.as_posix()}",
                f"swarm.secret={SECRET}",
                f"run.node_id={node}",
                f"run.role={role}",
                "swarm.poll_seconds=0.01",
                "swarm.round_seconds=30",
                f"swarm.local_groups={PROBLEMS}",
                f"swarm.external_groups={PROBLEMS * len(WORKERS)}",
                f"run.rounds={ROUNDS}",
            ],
        )

    nodes = [Node.from_config(cfg("coord", "coordinator"), plugins)]
    nodes += [Node.from_config(cfg(name, "worker"), plugins) for name in WORKERS]
    thread = threading.Thread(target=adversary.run, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="sapo"):
            run_threads(nodes)  # every node finishes its rounds: no crash, no hang
    finally:
        adversary.stop.set()
        thread.join(timeout=10)
    assert adversary.error is None, adversary.error
    assert sorted(adversary.injected) == list(range(ROUNDS))
    assert len(adversary.injected[1]) >= 14, "round 1 also holds bob's replayed and tampered copies"

    valid = {
        (round, node): codec.read_gz((root / "default/rounds" / str(round) / f"{node}.json.gz").read_bytes())
        for round in range(ROUNDS)
        for node in WORKERS
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for me, node in zip(WORKERS, nodes[1:]):
        trained = backends.learners[me].trained
        assert [entry["round"] for entry in trained] == list(range(ROUNDS))
        lines = [json.loads(line) for line in (node.context.workdir / rundir.METRICS_FILE).read_text().splitlines()]
        metrics = {m["round"]: m for m in lines if m.get("round", -1) >= 0}
        for round, entry in enumerate(trained):
            injected = adversary.injected[round]
            # every bad file counted, and named in a warning of this node
            assert metrics[round]["payloads/rejected"] == len(injected), (me, round, injected)
            for name in injected:
                line = f"{me}: refused a payload for round {round}: {quoted(name)}: "
                assert any(m.startswith(line) for m in warnings), (me, name)
            # every valid peer payload arrived, and each of its groups with a learning signal was trained on
            peers = [peer for peer in WORKERS if peer != me]
            assert metrics[round]["payloads/peers"] == len(peers)
            assert metrics[round]["groups/external_available"] == PROBLEMS * len(peers)
            expected = {
                (peer, g.problem.id) for peer in peers for g in valid[(round, peer)].groups if not g.zero_variance
            }
            external = {(node_, pid) for node_, pid in entry["groups"] if node_ != me}
            assert external == expected, (me, round)
    reasons = " | ".join(warnings)
    for words in (
        "gzip",
        "truncated",
        "schema_version",
        "NaN",
        "max_text_chars",
        "exceeds",
        "'../alice'",
        "not signed",
        "signature does not match",
        "not a regular file",
        "payload is for round 0, not 1",
    ):
        assert words in reasons, words
