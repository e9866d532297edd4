"""The built-in ``local`` checkpoint store: atomic folders, keep-last-K, crash leftovers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sapo_core.checkpoints import FolderCheckpointer


def writer(text: str):
    def write(folder: Path) -> None:
        (folder / "weights.json").write_text(json.dumps({"text": text}))

    return write


def test_save_list_restore(tmp_path):
    store = FolderCheckpointer(tmp_path / "ckpt", keep=2)
    for round in range(4):
        info = store.save(round, writer(f"r{round}"), {"round": round})
        assert Path(info.location).name == f"round-{round:06d}"
    assert [info.round for info in store.list()] == [2, 3], "only the newest `keep` remain"
    into = tmp_path / "restored"
    info = store.restore(into)
    assert info.round == 3 and info.meta == {"round": 3}
    assert json.loads((into / "weights.json").read_text()) == {"text": "r3"}


def test_empty_store_restores_nothing(tmp_path):
    assert FolderCheckpointer(tmp_path / "none").restore(tmp_path / "into") is None


def test_a_crash_while_writing_leaves_the_last_complete_checkpoint(tmp_path):
    store = FolderCheckpointer(tmp_path / "ckpt", keep=3)
    store.save(0, writer("good"), {})

    def crash(folder: Path) -> None:
        (folder / "weights.json").write_text("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        store.save(1, crash, {})
    assert [info.round for info in store.list()] == [0]
    assert not list((tmp_path / "ckpt").glob(".partial-*")), "the partial folder is removed"
    assert json.loads((Path(store.list()[0].location) / "weights.json").read_text()) == {"text": "good"}


def test_folders_without_a_readable_marker_are_ignored(tmp_path):
    store = FolderCheckpointer(tmp_path / "ckpt")
    store.save(0, writer("good"), {})
    killed = tmp_path / "ckpt" / "round-000005"  # e.g. copied by hand, or a marker a disk corrupted
    killed.mkdir()
    (killed / "checkpoint.json").write_text("{not json")
    assert [info.round for info in store.list()] == [0]


def test_saving_a_round_again_replaces_it(tmp_path):
    store = FolderCheckpointer(tmp_path / "ckpt")
    store.save(0, writer("first"), {})
    store.save(0, writer("second"), {})
    assert len(store.list()) == 1
    assert json.loads((Path(store.list()[0].location) / "weights.json").read_text()) == {"text": "second"}
