"""TensorBoard: event files in the node's run directory, written by tensorboardX (no torch, no TensorFlow).

For a swarm node the run directory is ``<run.workdir>/<experiment>/<node>``, so ``tensorboard
--logdir <run.workdir>`` shows one run per node grouped by experiment; an offline run is
``<experiment>/<timestamp>``, a launcher's node ``runs/<node>`` under its launch folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sapo_trackers.common import MissingExtra, RunInfo

NAME = "tensorboard"


class TensorBoardRun:
    def __init__(self, writer: Any, summary: type) -> None:
        self.writer = writer
        self.summary = summary

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        values = [self.summary.Value(tag=key, simple_value=value) for key, value in metrics.items()]
        self.writer.add_summary(self.summary(value=values), step)
        self.writer.flush()  # a round takes minutes: a curve that waits for the next flush looks stalled

    def finish(self) -> None:
        self.writer.close()


def start(run: RunInfo) -> TensorBoardRun:
    try:
        from tensorboardX import FileWriter
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import text
    except ImportError as exc:
        raise MissingExtra(NAME, exc) from exc
    run.run_dir.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails here, not in the writer's thread
    # tensorboardX's FileWriter, not its SummaryWriter: that one renames tags to TensorFlow's op
    # names (eval/pass@1 -> eval/pass_1); TensorBoard shows sapo's own names as they are.
    writer = FileWriter(str(run.run_dir), flush_secs=30)
    # Text summaries are Markdown: indented by four spaces, the JSON shows as a code block.
    shown = json.dumps(run.config, indent=2, sort_keys=True, default=str)
    writer.add_summary(text("config", "\n".join("    " + line for line in shown.splitlines())), 0)
    writer.flush()
    return TensorBoardRun(writer, Summary)
