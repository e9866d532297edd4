"""The built-in ``local`` checkpoint store: atomic folders, keep-last-K, crash leftovers."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from sapo_core.checkpoints import (
    MARKER,
    OPTIMIZER_DIR,
    FolderCheckpointer,
    IncompleteCheckpoint,
    keeps_optimizer_state,
    write_learner_state,
)


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


def with_optimizer(text: str):
    def write(folder: Path) -> None:
        writer(text)(folder)
        (folder / OPTIMIZER_DIR).mkdir()
        (folder / OPTIMIZER_DIR / "state.json").write_text(json.dumps({"moments": text}))

    return write


@pytest.mark.parametrize(("policy", "kept"), [("newest", [3]), ("all", [1, 2, 3])])
def test_only_the_newest_checkpoint_keeps_the_optimizer_state(tmp_path, policy, kept):
    store = FolderCheckpointer(tmp_path / "ckpt", keep=3, optimizer_state=policy)
    for round in range(4):
        store.save(round, with_optimizer(f"r{round}"), {})
    saved = store.list()
    assert [info.round for info in saved] == [1, 2, 3]
    assert [info.round for info in saved if (Path(info.location) / OPTIMIZER_DIR).exists()] == kept
    assert all((Path(info.location) / "weights.json").exists() for info in saved), "the weights stay in every one"
    into = tmp_path / "restored"
    assert store.restore(into).round == 3
    assert json.loads((into / OPTIMIZER_DIR / "state.json").read_text()) == {"moments": "r3"}


def test_which_checkpoints_hold_the_optimizer_state():
    assert keeps_optimizer_state("newest", last_round=False) and not keeps_optimizer_state("newest", last_round=True)
    assert keeps_optimizer_state("all", last_round=True) and keeps_optimizer_state("all", last_round=False)
    assert not keeps_optimizer_state("none", last_round=False)


def test_a_learner_without_the_optimizer_keyword_loses_its_optimizer_folder(tmp_path):
    class Told:
        def save(self, folder: Path, *, optimizer: bool = True) -> None:
            with_optimizer("x")(folder) if optimizer else writer("x")(folder)

    class Untold:
        def save(self, folder: Path) -> None:
            with_optimizer("x")(folder)

    for learner in (Told(), Untold()):
        for optimizer in (True, False):
            folder = tmp_path / f"{type(learner).__name__}-{optimizer}"
            folder.mkdir()
            write_learner_state(learner, folder, optimizer=optimizer)
            assert (folder / "weights.json").exists() and (folder / OPTIMIZER_DIR).exists() == optimizer


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)  # a disk or a copy that lost the end of the file


def test_a_truncated_file_is_named_and_the_previous_checkpoint_restored(tmp_path, caplog):
    store = FolderCheckpointer(tmp_path / "ckpt", keep=3)
    for round in range(3):
        store.save(round, with_optimizer(f"r{round}" * 100), {"round": round})
    truncate(tmp_path / "ckpt" / "round-000002" / "weights.json")
    into = tmp_path / "restored"
    with caplog.at_level(logging.WARNING, logger="sapo.checkpoint"):
        info = store.restore(into)
    # Round 1 lost its optimizer state when round 2 was saved, and its marker says so: it is whole.
    assert info.round == 1 and json.loads((into / "weights.json").read_text()) == {"text": "r1" * 100}
    assert not (into / OPTIMIZER_DIR).exists()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "round-000002" in warning and '"weights.json" has ' in warning and "the marker says" in warning


def test_with_no_whole_checkpoint_restore_names_the_files_and_says_what_to_do(tmp_path):
    store = FolderCheckpointer(tmp_path / "ckpt")
    store.save(0, with_optimizer("r0"), {})
    (tmp_path / "ckpt" / "round-000000" / OPTIMIZER_DIR / "state.json").unlink()
    with pytest.raises(
        IncompleteCheckpoint,
        match=r'round-000000: "optimizer/state.json" is missing.*remove these '
        r"round-\* folders",
    ):
        store.restore(tmp_path / "restored")


def test_a_marker_without_the_file_sizes_from_an_older_version_still_restores(tmp_path):
    old = tmp_path / "ckpt" / "round-000004"
    old.mkdir(parents=True)
    (old / "weights.json").write_text(json.dumps({"text": "old"}))
    (old / MARKER).write_text(json.dumps({"round": 4, "meta": {"m": 1}}))
    info = FolderCheckpointer(tmp_path / "ckpt").restore(tmp_path / "restored")
    assert (info.round, info.meta) == (4, {"m": 1})
    assert json.loads((tmp_path / "restored" / "weights.json").read_text()) == {"text": "old"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names fsynced files through /proc/self/fd")
def test_every_file_the_learner_wrote_is_fsynced_before_the_marker(tmp_path, monkeypatch):
    synced: list[str] = []
    fsync = os.fsync

    def watching(fd: int) -> None:  # the real fsync, and which file it made durable
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", watching)
    FolderCheckpointer(tmp_path / "ckpt").save(0, with_optimizer("r0"), {})
    marker = synced.index(MARKER)
    assert {"weights.json", "state.json", OPTIMIZER_DIR} <= set(synced[:marker]), synced
