"""Shared logs and metrics (observers), `sapo swarm status` and `sapo report --experiment`, on a real swarm."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sapo_gdrive_swarm_doubles import files_under, run_threads  # loaded by conftest.py

from sapo_core.cli import build_cli
from sapo_core.config import load_config
from sapo_core.interfaces import BackendContext
from sapo_core.node import Node
from sapo_core.testing import config_of
from sapo_gdrive import observers
from sapo_gdrive.folder import FolderTransport

SECRET = "s3cret-never-logged"
ROUNDS = 3


@pytest.fixture
def plugins(swarm_plugins):
    return swarm_plugins[0]


@pytest.fixture
def info_logs():
    logger = logging.getLogger("sapo")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


def run_swarm(tmp_path, plugins, *, transport="gdrive"):
    root = tmp_path / "drive"

    def cfg(node, role):
        return load_config(
            env={},
            sets=[
                "inference.backend=oracle",
                "train.backend=recorder",
                "inference.num_completions=4",
                "tasks.problems_per_round=4",
                f"run.workdir={(tmp_path / 'work').as_posix()}",
                f"swarm.transport={transport}",
                f"swarm.root={root.as_posix()}",
                f"swarm.secret={SECRET}",
                f"run.node_id={node}",
                f"run.role={role}",
                "swarm.poll_seconds=0.01",
                "swarm.round_seconds=20",
                "swarm.local_groups=2",
                "swarm.external_groups=2",
                f"run.rounds={ROUNDS}",
            ],
        )

    nodes = [Node.from_config(cfg("coord", "coordinator"), plugins)]
    nodes += [Node.from_config(cfg(name, "worker"), plugins) for name in ("alice", "bob")]
    run_threads(nodes)
    return root


def invoke(*args, env=None):
    return CliRunner().invoke(build_cli(), list(args), env=env, catch_exceptions=False)


def test_a_swarm_writes_logs_and_metrics_and_status_and_report_read_them(tmp_path, plugins, info_logs):
    root = run_swarm(tmp_path, plugins)
    folder = root / "default"
    assert not observers._nodes, "every handler is detached at the end of its run"
    assert not [h for h in logging.getLogger("sapo").handlers if isinstance(h, observers.FolderLogHandler)]

    # ---- shared logs and metrics
    for node in ("alice", "bob"):
        lines = [json.loads(line) for line in (folder / "metrics" / f"{node}.jsonl").read_text().splitlines()]
        assert [line["round"] for line in lines] == list(range(ROUNDS))
        assert all(line["node"] == node and "reward/mean" in line for line in lines)
        log_text = (folder / "logs" / f"{node}.log").read_text()
        assert f"{node} round" in log_text or node in log_text
        other = "bob" if node == "alice" else "alice"
        assert f"{other} round" not in log_text, "a node's log holds its own thread's records only"
    coord = (folder / "metrics" / "coord.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in coord] == list(range(ROUNDS))
    for path in (folder / "logs").iterdir():
        assert SECRET not in path.read_text()
    assert not [f for f in files_under(folder) if Path(f).name.startswith(".")], "no temp files left"

    # ---- sapo swarm status
    result = invoke(
        "swarm", "status", "--root", root.as_posix(), "--experiment", "default", "--json", "--live-seconds", "3600"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["state"]["round"] == ROUNDS and data["state"]["coordinator"] == "coord"
    assert data["state"]["deadline"] is None, "a finished run has no open round"
    # The coordinator let its lease go when the run ended: a stand-by would not wait for it.
    assert data["lease"]["epoch"] == 0 and data["lease"]["holder"] == "coord" and data["lease"]["expires_in"] <= 0
    assert data["settings"]["schema_version"] >= 1
    assert data["live"] == ["alice", "bob", "coord"]
    nodes = {n["node"]: n for n in data["nodes"]}
    assert nodes["coord"]["role"] == "coordinator" and nodes["coord"]["last_payload"] is None
    for node in ("alice", "bob"):
        assert nodes[node]["role"] == "worker" and nodes[node]["live"]
        # without the secret the signatures are not checked, the payloads still parse
        assert nodes[node]["last_payload"]["round"] == ROUNDS - 1 and nodes[node]["last_payload"]["valid"]
        assert nodes[node]["last_payload"]["size"] > 0
    # the rich table, and the secret checks the signatures
    table = invoke("swarm", "status", "--root", root.as_posix(), env={"SAPO_SWARM_SECRET": SECRET})
    assert table.exit_code == 0, table.output
    assert "round 3" in table.output and "alice" in table.output and "valid" in table.output
    assert "coordinator lease: epoch 0, held by coord, expired" in table.output
    wrong = json.loads(
        invoke("swarm", "status", "--root", root.as_posix(), "--json", env={"SAPO_SWARM_SECRET": "other"}).stdout
    )  # stderr: the refused control files
    assert "signature" in next(n for n in wrong["nodes"] if n["node"] == "alice")["last_payload"]["reason"]
    stale = json.loads(
        invoke("swarm", "status", "--root", root.as_posix(), "--json", "--live-seconds", "0.000001").output
    )
    assert stale["live"] == []

    # ---- a corrupt payload, newer than the good ones, shows why it was refused
    (folder / "rounds" / str(ROUNDS)).mkdir()
    (folder / "rounds" / str(ROUNDS) / "bob.json.gz").write_bytes(b"not gzip at all")
    (folder / "rounds" / str(ROUNDS) / "junk.txt").write_text("x")
    data = json.loads(invoke("swarm", "status", "--root", root.as_posix(), "--json").output)
    bob = next(n for n in data["nodes"] if n["node"] == "bob")["last_payload"]
    assert bob["round"] == ROUNDS and not bob["valid"] and bob["reason"] and bob["size"] == 15
    alice = next(n for n in data["nodes"] if n["node"] == "alice")["last_payload"]
    assert alice["round"] == ROUNDS - 1 and alice["valid"]
    assert any("junk.txt" in stray for stray in data["rejected_other"])

    # ---- a missing experiment lists those found
    missing = invoke("swarm", "status", "--root", root.as_posix(), "--experiment", "nope")
    assert missing.exit_code == 1 and "no experiment 'nope'" in missing.output and "default" in missing.output
    by_env = invoke("swarm", "status", "--json", env={"GDRIVE_PATH": root.as_posix(), "EXPERIMENT_NAME": "default"})
    assert by_env.exit_code == 0 and json.loads(by_env.output)["experiment"] == "default"

    # ---- sapo report ROOT --experiment NAME
    png = tmp_path / "x.png"
    result = invoke("report", root.as_posix(), "--experiment", "default", "-o", str(png), "--json")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads(result.output)["runs"]
    assert set(runs) == {"alice", "bob", "swarm mean"}, "the coordinator has no rewards: no curve"
    for node in ("alice", "bob"):
        assert [row["round"] for row in runs[node]] == list(range(ROUNDS))
    for r in range(ROUNDS):
        expected = (runs["alice"][r]["reward"] + runs["bob"][r]["reward"]) / 2
        assert runs["swarm mean"][r]["reward"] == pytest.approx(expected)
    if os.environ.get("SAPO_KEEP_REPORT"):
        Path(os.environ["SAPO_KEEP_REPORT"]).write_bytes(png.read_bytes())


def test_the_fs_alias_writes_the_shared_files_too_and_other_transports_do_not(tmp_path, plugins):
    root = run_swarm(tmp_path, plugins, transport="fs")
    assert files_under(root / "default" / "metrics") == ["alice.jsonl", "bob.jsonl", "coord.jsonl"]
    context = BackendContext(
        node="n1", config=config_of({"swarm": {"transport": "none", "root": (tmp_path / "x").as_posix()}})
    )
    observers.run_started(context)
    observers.round_finished(context, 0, {"reward/mean": 1.0})
    observers.run_finished(context, {})
    assert not (tmp_path / "x").exists()


def context_for(root: str, node: str = "n1") -> BackendContext:
    return BackendContext(
        node=node, config=config_of({"swarm": {"transport": "gdrive", "root": root, "secret": SECRET}})
    )


def test_non_local_storage_rewrites_the_whole_file_and_buffers_info(info_logs):
    root = f"memory://sapo-observers-{threading.get_ident()}-{os.getpid()}"
    context = context_for(root)
    observers.run_started(context)
    try:
        logging.getLogger("sapo.test").info("hello %s", "world")
        logging.getLogger("sapo.test").warning("the secret is %s", SECRET)  # urgent: flushes both
        logging.getLogger("sapo.test").info("buffered until the end")
        observers.round_finished(context, 0, {"reward/mean": 0.5})
        observers.round_finished(context, 1, {"reward/mean": 0.75, "odd": {1, 2}})  # not JSON: str()
    finally:
        observers.run_finished(context, {})
    transport = FolderTransport(root, "default")
    text = transport.store.fs.cat_file(transport.store.path("logs", "n1.log")).decode()
    assert "hello world" in text and "buffered until the end" in text and SECRET not in text and "<redacted>" in text
    lines = transport.store.fs.cat_file(transport.store.path("metrics", "n1.jsonl")).decode().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]


def test_a_failing_write_is_a_warning_and_the_node_goes_on(tmp_path, info_logs, caplog):
    blocker = tmp_path / "root"
    blocker.write_text("a file where the folder should be")  # every makedirs / open under it fails
    context = context_for(blocker.as_posix())
    observers.run_started(context)
    try:
        with caplog.at_level(logging.INFO, logger="sapo"):
            logging.getLogger("sapo.test").info("lost, but no crash")
            observers.round_finished(context, 0, {"reward/mean": 0.5})
    finally:
        observers.run_finished(context, {})
    warnings = [r.getMessage() for r in caplog.records if r.name == "sapo.gdrive.observers"]
    assert warnings and all("cannot write" in w for w in warnings)
    assert len(warnings) == 2, "one warning per file while it keeps failing, not one per line"


def test_report_with_experiment_explains_urls_and_missing_experiments(tmp_path, plugins):
    (tmp_path / "exp1" / "metrics").mkdir(parents=True)
    result = invoke("report", "s3://bucket/swarms", "--experiment", "exp1", "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 1 and "not a URL" in result.output
    result = invoke("report", str(tmp_path), "--experiment", "exp2", "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 1 and "exp1" in result.output
    result = invoke("report", str(tmp_path), "--experiment", "exp1", "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 1 and "no node's metrics" in result.output
