"""Weights & Biases: one run per node, ``group`` = experiment, ``name`` = node, under ``<run dir>/wandb``.

Offline unless ``WANDB_MODE`` says otherwise (``WANDB_MODE=online`` after ``wandb login``): an
offline run needs no account or network, and ``wandb sync <run dir>/wandb/offline-run-*`` uploads
it later. The project is ``WANDB_PROJECT`` (default ``sapo``); ``WANDB_ENTITY`` and W&B's other
variables apply as usual.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sapo_trackers.common import MissingExtra, RunInfo

NAME = "wandb"
DEFAULT_PROJECT = "sapo"


class WandbRun:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self) -> None:
        self.run.finish()


def start(run: RunInfo) -> WandbRun:
    try:
        import wandb
    except ImportError as exc:
        raise MissingExtra(NAME, exc) from exc
    run.run_dir.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(
        console="off",  # sapo's own output stays sapo's: W&B would wrap stdout and stderr
        silent=True,
        # Several nodes may run in one process (tests, notebooks): each gets a run of its own.
        reinit="create_new",
    )
    wandb_run = wandb.init(
        project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        group=run.experiment,
        name=run.node,
        job_type=run.role,
        dir=str(run.run_dir),
        config=dict(run.config),
        mode=os.environ.get("WANDB_MODE") or "offline",
        settings=settings,
    )
    return WandbRun(wandb_run)
