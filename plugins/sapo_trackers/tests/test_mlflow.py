"""MLflow: what the file store holds, read back through MLflow's tracking API."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from sapo_trackers_tracked import API_KEY, SECRET, context, drive  # noqa: E402

from sapo_trackers.mlflow import metric_name  # noqa: E402


def test_one_run_per_node_in_the_experiment_on_a_file_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for node in ("worker-1", "worker-2"):
        drive(context(tmp_path, node, ["mlflow"]))

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())  # <run.workdir>/mlruns
    experiment = client.get_experiment_by_name("exp")
    found = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in found) == ["worker-1", "worker-2"]
    run = next(run for run in found if run.info.run_name == "worker-1")
    assert run.info.status == "FINISHED"
    assert run.data.tags["sapo.node"] == "worker-1" and run.data.tags["sapo.role"] == "worker"

    def history(name):
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]

    assert history("eval/pass_at_1") == [(0, 0.25), (2, 0.5)]
    assert history("eval/pass_at_1.arithmetic") == [(0, 0.25), (2, 0.5)]
    assert history("reward/mean") == [(1, 0.5), (2, 0.75)]
    assert not {"round", "node", "time"} & set(run.data.metrics)

    params = run.data.params
    assert params["run.node_id"] == "worker-1" and params["run.experiment"] == "exp"
    assert params["swarm.secret"] == "***" and params["inference.api_key"] == "***"
    assert SECRET not in str(params) and API_KEY not in str(params)


def test_metric_names_are_sapos_where_mlflow_allows():
    assert metric_name("reward/mean") == "reward/mean"
    assert metric_name("eval/pass@1") == "eval/pass_at_1"
    assert metric_name("curriculum/arithmetic/level") == "curriculum/arithmetic.level"
    assert metric_name("tasks.rg:leg_counts.size") == "tasks.rg_leg_counts.size"
