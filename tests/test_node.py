"""The node loop, end to end on the built-in tasks, rewards, transports and checkpoints.

Generation and learning come from two small plugins registered for the test: a seeded
"oracle" that answers right or wrong by a coin flip per replicate (so groups carry signal),
and a learner that records what it was given and saves/loads that record as JSON.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from sapo_core import codec, hookimpl
from sapo_core.config import load_config
from sapo_core.errors import ConfigError, PluginError, SapoError
from sapo_core.node import Node
from sapo_core.records import Completion
from sapo_core.testing import CoinFlipInference, RecordingLearner
from sapo_core.transports import MemoryTransport

Oracle = CoinFlipInference


Recorder = RecordingLearner


class Backends:
    def __init__(self) -> None:
        self.oracles: dict[str, Oracle] = {}
        self.learners: dict[str, Recorder] = {}

    @hookimpl
    def register_inference(self, register):
        def build(settings, context):
            return self.oracles.setdefault(context.node, Oracle())

        register("oracle", build)

    @hookimpl
    def register_learners(self, register):
        def build(settings, context):
            return self.learners.setdefault(context.node, Recorder())

        register("recorder", build)


@pytest.fixture
def backends(sapo_plugins):
    backends = Backends()
    sapo_plugins.register(backends, name="test-backends")
    return backends


def config(tmp_path, *sets, **env):
    base = [
        "inference.backend=oracle",
        "train.backend=recorder",
        "inference.num_completions=4",
        "tasks.problems_per_round=6",
        # One batch a round, so that generate calls are counted exactly; the resample tests turn it on.
        "tasks.resample=0",
        f"run.workdir={tmp_path.as_posix()}",
    ]
    return load_config(env=env, sets=[*base, *sets])


def run_dir(tmp_path, experiment="default"):
    """The one offline run directory under ``tmp_path`` (an automatic, timestamped one)."""
    found = list((tmp_path / experiment).glob("*/metrics.jsonl"))
    assert len(found) == 1, found
    return found[0].parent


def metrics_lines(tmp_path, node=None, experiment="default"):
    """A swarm node's metrics (``node``), or those of the one offline run."""
    folder = tmp_path / experiment / node if node else run_dir(tmp_path, experiment)
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_offline_loop_generates_scores_trains_and_checkpoints(tmp_path, sapo_plugins, backends):
    cfg = config(tmp_path, "run.rounds=3", "checkpoint.every=2")
    last = Node.from_config(cfg, sapo_plugins).run()
    lines = metrics_lines(tmp_path)
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert last == lines[-1]
    for line in lines:
        assert line["groups/local"] == 6
        assert 0.0 < line["reward/mean"] < 1.1
        assert line["train/loss"] == 0.5
        assert line["groups/trained_external"] == 0
        # every group the learner saw had a learning signal
        assert line["groups/trained_local"] == 6 - line["groups/zero_variance"]
    learner = backends.learners["node-0"]
    assert [entry["round"] for entry in learner.trained] == [0, 1, 2]
    checkpoints = sorted(p.name for p in (run_dir(tmp_path) / "checkpoints").iterdir())
    assert checkpoints == ["round-000001", "round-000002"], "every 2 rounds, and after the last"


def test_rollouts_are_reproducible_and_differ_between_nodes(tmp_path, sapo_plugins, backends):
    Node.from_config(config(tmp_path / "a", "run.rounds=1"), sapo_plugins).run()
    backends.learners.clear()
    Node.from_config(config(tmp_path / "b", "run.rounds=1"), sapo_plugins).run()
    backends.learners.clear()
    Node.from_config(config(tmp_path / "c", "run.rounds=1", "run.node_id=node-1"), sapo_plugins).run()
    a, b = metrics_lines(tmp_path / "a"), metrics_lines(tmp_path / "b")
    c = metrics_lines(tmp_path / "c")
    assert a[0]["reward/mean"] == b[0]["reward/mean"]
    trained = [
        json.loads((run_dir(tmp_path / d) / "checkpoints" / "round-000000" / "recorder.json").read_text())
        for d in ("a", "b", "c")
    ]
    assert trained[0] == trained[1]
    assert trained[0] != trained[2]
    assert c[0]["node"] == "node-1"


def test_resume_continues_after_the_newest_checkpoint(tmp_path, sapo_plugins, backends):
    Node.from_config(config(tmp_path, "run.rounds=2", "checkpoint.every=1"), sapo_plugins).run()
    backends.learners.clear()
    Node.from_config(config(tmp_path, "run.rounds=4", "checkpoint.every=1", "run.resume=true"), sapo_plugins).run()
    assert [line["round"] for line in metrics_lines(tmp_path)] == [0, 1, 2, 3]
    resumed = backends.learners["node-0"]
    assert [entry["round"] for entry in resumed.trained] == [0, 1, 2, 3], "state of rounds 0-1 came from the checkpoint"

    # the same rounds in one go give the same training record
    backends.learners.clear()
    Node.from_config(config(tmp_path / "straight", "run.rounds=4"), sapo_plugins).run()
    assert backends.learners["node-0"].trained == resumed.trained


def test_failed_generation_drops_only_its_problem(tmp_path, sapo_plugins, backends):
    cfg = config(tmp_path, "run.rounds=1")
    node = Node.from_config(cfg, sapo_plugins)
    problems_seen = []
    original = node.inference.generate

    def flaky(problems, n, params):
        problems_seen.extend(problems)
        out = original(problems, n, params)
        out[1] = out[1][:2]  # a request that came back short
        out[3] = []  # one that failed outright
        return out

    node.inference.generate = flaky
    metrics = node.run()
    assert metrics["inference/dropped_problems"] == 2
    assert metrics["groups/local"] == 4


def test_a_reward_that_raises_scores_zero_and_the_round_goes_on(tmp_path, sapo_plugins, backends, caplog):
    class Exploding:
        def score(self, problem, completions):
            raise ZeroDivisionError("reward bug")

    class Plugin:
        @hookimpl
        def register_rewards(self, register):
            register("exploding", lambda s, c: Exploding())

    sapo_plugins.register(Plugin(), name="exploding")
    cfg = config(tmp_path, "run.rounds=1", "rewards.weights={correctness=1.0, exploding=1.0}")
    with caplog.at_level(logging.WARNING, logger="sapo.node"):
        metrics = Node.from_config(cfg, sapo_plugins).run()
    assert "reward bug" in caplog.text
    assert metrics["groups/local"] == 6


def test_default_role_without_a_learner_becomes_a_contributor(tmp_path, sapo_plugins, backends, caplog):
    cfg = load_config(env={}, sets=["inference.backend=oracle", "run.rounds=1", f"run.workdir={tmp_path.as_posix()}"])
    with caplog.at_level(logging.WARNING, logger="sapo.node"):
        node = Node.from_config(cfg, sapo_plugins)
    assert node.context.role == "contributor" and node.learner is None
    assert "pip install sapo-local" in caplog.text
    metrics = node.run()
    assert "train/loss" not in metrics and metrics["groups/local"] == 8


def test_explicit_worker_without_a_learner_is_an_error(tmp_path, sapo_plugins, backends):
    cfg = load_config(
        env={}, sets=["inference.backend=oracle", "run.role=worker", f"run.workdir={tmp_path.as_posix()}"]
    )
    with pytest.raises(
        PluginError,
        match=r"Unknown learner 'grpo'\. It comes with sapo-local: pip install sapo-local\. Installed: recorder",
    ):
        Node.from_config(cfg, sapo_plugins)


def test_backend_settings_are_checked_against_the_registration(tmp_path, sapo_plugins, backends):
    cfg = config(tmp_path, "inference.base_url=http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"takes no settings.*inference\.base_url"):
        Node.from_config(cfg, sapo_plugins)
    cfg = config(tmp_path, "tasks.arithmetic.difficulty=9")
    with pytest.raises(ConfigError, match=r"tasks\.arithmetic\.difficulty"):
        Node.from_config(cfg, sapo_plugins)


def test_a_factory_that_fails_names_its_backend(tmp_path, sapo_plugins, backends):
    class Plugin:
        @hookimpl
        def register_inference(self, register):
            def build(settings, context):
                raise OSError("model file missing")

            register("broken", build)

    sapo_plugins.register(Plugin(), name="broken-factory")
    cfg = config(tmp_path, "inference.backend=broken")
    with pytest.raises(
        SapoError, match=r"inference 'broken' from \(not installed\) failed to start: OSError: model file missing"
    ):
        Node.from_config(cfg, sapo_plugins)


# ------------------------------------------------------------------------------- swarm


def swarm_config(tmp_path, root, node, role, *sets):
    return config(
        tmp_path,
        "swarm.transport=memory",
        f"swarm.root={root}",
        f"run.node_id={node}",
        f"run.role={role}",
        "swarm.poll_seconds=0.01",
        "swarm.round_seconds=20",
        "swarm.local_groups=3",
        "swarm.external_groups=3",
        "run.rounds=3",
        *sets,
    )


def run_threads(nodes):
    for node in nodes:  # every node announced before any starts, so none mistakes a late peer for an absent one
        node.join()
    errors = []

    def target(node):
        try:
            node.run()
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a node hung"
    assert not errors, errors


def test_heartbeats_are_written_once_a_poll_interval_and_at_once_for_a_new_round(
    tmp_path, sapo_plugins, backends, monkeypatch
):
    node = Node.from_config(
        swarm_config(tmp_path, f"swarm-{tmp_path.name}", "alice", "worker", "swarm.poll_seconds=0.2"), sapo_plugins
    )
    written: list[int] = []
    monkeypatch.setattr(node.transport, "heartbeat", lambda info: written.append(info.round))
    for _ in range(5):  # a wait's fast first polls
        node.beat(0)
    assert written == [0], "one write, not one a poll"
    node.beat(1)
    assert written == [0, 1], "a new round is told at once"
    time.sleep(0.25)
    node.beat(1)
    assert written == [0, 1, 1], "and the same round again once a poll interval has passed"


def test_a_swarm_shares_rollouts_and_each_worker_trains_on_its_peers(tmp_path, sapo_plugins, backends):
    root = f"swarm-{tmp_path.name}"
    nodes = [Node.from_config(swarm_config(tmp_path, root, "coord", "coordinator"), sapo_plugins)]
    for name in ("alice", "bob"):
        nodes.append(Node.from_config(swarm_config(tmp_path, root, name, "worker"), sapo_plugins))
    run_threads(nodes)
    for me, peer in (("alice", "bob"), ("bob", "alice")):
        lines = metrics_lines(tmp_path, node=me)
        assert [line["round"] for line in lines] == [0, 1, 2]
        for line in lines:
            assert line["payloads/peers"] == 1
            assert line["groups/external_available"] == 6
            assert line["groups/trained_local"] <= 3 and line["groups/trained_external"] <= 3
        trained_nodes = {node for entry in backends.learners[me].trained for node, _ in entry["groups"]}
        assert trained_nodes == {me, peer}
    coordinator_state = MemoryTransport(root, "default").read_state()
    assert coordinator_state.round == 3


def test_a_coordinator_needs_none_of_the_task_reward_inference_or_learner_plugins(tmp_path, sapo_plugins, backends):
    """A coordinator never generates, scores or trains: names of backends not installed here do not stop it."""
    from sapo_core import preflight

    root = f"swarm-{tmp_path.name}"
    absent = (
        'tasks.names=["not-installed-task"]',
        "rewards.weights={not_installed_reward=1.0}",
        "rewards.gate=",
        "inference.backend=not-installed",
        "train.backend=not-installed",
        "checkpoint.backend=not-installed",
    )
    cfg = swarm_config(tmp_path, root, "coord", "coordinator", *absent)
    preflight.check(cfg, sapo_plugins)  # what `sapo config --role coordinator` checks
    node = Node.from_config(cfg, sapo_plugins)
    assert (node.tasks, node.rewards, node.inference, node.learner) == ({}, {}, None, None)
    with pytest.raises(PluginError, match="not_installed_reward"):  # a worker still needs them all
        Node.from_config(swarm_config(tmp_path, root, "alice", "worker", *absent[1:3]), sapo_plugins)


def test_corrupt_and_forged_payloads_are_refused_and_counted(tmp_path, sapo_plugins, backends, caplog):
    root = f"swarm-{tmp_path.name}"
    transport = MemoryTransport(root, "default")
    transport.put_raw(0, "garbage", b"\x1f\x8b not really gzip")
    forged = codec.RoundPayload(experiment="default", round=0, node="mallory", groups=(), created_at=1.0)
    transport.put_raw(0, "mallory", codec.write_gz(forged))  # unsigned, while the swarm has a secret
    cfg = swarm_config(
        tmp_path, root, "alice", "worker", "run.rounds=1", "swarm.secret=s3cret", "swarm.round_seconds=0.2"
    )
    with caplog.at_level(logging.WARNING, logger="sapo.node"):
        metrics = Node.from_config(cfg, sapo_plugins).run()
    assert metrics["payloads/rejected"] == 2
    assert metrics["payloads/peers"] == 0
    assert "garbage" in caplog.text and "mallory" in caplog.text
    assert "s3cret" not in caplog.text


def test_joining_a_swarm_with_other_settings_is_refused(tmp_path, sapo_plugins, backends):
    root = f"swarm-{tmp_path.name}"
    first = Node.from_config(
        swarm_config(tmp_path, root, "alice", "worker", "run.rounds=1", "swarm.round_seconds=0.1"), sapo_plugins
    )
    first.run()
    other = swarm_config(tmp_path, root, "bob", "worker", "swarm.round_seconds=0.1", 'tasks.names=["sort"]')
    with pytest.raises(ConfigError, match=r"tasks\.names: swarm has \[\"arithmetic\"\], this node has \[\"sort\"\]"):
        Node.from_config(other, sapo_plugins).run()


def test_a_worker_without_a_coordinator_does_not_wait_forever(tmp_path, sapo_plugins, backends):
    root = f"swarm-{tmp_path.name}"
    cfg = swarm_config(tmp_path, root, "alice", "worker", "run.rounds=2", "swarm.round_seconds=0.2")
    Node.from_config(cfg, sapo_plugins).run()
    assert [line["round"] for line in metrics_lines(tmp_path, node="alice")] == [0, 1]


def test_in_a_coordinated_round_a_worker_waits_for_the_close_not_for_its_own_view_of_who_is_live(
    tmp_path, sapo_plugins, backends
):
    """On a lagging synced folder a peer's heartbeat may never have arrived whole: the worker, seeing
    only itself, must still wait for the coordinator's close and the payloads it closed with."""
    import time

    from sapo_core.interfaces import SwarmState
    from sapo_core.records import RoundPayload

    root = f"swarm-{tmp_path.name}"
    transport = MemoryTransport(root, "default")
    transport.write_state(SwarmState(round=0, deadline=time.time() + 60, updated_at=time.time(), coordinator="coord"))
    alice = Node.from_config(swarm_config(tmp_path, root, "alice", "worker"), sapo_plugins)
    alice.transport.publish(RoundPayload(experiment="default", round=0, node="alice", groups=(), created_at=1.0))
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 5:  # bob's payload lands, then the coordinator closes the round with both
            transport.publish(RoundPayload(experiment="default", round=0, node="bob", groups=(), created_at=1.0))
            transport.write_state(
                SwarmState(
                    round=1,
                    deadline=time.time() + 60,
                    updated_at=time.time(),
                    coordinator="coord",
                    closed_with=("alice", "bob"),
                )
            )

    alice.sleep = sleep
    alice.wait_for_peers(0)
    assert len(polls) == 5, "it went on as soon as it saw the round closed, and not before"


def test_a_peer_cannot_forge_the_answer_of_a_problem(tmp_path, sapo_plugins, backends):
    import attrs

    from sapo_core.records import Group, RoundPayload
    from sapo_core.tasks.arithmetic import ArithmeticTask

    root = f"swarm-{tmp_path.name}"
    genuine = ArithmeticTask().generate(11)
    forged = attrs.evolve(ArithmeticTask().generate(12), answer=7)  # "7" is now right, says the peer
    completions = [Completion("<answer>7</answer>"), Completion("<answer>8</answer>")]
    groups = [
        Group(problem=p, completions=completions, rewards=[1.0, 0.0], advantages=[1.0, -1.0], node="mallory")
        for p in (genuine, forged)
    ]
    MemoryTransport(root, "default").publish(RoundPayload(experiment="default", round=0, node="mallory", groups=groups))
    cfg = swarm_config(tmp_path, root, "alice", "worker", "run.rounds=1", "swarm.round_seconds=0.2")
    metrics = Node.from_config(cfg, sapo_plugins).run()
    assert metrics["payloads/peers"] == 1
    assert metrics["groups/external_refused"] == 1
    assert metrics["groups/external_available"] == 1


# --------------------------------------------------------------------- run directories

STAMP = r"\d{8}-\d{6}(-\d+)?"


def test_an_offline_run_gets_its_own_timestamped_run_directory(tmp_path, sapo_plugins, backends):
    import re

    cfg = config(
        tmp_path,
        "run.rounds=3",
        "checkpoint.every=2",
        "eval.every=2",
        "eval.problems=4",
        "swarm.secret=hush",
        "run.seed=3",
    )
    node = Node.from_config(cfg, sapo_plugins)
    folder = node.context.workdir
    assert folder.parent == tmp_path / "default" and re.fullmatch(STAMP, folder.name)
    node.run()
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert "config.json" in names and "metrics.jsonl" in names
    assert [n for n in names if n.startswith("metrics/")] == [
        "metrics/eval_iter_001.json",
        "metrics/eval_iter_002.json",
        "metrics/train_iter_000.json",
        "metrics/train_iter_001.json",
        "metrics/train_iter_002.json",
    ]
    assert {n.split("/")[1] for n in names if n.startswith("checkpoints/")} == {"round-000001", "round-000002"}
    stored = json.loads((folder / "config.json").read_text())
    assert stored["swarm"]["secret"] == "***" and "hush" not in (folder / "config.json").read_text()
    assert stored["run"]["dir"] == str(folder) and stored["run"]["seed"] == 3
    assert stored["eval"]["every"] == 2
    train = json.loads((folder / "metrics" / "train_iter_001.json").read_text())
    line = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()][1]
    assert train == {k: v for k, v in line.items() if not k.startswith("eval/") and k != "time/eval"}
    assert (folder / "metrics" / "train_iter_001.json").read_text().startswith("{\n  "), "pretty JSON"

    # a second run of the same experiment does not touch the first
    Node.from_config(config(tmp_path, "run.rounds=1"), sapo_plugins).run()
    assert len(list((tmp_path / "default").iterdir())) == 2


def test_run_dir_is_used_as_given(tmp_path, sapo_plugins, backends):
    folder = tmp_path / "mine" / "exp1"
    Node.from_config(config(tmp_path, "run.rounds=1", f"run.dir={folder.as_posix()}"), sapo_plugins).run()
    assert (folder / "metrics.jsonl").exists() and (folder / "checkpoints" / "round-000000").is_dir()
    assert not (tmp_path / "default").exists()
    with pytest.raises(ConfigError, match="run.dir"):
        config(tmp_path, "run.dir=s3://bucket/run")


def test_resume_continues_the_newest_run_that_has_a_checkpoint(tmp_path, sapo_plugins, backends, caplog):
    first = Node.from_config(config(tmp_path, "run.rounds=2"), sapo_plugins)
    first.run()
    second = Node.from_config(config(tmp_path, "run.rounds=2"), sapo_plugins)
    second.run()
    assert second.context.workdir != first.context.workdir
    later = tmp_path / "default" / "29991231-235959"  # newer, but without a checkpoint (e.g. it crashed early)
    later.mkdir()
    (tmp_path / "default" / "sweep-29991231-235959").mkdir()  # not a run directory
    with caplog.at_level(logging.INFO, logger="sapo.node"):
        resumed = Node.from_config(config(tmp_path, "run.rounds=3", "run.resume=true"), sapo_plugins)
    assert resumed.context.workdir == second.context.workdir
    assert str(second.context.workdir) in caplog.text and "round 1" in caplog.text
    resumed.run()

    def rounds(folder):
        return [json.loads(x)["round"] for x in (folder / "metrics.jsonl").read_text().splitlines()]

    assert rounds(second.context.workdir) == [0, 1, 2]
    assert rounds(first.context.workdir) == [0, 1]
    assert not any(later.iterdir())


def test_resume_without_a_checkpointed_run_is_a_clear_error(tmp_path, sapo_plugins, backends):
    (tmp_path / "default" / "20260101-000000").mkdir(parents=True)
    with pytest.raises(
        ConfigError, match=r"--resume: no run of experiment 'default' in .* has a checkpoint.*--run-dir"
    ):
        Node.from_config(config(tmp_path, "run.resume=true"), sapo_plugins)
    assert [p.name for p in (tmp_path / "default").iterdir()] == ["20260101-000000"], "no new run directory"


def test_a_run_that_fails_to_start_leaves_no_empty_run_directory(tmp_path, sapo_plugins, backends):
    with pytest.raises(PluginError):
        Node.from_config(config(tmp_path, "inference.backend=nope"), sapo_plugins)
    assert not (tmp_path / "default").exists() or not any((tmp_path / "default").iterdir())


def test_a_resumed_run_logs_changed_settings(tmp_path, sapo_plugins, backends, caplog):
    folder = tmp_path / "run"
    Node.from_config(config(tmp_path, "run.rounds=1", f"run.dir={folder.as_posix()}"), sapo_plugins).run()
    with caplog.at_level(logging.INFO, logger="sapo.node"):
        Node.from_config(
            config(tmp_path, "run.rounds=2", "run.resume=true", f"run.dir={folder.as_posix()}"), sapo_plugins
        ).run()
    assert "run.rounds: 1 -> 2" in caplog.text
    assert json.loads((folder / "config.json").read_text())["run"]["rounds"] == 2


# ----------------------------------------------------------------------------- progress


def test_summary_shows_whichever_headline_metrics_are_present():
    from sapo_core.progress import summary, summary_line

    full = {
        "reward/mean": 0.41234,
        "reward/accuracy": 0.375,
        "eval/pass@1": 0.40625,
        "train/kl": 0.012345,
        "train/clip_ratio_low": 0.01,
        "train/clip_ratio_high": 0.011,
        "inference/tokens_per_second": 1534.4,
        "train/tokens_per_second": 1.0,
        "train/loss": 0.12345,
        "time/round": 12.34,
    }
    assert (
        summary(full) == "reward 0.412  acc 0.375  pass@1 0.406  kl 0.01235  clip 0.021  tok/s 1534  loss 0.1235  12.3s"
    )
    assert "clip 0.500" in summary({"train/clip_ratio": 0.5, "train/clip_ratio_low": 0.1})
    assert summary({"train/tokens_per_second": 812.0}) == "tok/s 812"
    assert summary({"train/loss": float("nan")}) == "loss nan"
    assert summary({"reward/mean": True, "node": "x"}) == ""
    assert summary_line("node-0", 2, 10, {"reward/mean": 1.0}) == "node-0 round 3/10: reward 1.000"


def test_every_display_counts_rounds_from_1_and_names_the_evaluation_before_training():
    from sapo_core.progress import round_name, summary_line

    assert [round_name(r, 4) for r in (-1, 0, 3)] == ["before training", "round 1/4", "round 4/4"]
    assert round_name(2) == "round 3"
    # metrics.jsonl's round -1: the held-out evaluation before round 1, not a "round 0/4".
    assert summary_line("w-1", -1, 4, {"eval/pass@1": 0.1667}) == "w-1 before training: pass@1 0.167"


def test_each_round_prints_one_summary_line_when_stderr_is_not_a_terminal(tmp_path, sapo_plugins, backends, capsys):
    Node.from_config(config(tmp_path, "run.rounds=3", "eval.every=2", "eval.problems=2"), sapo_plugins).run()
    err = capsys.readouterr().err
    # Log records (e.g. "node-0: round 1 has no group with a learning signal") may be on stderr too.
    lines = [line for line in err.splitlines() if line.startswith("node-0 round ")]
    assert [line.split(":")[0] for line in lines] == ["node-0 round 1/3", "node-0 round 2/3", "node-0 round 3/3"]
    assert all("reward " in line and "acc " in line and "loss 0.5" in line and "tok/s " in line for line in lines)
    assert ["pass@1" in line for line in lines] == [False, True, True]
    assert "━" not in err, "no progress bar outside a terminal"


def test_the_progress_display_is_told_each_phase(tmp_path, sapo_plugins, backends, monkeypatch):
    from sapo_core.progress import RunProgress

    seen = []
    monkeypatch.setattr(RunProgress, "phase", lambda self, name: seen.append(name))
    Node.from_config(config(tmp_path, "run.rounds=2", "eval.every=2", "checkpoint.every=2"), sapo_plugins).run()
    assert seen == ["generate", "score", "train", "generate", "score", "train", "eval", "checkpoint"]


def test_an_explicit_run_dir_that_holds_a_run_needs_resume(tmp_path, sapo_plugins, backends):
    folder = tmp_path / "run"
    Node.from_config(config(tmp_path, "run.rounds=1", f"run.dir={folder.as_posix()}"), sapo_plugins).run()
    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.jsonl\): continue it with --resume"):
        Node.from_config(config(tmp_path, "run.rounds=2", f"run.dir={folder.as_posix()}"), sapo_plugins)


@pytest.mark.parametrize("collective", [False, True])
def test_another_process_evaluates_only_with_a_collective_backend(
    tmp_path, sapo_plugins, backends, monkeypatch, collective
):
    """Rank 1 of a distributed launch joins the evaluations of a backend whose ``generate`` needs every
    process (``collective``), and writes nothing; an API-like backend is left to the main process."""
    monkeypatch.setenv("RANK", "1")
    folder = tmp_path / "rank1"
    cfg = config(
        tmp_path,
        "run.rounds=2",
        "eval.every=1",
        "eval.at_start=true",
        "eval.problems=2",
        f"run.dir={folder.as_posix()}",
    )
    node = Node.from_config(cfg, sapo_plugins)
    oracle = node.inference
    if collective:
        oracle.collective = True
    assert node.eval_collective is collective
    last = node.run()
    # two rounds; with a collective backend also the baseline and one evaluation per round
    assert oracle.calls == (5 if collective else 2)
    assert ("eval/pass@1" in last) is collective
    assert [p for p in folder.rglob("*") if p.is_file()] == [], "only the main process writes"


# --------------------------------------------------------------------- curriculum, gate


def test_a_peers_problem_at_another_curriculum_level_is_trained_on_not_refused(tmp_path, sapo_plugins, backends):
    from sapo_core.records import Group, RoundPayload
    from sapo_core.tasks.arithmetic import ArithmeticTask

    root = f"swarm-{tmp_path.name}"
    easier = ArithmeticTask().at_level(1).generate(11)  # the peer's curriculum moved arithmetic down a level
    completions = [Completion("<answer>7</answer>"), Completion("<answer>8</answer>")]
    group = Group(problem=easier, completions=completions, rewards=[1.0, 0.0], advantages=[1.0, -1.0], node="bob")
    MemoryTransport(root, "default").publish(RoundPayload(experiment="default", round=0, node="bob", groups=[group]))
    cfg = swarm_config(tmp_path, root, "alice", "worker", "run.rounds=1", "swarm.round_seconds=0.2")
    metrics = Node.from_config(cfg, sapo_plugins).run()
    assert metrics["groups/external_refused"] == 0 and metrics["groups/external_available"] == 1


def test_the_curriculum_moves_with_the_rewards_is_in_the_metrics_and_survives_resume(tmp_path, sapo_plugins, backends):
    # The oracle answers right with probability 1/2 whatever the level: with a band above that, every
    # window of 6 groups is "too hard" and arithmetic steps down from level 3 to the bottom, 1.
    sets = [
        "run.rounds=2",
        "checkpoint.every=1",
        "tasks.arithmetic.difficulty=3",
        "tasks.curriculum_band=[0.9,1.0]",
        "tasks.curriculum_window=6",
    ]
    Node.from_config(config(tmp_path, *sets), sapo_plugins).run()
    lines = metrics_lines(tmp_path)
    assert [line["curriculum/arithmetic/level"] for line in lines] == [3.0, 2.0]
    assert all(0 <= line["curriculum/arithmetic/success"] <= 1 for line in lines)
    Node.from_config(config(tmp_path, *sets[1:], "run.rounds=3", "run.resume=true"), sapo_plugins).run()
    assert [line["curriculum/arithmetic/level"] for line in metrics_lines(tmp_path)] == [3.0, 2.0, 1.0]
    # Training drew level-1 problems in the last round; the held-out evaluation stays at the configured level.
    assert {entry["groups"][0][1].split("-")[1] for entry in backends.learners["node-0"].trained[-1:]} == {"1"}


def test_with_the_curriculum_off_the_configured_difficulty_is_trained_on(tmp_path, sapo_plugins, backends):
    Node.from_config(config(tmp_path, "run.rounds=1", "tasks.curriculum=false"), sapo_plugins).run()
    assert not any(key.startswith("curriculum/") for key in metrics_lines(tmp_path)[0])


def test_a_gate_that_names_no_weighted_reward_is_an_error(tmp_path, sapo_plugins, backends):
    with pytest.raises(ConfigError, match="rewards.gate = 'corectness' is not one of the weighted rewards"):
        Node.from_config(config(tmp_path, "rewards.gate=corectness"), sapo_plugins)


def test_dynamic_sampling_tops_up_the_groups_with_a_signal(tmp_path, sapo_plugins, backends):
    # Two completions per coin-flip problem: half the groups agree and teach nothing.
    sets = ["run.rounds=3", "inference.num_completions=2", "tasks.curriculum=false"]
    Node.from_config(config(tmp_path / "off", *sets), sapo_plugins).run()
    off = metrics_lines(tmp_path / "off")
    backends.learners.clear()
    backends.oracles.clear()
    Node.from_config(config(tmp_path / "on", *sets, "tasks.resample=4"), sapo_plugins).run()
    on = metrics_lines(tmp_path / "on")
    trained = json.loads((run_dir(tmp_path / "on") / "checkpoints" / "round-000002" / "recorder.json").read_text())
    for before, after, entry in zip(off, on, trained):
        # The first batch is the same draw, and the metrics that describe the model are its own.
        assert after["reward/mean"] == before["reward/mean"]
        assert after["groups/no_signal"] == before["groups/no_signal"]
        assert before["groups/trained_local"] == 6 - before["groups/no_signal"]
        assert 1 <= after["inference/extra_batches"] <= 4
        assert after["groups/local"] == 6 + after["groups/resampled"]
        # Extra batches add groups with a signal until the round has problems_per_round of them.
        assert after["groups/trained_local"] == min(6, before["groups/trained_local"] + after["groups/resampled"])
        ids = [problem for _, problem in entry["groups"]]
        assert len(set(ids)) == len(ids)  # every extra problem is a new one
    assert sum(line["groups/trained_local"] for line in on) > sum(line["groups/trained_local"] for line in off)
    assert sum(line["groups/trained_local"] == 6 for line in on) >= 2
    backends.learners.clear()
    backends.oracles.clear()
    Node.from_config(config(tmp_path / "again", *sets, "tasks.resample=4"), sapo_plugins).run()
    assert [line["groups/resampled"] for line in metrics_lines(tmp_path / "again")] == [
        line["groups/resampled"] for line in on
    ]


def test_dynamic_sampling_draws_more_only_for_rounds_short_of_a_signal(tmp_path, sapo_plugins, backends):
    sets = ["run.rounds=4", "inference.num_completions=4", "tasks.curriculum=false"]
    Node.from_config(config(tmp_path / "off", *sets), sapo_plugins).run()
    calls_without = backends.oracles.pop("node-0").calls
    backends.learners.clear()
    Node.from_config(config(tmp_path / "on", *sets, "tasks.resample=5"), sapo_plugins).run()
    lines = metrics_lines(tmp_path / "on")
    assert {line["groups/no_signal"] == 0 for line in lines} == {True, False}  # both kinds of round occur
    for line in lines:
        assert (line["inference/extra_batches"] == 0) == (line["groups/no_signal"] == 0)
        assert line["groups/resampled"] <= line["groups/no_signal"]
    assert backends.oracles["node-0"].calls == calls_without + sum(line["inference/extra_batches"] for line in lines)


def test_dynamic_sampling_is_on_by_default_for_a_node_that_trains(tmp_path, sapo_plugins, backends):
    cfg = load_config(
        sets=[
            "inference.backend=oracle",
            "train.backend=recorder",
            "inference.num_completions=2",
            "tasks.problems_per_round=6",
            "tasks.curriculum=false",
            "run.rounds=3",
            f"run.workdir={tmp_path.as_posix()}",
        ]
    )
    assert cfg.tasks.resample == 2
    Node.from_config(cfg, sapo_plugins).run()
    lines = metrics_lines(tmp_path)
    assert any(line["inference/extra_batches"] for line in lines)
    assert all(line["inference/extra_batches"] <= 2 for line in lines)
