"""Each node's log and metrics in the swarm folder: ``logs/<node>.log`` and ``metrics/<node>.jsonl``.

Active only when the run's transport is ``gdrive`` or ``fs`` (the swarm has a shared folder).

* ``run_started``: a handler on the ``sapo`` logger appends this node's records to
  ``<root>/<experiment>/logs/<node>.log``. Several nodes in one process (threads, as in tests)
  each keep their own thread's records; records of other threads go to every log.
* ``round_finished``: the round's metrics, one JSON line, appended to ``metrics/<node>.jsonl``.
* ``run_finished``: flush and detach.

On a local path (a mounted drive) a line is appended with open/append/close. On other fsspec
storage (no append there) the whole file is rewritten atomically (read, append, write to a temp,
rename); records are buffered and flushed every few seconds, on each WARNING or above, and at the
end. A failed write (disk full, permissions, a network error) is a warning, never the node's
crash; the lines stay buffered for the next try. No secret reaches a line (`sapo_core.redaction`:
the swarm secret, API keys, the configuration's secrets read as ``<redacted>``).
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
from collections.abc import Mapping
from typing import Any

import sapo_core
from sapo_core import codec, redaction
from sapo_core.interfaces import BackendContext
from sapo_gdrive.store import FolderStore

log = logging.getLogger("sapo.gdrive.observers")

TRANSPORTS = frozenset({"gdrive", "fs"})
LOGS_DIR = "logs"
METRICS_DIR = "metrics"
#: Seconds between flushes of buffered log lines on non-local storage.
REMOTE_FLUSH_SECONDS = 5.0
#: Lines kept buffered at most while writes fail (the oldest are dropped beyond).
MAX_BUFFERED = 10_000

_guard = threading.local()  # set while a sink writes or warns: no recursion into the handlers


class SharedFile:
    """Appends lines to one file of the swarm folder; never raises for a failed write."""

    def __init__(self, store: FolderStore, path: str, *, flush_seconds: float) -> None:
        self.store = store
        self.path = path
        self.flush_seconds = 0.0 if store.local else flush_seconds
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._failing = False

    def add(self, line: str, *, urgent: bool = False) -> None:
        with self._lock:
            self._pending.append(line if line.endswith("\n") else line + "\n")
            if len(self._pending) > MAX_BUFFERED:
                del self._pending[: len(self._pending) - MAX_BUFFERED]
        if urgent or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> bool:
        """Write the pending lines; False (after a warning, the first time) when it failed."""
        with self._lock:
            if not self._pending:
                return True
            data = "".join(self._pending).encode("utf-8", "replace")
            try:
                self._append(data)
            except Exception as exc:  # noqa: BLE001 - whatever the storage raises, the node goes on
                if not self._failing:
                    self._failing = True
                    _warn("cannot write %s (%s: %s); will retry", self.path, type(exc).__name__, exc)
                return False
            self._pending.clear()
            self._last_flush = time.monotonic()
            if self._failing:
                self._failing = False
                _warn("writing %s works again", self.path)
            return True

    def _append(self, data: bytes) -> None:
        fs = self.store.fs
        if self.store.local:
            fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(data)
            return
        try:
            old = fs.cat_file(self.path)
        except FileNotFoundError:
            old = b""
        if old and not old.endswith(b"\n"):
            old += b"\n"  # a torn last line stays torn, but the next ones start clean
        self.store.write_atomic(self.path, old + data)


def _warn(message: str, *args: Any) -> None:
    """Log a warning that the shared-folder handlers themselves do not receive."""
    previous = getattr(_guard, "active", False)
    _guard.active = True
    try:
        log.warning(message, *args)
    finally:
        _guard.active = previous


class FolderLogHandler(logging.Handler):
    """Formats ``sapo`` records into a `SharedFile`; see the module docstring for threads."""

    def __init__(self, sink: SharedFile, *, secret: str = "") -> None:
        super().__init__(level=logging.DEBUG)
        self.sink = sink
        redaction.register(secret)  # every record of the process, not only this handler's lines
        self.thread = threading.get_ident()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(_guard, "active", False):
            return
        owners = {h.thread for h in _attached()}
        if record.thread != self.thread and record.thread in owners:
            return  # another node of this process: its own handler has it
        try:
            line = redaction.redact(self.format(record))
            _guard.active = True
            try:
                self.sink.add(line, urgent=record.levelno >= logging.WARNING)
            finally:
                _guard.active = False
        except Exception:  # noqa: BLE001 - a log line must never crash the node
            pass


# One entry per running node of this process: (experiment, node) -> its handler and metrics file.
_nodes: dict[tuple[str, str], tuple[FolderLogHandler, SharedFile]] = {}
_nodes_lock = threading.Lock()


def _attached() -> list[FolderLogHandler]:
    with _nodes_lock:
        return [handler for handler, _ in _nodes.values()]


def _store_for(context: BackendContext) -> FolderStore | None:
    swarm = context.config.swarm
    if swarm.transport not in TRANSPORTS:
        return None
    root = swarm.root.strip()
    if not root:
        return None
    return FolderStore(root, context.experiment)


def _file(store: FolderStore, folder: str, node: str, suffix: str) -> SharedFile:
    name = f"{codec.validate_node_id(node)}{suffix}"
    return SharedFile(store, store.path(folder, name), flush_seconds=REMOTE_FLUSH_SECONDS)


@sapo_core.hookimpl
def run_started(context: BackendContext) -> None:
    try:
        store = _store_for(context)
    except Exception as exc:  # noqa: BLE001 - a bad root is the transport's error to report, not ours
        _warn("no shared log for %s: %s", context.node, exc)
        return
    if store is None:
        return
    handler = FolderLogHandler(_file(store, LOGS_DIR, context.node, ".log"), secret=context.config.swarm.secret)
    metrics = _file(store, METRICS_DIR, context.node, ".jsonl")
    key = (context.experiment, context.node)
    with _nodes_lock:
        previous = _nodes.pop(key, None)
        _nodes[key] = (handler, metrics)
    if previous is not None:
        _detach(*previous)
    logging.getLogger("sapo").addHandler(handler)


@sapo_core.hookimpl
def round_finished(context: BackendContext, round: int, metrics: Mapping[str, Any]) -> None:
    with _nodes_lock:
        entry = _nodes.get((context.experiment, context.node))
    if entry is None:
        return
    line = dict(metrics)
    line.setdefault("round", round)
    line.setdefault("node", context.node)
    try:
        text = json.dumps(line, sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:
        _warn("metrics of round %d not written to the swarm folder: %s", round, exc)
        return
    entry[1].add(text, urgent=True)


def _detach(handler: FolderLogHandler, metrics: SharedFile) -> None:
    logging.getLogger("sapo").removeHandler(handler)
    handler.sink.flush()
    metrics.flush()
    handler.close()


@sapo_core.hookimpl
def run_finished(context: BackendContext, metrics: Mapping[str, Any]) -> None:
    with _nodes_lock:
        entry = _nodes.pop((context.experiment, context.node), None)
    if entry is not None:
        _detach(*entry)
