"""TensorBoard: the event files tensorboardX wrote, read back with TensorBoard's own reader."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
event_multiplexer = pytest.importorskip("tensorboard.backend.event_processing.plugin_event_multiplexer")

from sapo_trackers_tracked import API_KEY, SECRET, context, drive  # noqa: E402


def scalars(folder, tag):
    events = event_accumulator.EventAccumulator(str(folder))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)], events


def test_every_round_under_sapos_names_one_run_per_node_grouped_by_experiment(tmp_path):
    for node in ("worker-1", "worker-2"):
        drive(context(tmp_path, node, ["tensorboard"]))

    # `tensorboard --logdir <run.workdir>` finds one run per node, named <experiment>/<node>.
    runs = event_multiplexer.EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    runs.Reload()
    assert sorted(runs.Runs()) == ["exp/worker-1", "exp/worker-2"]

    folder = tmp_path / "exp" / "worker-1"
    pass1, events = scalars(folder, "eval/pass@1")
    assert pass1 == [(0, 0.25), (2, 0.5)]  # step = round + 1: the evaluation before training is step 0
    assert scalars(folder, "reward/mean")[0] == [(1, 0.5), (2, 0.75)]
    assert scalars(folder, "eval/pass@1/arithmetic")[0] == [(0, 0.25), (2, 0.5)]
    tags = events.Tags()["scalars"]
    assert not {"round", "node", "time"} & set(tags)

    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"node_id": "worker-1"' in config and '"report_to": [' in config
    assert '"secret": "***"' in config and '"api_key": "***"' in config
    assert SECRET not in config and API_KEY not in config
