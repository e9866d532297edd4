"""The entry point of sapo-trackers (group `sapo`): the trackers of ``run.report_to`` on the observer hooks.

* ``run_started``: each named tracker starts this node's run (its library imported only then),
  with the resolved config, secrets redacted.
* ``round_finished``: the round's numbers under sapo's names, at step round + 1 (the evaluation
  before training is step 0).
* ``run_finished``: each tracker closes its run.

A tracker that fails (its extra not installed, no login, no disk) is reported by one warning,
naming the extra and its pip command when that is what is missing, and is left out for the rest
of the node's run: the run itself goes on. In a distributed learner only the main process
reports, as only it writes the run directory.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

import sapo_core
from sapo_core.building import process_rank
from sapo_core.interfaces import BackendContext
from sapo_trackers.common import MissingExtra, RunInfo, Tracker, numbers, step_of

log = logging.getLogger("sapo.trackers")

#: ``run.report_to`` names -> the module that holds that tracker's ``start``.
TRACKERS = {
    "tensorboard": "sapo_trackers.tensorboard",
    "wandb": "sapo_trackers.wandb",
    "trackio": "sapo_trackers.trackio",
    "mlflow": "sapo_trackers.mlflow",
}


class Reporting:
    """One tracker's run for one node: the first failure is warned about, then it is dropped."""

    def __init__(self, name: str, node: str) -> None:
        self.name = name
        self.node = node
        self.tracker: Tracker | None = None

    def start(self, run: RunInfo) -> None:
        try:
            self.tracker = importlib.import_module(TRACKERS[self.name]).start(run)
        except MissingExtra as exc:
            log.warning("%s: run.report_to names %s, but %s; the run goes on without it", self.node, self.name, exc)
        except Exception as exc:  # noqa: BLE001 - no tracker may stop a run
            log.warning(
                "%s: %s could not start (%s: %s); the run goes on without it",
                self.node,
                self.name,
                type(exc).__name__,
                exc,
            )
        else:
            log.info("%s: reporting to %s", self.node, self.name)

    def call(self, what: str, *args: Any) -> None:
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, what)(*args)
        except Exception as exc:  # noqa: BLE001 - a full disk or a lost login is a warning, not the run's end
            self.tracker = None
            log.warning(
                "%s: %s failed (%s: %s); the run goes on without it", self.node, self.name, type(exc).__name__, exc
            )


# The running nodes of this process (several in tests and notebooks): (experiment, node) -> its trackers.
_runs: dict[tuple[str, str], list[Reporting]] = {}
_lock = threading.Lock()


def requested(context: BackendContext) -> list[str]:
    """The known tracker names of ``run.report_to``, in order, once each; a warning for any other."""
    names = context.config.run.report_to
    known: list[str] = []
    for name in names:
        name = str(name).strip().lower()
        if name in TRACKERS:
            if name not in known:
                known.append(name)
            continue
        close = difflib.get_close_matches(name, TRACKERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        log.warning("run.report_to: no tracker %r%s; choose from %s", name, hint, ", ".join(TRACKERS))
    return known


@sapo_core.hookimpl
def run_started(context: BackendContext) -> None:
    if process_rank() != 0:  # the other processes of a distributed learner write nothing
        return
    names = requested(context)
    if not names:
        return
    run = RunInfo.of(context)
    trackers = [Reporting(name, context.node) for name in names]
    for tracker in trackers:
        tracker.start(run)
    with _lock:
        previous = _runs.pop((context.experiment, context.node), [])
        _runs[(context.experiment, context.node)] = trackers
    for tracker in previous:  # a run of the same node that never finished: close it first
        tracker.call("finish")


@sapo_core.hookimpl
def round_finished(context: BackendContext, round: int, metrics: Mapping[str, Any]) -> None:
    with _lock:
        trackers = list(_runs.get((context.experiment, context.node), ()))
    if not trackers:
        return
    values = numbers(metrics)
    for tracker in trackers:
        tracker.call("log", step_of(round), values)


@sapo_core.hookimpl
def run_finished(context: BackendContext, metrics: Mapping[str, Any]) -> None:
    with _lock:
        trackers = _runs.pop((context.experiment, context.node), [])
    for tracker in trackers:
        tracker.call("finish")
