"""MLflow: one run per node, in the MLflow experiment named like sapo's, the run named like the node.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///mlflow.db``), else
the file store ``<run.workdir>/mlruns``: no server, no database. MLflow 3 keeps its file store in
maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``, which is set for it here
when unset. MLflow's names differ from sapo's in two ways (`metric_name`): no ``@`` (``eval/pass@1`` is
``eval/pass_at_1``), and one ``/`` at most, after the first part (``eval/pass@1/arithmetic`` is
``eval/pass_at_1.arithmetic``): the file store keeps a metric in a file named by its path, so
``eval/pass_at_1`` could not be both a file and the folder of ``arithmetic``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

from sapo_trackers.common import MissingExtra, RunInfo, flat

NAME = "mlflow"
#: MLflow's limits: entities per log_batch call, parameters per call, characters of a parameter's value.
MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_PARAM_CHARS = 6000
_NOT_ALLOWED = re.compile(r"[^/\w.\- ]")  # MLflow's name rule (colons too are refused on Windows)


def metric_name(name: str) -> str:
    """``name`` as MLflow accepts a metric or parameter key: ``eval/pass@1/arithmetic`` ->
    ``eval/pass_at_1.arithmetic``, ``tasks.rg:leg_counts.size`` -> ``tasks.rg_leg_counts.size``."""
    head, slash, tail = name.replace("@", "_at_").partition("/")
    return _NOT_ALLOWED.sub("_", head + slash + tail.replace("/", "."))


def tracking_uri(run: RunInfo) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (run.workdir / "mlruns").resolve().as_uri()


class MlflowRun:
    def __init__(self, client: Any, run_id: str, metric: type) -> None:
        self.client = client
        self.run_id = run_id
        self.metric = metric

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        rows = [self.metric(metric_name(key), value, now, step) for key, value in metrics.items()]
        for first in range(0, len(rows), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=rows[first : first + MAX_METRICS])

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another node of the swarm created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start(run: RunInfo) -> MlflowRun:
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise MissingExtra(NAME, exc) from exc
    client = MlflowClient(tracking_uri=tracking_uri(run))
    tags = {
        "sapo.experiment": run.experiment,
        "sapo.node": run.node,
        "sapo.role": run.role,
        "sapo.run_dir": str(run.run_dir),
    }
    created = client.create_run(_experiment_id(client, run.experiment), run_name=run.node, tags=tags)
    run_id = created.info.run_id
    params = [Param(metric_name(key), str(value)[:MAX_PARAM_CHARS]) for key, value in flat(run.config).items()]
    for first in range(0, len(params), MAX_PARAMS):
        client.log_batch(run_id, params=params[first : first + MAX_PARAMS])
    return MlflowRun(client, run_id, Metric)
