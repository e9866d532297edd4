"""trackio: the rows of its local SQLite database (``<TRACKIO_DIR>/<project>.db``), read with sqlite3."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytest.importorskip("trackio")

from sapo_trackers_tracked import API_KEY, SECRET  # noqa: E402


def test_local_store_one_run_per_node_in_the_experiments_project(tmp_path, drive_in_process):
    store = tmp_path / "trackio"
    stderr = drive_in_process(tmp_path, ["worker-1", "worker-2"], ["trackio"], env={"TRACKIO_DIR": str(store)})
    assert "Trackio project initialized" in stderr  # trackio's chatter is kept off stdout

    with sqlite3.connect(store / "exp.db") as db:  # project = experiment
        rows = db.execute("SELECT run_name, step, metrics FROM metrics ORDER BY id").fetchall()
        configs = {name: bytes(text).decode() for name, text in db.execute("SELECT run_name, config FROM configs")}
    for node in ("worker-1", "worker-2"):
        logged = [(step, json.loads(metrics)) for name, step, metrics in rows if name == node]
        assert [step for step, _ in logged] == [0, 1, 2]
        assert [m.get("eval/pass@1") for _, m in logged] == [0.25, None, 0.5]
        assert [m.get("reward/mean") for _, m in logged] == [None, 0.5, 0.75]
        assert not {"round", "node", "time"} & {key for _, m in logged for key in m}
        config = json.loads(configs[node])
        assert config["_Group"] == "exp" and config["run"]["node_id"] == node
        assert config["swarm"]["secret"] == "***" and config["inference"]["api_key"] == "***"
        assert SECRET not in configs[node] and API_KEY not in configs[node]
