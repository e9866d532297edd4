"""trackio: one run per node, ``project`` = experiment, ``name`` = node, ``group`` = experiment.

trackio keeps its runs in a local SQLite database, ``<TRACKIO_DIR>/<experiment>.db``
(``TRACKIO_DIR`` defaults to ``~/.cache/huggingface/trackio``; it is read when trackio is first
imported); ``trackio show --project <experiment>`` opens its dashboard. A Space or server is used
only when trackio's own variables ask for one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from sapo_trackers.common import MissingExtra, RunInfo

NAME = "trackio"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """trackio prints its progress on stdout, which is sapo's (``--json``): send it to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class TrackioRun:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        with _quiet():
            self.run.log(dict(metrics), step=step)

    def finish(self) -> None:
        with _quiet():
            self.run.finish()  # waits for trackio's writer thread: the rows are in the database after it


def start(run: RunInfo) -> TrackioRun:
    try:
        import trackio
    except ImportError as exc:
        raise MissingExtra(NAME, exc) from exc
    with _quiet():
        trackio_run = trackio.init(
            project=run.experiment,
            name=run.node,
            group=run.experiment,
            config=dict(run.config),
            # The machine's load is not the run's metrics; a CPU node trains on every core already.
            auto_log_gpu=False,
            auto_log_cpu=False,
            embed=False,
        )
    return TrackioRun(trackio_run)
