"""The contracts a backend implements: one small Protocol per kind, plus the records they pass.

A plugin registers a *factory* per backend name (see `sapo_core.hookspecs`); the core calls
``factory(settings, context)`` once per run and then only the methods below. Every method is
called from the node's main thread, one call at a time: a backend may use threads or asyncio
inside a call but must not keep work running between calls. (A stand-by coordinator builds a
transport of its own and calls it from its own thread, again one call at a time.)

Optional methods, used when present: ``close()`` (release resources at the end of a run) and
``round_metrics() -> Mapping[str, float]`` (numbers since the last call, merged into the
node's metrics under the backend's kind, e.g. ``inference/requests``; a reward function's under
``reward/<name>/``, e.g. ``reward/llm-judge/unparseable``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from sapo_core.config import Config
from sapo_core.records import Completion, Group, Problem, RoundPayload, as_tuple

__all__ = [
    "BackendContext",
    "CheckpointInfo",
    "Checkpointer",
    "Collected",
    "InferenceBackend",
    "Learner",
    "Lease",
    "Leases",
    "NodeInfo",
    "RewardFunction",
    "SamplingParams",
    "SwarmState",
    "Task",
    "Transport",
]

# --------------------------------------------------------------------------------- records


@attrs.frozen
class SamplingParams:
    """How to sample. ``seed`` is the base seed of this call; see `InferenceBackend.generate`."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    max_new_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)


@attrs.frozen
class SwarmState:
    """The round the swarm is in and when it ends (epoch seconds), as the coordinator wrote it."""

    round: int
    deadline: float | None = None
    updated_at: float = 0.0
    coordinator: str = ""
    #: The nodes whose payloads the coordinator held when it closed the round before ``round``. On
    #: a synced folder, files arrive late and out of order: a node that sees the round advance
    #: waits a bounded while for these payloads to reach its copy of the folder.
    closed_with: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)


@attrs.frozen
class Lease:
    """The coordinator's lease: who may write the swarm state until ``expires_at`` (epoch seconds).

    ``epoch`` numbers the leases of an experiment: each holder takes the next one, so a lease is
    never taken twice. ``token`` is random per acquisition (it tells two runs of one node apart).
    ``holder`` is "" when the lease's file could not be read; ``renewed_at`` is then its
    modification time (see `Leases`).
    """

    epoch: int
    holder: str
    token: str = ""
    acquired_at: float = 0.0
    renewed_at: float = 0.0
    expires_at: float = 0.0


@attrs.frozen
class NodeInfo:
    """A node's registration and heartbeat."""

    node: str
    role: str
    model: str = ""
    started_at: float = 0.0
    last_seen: float = 0.0
    round: int = -1


@attrs.frozen
class Collected:
    """Peers' payloads found for a round, and the reasons files were refused."""

    payloads: tuple[RoundPayload, ...] = attrs.field(default=(), converter=as_tuple)
    rejected: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)


@attrs.frozen
class CheckpointInfo:
    """A complete checkpoint: its round, where it lives, and the JSON metadata saved with it."""

    round: int
    location: str
    meta: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, eq=False)


@attrs.define
class BackendContext:
    """What a factory knows about the run it is built for.

    ``shared`` lets the backends of one node hand objects to each other (the local plugin's
    learner trains the very model its inference backend generates with). ``config`` is the
    whole resolved, typed configuration (``context.config.swarm.root``), secrets included: never
    log it (``config.to_dict()`` is its redacted plain form).
    """

    experiment: str = "default"
    node: str = "node-0"
    role: str = "worker"
    model: str = ""
    seed: int = 0
    workdir: Path = attrs.field(factory=lambda: Path("runs") / "default" / "node-0", converter=Path)
    config: Config = attrs.field(factory=Config)
    tasks: Mapping[str, Task] = attrs.field(factory=dict)
    shared: dict[str, Any] = attrs.field(factory=dict)


# ------------------------------------------------------------------------------- protocols


@runtime_checkable
class Task(Protocol):
    """A generator of checkable problems and their verifier. Pure Python, no I/O.

    * ``generate(seed)`` is a pure function of ``seed`` (and the task's settings): the same
      seed gives the same problem on every machine and Python version. Use
      ``random.Random(seed)``, never the global RNG or ``hash()``. The problem's ``id`` ends
      in ``-<seed>``: a node regenerates a peer's problem from it and refuses the group if
      it differs, so a peer cannot make rollouts look right by sending its own "answer".
    * ``verify(problem, answer)`` scores the text found in the completion's answer tags in
      [0, 1] (partial credit allowed). It never raises, whatever the text: empty, huge,
      adversarial input scores 0.
    * Optional: ``untagged_answer(text) -> str | None`` reads an answer from a completion that
      has no answer tags (arithmetic: its last integer; sort: its final word list; sat: the
      assignments on its last line with any; countdown: its last expression); the
      ``correctness`` reward hands it to ``verify`` unless
      ``rewards.correctness.answer_tags = "require"``.
    * Optional: ``reference_answer(problem) -> str``, the answer text ``verify`` scores 1.0;
      ``sapo tasks show`` prints it with its score.
    """

    name: str
    description: str

    def generate(self, seed: int) -> Problem: ...

    def verify(self, problem: Problem, answer: str) -> float: ...


@runtime_checkable
class InferenceBackend(Protocol):
    """Generates completions.

    ``generate`` returns one list per problem, in order. A list shorter than ``n`` (empty
    included) means those completions failed; the loop drops that problem and counts it, so
    one failed request never aborts a round. Raise `sapo_core.errors.BackendError` only when
    nothing can succeed (bad credentials, unreachable server), with a message saying what to do.

    Reproducibility: derive one seed per (problem, replicate) with
    ``sapo_core.seeding.derive_seed(params.seed, problem.id, i)`` and pass it to the engine
    where it takes one, so the same config gives the same rollouts.

    Optional attribute ``collective: bool`` (absent: False). Under a distributed launch
    (``accelerate launch``) every process runs the node's loop. True means that every process
    must call ``generate`` together, with the same arguments (a backend that shares a call's
    work between the processes and gathers the result, like the local one); the node then has
    all processes evaluate, not only the main one, which would otherwise wait alone in the
    backend's collectives. False (an API backend) keeps the evaluation on the main process, so
    that its requests are not repeated by every process.
    """

    def generate(self, problems: Sequence[Problem], n: int, params: SamplingParams) -> list[list[Completion]]: ...


@runtime_checkable
class RewardFunction(Protocol):
    """Scores the completions of one problem: one finite float per completion, in order.

    Never raises for a bad completion (empty, huge, prompt injection, odd unicode): it
    returns a low reward instead. Deterministic unless its documentation says otherwise.
    """

    def score(self, problem: Problem, completions: Sequence[Completion]) -> Sequence[float]: ...


@runtime_checkable
class Transport(Protocol):
    """Moves payloads and round state between the nodes of one experiment.

    ``shared`` is False for the offline loop (transport ``none``): the node drives its own
    rounds and has no peers. Reads must tolerate what shared storage does (late, duplicate,
    partial or corrupt files): a bad file is skipped and its reason listed in
    `Collected.rejected`, never raised. Writes are atomic.
    """

    shared: bool

    def ensure_settings(self, settings: Mapping[str, Any]) -> Mapping[str, Any]:
        """Store the experiment's settings if none are stored yet; return the stored ones."""
        ...

    def heartbeat(self, node: NodeInfo) -> None: ...

    def live_nodes(self, within_seconds: float) -> list[NodeInfo]: ...

    def read_state(self) -> SwarmState | None: ...

    def write_state(self, state: SwarmState) -> None: ...

    def publish(self, payload: RoundPayload) -> None: ...

    def collect(self, round: int) -> Collected: ...


@runtime_checkable
class Leases(Protocol):
    """Optional: a `Transport` that can also hold the coordinator's lease (``swarm.standby`` needs it).

    The transport is the mechanism; when a lease has expired and who may take it is the core's
    policy (`sapo_core.lease`). Contract:

    * ``read_lease()`` returns the lease of the highest epoch, or None when none was ever taken.
      A lease that cannot be read comes back with ``holder=""`` and ``renewed_at`` set to when it
      was last written (the reader then waits its own ``swarm.lease_seconds`` from that time).
    * ``claim_lease(lease)`` creates the lease of ``lease.epoch`` exclusively: of any number of
      callers (threads, processes, machines) claiming one epoch, exactly one gets True. It returns
      False as well when a higher epoch already exists. An epoch, once taken, is never reused.
    * ``renew_lease(lease)`` stores the holder's renewed lease (a later ``expires_at``; the same
      ``epoch`` and ``token``) and returns True. It returns False when the stored lease of that
      epoch has another token or a higher epoch exists: the caller must then stop acting as the
      coordinator (whatever it wrote counts for nothing).
    """

    def read_lease(self) -> Lease | None: ...

    def claim_lease(self, lease: Lease) -> bool: ...

    def renew_lease(self, lease: Lease) -> bool: ...


@runtime_checkable
class Checkpointer(Protocol):
    """Stores checkpoints atomically and keeps the newest ``keep`` of them.

    ``save`` gives ``write`` an empty local folder to fill (the learner's files) and makes the
    checkpoint visible only once complete. ``restore`` copies the newest complete checkpoint
    into ``into`` and returns its info, or None when there is none. The built-in ones delete the
    subfolder ``optimizer/`` (``sapo_core.checkpoints.OPTIMIZER_DIR``) from every checkpoint but the
    newest, unless ``checkpoint.optimizer_state`` is ``"all"``.
    """

    def save(self, round: int, write: Callable[[Path], None], meta: Mapping[str, Any]) -> CheckpointInfo: ...

    def restore(self, into: Path) -> CheckpointInfo | None: ...

    def list(self) -> list[CheckpointInfo]: ...


@runtime_checkable
class Learner(Protocol):
    """Updates the policy's weights from scored groups.

    ``train`` runs one learner step on the groups (own and external, each with its
    ``node``) and returns metrics. It raises `sapo_core.errors.TrainingError` on a
    non-finite loss, leaving the last saved checkpoint as the state to resume from.
    ``save``/``load`` write and read the learner's full state in a local folder, in safe
    formats (safetensors, JSON): never pickle. State that only an exact continuation needs (the
    optimizer's) goes into the subfolder ``sapo_core.checkpoints.OPTIMIZER_DIR``, which checkpointers
    keep in their newest checkpoint only; a ``save`` that takes a keyword ``optimizer`` is called
    with ``optimizer=False`` where none is wanted (``load`` then finds none: it starts a fresh one).
    """

    def train(self, groups: Sequence[Group], round: int) -> Mapping[str, float]: ...

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...
