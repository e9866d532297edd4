"""The built-in ``local`` checkpoint store: atomic folders, keep-last-K, crash leftovers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sapo_core.checkpoints import OPTIMIZER_DIR, FolderCheckpointer, keeps_optimizer_state, write_learner_state


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
