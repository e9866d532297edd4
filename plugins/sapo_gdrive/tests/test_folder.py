"""The folder transport (`gdrive` / `fs`): contract, layout, hostile files, two machines, a real swarm."""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import attrs
import pytest
from sapo_gdrive_swarm_doubles import files_under, run_threads  # loaded by conftest.py

from sapo_core import codec
from sapo_core.config import load_config
from sapo_core.errors import BackendError, ConfigError
from sapo_core.interfaces import BackendContext, NodeInfo, SwarmState
from sapo_core.logsafe import quoted, unquoted
from sapo_core.node import Node
from sapo_core.plugins import Plugins
from sapo_core.records import Completion, Group, Message, Problem, RoundPayload
from sapo_core.testing import check_transport, config_of
from sapo_gdrive.folder import FolderTransport, build_folder_transport
from sapo_gdrive.layout import parse_name

# ------------------------------------------------------------------------------- helpers


def memory_root() -> str:
    return f"memory://sapo-gdrive-{uuid.uuid4().hex}"


def payload(
    node: str, round: int = 0, *, created_at: float = 1.0, reward: float = 1.0, text: str = "2"
) -> RoundPayload:
    problem = Problem(task="arithmetic", id=f"p-{node}-{round}", messages=[Message("user", "1 + 1?")], answer=2)
    group = Group(
        problem=problem,
        completions=[Completion(text), Completion("3")],
        rewards=[reward, 0.0],
        advantages=[1.0, -1.0],
        node=node,
    )
    return RoundPayload(experiment="exp", round=round, node=node, groups=[group], created_at=created_at)


def gz_json(data: dict) -> bytes:
    return gzip.compress(json.dumps(data).encode())


def reasons_by_name(rejected) -> dict[str, str]:
    """Collected.rejected as file name -> reason (each entry is '"<file name>": <reason>')."""
    return {name: rest.removeprefix(": ") for name, rest in map(unquoted, rejected)}


# ------------------------------------------------------------------------------ contract


def test_contract_on_a_local_folder(tmp_path):
    check_transport(FolderTransport(str(tmp_path), "contract"))


def test_contract_on_fsspec_memory_and_file_urls(tmp_path):
    check_transport(FolderTransport(memory_root(), "contract"))
    check_transport(FolderTransport((tmp_path / "f").as_uri(), "contract"))


def test_contract_with_a_secret(tmp_path):
    check_transport(FolderTransport(str(tmp_path), "contract", secret="s3cret"))


def test_layout_is_exactly_the_documented_one_and_writes_leave_no_temp_files(tmp_path):
    t = FolderTransport(str(tmp_path), "exp")
    t.ensure_settings({"schema_version": 1})
    t.write_state(SwarmState(round=0, deadline=None, updated_at=1.0, coordinator="coord"))
    t.write_state(SwarmState(round=1, deadline=5.0, updated_at=2.0, coordinator="coord"))
    t.heartbeat(NodeInfo(node="alice", role="worker"))
    t.heartbeat(NodeInfo(node="alice", role="worker", round=1))
    t.publish(payload("alice", 0))
    t.publish(payload("alice", 1))
    assert files_under(tmp_path) == [
        "exp/nodes/alice.json",
        "exp/rounds/0/alice.json.gz",
        "exp/rounds/1/alice.json.gz",
        "exp/state.json",
        "exp/swarm.json",
    ]
    assert codec.read_gz((tmp_path / "exp/rounds/1/alice.json.gz").read_bytes()) == payload("alice", 1)
    assert json.loads((tmp_path / "exp/state.json").read_text())["round"] == 1


def test_missing_folders_read_as_empty(tmp_path):
    t = FolderTransport(str(tmp_path / "not-yet"), "exp")
    assert t.read_state() is None
    assert t.live_nodes(60) == []
    assert t.collect(0).payloads == () and t.collect(0).rejected == ()


def test_unsafe_names_never_reach_the_filesystem(tmp_path):
    with pytest.raises(codec.PayloadError):
        FolderTransport(str(tmp_path), "../escape")
    t = FolderTransport(str(tmp_path), "exp")
    with pytest.raises(codec.PayloadError):
        t.heartbeat(NodeInfo(node="../../evil", role="worker"))
    with pytest.raises(codec.PayloadError):
        t.publish(attrs.evolve(payload("alice"), node="../bob"))
    assert files_under(tmp_path) == []


def test_conflict_copy_names_belong_to_their_node():
    for name in (
        "alice.json.gz",
        "alice (1).json.gz",
        "alice(2).json.gz",
        "alice (conflicted copy 2026-11-25).json.gz",
        "alice (Bob's conflicted copy 2026-11-25).json.gz",
        "alice.json (1).gz",
    ):
        parsed = parse_name(name, payload=True)
        assert parsed is not None and parsed.node == "alice", name
        assert parsed.canonical == (name == "alice.json.gz")
    assert parse_name("a.b-c_d.json.gz", payload=True).node == "a.b-c_d"
    assert parse_name("alice.txt", payload=True) is None
    assert parse_name("bob (1).json", payload=False).node == "bob"


# ------------------------------------------------------------------------- hostile files


def test_a_write_killed_halfway_never_breaks_a_reader(tmp_path):
    t = FolderTransport(str(tmp_path), "exp")
    t.publish(payload("alice"))
    folder = tmp_path / "exp/rounds/0"
    (folder / ".alice.json.gz.x.tmp").write_bytes(codec.write_gz(payload("alice"))[:20])
    whole = codec.write_gz(payload("bob"))
    (folder / "bob.json.gz").write_bytes(whole[: len(whole) // 2])
    collected = t.collect(0)
    assert [p.node for p in collected.payloads] == ["alice"]
    assert len(collected.rejected) == 1 and collected.rejected[0].startswith('"bob.json.gz": ')


@pytest.mark.parametrize("secret", ["", "s3cret"])
def test_bad_files_are_refused_with_a_reason_and_valid_ones_still_returned(tmp_path, secret):
    limits = codec.Limits(max_text_chars=1000)
    t = FolderTransport(str(tmp_path), "exp", secret=secret, limits=limits)
    t.publish(payload("alice"))
    t.publish(payload("bob"))
    folder = tmp_path / "exp/rounds/0"

    def signed(p: RoundPayload) -> RoundPayload:
        return codec.sign_payload(p, secret) if secret else p

    good = codec.to_data(signed(payload("carol")))
    bad = {
        "corrupt.json.gz": b"\x1f\x8b not really gzip at all",
        "truncated.json.gz": codec.write_gz(signed(payload("truncated")))[:30],
        "schema.json.gz": gz_json({**good, "node": "schema", "schema_version": 999}),
        "nan.json.gz": gzip.compress(
            json.dumps({**good, "node": "nan"}).replace('"rewards": [1.0', '"rewards": [NaN').encode()
        ),
        "big.json.gz": codec.write_gz(signed(payload("big", text="x" * 2000))),
        "a..b.json.gz": codec.write_gz(signed(payload("alice"))),
        "liar.json.gz": codec.write_gz(signed(payload("dave"))),
        "early.json.gz": codec.write_gz(signed(payload("early", round=1))),
        "notes.txt": b"hello",
    }
    for name, blob in bad.items():
        (folder / name).write_bytes(blob)
    # a conflict copy of a valid payload: counted once for its node
    (folder / "alice (1).json.gz").write_bytes(codec.write_gz(signed(payload("alice", created_at=9.0))))
    (folder / "erin (conflicted copy 2026-11-25).json.gz").write_bytes(codec.write_gz(signed(payload("erin"))))
    if secret:
        bad["unsigned.json.gz"] = codec.write_gz(payload("unsigned"))
        bad["forged.json.gz"] = codec.write_gz(codec.sign_payload(payload("forged"), "not-the-secret"))
        for name in ("unsigned.json.gz", "forged.json.gz"):
            (folder / name).write_bytes(bad[name])

    collected = t.collect(0)
    assert [p.node for p in collected.payloads] == ["alice", "bob", "erin"]
    alice = collected.payloads[0]
    assert alice.created_at == 1.0, "the canonical file wins over a newer conflict copy"
    reasons = reasons_by_name(collected.rejected)
    assert set(reasons) == set(bad), collected.rejected
    assert "not a finite number" in reasons["nan.json.gz"] or "NaN" in reasons["nan.json.gz"]
    assert "schema" in reasons["schema.json.gz"]
    assert "dave" in reasons["liar.json.gz"]
    assert "round 1" in reasons["early.json.gz"]
    assert "node id" in reasons["a..b.json.gz"]


def test_conflict_copies_alone_give_the_newest_payload(tmp_path):
    t = FolderTransport(str(tmp_path), "exp")
    folder = tmp_path / "exp/rounds/0"
    folder.mkdir(parents=True)
    (folder / "alice (1).json.gz").write_bytes(codec.write_gz(payload("alice", created_at=1.0)))
    (folder / "alice.json (1).gz").write_bytes(codec.write_gz(payload("alice", created_at=5.0)))
    collected = t.collect(0)
    assert [(p.node, p.created_at) for p in collected.payloads] == [("alice", 5.0)]
    assert collected.rejected == ()


def test_oversized_file_is_refused_without_reading_it(tmp_path):
    t = FolderTransport(str(tmp_path), "exp", limits=codec.Limits(max_payload_bytes=100))
    folder = tmp_path / "exp/rounds/0"
    folder.mkdir(parents=True)
    (folder / "huge.json.gz").write_bytes(os.urandom(1000))
    (rejected,) = t.collect(0).rejected
    assert rejected.startswith('"huge.json.gz": ') and "exceeds" in rejected


def test_corrupt_state_and_heartbeats_are_skipped(tmp_path, caplog):
    t = FolderTransport(str(tmp_path), "exp")
    t.heartbeat(NodeInfo(node="alice", role="worker"))
    (tmp_path / "exp/state.json").write_text('{"round": ')
    (tmp_path / "exp/nodes/bob.json").write_text("garbage")
    (tmp_path / "exp/nodes/carol.json").write_text(
        json.dumps({"node": "mallory", "role": "worker", "last_seen": time.time()})
    )
    (tmp_path / "exp/nodes/.dave.json.1.tmp").write_text("{")
    assert t.read_state() is None
    (tmp_path / "exp/state.json").write_text(json.dumps({"round": "three"}))
    assert t.read_state() is None
    assert [n.node for n in t.live_nodes(60)] == ["alice"]
    assert "state.json" in caplog.text and "bob.json" in caplog.text


def test_liveness_takes_the_later_of_the_claimed_time_and_the_file_mtime(tmp_path):
    t = FolderTransport(str(tmp_path), "exp")
    nodes = tmp_path / "exp/nodes"
    nodes.mkdir(parents=True)
    now = time.time()
    lagging = {"node": "lagging", "role": "worker", "last_seen": now - 3600}  # clock an hour behind, file fresh
    (nodes / "lagging.json").write_text(json.dumps(lagging))
    stale = {"node": "stale", "role": "worker", "last_seen": now - 3600}
    (nodes / "stale.json").write_text(json.dumps(stale))
    os.utime(nodes / "stale.json", (now - 3600, now - 3600))
    live = t.live_nodes(60)
    assert [n.node for n in live] == ["lagging"]
    assert live[0].last_seen >= now - 5


def test_a_half_synced_heartbeat_does_not_make_its_node_gone(tmp_path, caplog):
    t = FolderTransport(str(tmp_path), "exp")
    t.heartbeat(NodeInfo(node="alice", role="worker"))
    t.heartbeat(NodeInfo(node="bob", role="worker"))
    assert [n.node for n in t.live_nodes(60)] == ["alice", "bob"]
    beat = tmp_path / "exp/nodes/bob.json"
    whole = beat.read_bytes()
    beat.write_bytes(whole[: len(whole) // 2])  # a sync client copying it in place, halfway
    assert [n.node for n in t.live_nodes(60)] == ["alice", "bob"], "unreadable is 'not yet', not 'gone'"
    assert "bob.json" in caplog.text
    beat.unlink()  # a sync client replacing the file: gone from this listing
    assert [n.node for n in t.live_nodes(60)] == ["alice", "bob"]
    time.sleep(0.3)
    t.heartbeat(NodeInfo(node="alice", role="worker"))
    assert [n.node for n in t.live_nodes(0.2)] == ["alice"], "bob's last good heartbeat expired"
    assert [n.node for n in FolderTransport(str(tmp_path), "exp").live_nodes(60)] == ["alice"], (
        "a new reader knows only what it read"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_fifos_in_place_of_control_files_never_block_a_reader(tmp_path, monkeypatch):
    monkeypatch.setattr("sapo_gdrive.folder._SETTINGS_READ_PAUSE", 0.001)
    t = FolderTransport(str(tmp_path), "exp")
    t.heartbeat(NodeInfo(node="alice", role="worker"))
    t.publish(payload("alice"))
    exp = tmp_path / "exp"
    (exp / "lease").mkdir()
    for fifo in ("nodes/evil.json", "state.json", "lease/7.json", "swarm.json"):
        os.mkfifo(exp / fifo)
    pipe = exp / "rounds/0/alice (1).json.gz"
    os.mkfifo(pipe)
    results: dict[str, object] = {}

    def read_everything() -> None:
        results["live"] = [n.node for n in t.live_nodes(60)]
        results["state"] = t.read_state()
        results["lease"] = t.read_lease()
        # The listing said "file"; a FIFO took its place before the read (the swap race).
        results["swapped"] = t.payloads._examine(
            {"name": str(pipe), "type": "file", "size": 0}, pipe.name, 0, None, 0.0
        )
        results["collected"] = t.collect(0)

    reader = threading.Thread(target=read_everything, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "a FIFO blocked the reader"
    assert results["live"] == ["alice"] and results["state"] is None
    assert results["lease"].epoch == 7 and results["lease"].holder == ""
    assert "not a regular file" in results["swapped"].refused
    assert [p.node for p in results["collected"].payloads] == ["alice"]
    with pytest.raises(BackendError, match="swarm.json"):
        t.ensure_settings({"x": 1})


@pytest.mark.parametrize("where", ["local", "memory"])
def test_big_and_bracket_heavy_control_files_are_refused_before_they_are_parsed(tmp_path, where):
    """Every node reads every heartbeat at every poll: a 2 MB heartbeat, or 600 KB of empty arrays
    (which json would build as 200,000 lists), is skipped without being read whole or parsed."""
    root = str(tmp_path) if where == "local" else memory_root()
    t = FolderTransport(root, "exp")
    t.heartbeat(NodeInfo(node="alice", role="worker"))
    big = json.dumps({"node": "bob", "role": "worker", "last_seen": time.time(), "pad": "x" * 2_000_000})
    arrays = json.dumps({"node": "carol", "role": "worker", "last_seen": time.time(), "pad": [[]] * 200_000})
    t.store.fs.pipe_file(t.store.path("nodes", "bob.json"), big.encode())
    t.store.fs.pipe_file(t.store.path("nodes", "carol.json"), arrays.encode())
    with pytest.raises(ValueError, match="bytes"):
        t.store.read_json(t.store.path("nodes", "bob.json"))
    with pytest.raises(ValueError, match="arrays and objects"):
        t.store.read_json(t.store.path("nodes", "carol.json"))
    assert [n.node for n in t.live_nodes(60)] == ["alice"]


def test_a_symlinked_heartbeat_is_not_followed(tmp_path):
    t = FolderTransport(str(tmp_path), "exp")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"node": "mallory", "role": "worker", "last_seen": time.time()}))
    (tmp_path / "exp/nodes").mkdir(parents=True)
    (tmp_path / "exp/nodes/mallory.json").symlink_to(outside)
    assert t.live_nodes(60) == []


def test_in_a_signed_swarm_forged_control_files_are_refused(tmp_path):
    t = FolderTransport(str(tmp_path), "exp", secret="s3cret")
    t.heartbeat(NodeInfo(node="alice", role="worker"))
    t.write_state(SwarmState(round=2, deadline=None, updated_at=1.0, coordinator="coord", closed_with=("alice",)))
    assert t.read_state().round == 2 and [n.node for n in t.live_nodes(60)] == ["alice"]
    exp = tmp_path / "exp"
    now = time.time()
    (exp / "state.json").write_text(json.dumps({"round": 6, "deadline": None, "updated_at": now, "coordinator": "x"}))
    assert t.read_state() is None, "an unsigned state (round 6) would end every worker's run"
    other = FolderTransport(str(tmp_path / "elsewhere"), "exp2", secret="s3cret")
    other.write_state(SwarmState(round=6, deadline=None, updated_at=now, coordinator="x"))
    (exp / "state.json").write_bytes((tmp_path / "elsewhere/exp2/state.json").read_bytes())
    assert t.read_state() is None, "a state signed for another experiment under the same secret"
    (exp / "nodes/mallory.json").write_text(json.dumps({"node": "mallory", "role": "worker", "last_seen": now}))
    assert [n.node for n in t.live_nodes(60)] == ["alice"]
    # A payload signed for another experiment under the same secret.
    foreign = codec.sign_payload(attrs.evolve(payload("bob", 2), experiment="exp2"), "s3cret")
    (exp / "rounds/2").mkdir(parents=True)
    (exp / "rounds/2/bob.json.gz").write_bytes(codec.write_gz(foreign))
    (rejected,) = t.collect(2).rejected
    assert "experiment 'exp2'" in rejected


def test_in_a_signed_swarm_a_forged_lease_of_a_higher_epoch_deposes_no_one(tmp_path):
    from sapo_core.interfaces import Lease

    t = FolderTransport(str(tmp_path), "exp", secret="s3cret")
    now = time.time()
    mine = Lease(epoch=0, holder="coord", token="t", acquired_at=now, renewed_at=now, expires_at=now + 30)
    assert t.claim_lease(mine)
    (tmp_path / "exp/lease/1000.json").write_text(
        json.dumps(
            {
                "epoch": 1000,
                "holder": "mallory",
                "token": "m",
                "acquired_at": now,
                "renewed_at": now,
                "expires_at": now + 1e6,
            }
        )
    )
    assert t.renew_lease(attrs.evolve(mine, renewed_at=now + 1, expires_at=now + 31)), "the holder renews on"
    assert t.read_lease().epoch == 1000 and t.read_lease().holder == "", (
        "read as unreadable: the next claim goes above it"
    )
    unsigned = FolderTransport(str(tmp_path), "exp")
    assert not unsigned.renew_lease(attrs.evolve(mine, renewed_at=now + 2)), "without a secret a higher epoch wins"


def test_a_heartbeat_from_the_future_is_no_evidence_of_life(tmp_path, caplog):
    t = FolderTransport(str(tmp_path), "exp")
    nodes = tmp_path / "exp/nodes"
    nodes.mkdir(parents=True)
    far = time.time() + 10 * 365 * 86400
    (nodes / "eternal.json").write_text(json.dumps({"node": "eternal", "role": "worker", "last_seen": far}))
    os.utime(nodes / "eternal.json", (far, far))
    (nodes / "ahead.json").write_text(json.dumps({"node": "ahead", "role": "worker", "last_seen": far}))
    live = {n.node: n.last_seen for n in t.live_nodes(60)}
    assert set(live) == {"ahead"} and live["ahead"] <= time.time() + 1, "its file's fresh mtime counts, its claim not"
    assert "eternal.json" in caplog.text and "future" in caplog.text


# ------------------------------------------------------------------------- two machines


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_two_machines_on_one_root_see_each_other(tmp_path, kind):
    root = str(tmp_path) if kind == "local" else memory_root()
    a, b = FolderTransport(root, "exp", secret="k"), FolderTransport(root, "exp", secret="k")
    assert a.ensure_settings({"x": 1}) == {"x": 1}
    assert b.ensure_settings({"x": 2}) == {"x": 1}
    a.heartbeat(NodeInfo(node="alice", role="worker"))
    b.heartbeat(NodeInfo(node="bob", role="coordinator"))
    assert [n.node for n in a.live_nodes(60)] == [n.node for n in b.live_nodes(60)] == ["alice", "bob"]
    b.write_state(SwarmState(round=2, deadline=None, updated_at=3.0, coordinator="bob"))
    assert a.read_state() == SwarmState(round=2, deadline=None, updated_at=3.0, coordinator="bob")
    a.publish(payload("alice", 2))
    b.publish(payload("bob", 2))
    assert [p.node for p in a.collect(2).payloads] == [p.node for p in b.collect(2).payloads] == ["alice", "bob"]
    assert FolderTransport(root, "other-exp").collect(2).payloads == (), "experiments do not mix"


def test_ensure_settings_first_writer_wins_under_a_race(tmp_path):
    results: dict[int, dict] = {}
    barrier = threading.Barrier(8)

    def start(i: int) -> None:
        transport = FolderTransport(str(tmp_path), "exp")
        barrier.wait()
        results[i] = dict(transport.ensure_settings({"writer": i}))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 8
    assert len({json.dumps(r) for r in results.values()}) == 1, results
    assert json.loads((tmp_path / "exp/swarm.json").read_text()) == results[0]
    assert files_under(tmp_path) == ["exp/swarm.json"], "no temp files left"


# ------------------------------------------------------------------------------ factory


def test_factory_reads_root_and_secret_and_explains_a_missing_root(tmp_path):
    context = BackendContext(experiment="exp", config=config_of({"swarm": {"root": str(tmp_path), "secret": "k"}}))
    transport = build_folder_transport(None, context)
    transport.publish(payload("alice"))
    assert codec.read_gz((tmp_path / "exp/rounds/0/alice.json.gz").read_bytes()).signature is not None
    with pytest.raises(ConfigError, match="--root.*GDRIVE_PATH"):
        build_folder_transport(None, BackendContext(experiment="exp", config=config_of({"swarm": {"root": ""}})))


def test_registered_as_gdrive_and_fs(monkeypatch):
    monkeypatch.setenv("SAPO_DISABLE_PLUGINS", "sapo-local")
    plugins = Plugins()
    plugins.load()
    for name in ("gdrive", "fs"):
        registration = plugins.registry.get("transport", name)
        assert registration.factory is build_folder_transport and registration.description


# ------------------------------------------------------------------- a swarm end to end


@pytest.mark.parametrize("transport", ["gdrive", "fs"])
def test_a_swarm_over_a_folder_trains_each_worker_on_its_peer(tmp_path, swarm_plugins, transport):
    plugins, backends = swarm_plugins
    root = tmp_path / "drive"

    def cfg(node, role):
        return load_config(
            env={},
            sets=[
                "inference.backend=oracle",
                "train.backend=recorder",
                "inference.num_completions=4",
                "tasks.problems_per_round=6",
                f"run.workdir={(tmp_path / 'work').as_posix()}",
                f"swarm.transport={transport}",
                f"swarm.root={root.as_posix()}",
                "swarm.secret=s3cret",
                f"run.node_id={node}",
                f"run.role={role}",
                "swarm.poll_seconds=0.01",
                "swarm.round_seconds=20",
                "swarm.local_groups=3",
                "swarm.external_groups=3",
                "run.rounds=2",
            ],
        )

    nodes = [Node.from_config(cfg("coord", "coordinator"), plugins)]
    nodes += [Node.from_config(cfg(name, "worker"), plugins) for name in ("alice", "bob")]
    run_threads(nodes)
    for me, peer in (("alice", "bob"), ("bob", "alice")):
        trained = backends.learners[me].trained
        assert [entry["round"] for entry in trained] == [0, 1]
        assert {node for entry in trained for node, _ in entry["groups"]} == {me, peer}
    state = FolderTransport(root.as_posix(), "default").read_state()
    assert state is not None and state.round == 2
    # logs/ and metrics/ (the observers' shared files) are checked in test_status.py
    assert sorted(f for f in files_under(root / "default") if not f.startswith(("logs/", "metrics/"))) == [
        "lease/0.json",
        "nodes/alice.json",
        "nodes/bob.json",
        "nodes/coord.json",
        "rounds/0/alice.json.gz",
        "rounds/0/bob.json.gz",
        "rounds/1/alice.json.gz",
        "rounds/1/bob.json.gz",
        "state.json",
        "swarm.json",
    ]


def test_file_names_with_a_newline_and_a_terminal_escape_log_as_one_quoted_line(tmp_path, swarm_plugins, caplog):
    """Peers choose file names: one that would forge a log line and drive the terminal is logged
    quoted, on one line, by the worker that meets it (its stderr and the swarm folder's shared log)."""
    plugins, _ = swarm_plugins
    root = tmp_path / "drive"
    evil_payload = "evil\n\x1b[31mINFO sapo: all good.json.gz"
    evil_beat = "mallory\n\x1b[2J.json"
    (root / "default/rounds/0").mkdir(parents=True)
    (root / "default/rounds/0" / evil_payload).write_bytes(codec.write_gz(payload("bob")))
    (root / "default/nodes").mkdir()
    (root / "default/nodes" / evil_beat).write_text("not json")
    cfg = load_config(
        env={},
        sets=[
            "inference.backend=oracle",
            "train.backend=recorder",
            "inference.num_completions=2",
            "tasks.problems_per_round=2",
            f"run.workdir={(tmp_path / 'work').as_posix()}",
            "swarm.transport=gdrive",
            f"swarm.root={root.as_posix()}",
            "run.node_id=alice",
            "swarm.poll_seconds=0.05",
            "swarm.round_seconds=0.3",
            "swarm.local_groups=2",
            "swarm.external_groups=2",
            "run.rounds=1",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="sapo"):
        metrics = Node.from_config(cfg, plugins).run()
    assert metrics["payloads/rejected"] == 1
    for name, words in ((evil_payload, "alice: refused a payload for round 0: "), (evil_beat, "unreadable heartbeat ")):
        (message,) = {r.getMessage() for r in caplog.records if words in r.getMessage()}
        assert quoted(name) in message and "\n" not in message and "\x1b" not in message, message
        assert quoted(name) == json.dumps(name)  # JSON: json.loads gives the name back
    shared = (root / "default/logs/alice.log").read_text()
    assert "\x1b" not in shared and quoted(evil_payload) in shared
    assert not any(line.startswith("INFO sapo: all good") for line in shared.splitlines()), "no forged line"


# ----------------------------------------------------------------- reading once per version


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """New bytes, same inode, size and mtime: a listing cannot tell this file changed."""
    stat = path.stat()
    assert len(data) == stat.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_collect_reads_a_file_again_only_when_the_listing_shows_it_changed(tmp_path):
    t = FolderTransport(str(tmp_path), "exp", secret="k")
    t.publish(payload("alice"))
    t.publish(payload("bob"))
    assert [p.node for p in t.collect(0).payloads] == ["alice", "bob"]
    bob = tmp_path / "exp/rounds/0/bob.json.gz"
    _rewrite_in_place(bob, b"\0" * bob.stat().st_size)
    assert [p.node for p in t.collect(0).payloads] == ["alice", "bob"], "an unchanged listing is not read again"
    fresh = FolderTransport(str(tmp_path), "exp", secret="k")
    assert [p.node for p in fresh.collect(0).payloads] == ["alice"], "a new reader sees the damage"
    t.publish(payload("bob", reward=0.5))  # a new version: atomic rename, new inode and mtime
    (bob_now,) = [p for p in t.collect(0).payloads if p.node == "bob"]
    assert bob_now.groups[0].rewards[0] == 0.5
    (tmp_path / "exp/rounds/0/alice.json.gz").unlink()
    assert [p.node for p in t.collect(0).payloads] == ["bob"], "a removed file is gone at once"


def test_a_refused_file_is_checked_again_when_it_changes_or_after_a_while(tmp_path, monkeypatch):
    t = FolderTransport(str(tmp_path), "exp")
    folder = tmp_path / "exp/rounds/0"
    folder.mkdir(parents=True)
    whole = codec.write_gz(payload("carol"))
    carol = folder / "carol.json.gz"
    carol.write_bytes(whole[: len(whole) // 2])  # a sync client still downloading
    assert t.collect(0).payloads == () and len(t.collect(0).rejected) == 1
    carol.write_bytes(whole)  # grows: the listing shows the change
    assert [p.node for p in t.collect(0).payloads] == ["carol"]
    dave = folder / "dave.json.gz"
    good = codec.write_gz(payload("dave"))
    dave.write_bytes(b"\0" * len(good))  # preallocated, bytes not there yet
    assert [p.node for p in t.collect(0).payloads] == ["carol"]
    _rewrite_in_place(dave, good)  # complete, and the listing looks the same
    assert [p.node for p in t.collect(0).payloads] == ["carol"]
    monkeypatch.setattr("sapo_gdrive.payloads.REFUSED_RECHECK_SECONDS", 0.0)
    assert [p.node for p in t.collect(0).payloads] == ["carol", "dave"]


def test_an_unchanged_refused_file_is_read_again_less_and_less_often(tmp_path, monkeypatch):
    t = FolderTransport(str(tmp_path), "exp")
    t.publish(payload("alice"))
    bad = tmp_path / "exp/rounds/0/mallory.json.gz"
    bad.write_bytes(gzip.compress(b"[" * 10))
    reads = []
    examine = t.payloads._examine
    monkeypatch.setattr(
        t.payloads, "_examine", lambda entry, name, *rest: (reads.append(name), examine(entry, name, *rest))[1]
    )
    clock = [1000.0]
    monkeypatch.setattr("sapo_gdrive.payloads.time.monotonic", lambda: clock[0])
    for _ in range(400):  # 400 s of polls a second apart
        assert [p.node for p in t.collect(0).payloads] == ["alice"]
        clock[0] += 1.0
    count = reads.count("mallory.json.gz")
    # read at 0, 10, 30, 70, 150, 230, 310, 390 s: 8 reads, not the 40 of a fixed 10 s recheck
    assert count == 8, count
    assert reads.count("alice.json.gz") == 1, "a valid payload is read once"


def test_collect_keeps_only_the_round_read_last(tmp_path):
    t = FolderTransport(str(tmp_path), "exp")
    for round in range(3):
        t.publish(payload("alice", round))
        assert [p.round for p in t.collect(round).payloads] == [round]
    assert list(t.payloads._examined) == [2], "payloads of past rounds are not held in memory"
    assert [p.round for p in t.collect(0).payloads] == [0], "an older round is read again"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_fifos_links_and_dot_names_that_look_like_payloads_are_refused(tmp_path):
    t = FolderTransport(str(tmp_path), "exp")
    t.publish(payload("alice"))
    folder = tmp_path / "exp/rounds/0"
    os.mkfifo(folder / "pipe.json.gz")  # reading it would block forever
    (folder / "link.json.gz").symlink_to("/dev/zero")  # reading it would never end
    (folder / "..evil.json.gz").write_bytes(codec.write_gz(payload("evil")))
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._alice.json.gz").write_bytes(b"\0\5\26\7")  # macOS AppleDouble clutter
    collected = t.collect(0)
    assert [p.node for p in collected.payloads] == ["alice"]
    reasons = reasons_by_name(collected.rejected)
    assert set(reasons) == {"pipe.json.gz", "link.json.gz", "..evil.json.gz"}
    assert "not a regular file" in reasons["pipe.json.gz"] and "not a regular file" in reasons["link.json.gz"]
    assert "node id" in reasons["..evil.json.gz"]
