"""W&B: the offline run folder, its ``.wandb`` transaction log decoded with W&B's own protobuf records.

wandb 0.19+ no longer ships a Python reader of that log (wandb-core writes it), so the few lines
below read its framing, LevelDB's log format that W&B documents for it (a ``:W&B`` header, 32 KiB
blocks, records with a CRC-32, a length and a type), and each record is parsed by
``wandb.proto.wandb_internal_pb2.Record``, the message W&B itself syncs from.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("wandb")
from sapo_trackers_tracked import API_KEY, SECRET  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def chunks(data: bytes):
    """The records' bytes of a LevelDB-format log, each checked against its CRC-32."""
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (crc, length, kind) == (0, 0, 0):
            pos += BLOCK - pos % BLOCK
            continue
        body = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) == crc
        pos += 7 + length
        pending = body if kind in (FULL, FIRST) else pending + body
        if kind in (FULL, LAST):
            yield pending


def records(path: Path) -> list:
    out = []
    for raw in chunks(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def name(item) -> str:
    """A history item's key: wandb-core writes it as ``nested_key`` (one part: sapo's whole name)."""
    return item.key or "/".join(item.nested_key)


def offline_run(run_dir: Path) -> list:
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return records(log)


def test_offline_run_per_node_grouped_by_experiment(tmp_path, drive_in_process):
    drive_in_process(
        tmp_path,
        ["worker-1", "worker-2"],
        ["wandb"],
        env={"WANDB_MODE": None, "WANDB_PROJECT": None, "WANDB_DIR": None},
    )
    for node in ("worker-1", "worker-2"):
        found = offline_run(tmp_path / "exp" / node)  # dir = the node's run directory
        (run,) = [r.run for r in found if r.WhichOneof("record_type") == "run"]
        assert (run.project, run.run_group, run.display_name, run.job_type) == ("sapo", "exp", node, "worker")
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert config["run"]["node_id"] == node and config["run"]["report_to"] == ["wandb"]
        assert config["swarm"]["secret"] == "***" and config["inference"]["api_key"] == "***"
        assert SECRET not in str(found) and API_KEY not in str(found)

        history = [
            {name(item): json.loads(item.value_json) for item in r.history.item}
            for r in found
            if r.WhichOneof("record_type") == "history"
        ]
        assert [row["_step"] for row in history] == [0, 1, 2]
        assert [row.get("eval/pass@1") for row in history] == [0.25, None, 0.5]
        assert [row.get("reward/mean") for row in history] == [None, 0.5, 0.75]
        assert history[2]["eval/pass@1/arithmetic"] == 0.5
        assert not {"round", "node", "time"} & {key for row in history for key in row}
        assert any(r.WhichOneof("record_type") == "exit" for r in found), "the run was finished"
