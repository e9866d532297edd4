"""The schema: one frozen attrs class per section (`RunSettings` ...), their validators, and the
tables derived from them (`SECTIONS`, the core keys, which sections take extras).

Keys of ``inference``, ``train``, ``checkpoint``, ``swarm`` and ``eval`` that are not core keys are
*extras*: kept raw because only the chosen backend knows them. ``tasks.<task>.<key>`` and
``rewards.<reward>.<key>`` are the extras of one task or reward function. ``run``, ``model`` and
``advantages`` take no extras; ``eval``'s are the settings of its own inference backend
(``eval.inference``), when it has one.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from sapo_core.config.secrets import SECRET, _redacted_repr
from sapo_core.names import id_problem
from sapo_core.records import as_tuple
from sapo_core.tasks.presets import PRESETS

ROLES = ("coordinator", "worker", "contributor")
OPTIMIZER_STATES = ("newest", "all", "none")  # checkpoint.optimizer_state
LOG_LEVELS = ("debug", "info", "warning", "error")

# ------------------------------------------------------------------------------ validators
# Each raises ValueError(problem, attribute): the problem never contains the value (the caller
# shows it, or "<redacted>"), and the attribute lets `structure` name the key even when the
# check runs inside the attrs constructor.


def _check(test: typing.Callable[[Any], bool], problem: str) -> typing.Callable[[Any, Any, Any], None]:
    def validate(instance: Any, attribute: Any, value: Any) -> None:
        if not test(value):
            raise ValueError(problem, attribute)

    return validate


def _at_least(low: int) -> typing.Callable[[Any, Any, Any], None]:
    return _check(lambda v: v >= low, f"must be >= {low}")


_positive = _check(lambda v: v > 0, "must be > 0")
_fraction = _check(lambda v: 0 < v <= 1, "must be in (0, 1]")
_not_empty = _check(lambda v: bool(str(v).strip()), "must not be empty")


def _one_of(choices: Sequence[str]) -> typing.Callable[[Any, Any, Any], None]:
    return _check(lambda v: v in choices, f"must be one of: {', '.join(choices)}")


def _valid_name(instance: Any, attribute: Any, value: Any) -> None:
    """Experiment and node names become folder and file names on shared storage (`sapo_core.names`)."""
    problem = id_problem(value) if isinstance(value, str) else "it is not a string"
    if problem:
        raise ValueError(
            f"{problem} (a name is 1-64 characters of A-Z a-z 0-9 . _ -, not starting with '.' or '-', "
            "without '..', not ending with '.', not a Windows device name such as CON or NUL)",
            attribute,
        )


_local_folder = _check(lambda v: bool(v.strip()) and "://" not in v, "must be a local folder (not empty, not a URL)")
_local_folder_or_empty = _check(lambda v: "://" not in v, "must be a local folder (not a URL), or empty for automatic")


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _task_names(instance: Any, attribute: Any, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("must name at least one task", attribute)
    if any(not name.strip() for name in value):
        raise ValueError("task names must not be empty", attribute)
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a task", attribute)


def _task_weights(instance: Any, attribute: Any, value: tuple[float, ...]) -> None:
    if any(not w > 0 for w in value):
        raise ValueError("every weight must be > 0", attribute)
    # Runs inside the constructor only (instance is None in `structure`'s early per-field check).
    if instance is not None and value and len(value) != len(instance.names):
        raise ValueError(
            f"must be empty (uniform) or give one weight per task in tasks.names ({len(instance.names)})", attribute
        )


_DEFAULT_TASKS = ("arithmetic",)


def _preset(instance: Any, attribute: Any, value: str) -> None:
    if value and value not in PRESETS:
        close = difflib.get_close_matches(value, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {value!r}.{hint} Choose one of: {', '.join(PRESETS)}", attribute)


def _band(instance: Any, attribute: Any, value: tuple[float, ...]) -> None:
    if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        raise ValueError("must be two numbers [low, high]", attribute)
    if not 0 <= value[0] < value[1] <= 1:
        raise ValueError("must satisfy 0 <= low < high <= 1", attribute)


def _reward_weights(instance: Any, attribute: Any, value: Mapping[str, float]) -> None:
    if not value:
        raise ValueError("must name at least one reward function", attribute)
    if any(not name.strip() for name in value):
        raise ValueError("reward names must not be empty", attribute)


# ---------------------------------------------------------------------------------- schema


@attrs.frozen
class RunSettings:
    """``[run]``: which node this is, of which experiment, and how long it runs."""

    experiment: str = attrs.field(default="default", validator=_valid_name)  # nodes of one experiment train together
    node_id: str = attrs.field(default="node-0", validator=_valid_name)  # unique within the experiment
    role: str = attrs.field(default="worker", converter=_lower, validator=_one_of(ROLES))  # what this node does
    rounds: int = attrs.field(default=10, validator=_at_least(1))  # run until this many rounds are done
    seed: int = 0  # base seed of problems, sampling and training
    workdir: str = attrs.field(
        default="runs", validator=_local_folder
    )  # run directories go under <workdir>/<experiment>/
    # This run's directory (metrics, checkpoints, config.json). "" = automatic: an offline run
    # (transport none) gets <workdir>/<experiment>/<UTC timestamp>, a swarm node <workdir>/<experiment>/<node_id>.
    dir: str = attrs.field(default="", validator=_local_folder_or_empty)
    resume: bool = False  # continue from the newest complete checkpoint (offline: of the newest run that has one)
    log_level: str = attrs.field(default="info", converter=_lower, validator=_one_of(LOG_LEVELS))
    # Experiment trackers this run reports to: "tensorboard", "wandb", "trackio", "mlflow" (sapo-trackers, docs/trackers.md).
    report_to: tuple[str, ...] = ()


@attrs.frozen
class ModelSettings:
    """``[model]``: the policy being trained."""

    name: str = attrs.field(default="smollm2-135m", validator=_not_empty)  # a HF id, local folder, .gguf file or alias


@attrs.frozen
class InferenceSettings:
    """``[inference]``: how completions are sampled. Other keys are the backend's extras."""

    # A registered inference backend; the default is sapo-local's (`sapo_core.first_party`).
    backend: str = attrs.field(default="local", validator=_not_empty)
    num_completions: int = attrs.field(default=8, validator=_at_least(1))  # G: completions per problem
    # Below 1.0: a small model at temperature 1 writes fewer answers it can be credited for, so
    # fewer groups differ in reward and fewer give GRPO a signal (docs/benchmarks.md, "Learning signal").
    temperature: float = attrs.field(default=0.7, validator=_check(lambda v: v >= 0, "must be >= 0"))
    top_p: float = attrs.field(default=1.0, validator=_fraction)  # nucleus sampling mass
    top_k: int = attrs.field(default=0, validator=_at_least(0))  # 0: no top-k filtering
    max_new_tokens: int = attrs.field(default=256, validator=_at_least(1))  # per completion


@attrs.frozen
class TasksSettings:
    """``[tasks]``: which problems a round draws. ``[tasks.<task>]`` tables hold each task's settings."""

    names: tuple[str, ...] = attrs.field(default=_DEFAULT_TASKS, converter=as_tuple, validator=_task_names)
    weights: tuple[float, ...] = attrs.field(default=(), converter=as_tuple, validator=_task_weights)  # empty: uniform
    problems_per_round: int = attrs.field(default=8, validator=_at_least(1))  # B: problems per round
    # Per-node difficulty that follows the model (sapo_core.curriculum): a task whose groups'
    # success rate leaves curriculum_band moves a level down or up; evaluation stays at the
    # configured level. Tasks without levels are left as configured.
    curriculum: bool = True
    curriculum_band: tuple[float, float] = attrs.field(default=(0.2, 0.8), converter=as_tuple, validator=_band)
    curriculum_window: int = attrs.field(default=8, validator=_at_least(1))  # groups seen at a level before it moves
    # A named mix (sapo_core.tasks.presets, e.g. "sapo-paper"): its tasks, equally weighted, as tasks.names.
    preset: str = attrs.field(default="", validator=_preset)
    # DAPO's dynamic sampling: while fewer than problems_per_round own groups have a learning
    # signal, draw and generate up to this many more batches of new problems; their groups with a
    # signal join the round's (metrics: inference/extra_batches, groups/resampled). Nodes that train
    # only: a contributor publishes its one batch. 0: off. The
    # default 2 measured best on the H200 (docs/benchmarks.md, 2026-12-03): arithmetic +0.54, no stall.
    resample: int = attrs.field(default=2, validator=_at_least(0))

    def __attrs_post_init__(self) -> None:
        if not self.preset:
            return
        names = PRESETS[self.preset]
        if self.names not in (_DEFAULT_TASKS, names) or self.weights:
            raise ValueError(
                f"tasks.preset = {self.preset!r} chooses the tasks and their weights; "
                "leave tasks.names and tasks.weights unset, or drop the preset"
            )
        object.__setattr__(self, "names", names)


@attrs.frozen
class RewardsSettings:
    """``[rewards]``: reward functions and their weights. ``[rewards.<reward>]`` tables hold each one's settings."""

    weights: dict[str, float] = attrs.field(
        factory=lambda: {"correctness": 1.0, "format": 0.1}, converter=dict, validator=_reward_weights
    )  # reward name -> weight of its score in the total reward
    # The verifier: a group whose scores from this reward are all equal gets no advantage, so
    # shaping rewards (format) only order completions the verifier already tells apart and
    # never become the whole signal. "" = no gate.
    gate: str = "correctness"


@attrs.frozen
class AdvantagesSettings:
    """``[advantages]``: how rewards become advantages within a group."""

    scale_by_std: bool = True  # divide by the group's std (GRPO); false = Dr. GRPO


@attrs.frozen
class SwarmSettings:
    """``[swarm]``: sharing rollouts between nodes. Other keys are the transport's extras."""

    transport: str = attrs.field(default="none", validator=_not_empty)  # "none": the offline loop, no peers
    root: str = ""  # the swarm's shared folder or URL (RL-Swarm's GDRIVE_PATH)
    local_groups: int = attrs.field(default=4, validator=_at_least(0))  # I: own groups trained on per round
    external_groups: int = attrs.field(default=4, validator=_at_least(0))  # J: peers' groups trained on per round
    quorum: float = attrs.field(default=1.0, validator=_fraction)  # fraction of live nodes to wait for
    round_seconds: float = attrs.field(default=300.0, validator=_positive)  # a round's deadline
    poll_seconds: float = attrs.field(default=2.0, validator=_positive)  # how often to look for peers' payloads
    live_seconds: float = attrs.field(
        default=120.0, validator=_positive
    )  # a node is live if its heartbeat is this recent
    # Stand-by coordinator (a worker or contributor): takes over the round state when the coordinator's
    # lease has not been renewed for lease_seconds; needs a transport with leases (gdrive, fs, memory).
    standby: bool = False
    lease_seconds: float = attrs.field(default=120.0, validator=_positive)  # how long the coordinator may stay away
    # A coordinator stops (exit 1, the round kept for a restart) when this many round deadlines in a
    # row pass with no live worker and no payload; 0: it holds the round open for ever.
    idle_rounds: int = attrs.field(default=3, validator=_at_least(0))
    secret: str = attrs.field(default="", repr=_redacted_repr, metadata={SECRET: True})  # signs payloads; never shown


@attrs.frozen
class TrainSettings:
    """``[train]``: the learner that updates the weights. Other keys are the learner's extras."""

    # A registered learner; the default is sapo-local's (`sapo_core.first_party`).
    backend: str = attrs.field(default="grpo", validator=_not_empty)


@attrs.frozen
class CheckpointSettings:
    """``[checkpoint]``: where and how often the learner's state is saved. Other keys are extras."""

    backend: str = attrs.field(default="local", validator=_not_empty)  # registered checkpoint backend name
    every: int = attrs.field(default=5, validator=_at_least(1))  # save after every this many rounds
    keep: int = attrs.field(default=3, validator=_at_least(1))  # newest checkpoints kept
    # Which checkpoints hold the optimizer's state (AdamW: twice the weights), which only --resume
    # needs: "newest": the newest one, but not the one after a run's last round (a --resume with more
    # rounds restarts the optimizer); "all": every one kept; "none": none (a --resume restarts it).
    optimizer_state: str = attrs.field(default="newest", converter=_lower, validator=_one_of(OPTIMIZER_STATES))


@attrs.frozen
class EvalSettings:
    """``[eval]``: evaluation on held-out problems (workers and contributors; never coordinators)."""

    every: int = attrs.field(
        default=5, validator=_at_least(0)
    )  # evaluate after every this many rounds and the last; 0: never
    problems: int = attrs.field(default=32, validator=_at_least(1))  # held-out problems, split evenly over tasks.names
    num_completions: int = attrs.field(
        default=1, validator=_at_least(1)
    )  # k samples per problem; pass@1 = mean fraction correct
    temperature: float = attrs.field(default=0.0, validator=_check(lambda v: v >= 0, "must be >= 0"))  # 0: greedy
    seed: int = 0  # base seed of the held-out problems; independent of run.seed, so every run sees the same set
    at_start: bool = False  # also evaluate before the first round: the baseline of the learning curve
    # The evaluation's own inference backend ("" = the node's [inference] one), e.g. a hosted API
    # judging a local policy's progress; eval's other keys are that backend's settings.
    inference: str = ""


#: Every section, in the order of `Config`, with its attrs class.
SECTIONS: Mapping[str, type] = types.MappingProxyType(
    {
        "run": RunSettings,
        "model": ModelSettings,
        "inference": InferenceSettings,
        "tasks": TasksSettings,
        "rewards": RewardsSettings,
        "advantages": AdvantagesSettings,
        "swarm": SwarmSettings,
        "train": TrainSettings,
        "checkpoint": CheckpointSettings,
        "eval": EvalSettings,
    }
)
_FLAT_EXTRAS = frozenset({"inference", "train", "checkpoint", "swarm", "eval"})  # <section>.<key>
_NAMED_EXTRAS = frozenset({"tasks", "rewards"})  # <section>.<name>.<key>
_CORE: dict[str, dict[str, attrs.Attribute]] = {
    section: {f.name: f for f in attrs.fields(cls)} for section, cls in SECTIONS.items()
}
_CORE_KEYS = tuple(f"{section}.{name}" for section, fields in _CORE.items() for name in fields)

#: RL-Swarm's environment variables and the keys they set (the SAPO_* names win over them).
RL_SWARM_ENV: Mapping[str, str] = types.MappingProxyType(
    {
        "GDRIVE_PATH": "swarm.root",
        "EXPERIMENT_NAME": "run.experiment",
        "NODE_ROLE": "run.role",
        "NODE_ID": "run.node_id",
        "MODEL_NAME": "model.name",
    }
)
