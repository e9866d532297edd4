"""The tokens a backend makes inside a phase (`sapo_core.progress.token_progress`): a bar under the
run's on a terminal, a plain line every LINE_SECONDS elsewhere, nothing where the run is quiet."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console

from sapo_core import progress
from sapo_core.progress import TokenProgress, duration, run_progress, token_progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def terminal_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=200)


def test_the_line_says_done_total_rate_and_time_left():
    clock = Clock()
    tokens = TokenProgress("generate", 6144, clock=clock)
    clock.now += 5.876
    tokens.advance(1234)
    assert tokens.line() == "generate: 1,234/6,144 tokens, 210 tok/s, ~23 s left"
    assert tokens.detail() == "210 tok/s  ~23 s left"
    assert TokenProgress("generate", 10, clock=clock).detail() == "0 tok/s  ~? left"  # nothing made yet


def test_durations_are_rough():
    assert [duration(s) for s in (3.2, 89, 90, 300, 5400, 7200)] == [
        "3 s",
        "89 s",
        "1.5 min",
        "5.0 min",
        "1.5 h",
        "2.0 h",
    ]


def test_updates_are_shown_at_most_once_per_period():
    clock, shown = Clock(), []
    tokens = TokenProgress("generate", 1000, show=lambda t: shown.append(t.done), every=30.0, clock=clock)
    for _ in range(10):  # ten decode steps within the first 30 s: nothing drawn
        clock.now += 1
        tokens.advance(8)
    assert shown == []
    clock.now += 25
    tokens.advance(8)
    tokens.advance(8)
    assert shown == [88]
    clock.now += 31
    tokens.update(5000)  # never beyond the total, never below 0
    tokens.update(-3)
    assert shown == [88, 1000] and tokens.done == 0


def test_in_a_log_the_run_prints_a_line_per_period(monkeypatch):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    console, buffer = plain_console()
    with run_progress(2, 0, label="node-0", console=console) as run:
        assert not run.live
        with token_progress("generate", 24) as tokens:
            assert tokens.shown
            for _ in range(3):
                tokens.advance(8)
        run.round_done(0, {"reward/mean": 0.5})
    lines = buffer.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines[:3]] == [
        "generate: 8/24 tokens",
        "generate: 16/24 tokens",
        "generate: 24/24 tokens",
    ]
    assert lines[3] == "node-0 round 1/2: reward 0.500"


def test_on_a_terminal_the_tokens_are_a_second_bar_of_the_run(monkeypatch):
    monkeypatch.setattr(progress, "BAR_SECONDS", 0.0)
    with run_progress(2, 0, label="node-0", console=terminal_console()) as run:
        assert run.live
        with token_progress("generate", 100) as tokens:
            tasks = run._progress.tasks
            assert [t.description for t in tasks] == ["node-0", "generate"]
            tokens.advance(40)
            assert tasks[1].completed == 40 and "tok/s" in tasks[1].fields["detail"]
        assert [t.description for t in run._progress.tasks] == ["node-0"]  # gone when the call ends


def test_a_quiet_run_or_a_quiet_backend_shows_nothing(monkeypatch):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    console, buffer = plain_console()
    with run_progress(1, 0, label="node-0", quiet=True):  # another process of a distributed launch
        with token_progress("generate", 10, console=console) as tokens:
            tokens.advance(5)
            assert not tokens.shown
    with token_progress("generate", 10, quiet=True, console=console) as tokens:
        tokens.advance(5)
        assert not tokens.shown and tokens.done == 5
    assert buffer.getvalue() == ""


def test_outside_a_run_it_shows_itself(monkeypatch):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    console, buffer = plain_console()
    with token_progress("generate", 10, console=console) as tokens:
        tokens.advance(10)
    assert buffer.getvalue().startswith("generate: 10/10 tokens, ")
    with token_progress("generate", 10, console=terminal_console()) as tokens:  # a bar of its own
        assert tokens.shown and tokens._every == progress.BAR_SECONDS


def test_another_threads_run_is_not_joined(monkeypatch):
    """Several nodes in one process run in threads: a backend's tokens go to its own node's display."""
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    ours, our_buffer = plain_console()
    theirs, their_buffer = plain_console()
    with run_progress(1, 0, label="node-0", console=ours):

        def other() -> None:
            with token_progress("generate", 4, console=theirs) as tokens:
                tokens.advance(4)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert our_buffer.getvalue() == "" and "generate: 4/4 tokens" in their_buffer.getvalue()


@pytest.mark.parametrize("total", [0, -1])
def test_an_empty_call_shows_nothing(total):
    console, buffer = plain_console()
    with token_progress("generate", total, console=console) as tokens:
        assert not tokens.shown
    assert buffer.getvalue() == ""
