"""The coordinator's lease and the stand-by coordinator, on the in-process `memory` transport.

The policy (`LeaseKeeper`) runs on a clock the test moves; the coordinator loops run in real
threads with short leases. The same contract on a real folder and on fsspec's ``memory://`` is
tested in plugins/sapo_gdrive/tests/test_lease_folder.py, and with real processes in
plugins/sapo_gdrive/tests/test_swarm_processes.py.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from sapo_core import hookimpl
from sapo_core.config import load_config
from sapo_core.coordinator import Coordinator, IdleSwarm
from sapo_core.errors import ConfigError
from sapo_core.interfaces import Lease, NodeInfo, SwarmState
from sapo_core.lease import ACT_SHARE, TWIN_SHARE, LeaseKeeper
from sapo_core.node import Node
from sapo_core.testing import check_leases
from sapo_core.transports import MemoryTransport

LEASE = 10.0


class Clock:
    """Wall and monotonic time at once, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def swarm(tmp_path):
    return f"lease-{tmp_path.name}"


def keeper(swarm, node, clock, *, standby=False):
    return LeaseKeeper(MemoryTransport(swarm, "default"), node, LEASE, standby=standby, clock=clock, monotonic=clock)


def test_the_memory_transport_keeps_the_lease_contract(swarm):
    check_leases(lambda: MemoryTransport(swarm, "default"))


def test_a_coordinator_takes_the_first_lease_at_once_and_a_standby_waits_a_whole_lease(swarm):
    clock = Clock()
    standby = keeper(swarm, "alice", clock, standby=True)
    assert standby.acquire() is None, "the coordinator may just be starting"
    clock.now += LEASE - 1
    assert standby.acquire() is None
    coordinator = keeper(swarm, "coord", clock)
    lease = coordinator.acquire()
    assert lease is not None and (lease.epoch, lease.holder) == (0, "coord") and coordinator.holds()
    clock.now += 2  # the stand-by's wait is over, but the lease is live now
    assert standby.acquire() is None


def test_without_any_lease_a_standby_takes_one_after_a_whole_lease(swarm):
    clock = Clock()
    standby = keeper(swarm, "alice", clock, standby=True)
    clock.now += LEASE
    assert standby.acquire().epoch == 0 and standby.holds()


def test_renewals_keep_a_standby_out_and_expiry_lets_it_in(swarm, caplog):
    clock = Clock()
    coordinator, standby = keeper(swarm, "coord", clock), keeper(swarm, "alice", clock, standby=True)
    coordinator.acquire()
    for _ in range(20):  # five leases long, polled every quarter of a lease
        clock.now += LEASE / 4
        assert coordinator.keep(), "a holder that polls keeps its lease"
        assert standby.acquire() is None
    # The coordinator goes away (killed: no renewal, no release).
    clock.now += LEASE * ACT_SHARE
    assert not coordinator.holds(), "a holder stops acting before anyone may take over"
    assert standby.acquire() is None, "nor does the stand-by take over before the lease has expired"
    clock.now += LEASE * (1 - ACT_SHARE)
    with caplog.at_level(logging.INFO, logger="sapo.lease"):
        lease = standby.acquire()
        assert lease is not None and (lease.epoch, lease.holder) == (1, "alice")
        # The coordinator is back (a process restarted with the same id): the lease is alice's now.
        assert not coordinator.keep()
        assert coordinator.acquire() is None
    assert "has expired; taking over" in caplog.text
    assert "standing by: alice holds the coordinator lease (epoch 1)" in caplog.text


def test_a_holder_whose_lease_another_node_took_stops_at_its_next_renewal(swarm):
    clock = Clock()
    coordinator = keeper(swarm, "coord", clock)
    coordinator.acquire()
    other = MemoryTransport(swarm, "default")
    assert other.claim_lease(Lease(epoch=1, holder="bob", token="b", expires_at=clock.now + LEASE))
    clock.now += LEASE / 2  # a renewal is due
    assert not coordinator.keep() and not coordinator.holds()


def test_a_restarted_node_takes_back_its_own_lease_once_the_earlier_run_missed_a_renewal(swarm):
    clock = Clock()
    first = keeper(swarm, "coord", clock)
    first.acquire()
    clock.now += 1
    again = keeper(swarm, "coord", clock)  # the same node, restarted (or a second process with its id)
    assert again.acquire() is None, "renewed a second ago: a live process holds it"
    clock.now += LEASE * TWIN_SHARE  # the earlier run would have renewed by now: it is gone
    lease = again.acquire()
    assert lease is not None and lease.epoch == 1 and lease.token != first.lease.token
    assert not first.keep(), "the earlier run, were it still alive, gives way"


def test_two_live_processes_with_one_node_id_do_not_take_the_lease_back_and_forth(swarm):
    clock = Clock()
    one, two = keeper(swarm, "coord", clock), keeper(swarm, "coord", clock)
    one.acquire()
    epochs = set()
    for _ in range(40):  # 20 leases of polls a quarter-lease apart
        clock.now += LEASE / 4
        assert one.keep(), "the first holder keeps its lease while it renews"
        assert two.acquire() is None
        epochs.add(one.lease.epoch)
    assert epochs == {0}


def test_release_lets_a_standby_take_over_at_once(swarm):
    clock = Clock()
    coordinator, standby = keeper(swarm, "coord", clock), keeper(swarm, "alice", clock, standby=True)
    coordinator.acquire()
    clock.now += 1
    assert standby.acquire() is None
    coordinator.release()
    assert not coordinator.holds()
    assert standby.acquire().epoch == 1


def test_of_contenders_for_an_expired_lease_exactly_one_wins(swarm):
    clock = Clock()
    keeper(swarm, "coord", clock).acquire()
    clock.now += LEASE
    contenders = [keeper(swarm, f"node-{i}", clock, standby=True) for i in range(6)]
    barrier = threading.Barrier(len(contenders))
    won = []

    def contend(k):
        barrier.wait(timeout=10)
        if k.acquire() is not None:
            won.append(k.node)

    threads = [threading.Thread(target=contend, args=(k,)) for k in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(won) == 1
    assert MemoryTransport(swarm, "default").read_lease().holder == won[0]


# ---------------------------------------------------------------- coordinators, threads


class Recording(MemoryTransport):
    """The memory transport, noting who wrote which round and when."""

    def __init__(self, swarm: str, node: str) -> None:
        super().__init__(swarm, "default")
        self.node = node
        self.writes: list[tuple[float, int]] = []

    def write_state(self, state: SwarmState) -> None:
        self.writes.append((time.time(), state.round))
        super().write_state(state)


def swarm_config(*sets):
    return load_config(
        env={},
        sets=[
            "swarm.transport=memory",
            "swarm.poll_seconds=0.01",
            "swarm.round_seconds=0.05",
            "swarm.lease_seconds=2.0",
            "run.rounds=6",
            *sets,
        ],
    )


@pytest.fixture
def working_swarm(swarm):
    """The swarm with a worker whose heartbeat stays fresh: a coordinator closes rounds at their deadlines
    only while some worker is live (with none, it holds the round open)."""
    now = time.time()
    MemoryTransport(swarm, "default").heartbeat(NodeInfo(node="w", role="worker", started_at=now, last_seen=now + 3600))
    return swarm


def run_in_thread(coordinator):
    errors = []

    def target():
        try:
            coordinator.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


def test_a_standby_coordinator_takes_over_from_a_coordinator_that_went_away(working_swarm):
    swarm = working_swarm
    dead = MemoryTransport(swarm, "default")  # a coordinator killed in round 2: its lease runs out
    now = time.time()
    dead.write_state(SwarmState(round=2, deadline=now - 1, updated_at=now, coordinator="coord"))
    assert dead.claim_lease(
        Lease(epoch=0, holder="coord", token="t", acquired_at=now, renewed_at=now, expires_at=now + 0.4)
    )
    transport = Recording(swarm, "alice")
    thread, errors = run_in_thread(Coordinator(swarm_config(), transport, "alice", standby=True))
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors, errors
    assert [round for _, round in transport.writes] == [3, 4, 5, 6], "the round survived the coordinator"
    assert transport.writes[0][0] >= now + 0.4, "no write before the lease expired"
    state = transport.read_state()
    assert (state.round, state.coordinator) == (6, "alice")
    assert transport.read_lease().holder == "alice"


def test_a_restarted_coordinator_stands_by_while_another_node_coordinates(working_swarm, caplog):
    swarm = working_swarm
    rounds = 40
    alice = Recording(swarm, "alice")
    standby = Coordinator(swarm_config(f"run.rounds={rounds}"), alice, "alice", standby=True)
    coord = Recording(swarm, "coord")
    now = time.time()
    coord.claim_lease(Lease(epoch=0, holder="gone", token="t", acquired_at=now, renewed_at=now, expires_at=now))
    with caplog.at_level(logging.INFO, logger="sapo"):
        first, first_errors = run_in_thread(standby)
        deadline = time.monotonic() + 20
        while not alice.writes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert alice.writes, "the stand-by took over the expired lease"
        restarted, restarted_errors = run_in_thread(Coordinator(swarm_config(f"run.rounds={rounds}"), coord, "coord"))
        first.join(timeout=60)
        restarted.join(timeout=60)
    assert not first.is_alive() and not restarted.is_alive() and not first_errors and not restarted_errors
    assert "coord: standing by: alice holds the coordinator lease (epoch 1)" in caplog.text
    assert coord.writes == [], "a coordinator never writes while another node holds a live lease"
    assert [round for _, round in alice.writes] == list(range(rounds + 1))


def test_a_coordinator_that_finished_lets_the_lease_go(working_swarm):
    swarm = working_swarm
    transport = MemoryTransport(swarm, "default")
    thread, errors = run_in_thread(Coordinator(swarm_config("run.rounds=2"), transport, "coord"))
    thread.join(timeout=30)
    assert not errors, errors
    lease = transport.read_lease()
    assert lease.holder == "coord" and lease.expires_at <= time.time()


# ---------------------------------------------------------------------- configuration


class WithoutLeases:
    """A shared transport that cannot hold a lease (a third party's, say)."""

    shared = True

    def __init__(self, inner: MemoryTransport) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        if name in {"read_lease", "claim_lease", "renew_lease"}:
            raise AttributeError(name)
        return getattr(self._inner, name)


class NoLeasePlugin:
    @hookimpl
    def register_transports(self, register):
        register("plain", lambda settings, context: WithoutLeases(MemoryTransport("plain", context.experiment)))

    @hookimpl
    def register_inference(self, register):
        register("idle", lambda settings, context: None)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["run.role=coordinator", "swarm.standby=true"], "swarm.standby is for workers and contributors"),
        (["swarm.transport=none", "swarm.standby=true"], "swarm.standby needs a swarm"),
        (["swarm.transport=plain", "swarm.standby=true"], "transport 'plain' cannot hold the coordinator's lease"),
        (["swarm.standby=true", "swarm.lease_seconds=0.02"], r"swarm.lease_seconds = 0.02 is too short .* at least 4"),
        (["run.role=coordinator", "swarm.lease_seconds=0.02"], "is too short"),
    ],
)
def test_a_standby_the_swarm_cannot_have_is_a_clear_config_error(tmp_path, sapo_plugins, sets, message):
    sapo_plugins.register(NoLeasePlugin(), name="no-lease")
    config = swarm_config(
        f"run.workdir={tmp_path.as_posix()}", f"swarm.root=cfg-{tmp_path.name}", "inference.backend=idle", *sets
    )
    with pytest.raises(ConfigError, match=message):
        Node.from_config(config, sapo_plugins)


def test_a_transport_without_leases_still_coordinates_without_a_standby(tmp_path, working_swarm):
    swarm = working_swarm
    transport = WithoutLeases(MemoryTransport(swarm, "default"))
    thread, errors = run_in_thread(Coordinator(swarm_config("run.rounds=2"), transport, "coord"))
    thread.join(timeout=30)
    assert not errors, errors
    assert transport.read_state().round == 2


def test_with_no_live_worker_and_no_payload_a_round_is_held_open(swarm, caplog):
    """Workers all away: the coordinator extends the deadline instead of burning the run's rounds
    (for ever with swarm.idle_rounds = 0; see the next test for the bound)."""
    transport = Recording(swarm, "coord")
    coordinator = Coordinator(swarm_config("run.rounds=3", "swarm.idle_rounds=0"), transport, "coord")
    stop_at = time.monotonic() + 1.0
    coordinator.stopped = lambda: time.monotonic() > stop_at
    with caplog.at_level(logging.WARNING, logger="sapo"):
        coordinator.run()
    rounds = [round for _, round in transport.writes]
    assert len(rounds) > 3 and set(rounds) == {0}, "deadlines extended, round 0 never closed"
    assert "round 0: no live worker and no payload at its deadline; holding it open" in caplog.text


def test_a_coordinator_nobody_joins_stops_after_idle_rounds_and_keeps_its_round(swarm):
    transport = Recording(swarm, "coord")
    started = time.monotonic()
    with pytest.raises(
        IdleSwarm,
        match=r"coord: no worker was live in experiment 'default' .* for 3 round deadlines"
        r".*Round 0 stays open.*start a worker with the same --root and --experiment",
    ):
        Coordinator(swarm_config("run.rounds=3", "swarm.idle_rounds=3"), transport, "coord").run()
    assert time.monotonic() - started < 10
    assert [round for _, round in transport.writes] == [0, 0, 0], "round 0 opened, held open twice, then the stop"
    assert transport.read_state().round == 0
    assert transport.read_lease().expires_at <= time.time(), "the lease is let go: a restart takes it at once"
