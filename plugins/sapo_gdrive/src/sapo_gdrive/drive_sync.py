"""A simulated Drive client: a two-way sync between two folders, as its own process
(``python -m sapo_gdrive.drive_sync A B --seed 0``; `sapo swarm run --drive-sync` starts one).

It does to a swarm what a Drive (Dropbox, OneDrive) client does to two machines' copies of a
shared folder, the conditions every Drive user's swarm runs under:

* **lag**: a changed file reaches the other side 0.5-5 s (``--lag``) after its change was first seen,
  with whatever it holds by then, so files arrive out of order (a file rewritten often, like the
  swarm's state, can overtake a payload written before it);
* **non-atomic copies**: the other side's file is rewritten in place, in a few chunks with pauses in
  between, so a reader there sees it empty or half written;
* **conflict copies**: when both sides changed a file since the last sync, the incoming one is
  written beside the other as ``name (1).ext``, as Drive does.

Deletions are not carried over, nor are dot-files (writers' temporary files). Every copy is
logged to stdout. It runs until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from sapo_gdrive import processes

SCAN_SECONDS = 0.1
CHUNKS = (2, 4)  # a copy is written in this many pieces
CHUNK_PAUSE = (0.02, 0.15)  # seconds between two pieces
LAG_SECONDS = (0.5, 5.0)
#: Under a `sapo swarm run --drive-sync` launch folder: the second copy's root, and the sync's log.
COPY_DIR = "drive-copy"
LOG_FILE = "drive_sync.log"


def start(a: Path, b: Path, *, seed: int, log: Path) -> subprocess.Popen[bytes]:
    """The sync between ``a`` and ``b`` as a process in its own session, every copy logged to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "sapo_gdrive.drive_sync", str(a), str(b), "--seed", str(seed)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=processes.in_child,
        )  # noqa: PLW1509


def stop(sync: subprocess.Popen[bytes]) -> None:
    """End the sync (after the nodes: it carries their last files until then)."""
    sync.kill()
    sync.wait(timeout=30)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime in ns) of every regular non-dot file under ``root``."""
    found: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder, name)
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if path.is_file() and not path.is_symlink():
                found[path.relative_to(root).as_posix()] = (info.st_size, info.st_mtime_ns)
    return found


def conflict_name(relative: str) -> str:
    """``rounds/0/w1.json.gz`` -> ``rounds/0/w1 (1).json.gz``: Drive's copy marker before the extensions."""
    folder, _, name = relative.rpartition("/")
    stem, dot, extensions = name.partition(".")
    copy = f"{stem} (1){dot}{extensions}"
    return f"{folder}/{copy}" if folder else copy


class Side:
    """One folder, what this sync last saw in it, and the changes of it waiting to be copied out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: dict[str, tuple[int, int]] = {}
        self.pending: dict[str, float] = {}  # relative path -> when to copy it

    def scan(self, rng: random.Random, lag: tuple[float, float]) -> None:
        now = snapshot(self.root)
        for relative, stamp in now.items():
            if self.seen.get(relative) != stamp and relative not in self.pending:
                self.pending[relative] = time.monotonic() + rng.uniform(*lag)
        self.seen = now


def copy_in_place(source: Path, target: Path, rng: random.Random) -> None:
    """Rewrite ``target`` with ``source``'s bytes in a few pieces, as a sync client downloads."""
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    pieces = rng.randint(*CHUNKS)
    step = max(1, -(-len(data) // pieces))
    with open(target, "wb") as out:
        for start in range(0, max(len(data), 1), step):
            out.write(data[start : start + step])
            out.flush()
            time.sleep(rng.uniform(*CHUNK_PAUSE))


def carry(source: Side, target: Side, rng: random.Random) -> None:
    """Copy ``source``'s changes that are due, the earliest due first."""
    for relative, due in sorted(source.pending.items(), key=lambda item: item[1]):
        if due > time.monotonic():
            return
        del source.pending[relative]
        # Changed on both sides since the last sync: the incoming copy goes beside the other one,
        # and is synced back like any new file.
        conflict = relative in target.pending
        destination = conflict_name(relative) if conflict else relative
        copy_in_place(source.root / relative, target.root / destination, rng)
        if not conflict:
            with contextlib.suppress(FileNotFoundError):
                info = (target.root / destination).stat()
                target.seen[destination] = (info.st_size, info.st_mtime_ns)  # not an echo to send back
        print(f"{source.root.name} -> {target.root.name}: {destination}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lag", type=float, nargs=2, default=LAG_SECONDS, metavar=("MIN", "MAX"))
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    a, b = Side(args.a), Side(args.b)
    for side in (a, b):
        side.root.mkdir(parents=True, exist_ok=True)
    print(f"syncing {a.root} <-> {b.root}, lag {args.lag[0]}-{args.lag[1]} s, seed {args.seed}", flush=True)
    while True:
        a.scan(rng, tuple(args.lag))
        b.scan(rng, tuple(args.lag))
        carry(a, b, rng)
        carry(b, a, rng)
        time.sleep(SCAN_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
