"""The coordinator's lease on a shared folder: ``lease/<epoch>.json`` (see `sapo_core.lease`).

The contract on a local folder, ``file://`` and fsspec's ``memory://``; contention between
real processes; expiry and renewal through `LeaseKeeper`; what synced folders do to the files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from sapo_core.interfaces import Lease
from sapo_core.lease import LeaseKeeper
from sapo_core.testing import check_leases
from sapo_gdrive.folder import FolderTransport

LEASE = 30.0


def memory_root() -> str:
    return f"memory://sapo-lease-{uuid.uuid4().hex}"


@pytest.mark.parametrize("kind", ["path", "file-url", "memory"])
def test_contract(tmp_path, kind):
    root = {"path": str(tmp_path), "file-url": tmp_path.as_uri(), "memory": memory_root()}[kind]
    check_leases(lambda: FolderTransport(root, "exp"), contenders=4, epochs=4)


CLAIM = """
import sys, time
from sapo_gdrive.folder import FolderTransport
from sapo_core.interfaces import Lease
root, node, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
transport = FolderTransport(root, "exp")
while time.time() < start:
    time.sleep(0.001)
print(transport.claim_lease(Lease(epoch=0, holder=node, token=node, expires_at=time.time() + 60)))
"""


def test_of_processes_claiming_one_epoch_at_once_exactly_one_wins(tmp_path):
    start = time.time() + 3  # every process is up and waiting by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM, str(tmp_path), f"node-{i}", repr(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["False", "False", "False", "True"]
    winner = f"node-{results.index('True')}"
    assert FolderTransport(str(tmp_path), "exp").read_lease().holder == winner
    assert sorted(os.listdir(tmp_path / "exp" / "lease")) == ["0.json"], "no temporary file is left behind"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def keeper(root, node, clock, *, standby=False):
    return LeaseKeeper(FolderTransport(root, "exp"), node, LEASE, standby=standby, clock=clock, monotonic=clock)


@pytest.mark.parametrize("memory", [False, True])
def test_renewal_keeps_the_lease_and_expiry_hands_it_over(tmp_path, memory):
    root = memory_root() if memory else str(tmp_path)
    clock = Clock()
    coordinator, standby = keeper(root, "coord", clock), keeper(root, "alice", clock, standby=True)
    assert coordinator.acquire().epoch == 0
    for _ in range(8):
        clock.now += LEASE / 3
        assert coordinator.keep()
        assert standby.acquire() is None
    # What a renewal wrote is what others read: the lease runs a whole lease from the last renewal.
    stored = FolderTransport(root, "exp").read_lease()
    assert stored.token == coordinator.lease.token and stored.expires_at >= clock.now + LEASE * 2 / 3
    clock.now = stored.expires_at + 1  # killed: no renewal since
    assert not coordinator.holds()
    assert standby.acquire().epoch == 1
    assert not coordinator.keep() and coordinator.acquire() is None
    if not memory:
        assert sorted(os.listdir(tmp_path / "exp" / "lease")) == ["0.json", "1.json"]


def test_an_unreadable_lease_is_waited_out_for_a_whole_lease_from_its_last_write(tmp_path):
    transport = FolderTransport(str(tmp_path), "exp")
    (tmp_path / "exp" / "lease").mkdir(parents=True)
    (tmp_path / "exp" / "lease" / "0.json").write_bytes(b'{"epoch": 0, "holder": "co')  # a sync still arriving
    written = os.path.getmtime(tmp_path / "exp" / "lease" / "0.json")
    lease = transport.read_lease()
    assert (lease.epoch, lease.holder) == (0, "") and lease.renewed_at == pytest.approx(written)
    clock = Clock()
    clock.now = written + LEASE - 1
    standby = keeper(str(tmp_path), "alice", clock, standby=True)
    assert standby.acquire() is None
    clock.now = written + LEASE
    assert standby.acquire().epoch == 1


def test_the_storage_clock_rescues_a_holder_whose_clock_lags(tmp_path):
    lagging = Clock()
    lagging.now -= 1_000  # the holder's clock is 1000 s behind
    holder = keeper(str(tmp_path), "coord", lagging)
    holder.acquire()
    assert holder.lease.expires_at < time.time(), "by its own clock, the lease has already expired"
    standby = keeper(str(tmp_path), "alice", Clock(), standby=True)
    assert standby.acquire() is None, "by the file's modification time, it has not"


def test_copies_temporaries_and_foreign_files_are_no_epochs(tmp_path):
    transport = FolderTransport(str(tmp_path), "exp")
    assert transport.claim_lease(Lease(epoch=0, holder="coord", token="t", expires_at=time.time() + 60))
    folder = tmp_path / "exp" / "lease"
    for name in (
        "7 (1).json",
        "8 (conflicted copy 2026-11-25).json",
        ".9.json.abc.tmp",
        "notes.txt",
        "-1.json",
        "10.json.gz",
    ):
        (folder / name).write_text(json.dumps({"epoch": 9, "holder": "mallory", "token": "x", "expires_at": 1e12}))
    lease = transport.read_lease()
    assert (lease.epoch, lease.holder) == (0, "coord")
    assert transport.renew_lease(Lease(epoch=0, holder="coord", token="t", expires_at=time.time() + 90))


def test_a_lease_describing_another_epoch_or_a_bad_holder_is_unreadable(tmp_path):
    transport = FolderTransport(str(tmp_path), "exp")
    folder = tmp_path / "exp" / "lease"
    folder.mkdir(parents=True)
    (folder / "0.json").write_text(json.dumps({"epoch": 0, "holder": "coord", "token": "t", "expires_at": 1e12}))
    (folder / "1.json").write_text(json.dumps({"epoch": 5, "holder": "mallory", "token": "x", "expires_at": 1e12}))
    assert transport.read_lease().holder == ""
    (folder / "2.json").write_text(json.dumps({"epoch": 2, "holder": "../etc", "token": "x", "expires_at": 1e12}))
    lease = transport.read_lease()
    assert (lease.epoch, lease.holder) == (2, "")
    assert not transport.claim_lease(Lease(epoch=2, holder="alice", token="a")), "taken, even if unreadable"
    assert transport.claim_lease(Lease(epoch=3, holder="alice", token="a"))
