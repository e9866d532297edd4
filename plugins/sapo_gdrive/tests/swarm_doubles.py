"""Torch-free test doubles for swarms of nodes in one process, shared by this folder's tests.

An oracle inference backend (sapo_core.testing.CoinFlipInference), a learner that
records which groups it trained on (and checkpoints that record), and a thread runner.
conftest.py loads this module as ``sapo_gdrive_swarm_doubles`` (tests run with
``--import-mode=importlib``, where test files cannot import their neighbours by name) and
provides the ``swarm_plugins`` fixture built on it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sapo_core import hookimpl
from sapo_core.testing import CoinFlipInference

Oracle = CoinFlipInference


class Recorder:
    """A learner that remembers which groups it trained on, and checkpoints that memory."""

    def __init__(self) -> None:
        self.trained: list[dict] = []
        self.loaded: list[dict] | None = None

    def train(self, groups, round):
        self.trained.append({"round": round, "groups": [[g.node, g.problem.id] for g in groups]})
        return {"loss": 0.5}

    def save(self, folder: Path) -> None:
        (folder / "recorder.json").write_text(json.dumps(self.trained))

    def load(self, folder: Path) -> None:
        self.trained = json.loads((folder / "recorder.json").read_text())
        self.loaded = list(self.trained)


class Backends:
    """Registers inference ``oracle`` and learner ``recorder`` (one `Recorder` per node, kept here)."""

    def __init__(self) -> None:
        self.learners: dict[str, Recorder] = {}

    @hookimpl
    def register_inference(self, register):
        register("oracle", lambda settings, context: Oracle())

    @hookimpl
    def register_learners(self, register):
        register("recorder", lambda settings, context: self.learners.setdefault(context.node, Recorder()))


def run_threads(nodes, timeout: float = 60) -> None:
    """Run nodes in threads (every node announced before any starts); fail on a hang or an error."""
    for node in nodes:
        node.join()
    errors = []

    def target(node):
        try:
            node.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a node hung"
    assert not errors, errors


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
