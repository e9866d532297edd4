"""The resolved configuration of a sapo run: schema, sources, precedence, validation.

Precedence, lowest first: defaults < TOML config file < environment < command-line flags <
``--set KEY=VALUE`` (within a layer, the last value wins). Every resolved key remembers where it
came from (``"default"``, ``"file <path>"``, ``"env NAME"``, a flag's label, ``"--set"``) so
errors and ``sapo config`` can say so.

The schema is one frozen attrs class per section (`RunSettings` ...), held by `Config`. Keys of
``inference``, ``train``, ``checkpoint``, ``swarm`` and ``eval`` that are not core keys are *extras*:
kept raw because only the chosen backend knows them, and built into the backend's settings class
by `structure` (or `Config.settings`). ``tasks.<task>.<key>`` and ``rewards.<reward>.<key>`` are
the extras of one task or reward function. ``run``, ``model`` and ``advantages`` take no extras; ``eval``'s
are the settings of its own inference backend (``eval.inference``), when it has one.

Values are converted by the attrs field's type annotation with one converter (`structure`), for
the core sections and the backends' settings alike. A string (from the environment, a flag or
``--set``) is parsed by the field's type: ``"0.7"`` for a float, ``"yes"`` for a bool,
``"a,b"`` or ``'["a","b"]'`` for a list, ``"{a=1.0}"`` for a table.

Secrets (``swarm.secret``, fields whose metadata has ``secret=True``, and extras whose key
contains key/secret/token/password/passwd/passphrase/auth/credential/bearer/cookie) never appear in exception messages and
are shown as ``"***"`` by `Config.to_dict` and `Config.items` unless ``redact=False``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import difflib
import enum
import math
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal

import attrs

from sapo_core import redaction
from sapo_core.names import id_problem
from sapo_core.errors import ConfigError
from sapo_core.tasks.presets import PRESETS

__all__ = [
    "SECTIONS",
    "AdvantagesSettings",
    "CheckpointSettings",
    "Config",
    "EvalSettings",
    "Extras",
    "InferenceSettings",
    "TrainSettings",
    "ModelSettings",
    "RewardsSettings",
    "RunSettings",
    "SwarmSettings",
    "TasksSettings",
    "is_secret",
    "load_config",
    "structure",
]

ROLES = ("coordinator", "worker", "contributor")
OPTIMIZER_STATES = ("newest", "all", "none")  # checkpoint.optimizer_state
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Field metadata key marking a value that must never be shown: ``attrs.field(metadata={SECRET: True})``.
SECRET = "secret"
REDACTED = "***"
# Words that make an extra's key a secret. Over-redacting (e.g. an extra named ``max_tokens``) is
# the safe failure; "auth" also covers HTTP ``authorization`` headers kept in an extra table.
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "passphrase", "auth", "credential", "bearer", "cookie")

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
        raise ValueError(f"{problem} (a name is 1-64 characters of A-Z a-z 0-9 . _ -, not starting with '.' or '-', "
                         "without '..', not ending with '.', not a Windows device name such as CON or NUL)", attribute)
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


def _redacted_repr(value: str) -> str:
    return repr(REDACTED) if value else "''"


# ---------------------------------------------------------------------------------- schema


@attrs.frozen
class RunSettings:
    """``[run]``: which node this is, of which experiment, and how long it runs."""

    experiment: str = attrs.field(default="default", validator=_valid_name)  # nodes of one experiment train together
    node_id: str = attrs.field(default="node-0", validator=_valid_name)  # unique within the experiment
    role: str = attrs.field(default="worker", converter=_lower, validator=_one_of(ROLES))  # what this node does
    rounds: int = attrs.field(default=10, validator=_at_least(1))  # run until this many rounds are done
    seed: int = 0  # base seed of problems, sampling and training
    workdir: str = attrs.field(default="runs", validator=_local_folder)  # run directories go under <workdir>/<experiment>/
    # This run's directory (metrics, checkpoints, config.json). "" = automatic: an offline run
    # (transport none) gets <workdir>/<experiment>/<UTC timestamp>, a swarm node <workdir>/<experiment>/<node_id>.
    dir: str = attrs.field(default="", validator=_local_folder_or_empty)
    resume: bool = False  # continue from the newest complete checkpoint (offline: of the newest run that has one)
    log_level: str = attrs.field(default="info", converter=_lower, validator=_one_of(LOG_LEVELS))


@attrs.frozen
class ModelSettings:
    """``[model]``: the policy being trained."""

    name: str = attrs.field(default="smollm2-135m", validator=_not_empty)  # a HF id, local folder, .gguf file or alias


@attrs.frozen
class InferenceSettings:
    """``[inference]``: how completions are sampled. Other keys are the backend's extras."""

    backend: str = attrs.field(default="local", validator=_not_empty)  # registered inference backend name
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

    names: tuple[str, ...] = attrs.field(default=_DEFAULT_TASKS, converter=tuple, validator=_task_names)
    weights: tuple[float, ...] = attrs.field(default=(), converter=tuple, validator=_task_weights)  # empty: uniform
    problems_per_round: int = attrs.field(default=8, validator=_at_least(1))  # B: problems per round
    # Per-node difficulty that follows the model (sapo_core.curriculum): a task whose groups'
    # success rate leaves curriculum_band moves a level down or up; evaluation stays at the
    # configured level. Tasks without levels are left as configured.
    curriculum: bool = True
    curriculum_band: tuple[float, float] = attrs.field(default=(0.2, 0.8), converter=tuple, validator=_band)
    curriculum_window: int = attrs.field(default=8, validator=_at_least(1))  # groups seen at a level before it moves
    # A named mix (sapo_core.tasks.presets, e.g. "sapo-paper"): its tasks, equally weighted, as tasks.names.
    preset: str = attrs.field(default="", validator=_preset)
    # DAPO's dynamic sampling: while fewer than problems_per_round own groups have a learning
    # signal, draw and generate up to this many more batches of new problems; their groups with a
    # signal join the round's (metrics: inference/extra_batches, groups/resampled). 0: off.
    resample: int = attrs.field(default=0, validator=_at_least(0))

    def __attrs_post_init__(self) -> None:
        if not self.preset:
            return
        names = PRESETS[self.preset]
        if self.names not in (_DEFAULT_TASKS, names) or self.weights:
            raise ValueError(f"tasks.preset = {self.preset!r} chooses the tasks and their weights; "
                             "leave tasks.names and tasks.weights unset, or drop the preset")
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

    backend: str = attrs.field(default="grpo", validator=_not_empty)  # registered learner name


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

    every: int = attrs.field(default=5, validator=_at_least(0))  # evaluate after every this many rounds and the last; 0: never
    problems: int = attrs.field(default=32, validator=_at_least(1))  # held-out problems, split evenly over tasks.names
    num_completions: int = attrs.field(default=1, validator=_at_least(1))  # k samples per problem; pass@1 = mean fraction correct
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

# ------------------------------------------------------------------------ secrets, display


def _secret_word(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def is_secret(key: str) -> bool:
    """Whether the dotted ``key`` holds a secret: ``swarm.secret``, or an extra whose last part
    contains key/secret/token/password/passwd/passphrase/auth/credential/bearer/cookie (case-insensitive).

    Core keys are secret only by their field metadata, so ``inference.max_new_tokens`` is not.
    """
    section, _, name = key.partition(".")
    field = _CORE.get(section, {}).get(name)
    if field is not None:
        return bool(field.metadata.get(SECRET))
    return _secret_word(key.rsplit(".", 1)[-1])


def _redact_value(value: Any) -> Any:
    """A plain copy of ``value`` with every entry under a secret-looking key replaced."""
    if isinstance(value, Mapping):
        return {k: (_hide(v) if _secret_word(str(k)) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


def _hide(value: Any) -> Any:
    # An unset secret stays visibly unset ("" / None): that tells the user something and leaks nothing.
    return value if value in ("", None) else REDACTED


def _plain(value: Any) -> Any:
    """``value`` as plain TOML/JSON-like data: tuples become lists, mappings dicts, paths strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _show(value: Any) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else repr(_plain(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _from(source: str | None) -> str:
    return f" (from {source})" if source else ""


def _bad_value(key: str, value: Any, source: str | None, problem: str, *, secret: bool) -> ConfigError:
    shown = f"{key}: <redacted>" if secret else f"{key} = {_show(_redact_value(value))}"
    return ConfigError(f"{shown}{_from(source)}: {problem}")


def _suggest(key: str, candidates: Iterable[str]) -> str | None:
    """The valid key ``key`` most likely meant, or None.

    In order: a very close last part under the same parent (``tasks.name`` -> ``tasks.names``);
    the same last part in another section (``model.seed`` -> ``run.seed``); a close last part
    under the same parent (``inference.temprature``); a close whole key (a misspelt section);
    a close last part anywhere.
    """
    candidates = list(dict.fromkeys(candidates))
    parent, _, leaf = key.rpartition(".")
    leaves: dict[str, str] = {}
    for candidate in candidates:
        leaves.setdefault(candidate.rpartition(".")[2], candidate)
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
    match = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.8)
    if match:
        return siblings[match[0]]
    if leaf in leaves and leaves[leaf] != key:
        return leaves[leaf]
    match = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if match:
        return siblings[match[0]]
    if not siblings:  # the parent is not a known one: compare whole keys (a misspelt section)
        match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        if match:
            return match[0]
    match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.8)
    return leaves[match[0]] if match else None


def _env_name(key: str) -> str:
    return "SAPO_" + key.replace(".", "_").upper()


def _unknown(
    key: str, source: str | None, candidates: Iterable[str], *, what: str = "key", hint: str = ""
) -> ConfigError:
    candidates = list(dict.fromkeys(candidates))
    suggestion = _suggest(key, candidates)
    message = f"Unknown {what} '{key}'{_from(source)}."
    if suggestion:
        also = f" ({_env_name(suggestion)})" if source and source.startswith("env SAPO_") else ""
        message += f" Did you mean '{suggestion}'{also}?"
    else:
        parent = key.rpartition(".")[0]
        known = [c for c in candidates if c.rpartition(".")[0] == parent and "." in c]
        message += f" Known keys: {', '.join(known)}." if known else f" Sections: {', '.join(SECTIONS)}."
    return ConfigError(message + (f" {hint}" if hint else ""))


# ------------------------------------------------------------------------------- converter


class _Mismatch(Exception):
    """A value does not fit a type; ``args[0]`` says what was expected ("an integer")."""


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE_TYPE = type(None)


def _describe(tp: Any) -> str:
    """How a type reads in 'expected ...' messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "a path"
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        members = [_describe(a) for a in args if a is not _NONE_TYPE]
        return " or ".join(members) + (" (empty for none)" if _NONE_TYPE in args else "")
    if origin in (list, tuple, set, frozenset, Sequence) or tp in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return "a list" + (f" of {_plural(inner[0])}" if len(inner) == 1 else "") + " (a TOML array or comma-separated)"
    if origin in (dict, Mapping) or tp is dict:
        return "a table" + (f" of {_plural(args[1])}" if len(args) == 2 else "") + " (e.g. {a = 1})"
    return f"a {getattr(tp, '__name__', tp)}"


def _plural(tp: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(tp, _describe(tp))


def _parse_toml_value(text: str) -> Any:
    """``text`` as one TOML value; raises ValueError when it is not one."""
    try:
        data = tomllib.loads(f"v = {text}\n")
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(exc)) from None
    if set(data) != {"v"}:  # "1\nx = 2": more than one value
        raise ValueError("not a single value")
    return data["v"]


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to the type annotation ``tp``, or `_Mismatch`.

    Values from TOML and typed flags must already fit (an int for a float is fine, a string for
    an int is parsed, a float for an int is not). Strings are parsed by the type.
    """
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _coerce(value, args[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not _NONE_TYPE]
        optional = len(members) < len(args)
        if optional and value is None:
            return None
        if optional and isinstance(value, str):
            text = value.strip().lower()
            # "" is "unset" for any optional; "none"/"null" too unless the value could be that string.
            if text == "" or (text in ("none", "null") and str not in members):
                return None
        for member in members:
            try:
                return _coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch(_describe(tp))
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and value.strip() == str(choice):
                return choice
        raise _Mismatch(_describe(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch(_describe(tp))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _Mismatch(_describe(tp))
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is None:
            raise _Mismatch(_describe(tp))
        if not math.isfinite(number):
            raise _Mismatch("a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(_describe(tp))
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise _Mismatch(_describe(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or (isinstance(value, str) and value.strip() in (member.name, str(member.value))):
                return member
        raise _Mismatch("one of: " + ", ".join(str(m.value) for m in tp))
    if origin in (list, tuple, set, frozenset, Sequence) or tp in (list, tuple, set, frozenset):
        return _coerce_sequence(value, tp, origin or tp, args)
    if origin in (dict, Mapping) or tp is dict:
        return _coerce_table(value, tp, args)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch(_describe(tp))
    return value  # a typing construct this converter does not know: leave the value to the class


def _coerce_sequence(value: Any, tp: Any, container: Any, args: tuple[Any, ...]) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = _parse_toml_value(text)
            except ValueError:
                raise _Mismatch(_describe(tp)) from None
        else:  # comma-separated; "" is the empty list
            value = [item.strip() for item in text.split(",") if item.strip()]
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(_describe(tp))
    try:
        if container is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):  # tuple[int, str]
            if len(args) != len(value):
                raise _Mismatch(f"a list of {len(args)} items")
            items = [_coerce(v, a) for v, a in zip(value, args)]
        else:
            element = args[0] if args else Any
            items = [_coerce(v, element) for v in value]
    except _Mismatch:
        raise _Mismatch(_describe(tp)) from None
    if container in (tuple, Sequence):
        return tuple(items)
    if container in (set, frozenset):
        return container(items)
    return items


def _coerce_table(value: Any, tp: Any, args: tuple[Any, ...]) -> dict[Any, Any]:
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            text = "{" + text + "}"  # "a=1, b=2" reads as the inline table {a=1, b=2}
        try:
            value = _parse_toml_value(text)
        except ValueError:
            raise _Mismatch(_describe(tp)) from None
    if not isinstance(value, Mapping):
        raise _Mismatch(_describe(tp))
    key_type, value_type = args if len(args) == 2 else (Any, Any)
    try:
        return {_coerce(k, key_type): _coerce(v, value_type) for k, v in value.items()}
    except _Mismatch:
        raise _Mismatch(_describe(tp)) from None


@attrs.frozen
class _DataclassField:
    """A dataclass field seen through the attributes of an attrs field that `structure` reads."""

    name: str
    type: Any
    default: Any  # attrs.NOTHING when the field is required
    metadata: Mapping[str, Any]
    init: bool
    alias: str | None = None
    converter: Any = None
    validator: Any = None


def is_settings_class(cls: object) -> bool:
    """Whether ``cls`` can be a backend's settings class: an attrs class or a stdlib dataclass."""
    return isinstance(cls, type) and (attrs.has(cls) or dataclasses.is_dataclass(cls))


def settings_fields(cls: type) -> list[Any]:
    """The fields of a settings class: attrs' own, or a dataclass's as the same attributes (name,
    alias, type, default, metadata, init, converter, validator), so both are built alike."""
    if attrs.has(cls):
        return list(attrs.fields(cls))
    if not is_settings_class(cls):
        raise TypeError(f"a settings class must be an attrs class or a dataclass, not {cls!r}")
    return [
        _DataclassField(
            name=f.name,
            type=f.type,
            # dataclasses.MISSING for both: required; attrs spells that NOTHING.
            default=attrs.NOTHING if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            else f.default,
            metadata=f.metadata,
            init=f.init,
        )
        for f in dataclasses.fields(cls)
    ]


def settings_keys(cls: type) -> list[str]:
    """The config keys of a settings class: the ``__init__`` names of its fields."""
    return [f.alias or f.name for f in settings_fields(cls) if f.init]


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a settings class (string annotations evaluated), Any where unresolvable."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001  one unresolvable annotation (e.g. a class local to a function): go one by one
        hints = {}
    module = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
    resolved: dict[str, Any] = {}
    for field in settings_fields(cls):
        tp = hints.get(field.name, field.type)
        if isinstance(tp, str):
            try:
                tp = eval(tp, dict(module), dict(vars(typing)))  # what typing.get_type_hints does per name
            except Exception:  # noqa: BLE001  unresolvable: leave the value unconverted
                tp = Any
        resolved[field.name] = Any if tp is None else tp
    return resolved


# attrs >= 24.1 may wrap a converter in attrs.Converter (takes self/field): only the constructor can run it.
_ATTRS_CONVERTER: Any = getattr(attrs, "Converter", ())


class Extras(dict):  # type: ignore[type-arg]
    """The raw extras of one section (or one task / reward): a plain ``dict`` of key -> value
    that also carries, per key, its ``sources`` and, for values typed as text (environment,
    string flags, ``--set``), the ``texts`` as typed. `structure` uses both when given an
    `Extras`: errors name the source, and a string field gets exactly the text typed
    (``--set inference.revision=1.10`` stays ``"1.10"``, not the float 1.1).
    """

    __slots__ = ("sources", "texts")

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        sources: Mapping[str, str] | None = None,
        texts: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(values or {})
        self.sources: dict[str, str] = dict(sources or {})
        self.texts: dict[str, str] = dict(texts or {})


def _message(exc: BaseException) -> str:
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)


def _culprit(exc: BaseException, fields: Mapping[str, attrs.Attribute]) -> str | None:
    """The key a validator's exception is about: an attrs Attribute in its args, else a quoted name."""
    for arg in exc.args:
        if isinstance(arg, attrs.Attribute):
            return arg.alias or arg.name
    message = _message(exc)
    return next((key for key in fields if f"'{key}'" in message), None)


def _scrub(message: str, secrets: Iterable[Any]) -> str:
    for secret in secrets:
        if isinstance(secret, str) and secret:
            message = message.replace(repr(secret), "<redacted>").replace(secret, "<redacted>")
    return message


def structure(
    cls: type | None, values: Mapping[str, object], *, where: str, sources: Mapping[str, str] | None = None
) -> Any:
    """Build the settings class ``cls`` (frozen attrs, or a dataclass) from raw ``values`` (key -> value).

    Values are converted by the fields' type annotations (`_coerce`: strings are parsed by type;
    ``str | None``, int, float, bool, list/tuple, dict, Literal, Path, Enum supported). ``where``
    is the dotted prefix that names keys in errors (``"inference"``, ``"tasks.arithmetic"``);
    ``sources`` maps the keys of ``values`` to their source labels. An `Extras` brings its own
    sources and texts. Keys are the ``__init__`` names of the fields (attrs' alias).

    Raises ConfigError for: an unknown key (with the closest valid key, this class's or a core
    key), a value of the wrong type, a missing required field, and an attrs validator's or
    converter's error (naming the key when the exception carries the attribute or quotes its
    name). Secret values never appear in the message. ``cls`` None means "takes no settings":
    returns None, and any key is an error.
    """
    texts: Mapping[str, str] = {}
    if isinstance(values, Extras):
        texts = values.texts
        sources = values.sources if sources is None else sources
    sources = sources or {}

    def full(key: str) -> str:
        return f"{where}.{key}" if where else key

    if cls is None:
        if values:
            keys = ", ".join(f"'{full(key)}'{_from(sources.get(key))}" for key in values)
            raise ConfigError(f"Unknown key{'s' if len(values) > 1 else ''} {keys}: '{where}' takes no settings here.")
        return None
    fields = {(f.alias or f.name): f for f in settings_fields(cls) if f.init}
    hints = _field_types(cls)
    section = where.split(".", 1)[0]
    for key in values:
        if key not in fields:
            # Core keys are candidates too: a typo of a core key lands in the extras.
            local = [full(k) for k in fields] + [f"{section}.{k}" for k in _CORE.get(section, {}) if "." not in where]
            raise _unknown(full(key), sources.get(key), [*local, *_CORE_KEYS])
    missing = [full(k) for k, f in fields.items() if f.default is attrs.NOTHING and k not in values]
    if missing:
        raise ConfigError(
            f"Missing required key{'s' if len(missing) > 1 else ''}: {', '.join(missing)}. Set it in the config file or with --set KEY=VALUE."
        )

    kwargs: dict[str, Any] = {}
    secrets: list[Any] = []
    for key, raw in values.items():
        field, name, source = fields[key], full(key), sources.get(key)
        secret = bool(field.metadata.get(SECRET)) or _secret_word(key)
        value = texts.get(key, raw)
        if secret:
            secrets.extend((value, raw))
        try:
            value = _coerce(value, hints[field.name])
        except _Mismatch as exc:
            raise _bad_value(name, raw, source, f"expected {exc.args[0]}", secret=secret) from None
        kwargs[key] = value
        # Run this field's converter and validator now, so their errors name the key even when
        # the exception does not carry the attribute (attrs' own ge/le validators don't).
        checked = value
        try:
            if field.converter is not None and not isinstance(field.converter, _ATTRS_CONVERTER):
                checked = field.converter(checked)
            if field.validator is not None:
                field.validator(None, field, checked)
        except (ValueError, TypeError) as exc:
            raise _bad_value(name, checked, source, _scrub(_message(exc), secrets), secret=secret) from None
        except Exception:  # noqa: BLE001, S110  a validator that needs the instance: the constructor runs it
            pass
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        culprit = _culprit(exc, fields)
        message = _scrub(_message(exc), secrets)
        if culprit is not None:
            secret = bool(fields[culprit].metadata.get(SECRET)) or _secret_word(culprit)
            raise _bad_value(full(culprit), kwargs.get(culprit), sources.get(culprit), message, secret=secret) from None
        raise ConfigError(f"{where}: {message}") from None


# --------------------------------------------------------------------------------- config


@attrs.frozen
class Config:
    """The resolved configuration: one attribute per section (``config.inference.temperature``),
    plus the extras and the source of every key. Build it with `load_config`; ``Config()`` is
    the defaults. Sequences are tuples (``config.tasks.names == ("arithmetic",)``).
    """

    run: RunSettings = attrs.field(factory=RunSettings)
    model: ModelSettings = attrs.field(factory=ModelSettings)
    inference: InferenceSettings = attrs.field(factory=InferenceSettings)
    tasks: TasksSettings = attrs.field(factory=TasksSettings)
    rewards: RewardsSettings = attrs.field(factory=RewardsSettings)
    advantages: AdvantagesSettings = attrs.field(factory=AdvantagesSettings)
    swarm: SwarmSettings = attrs.field(factory=SwarmSettings)
    train: TrainSettings = attrs.field(factory=TrainSettings)
    checkpoint: CheckpointSettings = attrs.field(factory=CheckpointSettings)
    eval: EvalSettings = attrs.field(factory=EvalSettings)
    # Extras by key parts: ("inference", "base_url") or ("tasks", "arithmetic", "difficulty").
    _extras: Mapping[tuple[str, ...], Any] = attrs.field(factory=dict, repr=False)
    _texts: Mapping[tuple[str, ...], str] = attrs.field(factory=dict, repr=False, eq=False)
    # Dotted key -> source label; a key not listed has its default.
    _sources: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def experiment_dir(self) -> Path:
        """``<workdir>/<experiment>``: the folder that holds this experiment's run directories."""
        return Path(self.run.workdir) / self.run.experiment

    @property
    def node_dir(self) -> Path:
        """A swarm node's automatic run directory: ``<workdir>/<experiment>/<node_id>`` (stable, so
        ``--resume`` finds it). Offline runs get a timestamped one: see `sapo_core.rundir`."""
        return self.experiment_dir / self.run.node_id

    def extras(self, section: str, name: str | None = None) -> Any:
        """The raw extras of ``section`` as an `Extras` (a dict): for ``inference``, ``train``,
        ``checkpoint``, ``swarm``, ``eval`` its non-core keys; for ``tasks``/``rewards`` with ``name`` the
        keys of ``tasks.<name>``, without ``name`` a dict name -> `Extras` of every subsection
        set. Empty for ``run``, ``model``, ``advantages``. Values are copies.
        """
        if section not in SECTIONS:
            raise ValueError(f"Unknown config section {section!r}. Choose one of: {', '.join(SECTIONS)}")
        if section in _NAMED_EXTRAS:
            if name is None:
                names = dict.fromkeys(parts[1] for parts in self._extras if parts[0] == section)
                return {n: self.extras(section, n) for n in names}
            prefix: tuple[str, ...] = (section, name)
        elif name is not None:
            raise ValueError(f"Section {section!r} has no named subsections")
        else:
            prefix = (section,)
        out = Extras()
        for parts, value in self._extras.items():
            if parts[: len(prefix)] == prefix:
                key = parts[len(prefix)]
                out[key] = copy.deepcopy(value)
                out.sources[key] = self._sources.get(".".join(parts), "default")
                if parts in self._texts:
                    out.texts[key] = self._texts[parts]
        return out

    def settings(self, cls: type | None, section: str, name: str | None = None) -> Any:
        """``structure(cls, self.extras(section, name), where=...)``: a backend's settings from its extras."""
        return structure(cls, self.extras(section, name), where=section if name is None else f"{section}.{name}")

    def source(self, key: str) -> str:
        """Where the dotted ``key`` got its value: "default", "file <path>", "env NAME", a flag's label or "--set".

        A key inside a table value (``rewards.weights.format``) reports the table's source.
        """
        if key in self._sources:
            return self._sources[key]
        if key in _CORE_KEYS:
            return "default"
        for known in self._sources:
            if key.startswith(known + "."):
                return self._sources[known]
        for parts in self._extras:
            if key.startswith(".".join(parts) + "."):
                return self._sources.get(".".join(parts), "default")
        if any(key.startswith(k + ".") for k in _CORE_KEYS):
            return "default"
        raise KeyError(f"No config key {key!r}")

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Nested plain data (lists, dicts, str, numbers, bools), extras included, e.g.
        ``{"inference": {"backend": ..., "base_url": ...}, "tasks": {"names": [...], "arithmetic": {...}}}``.

        With ``redact`` (the default) every non-empty secret reads ``"***"``; ``redact=False``
        gives the real values (for the backends; never log it).
        """
        out: dict[str, Any] = {}
        for section, cls in SECTIONS.items():
            settings = getattr(self, section)
            data: dict[str, Any] = {}
            for field in attrs.fields(cls):
                value = _plain(getattr(settings, field.name))
                data[field.name] = _hide(value) if redact and field.metadata.get(SECRET) else value
            out[section] = data
        for parts, value in self._extras.items():
            table = out
            for part in parts[:-1]:
                table = table.setdefault(part, {})
            table[parts[-1]] = self._extra_value(parts, value, redact)
        return out

    def items(self, redact: bool = True) -> list[tuple[str, Any, str]]:
        """Every key as ``(dotted_key, value, source)``: core keys in schema order, each section's
        extras after its core keys (sorted). Values are plain data, secrets redacted as in `to_dict`.
        """
        rows: list[tuple[str, Any, str]] = []
        for section, cls in SECTIONS.items():
            settings = getattr(self, section)
            for field in attrs.fields(cls):
                key = f"{section}.{field.name}"
                value = _plain(getattr(settings, field.name))
                rows.append((key, _hide(value) if redact and field.metadata.get(SECRET) else value, self.source(key)))
            for parts in sorted(p for p in self._extras if p[0] == section):
                key = ".".join(parts)
                rows.append((key, self._extra_value(parts, self._extras[parts], redact), self.source(key)))
        return rows

    def _extra_value(self, parts: tuple[str, ...], value: Any, redact: bool) -> Any:
        value = _plain(value)
        if not redact:
            return value
        return _hide(value) if _secret_word(parts[-1]) else _redact_value(value)


# --------------------------------------------------------------------------------- loading


@attrs.frozen
class _Entry:
    value: Any  # as given: TOML-typed, a typed flag, or a string
    source: str
    text: str | None = None  # the text as typed (env, string flag, --set), which a str field takes verbatim


class _Resolver:
    """Applies the layers in precedence order to the flat entries (key parts -> `_Entry`)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, ...], _Entry] = {}
        for section, cls in SECTIONS.items():
            defaults = cls()
            for name in _CORE[section]:
                self.entries[(section, name)] = _Entry(getattr(defaults, name), "default")

    def set(self, parts: tuple[str, ...], value: Any, source: str, text: str | None = None) -> None:
        """Place one value at the dotted key ``parts``: a core key, an extra, or (for a table at a
        section or subsection) each of its entries. A key below a value (``rewards.weights.format``,
        ``inference.headers.x``) sets one entry inside that table."""
        key = ".".join(parts)
        if not parts or any(not p or not p.strip() for p in parts):
            raise ConfigError(f"Malformed key {key!r}{_from(source)}: use dotted names like inference.temperature")
        section = parts[0]
        if section not in SECTIONS:
            if len(parts) == 1:
                what = "section" if isinstance(value, Mapping) else "key"
                raise _unknown(key, source, [*SECTIONS] if what == "section" else [*SECTIONS, *_CORE_KEYS], what=what)
            raise _unknown(key, source, _CORE_KEYS)
        if len(parts) == 1:
            if isinstance(value, Mapping):  # a whole [section] table
                for name, item in value.items():
                    self.set((section, str(name)), item, source)
                return
            example = next(k for k in _CORE_KEYS if k.startswith(section + "."))
            raise ConfigError(
                f"'{section}' is a section, not a key{_from(source)}: set {section}.<key>, e.g. {example}"
            )
        name = parts[1]
        core = _CORE[section]
        if name in core:
            if len(parts) == 2:
                self.entries[parts[:2]] = _Entry(value, source, text)
            elif typing.get_origin(_CORE_TYPES[section][name]) is dict:
                self._set_inside(parts[:2], parts[2:], value, source, core_type=_CORE_TYPES[section][name])
            else:
                raise ConfigError(f"'{section}.{name}' is a single value{_from(source)}: it has no key '{key}'")
            return
        if section not in _FLAT_EXTRAS and section not in _NAMED_EXTRAS:
            raise _unknown(key, source, [f"{section}.{k}" for k in core] + list(_CORE_KEYS))
        if section in _FLAT_EXTRAS:
            # A key this close to a core key of its section is a typo, not a backend's setting:
            # say so now rather than when (or if) the backend's settings are built.
            near = difflib.get_close_matches(name, list(core), n=1, cutoff=_TYPO_CUTOFF)
            if near:
                raise _unknown(key, source, [f"{section}.{near[0]}"])
            if len(parts) == 2:
                self.entries[parts] = _Entry(value, source, text)
            else:
                self._set_inside(parts[:2], parts[2:], value, source)
            return
        # tasks / rewards: <section>.<name> is a subsection, its keys are the extras of <name>.
        if len(parts) == 2:
            if isinstance(value, Mapping):
                for sub, item in value.items():
                    self.set((section, name, str(sub)), item, source)
                return
            one = "task" if section == "tasks" else "reward function"
            raise _unknown(
                key,
                source,
                [f"{section}.{k}" for k in core] + list(_CORE_KEYS),
                hint=f"(The settings of one {one} are keys {section}.<name>.<key>.)",
            )
        if len(parts) == 3:
            self.entries[parts] = _Entry(value, source, text)
        else:
            self._set_inside(parts[:3], parts[3:], value, source)

    def _set_inside(
        self, base: tuple[str, ...], path: tuple[str, ...], value: Any, source: str, core_type: Any = None
    ) -> None:
        """Set ``base.path`` = value inside the table resolved so far at ``base`` (created if absent)."""
        entry = self.entries.get(base)
        current: Any = {} if entry is None else entry.value
        if entry is not None and core_type is not None:
            try:
                current = _coerce(entry.text if entry.text is not None else entry.value, core_type)
            except _Mismatch as exc:
                raise _bad_value(
                    ".".join(base), entry.value, entry.source, f"expected {exc.args[0]}", secret=False
                ) from None
        elif isinstance(current, str):
            try:
                current = _parse_toml_value(current) if current.strip() else {}
            except ValueError:
                pass
        if not isinstance(current, Mapping):
            raise ConfigError(
                f"Cannot set '{'.'.join(base + path)}'{_from(source)}: '{'.'.join(base)}' is not a table "
                f"(a {type(current).__name__}, set by {entry.source if entry else '?'})"
            )
        table = copy.deepcopy(dict(current))
        node = table
        for part in path[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, Mapping) else {}
            node = child
        node[path[-1]] = value
        self.entries[base] = _Entry(table, source)

    def build(self) -> Config:
        sections: dict[str, Any] = {}
        for section, cls in SECTIONS.items():
            values = Extras()  # the same carrier of sources and texts that backends' extras use
            for name in _CORE[section]:
                entry = self.entries[(section, name)]
                values[name] = entry.value
                values.sources[name] = entry.source
                if entry.text is not None:
                    values.texts[name] = entry.text
            sections[section] = structure(cls, values, where=section)
        extras = {parts: e.value for parts, e in self.entries.items() if parts[1] not in _CORE[parts[0]]}
        stray = next((parts for parts in extras if parts[0] == "eval"), None)
        if stray is not None and not sections["eval"].inference:
            raise _unknown(".".join(stray), self.entries[stray].source, [f"eval.{k}" for k in _CORE["eval"]],
                           hint="(eval's other keys are the settings of its own backend: set eval.inference=NAME.)")
        texts = {parts: e.text for parts, e in self.entries.items() if parts in extras and e.text is not None}
        sources = {".".join(parts): e.source for parts, e in self.entries.items() if e.source != "default"}
        return Config(**sections, extras=extras, texts=texts, sources=sources)


# Similarity (difflib ratio) from which an extra's key counts as a typo of a core key of its
# section: "temprature" (0.95), "backends" (0.93) are typos; "max_tokens" (0.83), "top_a" (0.8) are not.
_TYPO_CUTOFF = 0.85
_CORE_TYPES = {section: _field_types(cls) for section, cls in SECTIONS.items()}


def _read_file(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; ConfigError naming the file (and tomllib's line) when unreadable."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} not found. Check the path given with --config or SAPO_CONFIG.") from None
    except IsADirectoryError:
        raise ConfigError(f"Config file {path} is a folder; give the path of a .toml file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror or exc}") from None


def _from_env(env: Mapping[str, str]) -> list[tuple[tuple[str, ...], str, str]]:
    """``(key parts, text, source)`` for each config variable, RL-Swarm's names first so SAPO_* ones win."""
    found: list[tuple[tuple[str, ...], str, str]] = []
    for variable, key in RL_SWARM_ENV.items():
        if env.get(variable):  # generic names: an empty one is treated as unset
            found.append((tuple(key.split(".")), env[variable], f"env {variable}"))
    for variable in sorted(env):
        if not variable.startswith("SAPO_"):
            continue
        head, _, tail = variable[len("SAPO_") :].partition("_")
        section = head.lower()
        if section not in SECTIONS:  # SAPO_CONFIG, SAPO_STRICT_PLUGINS, ...: not config keys
            continue
        key = tail.lower()
        source = f"env {variable}"
        if not key:
            raise ConfigError(
                f"Environment variable {variable} names no key: use SAPO_{head}_<KEY>, e.g. {_env_name(next(k for k in _CORE_KEYS if k.startswith(section + '.')))}"
            )
        parts: tuple[str, ...] = (section, key)
        if section in _NAMED_EXTRAS and key not in _CORE[section]:
            near = difflib.get_close_matches(key, list(_CORE[section]), n=1, cutoff=0.8)
            if near:  # SAPO_TASKS_PROBLEMS_PER_ROUN is a typo, not task "problems"'s key "per_roun"
                raise _unknown(f"{section}.{key}", source, [f"{section}.{near[0]}"])
            # SAPO_TASKS_<NAME>__<KEY>, or SAPO_TASKS_<NAME>_<KEY> for a name without '_'.
            name, _, sub = key.partition("__") if "__" in key else key.partition("_")
            parts = (section, name, sub) if sub else (section, key)
        found.append((parts, env[variable], source))
    return found


def _parse_set(item: str) -> tuple[tuple[str, ...], Any, str]:
    """``KEY=VALUE`` -> (key parts, value, text): the value as TOML when it is one, else the plain string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        # Echoed only when it names a section: a value pasted without its key may be an API key.
        names_a_key = re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", item.strip() or "-") is not None and (
            item.strip().partition(".")[0] in SECTIONS)
        got = f", got {item.strip()!r}" if names_a_key else ", got an argument without '='"
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set inference.temperature=0.7){got}")
    text = raw.strip()
    try:
        value = _parse_toml_value(text)
    except ValueError:
        return tuple(key.split(".")), text, text
    if isinstance(value, (datetime.date, datetime.time)):  # 2024-01-01: a name, not a date
        return tuple(key.split(".")), text, text
    if isinstance(value, str):
        return tuple(key.split(".")), value, value  # '"a b"': the quotes were TOML's
    return tuple(key.split(".")), value, text


def load_config(
    *,
    file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, tuple[Any, str]] | None = None,
    sets: Sequence[str] = (),
) -> Config:
    """Resolve the configuration: defaults < ``file`` < ``env`` < ``flags`` < ``sets``.

    * ``file``: a TOML file; when None, ``env["SAPO_CONFIG"]`` if set, else no file. Relative
      paths in it (``run.workdir``) stay relative to the working directory.
    * ``env``: the environment (None: ``os.environ``). ``SAPO_<SECTION>_<KEY>`` sets
      ``<section>.<key>`` (key lowercased; for tasks/rewards subsections
      ``SAPO_TASKS_<NAME>__<KEY>``); variables whose first part is not a section are ignored;
      RL-Swarm's GDRIVE_PATH, EXPERIMENT_NAME, NODE_ROLE, NODE_ID, MODEL_NAME are read too
      (empty ones ignored; a SAPO_* variable for the same key wins).
    * ``flags``: dotted key -> ``(value, source_label)``, e.g.
      ``{"inference.backend": ("openai", "--inference")}``; the value typed or a string
      (parsed by the field's type); a None value is skipped (a flag not given).
    * ``sets``: ``"KEY=VALUE"`` strings, applied in order; VALUE is a TOML value when it
      parses as one (``0.7``, ``true``, ``["a","b"]``, ``{correctness=1.0}``), else a plain string.

    Raises ConfigError naming the key, its source and the closest valid key, or the value's problem.
    """
    env = os.environ if env is None else env
    resolver = _Resolver()
    path = file if file is not None else (env.get("SAPO_CONFIG") or None)
    if path is not None:
        path = Path(path)
        source = f"file {path}"
        for name, value in _read_file(path).items():
            resolver.set((name,), value, source)
    for parts, text, source in _from_env(env):
        resolver.set(parts, text, source, text)
    for key, given in (flags or {}).items():
        value, label = given
        if value is not None:
            resolver.set(tuple(key.split(".")), value, label, value if isinstance(value, str) else None)
    for item in sets:
        parts, value, text = _parse_set(item)
        resolver.set(parts, value, "--set", text)
    config = resolver.build()
    redaction.register(*redaction.secret_strings(config.to_dict(redact=True), config.to_dict(redact=False)))
    return config
