"""Round sizes by device (`sapo_core.sizing`): on a CPU an offline run whose sizes are left at the
GPU-sized defaults takes smaller ones, and says so; a swarm node is warned with an estimate; a
size the user set, a GPU or an API backend changes nothing."""

from __future__ import annotations

import json
import logging

import pytest

from sapo_core import hookimpl
from sapo_core.config import load_config
from sapo_core.sizing import CPU_SIZES, CPU_TOKENS_PER_SECOND, SOURCE, device_sizes, estimate, round_tokens
from sapo_core.testing import ORACLE_INFERENCE

KEYS = tuple(CPU_SIZES)


class Device:
    """A plugin whose inference backend ``here`` generates on ``device``."""

    def __init__(self, device: str | None) -> None:
        self.device = device
        self.asked = 0

    @hookimpl
    def inference_device(self, config):
        self.asked += 1
        return self.device if config.inference.backend == "here" else None


@pytest.fixture
def device(sapo_plugins):
    def install(name: str | None) -> Device:
        plugin = Device(name)
        sapo_plugins.register(plugin, name="test-device")
        return plugin

    return install


def test_the_defaults_are_gpu_sized_and_the_cpu_sizes_smaller():
    config = load_config(env={})
    assert round_tokens(config) == 8 * 8 * 256
    assert round_tokens(config, CPU_SIZES) == 4 * 8 * 128
    assert estimate(16384) == "3.4 min" and estimate(4096) == "51 s"
    assert CPU_TOKENS_PER_SECOND > 0


def test_offline_on_a_cpu_the_defaults_become_the_cpus(sapo_plugins, device, caplog):
    device("cpu")
    config = load_config(env={}, sets=["inference.backend=here"])
    with caplog.at_level(logging.INFO, logger="sapo.sizing"):
        sized = device_sizes(config, sapo_plugins)
    assert sized == {"tasks.problems_per_round": (4, SOURCE), "inference.max_new_tokens": (128, SOURCE)}
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert (
        "tasks.problems_per_round=4, inference.max_new_tokens=128 instead of the GPU-sized defaults" in record.message
    )
    assert "4,096 tokens a round instead of 16,384, roughly 51 s a round here instead of 3.4 min" in record.message
    assert record.message.endswith("--set tasks.problems_per_round=8 --set inference.max_new_tokens=256")


def test_a_size_the_user_set_stays_and_the_others_shrink(sapo_plugins, device):
    device("cpu")
    config = load_config(env={"SAPO_INFERENCE_MAX_NEW_TOKENS": "256"}, sets=["inference.backend=here"])
    assert device_sizes(config, sapo_plugins) == {"tasks.problems_per_round": (4, SOURCE)}
    every = [f"{key}={value}" for key, value in (("tasks.problems_per_round", 8), ("inference.max_new_tokens", 300))]
    config = load_config(env={}, sets=["inference.backend=here", *every])
    assert device_sizes(config, sapo_plugins) == {}
    config = load_config(
        env={}, sets=["inference.backend=here", "tasks.problems_per_round=2", "inference.max_new_tokens=64"]
    )
    assert device_sizes(config, sapo_plugins) == {}, "already smaller than the CPU's"


def test_in_a_swarm_it_warns_with_an_estimate_and_changes_nothing(sapo_plugins, device, caplog):
    device("cpu")
    config = load_config(env={}, sets=["inference.backend=here", "swarm.transport=memory", "run.node_id=w1"])
    with caplog.at_level(logging.INFO, logger="sapo.sizing"):
        assert device_sizes(config, sapo_plugins) == {}
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.message.startswith(
        "w1: the inference backend generates on the CPU"
    )
    assert "16,384 tokens a round" in record.message and "roughly 3.4 min a round here" in record.message
    assert record.message.endswith("--set tasks.problems_per_round=4 --set inference.max_new_tokens=128")


@pytest.mark.parametrize("where", ["cuda", None])
def test_a_gpu_or_a_backend_that_does_not_say_changes_nothing(sapo_plugins, device, caplog, where):
    device(where)
    with caplog.at_level(logging.INFO, logger="sapo.sizing"):
        assert device_sizes(load_config(env={}, sets=["inference.backend=here"]), sapo_plugins) == {}
        assert device_sizes(load_config(env={}, sets=["inference.backend=elsewhere"]), sapo_plugins) == {}
    assert caplog.records == []


def test_nothing_is_asked_when_no_size_is_left_to_change(sapo_plugins, device):
    plugin = device("cpu")
    sets = ["inference.backend=here", *(f"{key}={value}" for key, value in CPU_SIZES.items())]
    assert device_sizes(load_config(env={}, sets=sets), sapo_plugins) == {}
    assert (
        device_sizes(load_config(env={}, sets=["inference.backend=here", "run.role=coordinator"]), sapo_plugins) == {}
    )
    assert plugin.asked == 0, "the question may import torch: only asked when it matters"


def test_quietly_in_the_other_processes(sapo_plugins, device, caplog):
    device("cpu")
    with caplog.at_level(logging.INFO, logger="sapo.sizing"):
        sized = device_sizes(load_config(env={}, sets=["inference.backend=here"]), sapo_plugins, show=False)
    assert sized and caplog.records == []


def test_a_plugin_that_fails_to_answer_is_skipped(sapo_plugins, caplog):
    class Broken:
        @hookimpl
        def inference_device(self, config):
            raise RuntimeError("no idea")

    sapo_plugins.register(Broken(), name="test-broken")
    assert sapo_plugins.ask("inference_device", config=load_config(env={}, sets=["inference.backend=here"])) is None
    assert "failed in inference_device" in caplog.text


ORACLE_ON_CPU = (
    ORACLE_INFERENCE
    + """

@hookimpl
def inference_device(config):
    return "cpu" if config.inference.backend == "oracle" else None
"""
)


@pytest.mark.parametrize("sets", [(), ("--set", "tasks.problems_per_round=8")])
def test_sapo_run_takes_the_cpu_sizes_and_records_them(sapo_cli, install_dist, tmp_path, sets):
    install_dist("sapo-oracle-cpu", "oracle_cpu_plugin", ORACLE_ON_CPU)
    from sapo_core.plugins import reset_plugins

    reset_plugins()  # the fixture's manager was loaded before the plugin was installed
    folder = tmp_path / "run"
    result = sapo_cli(
        "run",
        "--inference",
        "oracle",
        "--role",
        "contributor",
        "--rounds",
        "1",
        "--run-dir",
        str(folder),
        "--set",
        "eval.every=0",
        *sets,
    )
    assert result.exit_code == 0, result.output
    problems = 8 if sets else 4
    assert json.loads(result.stdout)["groups/local"] == problems
    saved = json.loads((folder / "config.json").read_text())
    assert (
        saved["tasks"]["problems_per_round"],
        saved["inference"]["num_completions"],
        saved["inference"]["max_new_tokens"],
    ) == (problems, 8, 128)
    assert "running on the CPU, so" in " ".join(result.stderr.split())
