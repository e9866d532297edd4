"""`sapo_core.polling.Backoff`: the sleeps of a wait, worked out by hand."""

from __future__ import annotations

from sapo_core.polling import Backoff


def test_a_wait_starts_short_and_doubles_up_to_the_poll_interval():
    slept: list[float] = []
    backoff = Backoff(2.0, slept.append)
    for _ in range(7):
        backoff.pause()
    assert slept == [0.125, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    # The fast start costs 4 polls more than steady polling: 15/16 of one interval.
    assert sum(slept[:4]) == 1.875


def test_a_nudge_restarts_the_fast_start_only_once_it_has_ended():
    slept: list[float] = []
    backoff = Backoff(2.0, slept.append)
    backoff.pause()
    backoff.pause()
    backoff.nudge()  # still in the fast start: no effect, so a busy swarm cannot keep it short
    backoff.pause()
    assert slept == [0.125, 0.25, 0.5]
    backoff.pause()
    backoff.pause()  # the first full interval: the fast start is over
    backoff.nudge()
    backoff.pause()
    assert slept[3:] == [1.0, 2.0, 0.125]


def test_reset_starts_a_new_wait():
    slept: list[float] = []
    backoff = Backoff(1.0, slept.append)
    for _ in range(6):
        backoff.pause()
    backoff.reset()
    assert backoff.pause() == 1.0 / 16
    assert slept == [0.0625, 0.125, 0.25, 0.5, 1.0, 1.0, 0.0625]
