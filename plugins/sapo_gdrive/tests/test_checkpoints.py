"""The shared-folder checkpoint backend (`gdrive` / `fs`): save/list/restore/keep, crashes,
hostile folders, and a node resuming on another machine from the shared folder."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import fsspec
import pytest

from sapo_core import codec
from sapo_core.checkpoints import OPTIMIZER_DIR
from sapo_core.config import load_config
from sapo_core.errors import ConfigError
from sapo_core.interfaces import BackendContext, Checkpointer
from sapo_core.node import Node
from sapo_core.plugins import Plugins
from sapo_core.testing import config_of
from sapo_gdrive.checkpoints import FolderCheckpointer, build_folder_checkpointer


def memory_root() -> str:
    return f"memory://sapo-ckpt-{uuid.uuid4().hex}"


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path) -> str:
    return (tmp_path / "drive").as_posix() if request.param == "local" else memory_root()


def writer(text: str, *, sub: bool = True):
    def write(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(text.encode() * 10)
        if sub:
            (folder / "tok").mkdir()
            (folder / "tok" / "vocab.json").write_text(json.dumps({"t": text}))

    return write


def names(cp: FolderCheckpointer) -> list[str]:
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in cp.fs.ls(cp.folder, detail=False))
    except FileNotFoundError:
        return []


def test_save_list_restore_and_keep(root, tmp_path):
    cp = FolderCheckpointer(root, "exp", "alice", keep=2)
    assert isinstance(cp, Checkpointer)
    assert cp.list() == [] and cp.restore(tmp_path / "none") is None
    for r in range(4):
        info = cp.save(r, writer(f"r{r}"), {"round": r, "note": "x"})
        assert info.round == r and info.location.endswith(f"exp/checkpoints/alice/round-{r:06d}")
    saved = cp.list()
    assert [i.round for i in saved] == [2, 3], "oldest first, newest 2 kept"
    assert saved[-1].meta == {"round": 3, "note": "x"}
    assert names(cp) == ["round-000002", "round-000003"], "no partial folders left"
    into = tmp_path / "restored"
    info = cp.restore(into)
    assert info.round == 3
    assert (into / "weights.bin").read_bytes() == b"r3" * 10
    assert json.loads((into / "tok" / "vocab.json").read_text()) == {"t": "r3"}
    marker = json.loads((into / "checkpoint.json").read_text())
    assert marker["round"] == 3 and marker["files"] == {"tok/vocab.json": 11, "weights.bin": 20}
    # saving a round again (a resumed run) replaces it
    cp.save(3, writer("again", sub=False), {"round": 3})
    assert [i.round for i in cp.list()] == [2, 3]
    cp.restore(tmp_path / "again")
    assert (tmp_path / "again" / "weights.bin").read_bytes() == b"again" * 10
    assert not (tmp_path / "again" / "tok").exists()


def with_optimizer(text: str):
    def write(folder: Path) -> None:
        writer(text)(folder)
        (folder / OPTIMIZER_DIR).mkdir()
        (folder / OPTIMIZER_DIR / "state.bin").write_bytes(text.encode() * 100)

    return write


@pytest.mark.parametrize(("policy", "kept"), [("newest", [3]), ("all", [1, 2, 3])])
def test_only_the_newest_checkpoint_keeps_the_optimizer_state(root, tmp_path, policy, kept):
    cp = FolderCheckpointer(root, "exp", "alice", keep=3, optimizer_state=policy)
    for r in range(4):
        cp.save(r, with_optimizer(f"r{r}"), {"round": r})
    assert [i.round for i in cp.list()] == [1, 2, 3], "every kept checkpoint stays complete"
    for r in (1, 2, 3):
        into = tmp_path / f"restored-{r}"
        marker = json.loads(cp.fs.cat_file(cp.path(f"round-{r:06d}", "checkpoint.json")))
        listed = "optimizer/state.bin" in marker["files"]
        assert listed == (r in kept) == cp.fs.exists(cp.path(f"round-{r:06d}", OPTIMIZER_DIR, "state.bin"))
        assert marker["meta"] == {"round": r} and "weights.bin" in marker["files"]
        cp._download(cp.path(f"round-{r:06d}"), into)  # what restore does: the marker's files, checked
        assert (into / "weights.bin").read_bytes() == f"r{r}".encode() * 10
        assert (into / OPTIMIZER_DIR / "state.bin").exists() == (r in kept)


def test_local_layout_is_under_the_experiment_and_node(tmp_path):
    cp = FolderCheckpointer(tmp_path.as_posix(), "exp", "alice")
    cp.save(12, writer("w"), {})
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "exp/checkpoints/alice/round-000012/checkpoint.json",
        "exp/checkpoints/alice/round-000012/tok/vocab.json",
        "exp/checkpoints/alice/round-000012/weights.bin",
    ]


def test_a_crash_mid_save_keeps_the_previous_checkpoint(root, tmp_path):
    cp = FolderCheckpointer(root, "exp", "alice")
    cp.save(0, writer("good"), {})

    def crash(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cp.save(1, crash, {})
    assert [i.round for i in cp.list()] == [0]
    assert names(cp) == ["round-000000"], "no final folder and no partial left"
    assert cp.restore(tmp_path / "r").round == 0
    assert (tmp_path / "r" / "weights.bin").read_bytes() == b"good" * 10


def test_folders_without_or_with_a_corrupt_marker_are_ignored(root, tmp_path, caplog):
    cp = FolderCheckpointer(root, "exp", "alice", keep=5)
    cp.save(1, writer("one"), {})
    fs = cp.fs
    fs.makedirs(cp.path("round-000005"), exist_ok=True)
    fs.pipe_file(cp.path("round-000005", "weights.bin"), b"no marker")  # an upload that died
    fs.makedirs(cp.path("round-000007"), exist_ok=True)
    fs.pipe_file(cp.path("round-000007", "checkpoint.json"), b"{not json")
    fs.makedirs(cp.path("round-000008"), exist_ok=True)
    fs.pipe_file(cp.path("round-000008", "checkpoint.json"), json.dumps({"round": 3}).encode())  # wrong round
    fs.makedirs(cp.path(".partial-round-000009-abc"), exist_ok=True)
    fs.pipe_file(cp.path(".partial-round-000009-abc", "checkpoint.json"), json.dumps({"round": 9}).encode())
    fs.pipe_file(cp.path("round-000010"), b"a file, not a folder")
    with caplog.at_level(logging.WARNING, logger="sapo.checkpoint.gdrive"):
        assert [i.round for i in cp.list()] == [1]
        assert cp.restore(tmp_path / "r").round == 1
    assert "round-000007" in caplog.text and "round-000008" in caplog.text
    assert "round-000005" not in caplog.text, "a missing marker is an unfinished upload, not an error"
    # the next save sweeps the partial and the marker-less leftover below it
    cp.save(11, writer("eleven"), {})
    left = names(cp)
    assert ".partial-round-000009-abc" not in left and "round-000005" not in left
    assert [i.round for i in cp.list()] == [1, 11]


def test_a_checkpoint_whose_files_have_not_synced_falls_back_to_an_older_one(root, tmp_path, caplog):
    cp = FolderCheckpointer(root, "exp", "alice")
    cp.save(0, writer("zero"), {})
    cp.save(1, writer("one"), {})
    cp.fs.rm_file(cp.path("round-000001", "weights.bin"))  # the marker arrived before the weights
    with caplog.at_level(logging.WARNING, logger="sapo.checkpoint.gdrive"):
        info = cp.restore(tmp_path / "r")
    assert info.round == 0 and (tmp_path / "r" / "weights.bin").read_bytes() == b"zero" * 10
    assert "round-000001" in caplog.text


def test_two_nodes_and_two_experiments_stay_apart(root, tmp_path):
    alice, bob = FolderCheckpointer(root, "exp", "alice", keep=1), FolderCheckpointer(root, "exp", "bob", keep=1)
    other = FolderCheckpointer(root, "other", "alice", keep=1)
    alice.save(0, writer("a"), {})
    bob.save(0, writer("b"), {})
    bob.save(1, writer("b1"), {})
    other.save(5, writer("o"), {})
    bob.fs.makedirs(bob.path(".partial-round-000002-x"), exist_ok=True)
    alice.save(1, writer("a1"), {})  # sweeps alice's partials only
    assert [i.round for i in alice.list()] == [1]
    assert [i.round for i in bob.list()] == [1]
    assert [i.round for i in other.list()] == [5]
    assert ".partial-round-000002-x" in names(bob)
    alice.restore(tmp_path / "a")
    assert (tmp_path / "a" / "weights.bin").read_bytes() == b"a1" * 10


@pytest.mark.parametrize("node", ["../evil", "a/b", "", ".hidden", "CON"])
def test_unsafe_node_ids_and_experiments_are_refused(tmp_path, node):
    with pytest.raises(codec.PayloadError):
        FolderCheckpointer(tmp_path.as_posix(), "exp", node)
    with pytest.raises(codec.PayloadError):
        FolderCheckpointer(tmp_path.as_posix(), node or "..", "alice")
    assert list(tmp_path.iterdir()) == []


def test_factory_reads_root_keep_and_explains_a_missing_root(tmp_path):
    config = config_of({"swarm": {"root": tmp_path.as_posix()}, "checkpoint": {"keep": 1}})
    cp = build_folder_checkpointer(None, BackendContext(experiment="exp", node="bob", config=config))
    assert cp.keep == 1 and cp.folder == (tmp_path / "exp" / "checkpoints" / "bob").as_posix()
    with pytest.raises(ConfigError, match="--root.*GDRIVE_PATH"):
        build_folder_checkpointer(None, BackendContext(experiment="exp", config=config_of({"swarm": {"root": ""}})))
    with pytest.raises(ConfigError, match="node"):
        build_folder_checkpointer(None, BackendContext(experiment="exp", node="../x", config=config))


def test_registered_as_gdrive_and_fs_and_usable_through_the_registry(monkeypatch, tmp_path):
    monkeypatch.setenv("SAPO_DISABLE_PLUGINS", "sapo-local")
    plugins = Plugins()
    plugins.load()
    root = memory_root()
    context = BackendContext(
        experiment="exp", node="alice", config=config_of({"swarm": {"root": root}, "checkpoint": {"keep": 2}})
    )
    for name in ("gdrive", "fs"):
        registration = plugins.registry.get("checkpointer", name)
        assert registration.factory is build_folder_checkpointer and registration.description
        cp = registration.factory(registration.settings(), context)
        cp.save(3 if name == "gdrive" else 4, writer(name), {"by": name})
    cp = plugins.registry.get("checkpointer", "fs").factory(None, context)
    assert [(i.round, i.meta) for i in cp.list()] == [(3, {"by": "gdrive"}), (4, {"by": "fs"})]
    assert fsspec.filesystem("memory").exists(
        root.removeprefix("memory://") + "/exp/checkpoints/alice/round-000004/checkpoint.json"
    )


# ------------------------------------------------------------ resume on another machine


def test_a_node_resumes_on_another_machine_from_the_shared_folder(tmp_path, swarm_plugins):
    plugins, backends = swarm_plugins
    shared = (tmp_path / "drive").as_posix()

    def cfg(machine, *sets):
        return load_config(
            env={},
            sets=[
                "inference.backend=oracle",
                "train.backend=recorder",
                "inference.num_completions=4",
                "tasks.problems_per_round=4",
                f"run.workdir={(tmp_path / machine).as_posix()}",
                "swarm.transport=memory",
                f"swarm.root={shared}",
                "checkpoint.backend=gdrive",
                "checkpoint.every=1",
                "run.node_id=alice",
                "run.role=worker",
                "swarm.poll_seconds=0.01",
                "swarm.round_seconds=0.2",
                *sets,
            ],
        )

    Node.from_config(cfg("machine-a", "run.rounds=2"), plugins).run()
    first = backends.learners.pop("alice").trained
    assert [entry["round"] for entry in first] == [0, 1]
    assert not (tmp_path / "machine-a" / "default" / "alice" / "checkpoints").exists()

    # a fresh machine: an empty work folder, only the shared folder in common
    Node.from_config(cfg("machine-b", "run.rounds=4", "run.resume=true"), plugins).run()
    resumed = backends.learners["alice"]
    assert resumed.loaded == first, "round 1's checkpoint came from the shared folder"
    assert [entry["round"] for entry in resumed.trained] == [0, 1, 2, 3]
    lines = (tmp_path / "machine-b" / "default" / "alice" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [2, 3], "machine B ran only the rounds left"
    saved = FolderCheckpointer(shared, "default", "alice").list()
    assert [i.round for i in saved] == [1, 2, 3], "checkpoint.keep=3 in the shared folder"
