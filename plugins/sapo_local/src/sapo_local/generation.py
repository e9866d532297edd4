"""The ``local`` inference backend: batched generation with Hugging Face ``model.generate``.

Sampling is reproducible per completion. Each (problem, replicate) has its own seed,
``derive_seed(params.seed, problem.id, i)``, and every random number it uses is a
counter-based hash of (that seed, decode step, token id): no generator state is shared between
rows, so a completion does not depend on the batch size, on the other rows of its batch, on
their order, or on the device (the hash is integer arithmetic, the same on a CPU and a GPU;
only the final -log(-log(u)) may differ in the last bit of a float64 between devices).

How a token is drawn (`GumbelSampler`, a `LogitsProcessor` run under greedy decoding):
temperature, top-k and top-p are applied to the logits as Hugging Face's warpers do, then
Gumbel noise ``g = -log(-log(u))`` is added, with ``u`` the hash mapped to (0, 1) on 24 bits,
and the token with the largest noisy score is the one chosen. That is an exact sample from the
tempered, filtered distribution (the Gumbel-max trick). Greedy decoding then picks it.

What stays floating point: the logits themselves. The same model on another device, or the
same row padded differently in another batch, gives logits that differ in the last bits, which
changes a token only where two noisy scores tie to that precision, which is rare.

Speed: on the CPU only the tokens that can still win get noise (see `GumbelSampler`); on CUDA
the noise for all tokens is one torch.compile'd kernel.

``temperature == 0`` is plain greedy decoding, without noise.

Sampler log-probs: every sampled completion carries ``Completion.logprobs``, one per token, the
log-probability of that token under the distribution it was drawn from: the logits divided by
the temperature, then truncated by top-k / top-p and renormalised over what is left (the very
scores the Gumbel-max draw used). With the default top_k = 0 and top_p = 1 nothing is truncated
and they are the learner's log-probs of the same tokens under the weights generation ran on;
with truncation they exceed the learner's (untruncated) ones by minus the log of the kept mass,
so the learner's importance weights exp(learner - sampler) also account for the truncation.
The learner uses them as it does a vLLM server's (truncated importance sampling,
`sapo_local.loss.truncated_is_weights`): they matter where generation runs on a bf16 copy of
fp32 master weights (`sapo_local.generation_weights`). Cost: one gather and one logsumexp per
decode step, kept on the device and read once per batch. Greedy decoding records none.

Under a distributed launch (``accelerate launch``: a process group of several processes) a call
is sharded: each process generates every n-th row of the call, then all exchange their
completions (`sapo_local.distributed`), so every process returns the whole, identical result.
Since a row's draw depends only on its own seed, the completions are those one process makes
(up to the rare ties of last-bit logit differences described above).
The backend's ``collective`` attribute says so to the node, which then has every process call
``generate`` together, evaluation included.

Progress: a call shows its tokens done / total (`sapo_core.progress.token_progress`: a bar under
the run's on a terminal, a line every 30 s in a log), counted by `_TokenCounter`, a logits
processor that adds the batch's rows at each decode step and touches no tensor (no device
sync). The total is rows x ``max_new_tokens``: a row that stops early keeps its slot until its
batch ends, and a batch that ends early counts its remaining steps as done. Under a
distributed launch only rank 0 shows its share.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import attrs
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.stopping_criteria import StopStringCriteria

from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.node import process_rank
from sapo_core.progress import TokenProgress, token_progress
from sapo_core.records import Completion, Problem
from sapo_core.seeding import derive_seed
from sapo_core.throughput import TokenMeter
from sapo_local import distributed, memory
from sapo_local.generation_weights import GenerationWeights, generation_dtype
from sapo_local.policy import Policy, get_policy, prompt_ids
from sapo_local.settings import LocalInferenceSettings

log = logging.getLogger("sapo.local")

__all__ = [
    "GumbelSampler",
    "LocalInference",
    "LocalInferenceSettings",
    "build_local_inference",
    "fmix32",
    "gumbel_noise",
    "noise_keys",
]


# The ``inference.*`` settings (`LocalInferenceSettings`) live in the torch-free
# `sapo_local.settings`, so the plugin registers them without importing torch.


# ------------------------------------------------------------------------ counter-based noise

_MASK32 = 0xFFFFFFFF
# Murmur3's fmix32 multipliers, written as their negative 32-bit two's complement twins: the
# low 32 bits of x * c are the same, and |x * c| < 2**63 for any x < 2**32, so the int64
# products never overflow (no reliance on wrap-around, on any device).
_FMIX_C1 = 0x85EBCA6B - (1 << 32)
_FMIX_C2 = 0xC2B2AE35 - (1 << 32)
# Salts that separate the key streams (arbitrary odd constants).
_SALT_HI, _SALT_LO, _SALT_STEP1, _SALT_STEP2 = 0x9E3779B9, 0x7F4A7C15, 0x243F6A88, 0x85A308D3

# u = (k + 0.5) / 2**24 for a 24-bit k, so u lies in [2**-25, 1 - 2**-25] and the Gumbel noise
# g = -log(-log(u)) in [_G_MIN, _G_MAX]. A token whose score is more than _G_MAX - _G_MIN below
# the row's best cannot win, whatever the noise: only the others need noise (see GumbelSampler).
_G_MIN = -math.log(-math.log(2.0**-25))
_G_MAX = -math.log(-math.log1p(-(2.0**-25)))
_NOISE_SPAN = _G_MAX - _G_MIN  # about 20.18


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """Murmur3's 32-bit finaliser on an int64 tensor of values in [0, 2**32): a bijection that mixes every bit."""
    x = x ^ (x >> 16)
    x = (x * _FMIX_C1) & _MASK32
    x = x ^ (x >> 13)
    x = (x * _FMIX_C2) & _MASK32
    return x ^ (x >> 16)


def noise_keys(seeds: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit keys per (row seed, step), broadcast: ``seeds`` (..., 1) and ``steps`` (...,) give (..., steps)."""
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    row1 = fmix32(lo ^ fmix32(hi ^ _SALT_HI))
    row2 = fmix32(hi ^ fmix32(lo ^ _SALT_LO))
    key1 = fmix32(row1 ^ fmix32((steps + _SALT_STEP1) & _MASK32))
    key2 = fmix32(row2 ^ fmix32((steps ^ _SALT_STEP2) & _MASK32))
    return key1, key2


def _fmix32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """`fmix32` in place (``tmp``: scratch of x's shape): the same values, without temporaries."""
    torch.bitwise_right_shift(x, 16, out=tmp)
    x.bitwise_xor_(tmp).mul_(_FMIX_C1).bitwise_and_(_MASK32)
    torch.bitwise_right_shift(x, 13, out=tmp)
    x.bitwise_xor_(tmp).mul_(_FMIX_C2).bitwise_and_(_MASK32)
    torch.bitwise_right_shift(x, 16, out=tmp)
    return x.bitwise_xor_(tmp)


def _hash_tokens(key1: torch.Tensor, key2: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """32 random-looking bits per (key pair, token id), broadcast: two fmix32 rounds, each keyed."""
    x = torch.bitwise_xor(tokens, key1)
    tmp = torch.empty_like(x)
    _fmix32_(x, tmp).bitwise_xor_(key2)
    return _fmix32_(x, tmp)


def _gumbel_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """The top 24 of 32 hashed bits as u = (k + 0.5) / 2**24 in (0, 1), then g = -log(-log(u)).

    In float64, where u is exact (float32 would round the largest u to 1.0).
    """
    u = (bits >> 8).to(torch.float64)
    return u.add_(0.5).mul_(2.0**-24).log_().neg_().log_().neg_()


def gumbel_noise(seeds: Sequence[int] | torch.Tensor, step: int, tokens: torch.Tensor) -> torch.Tensor:
    """The Gumbel noise of every row seed at one decode step for the given token ids: (rows, len(tokens)).

    A pure function of (seed, step, token id): the reference that `GumbelSampler` computes only
    for the tokens that can win.
    """
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=tokens.device).reshape(-1, 1)
    key1, key2 = noise_keys(seeds, torch.tensor([step], dtype=torch.int64, device=tokens.device))
    return _gumbel_from_bits(_hash_tokens(key1, key2, tokens.to(torch.int64).reshape(1, -1)))


def _draw_all(scores: torch.Tensor, key1: torch.Tensor, key2: torch.Tensor) -> torch.Tensor:
    """argmax over all tokens of (scores + noise): the dense draw, written without in-place ops so
    that torch.compile can fuse it into one kernel. Bit for bit the same as the eager path."""
    tokens = torch.arange(scores.shape[-1], dtype=torch.int64, device=scores.device)
    bits = fmix32(fmix32(tokens ^ key1[:, None]) ^ key2[:, None])
    u = ((bits >> 8).to(torch.float64) + 0.5) * (2.0**-24)
    return ((-torch.log(-torch.log(u))) + scores.to(torch.float64)).argmax(dim=-1)


_compiled_draw: Any = None  # torch.compile(_draw_all), built on first use; False once it failed


def _fused_draw(scores: torch.Tensor, key1: torch.Tensor, key2: torch.Tensor) -> torch.Tensor | None:
    """`_draw_all` compiled (one kernel instead of ~30 passes over rows x vocab), or None when
    compiling is impossible here (then the caller computes it eagerly)."""
    global _compiled_draw
    if _compiled_draw is False:
        return None
    try:
        if _compiled_draw is None:
            _compiled_draw = torch.compile(_draw_all, dynamic=True)
        return _compiled_draw(scores, key1.contiguous(), key2.contiguous())
    except _oom_errors():
        raise
    except Exception as exc:  # noqa: BLE001 (no compiler, unsupported device...: the eager path gives the same draw)
        _compiled_draw = False
        log.warning("torch.compile of the sampler failed (%s); sampling without it", str(exc).splitlines()[0][:200])
        return None


class GumbelSampler(LogitsProcessor):
    """Draws each row's next token with its own seed; the returned scores' argmax is that token.

    ``seeds`` has one seed per row of the batch (63-bit ints from `derive_seed`);
    ``prompt_length`` is the padded prompt length, so the decode step is
    ``input_ids.shape[1] - prompt_length``. Keys for steps below ``max_steps`` are computed up
    front; later steps (if any) on demand. Processing follows Hugging Face's order:
    temperature, top-k, top-p, then the Gumbel-max draw.

    Only the tokens within the noise span (about 20) of their row's best score can win, so
    computing noise for those alone is the same draw with a fraction of the work; finding them
    costs a host sync. ``sparse``: True always does that, False never (noise for every token),
    None (default) does it on the CPU when at most half of the scores are candidates, and never
    on other devices, where the sync costs more than the noise.

    ``compile``: draw over all tokens with a torch.compile'd kernel (the same numbers, one pass
    instead of ~30 over rows x vocab). None (default): on CUDA only. Compiling takes a few
    seconds once per process; if it fails the eager code is used.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        prompt_length: int,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_steps: int = 1,
        device: torch.device | str = "cpu",
        sparse: bool | None = None,
        compile: bool | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError("GumbelSampler needs temperature > 0 (temperature 0 is greedy decoding)")
        self.prompt_length = prompt_length
        self.temperature = float(temperature)
        self.max_steps = max(1, int(max_steps))
        device = torch.device(device)
        self.sparse: bool | None = sparse
        if sparse is None and device.type != "cpu":
            self.sparse = False
        self.compile = device.type == "cuda" if compile is None else compile
        self.warpers: list[LogitsProcessor] = []
        if top_k and top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k=int(top_k)))
        if top_p <= 0.0:  # an empty nucleus keeps its one best token, as min_tokens_to_keep=1 does
            self.warpers.append(TopKLogitsWarper(top_k=1))
        elif top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=float(top_p)))
        self.seeds = torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device).reshape(-1, 1)
        self.rows = self.seeds.shape[0]
        # (rows, steps): computed once, so a decode step only looks its column up.
        self.key1, self.key2 = noise_keys(self.seeds, torch.arange(self.max_steps, dtype=torch.int64, device=device))
        # (rows, steps): each step's drawn token's log-prob, filled by `_record`.
        self.logprobs = torch.zeros((self.rows, self.max_steps), dtype=torch.float32, device=device)

    def step_of(self, input_ids: torch.Tensor) -> int:
        step = input_ids.shape[1] - self.prompt_length
        if step < 0:
            raise ValueError(f"input_ids are shorter ({input_ids.shape[1]}) than the prompt ({self.prompt_length})")
        return step

    def keys(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's two noise keys at ``step``."""
        if step < self.max_steps:
            return self.key1[:, step], self.key2[:, step]
        key1, key2 = noise_keys(self.seeds, torch.tensor([step], dtype=torch.int64, device=self.seeds.device))
        return key1[:, 0], key2[:, 0]

    def warp(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, top-p, as Hugging Face's warpers: the distribution drawn from, as log-weights."""
        scores = scores.float()
        if self.temperature != 1.0:
            scores = scores / self.temperature
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        return scores

    def choose(self, scores: torch.Tensor, step: int, temperature: float = 1.0) -> torch.Tensor:
        """The drawn token of every row: argmax over tokens of ``scores / temperature`` plus Gumbel
        noise, the lowest id on ties."""
        rows, vocab = scores.shape
        if rows != self.rows:
            raise ValueError(f"GumbelSampler has {self.rows} seeds but the batch has {rows} rows")
        key1, key2 = self.keys(step)
        if self.sparse is not False:
            # Only tokens within the noise span of their row's best (tempered) score can win;
            # the margin is far above float error. The draw among them is the draw over all.
            best = scores.max(dim=-1, keepdim=True).values
            floor = best - ((_NOISE_SPAN + 1e-3) * temperature + 1e-5 * best.abs())
            candidates = scores >= floor
            if self.sparse or int(torch.count_nonzero(candidates)) * 2 <= rows * vocab:
                row_ids, tokens = torch.nonzero(candidates, as_tuple=True)
                values = scores[row_ids, tokens]
                if temperature != 1.0:
                    values = values / temperature
                return self._choose_among(rows, row_ids, tokens, values, key1, key2)
        if temperature != 1.0:
            scores = scores / temperature
        if self.compile:
            chosen = _fused_draw(scores, key1, key2)
            if chosen is not None:
                return chosen
        tokens = torch.arange(vocab, dtype=torch.int64, device=scores.device)
        noisy = _gumbel_from_bits(_hash_tokens(key1[:, None], key2[:, None], tokens)).add_(scores)
        return noisy.argmax(dim=-1)  # the first maximum: the lowest id on ties

    @staticmethod
    def _choose_among(
        rows: int,
        row_ids: torch.Tensor,
        tokens: torch.Tensor,
        values: torch.Tensor,
        key1: torch.Tensor,
        key2: torch.Tensor,
    ) -> torch.Tensor:
        noisy = _gumbel_from_bits(_hash_tokens(key1[row_ids], key2[row_ids], tokens)).add_(values)
        top = torch.full((rows,), -math.inf, dtype=torch.float64, device=values.device)
        top = top.scatter_reduce(0, row_ids, noisy, reduce="amax", include_self=False)
        winners = noisy == top[row_ids]
        chosen = torch.zeros(rows, dtype=torch.int64, device=values.device)  # a row with no finite score: token 0
        return chosen.scatter_reduce(0, row_ids[winners], tokens[winners], reduce="amin", include_self=False)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = self.step_of(input_ids)
        if self.warpers:
            warped = self.warp(input_ids, scores)
            chosen = self.choose(warped, step)
            self._record(step, warped, chosen, 1.0)
        else:  # the division by the temperature waits until only the candidates are left
            raw = scores.float()
            chosen = self.choose(raw, step, self.temperature)
            self._record(step, raw, chosen, self.temperature)
        out = torch.full_like(scores, -math.inf).scatter_(1, chosen[:, None], 0.0)
        return cast(torch.FloatTensor, out)

    def _record(self, step: int, scores: torch.Tensor, chosen: torch.Tensor, temperature: float) -> None:
        """The chosen tokens' log-probs under ``scores / temperature``, the distribution drawn from.

        One gather and one logsumexp a step, kept on the device (no sync): read once per batch.
        """
        picked = scores.gather(1, chosen[:, None]).squeeze(1)
        if temperature != 1.0:
            picked, scores = picked / temperature, scores / temperature
        if step >= self.logprobs.shape[1]:  # past max_steps, which generate never goes: grown, not dropped
            self.logprobs = torch.cat([self.logprobs, torch.zeros_like(self.logprobs)], dim=1)
        self.logprobs[:, step] = picked - torch.logsumexp(scores, dim=-1)


class _TokenCounter(LogitsProcessor):
    """Counts a batch's decode steps for the progress display: ``rows`` tokens a step.

    Reads only the host-side shape and leaves the scores as they are, so it adds no device
    sync and no kernel; `TokenProgress` redraws at most every 0.1 s.
    """

    def __init__(self, progress: TokenProgress, rows: int) -> None:
        self.progress, self.rows = progress, rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.progress.advance(self.rows)
        return scores


class _StopStringRecorder(StoppingCriteria):
    """Hugging Face's stop-string criterion, remembering how many tokens each row had when it fired."""

    def __init__(self, inner: StopStringCriteria, prompt_length: int, rows: int, device: torch.device) -> None:
        self.inner = inner
        self.prompt_length = prompt_length
        self.fired_at = torch.full((rows,), -1, dtype=torch.int64, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = self.inner(input_ids, scores, **kwargs).to(self.fired_at.device)
        generated = input_ids.shape[1] - self.prompt_length
        self.fired_at = torch.where(done & (self.fired_at < 0), generated, self.fired_at)
        return done


# Generation settings a model's own generation_config could set and that would change what we
# sample: forced to neutral values in every call. (Sampling flags such as temperature are left
# alone: with do_sample=False transformers ignores them.) The _UNNEUTRALISABLE ones cannot be
# forced off, transformers fills them from the model's config when ours leaves them None: we warn.
_NEUTRAL: Mapping[str, Any] = {
    "do_sample": False,
    "num_beams": 1,
    "num_beam_groups": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": 0,
    "guidance_scale": 1.0,
    "remove_invalid_values": False,
    "renormalize_logits": False,
    "use_cache": True,
    "output_scores": False,
    "output_logits": False,
    "return_dict_in_generate": False,
}
_UNNEUTRALISABLE = (
    "bad_words_ids",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "suppress_tokens",
    "begin_suppress_tokens",
    "exponential_decay_length_penalty",
    "watermarking_config",
    "stop_strings",
    "max_time",
)


_STATIC_WIDTH_STEP = 64


@contextmanager
def _quiet_generate() -> Iterator[None]:
    """Silence transformers' advice about generation flags: our config is deliberate."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"transformers(\.|$)")
            yield
    finally:
        logger.setLevel(level)


@attrs.define
class _Row:
    problem_index: int  # in the problems of the call
    replicate: int
    prompt: list[int]
    seed: int


class LocalInference:
    """Generates with the node's shared `Policy` (the very model the learner trains), or with a
    lower-precision copy of its weights kept up to date (`sapo_local.generation_weights`)."""

    def __init__(self, policy: Policy, settings: LocalInferenceSettings | None = None) -> None:
        self.policy = policy
        self.settings = settings or LocalInferenceSettings()
        self._batch_size = self.settings.batch_size
        self.meter = TokenMeter()
        self._warned_foreign = False
        self._warned_context = False
        self.weights = GenerationWeights(policy, generation_dtype(self.settings.generation_dtype, policy))
        self.static_cache = static_cache(self.settings.cache_implementation, policy.device)
        self._compiled = False  # whether a static-cache call has compiled the decode step yet

    # ---------------------------------------------------------------------------- protocol

    @property
    def collective(self) -> bool:
        """True under a distributed launch (an initialised process group of several processes):
        each process generates its share of a call's rows, so every process must call `generate`
        with the same arguments at the same time (see `sapo_local.distributed`)."""
        return distributed.world()[1] > 1

    def generate(self, problems: Sequence[Problem], n: int, params: SamplingParams) -> list[list[Completion]]:
        started = time.perf_counter()
        tokenizer = self.policy.tokenizer
        rows = [
            _Row(p, i, prompt, derive_seed(params.seed, problem.id, i))
            for p, problem in enumerate(problems)
            for prompt in [prompt_ids(tokenizer, problem)]
            for i in range(n)
        ]
        # Longest prompts first: batches of similar lengths pad little, and the biggest batch
        # (the one that may not fit) comes first. The order changes no result.
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r].prompt))
        rank, size = distributed.world()
        if size == 1 or not rows:  # every process has the same (empty) call: nothing to share
            generated = self._generate_rows(rows, order, params)
            results = [generated[r] for r in range(len(rows))]
        else:
            results = self._generate_shared(problems, n, params, rows, order, rank, size)
        out: list[list[Completion]] = [[] for _ in problems]
        for row, completion in zip(rows, results):
            out[row.problem_index].append(completion)
        # Every process holds the whole call's completions: the meter counts all of them over
        # the call's wall time, the throughput of all processes together.
        self.meter.add(results, time.perf_counter() - started)
        if self.policy.device.type == "cpu":
            memory.release()  # the KV caches' freed memory, back to the system before the learner step
        return out

    def _generate_shared(
        self,
        problems: Sequence[Problem],
        n: int,
        params: SamplingParams,
        rows: Sequence[_Row],
        order: Sequence[int],
        rank: int,
        size: int,
    ) -> list[Completion]:
        """This process's share of the rows, then everyone's completions from the others.

        A row's completion depends only on its prompt and seed (see the module's docstring), so
        which process makes it changes nothing beyond the last bits of the logits.
        """
        fingerprint = distributed.call_fingerprint(
            {"problems": [[p.task, p.id] for p in problems], "n": n, "params": attrs.asdict(params)}
        )
        generated: dict[int, Completion] = {}
        failure: Exception | None = None
        try:
            generated = self._generate_rows(rows, distributed.shard(order, rank, size), params)
        except Exception as exc:  # noqa: BLE001 (told to the other processes, then raised here)
            failure = exc
        error = None if failure is None else f"{type(failure).__name__}: {failure}".splitlines()[0][:500]
        try:
            results = distributed.exchange_completions(
                generated, len(rows), fingerprint=fingerprint, error=error, device=self.policy.device
            )
        except distributed.ShardError:
            if failure is not None:
                raise failure from None
            raise
        return results

    def _generate_rows(
        self, rows: Sequence[_Row], indices: Sequence[int], params: SamplingParams
    ) -> dict[int, Completion]:
        """The completions of ``rows[i]`` for each of ``indices``, batched in that order."""
        results: dict[int, Completion] = {}
        model = self.weights.model()
        was_training = model.training
        model.eval()
        # Only rank 0 shows progress; RANK says it too where no process group is open (a
        # contributor under accelerate launch generates every row itself, in every process).
        quiet = distributed.world()[0] != 0 or process_rank() != 0
        # The first static-cache call compiles the decode step (tens of seconds on a GPU, once per
        # run): said in the bar's label, so a bar standing still at 0 does not look like a hang.
        compiling = self.static_cache and not self._compiled
        description = "generate (compiling the decode step, once per run)" if compiling else "generate"
        started = time.perf_counter()
        try:
            with (
                torch.inference_mode(),
                token_progress(description, len(indices) * params.max_new_tokens, quiet=quiet) as progress,
            ):
                start = 0
                while start < len(indices):
                    chunk = indices[start : start + self._batch_size]
                    before = progress.done
                    try:
                        completions = self._generate_batch([rows[r] for r in chunk], params, progress)
                    except _oom_errors() as exc:
                        progress.update(before)  # the batch is made again, smaller
                        if len(chunk) == 1:
                            raise
                        self._batch_size = (len(chunk) + 1) // 2  # kept for later calls
                        log.warning(
                            "out of memory with %d rows per batch; retrying with %d (%s)",
                            len(chunk),
                            self._batch_size,
                            str(exc).splitlines()[0] if str(exc) else "",
                        )
                        _empty_cache(self.policy.device)
                        continue
                    for r, completion in zip(chunk, completions):
                        results[r] = completion
                    progress.update(before + len(chunk) * params.max_new_tokens)  # with the steps it stopped before
                    start += len(chunk)
        finally:
            model.train(was_training)
        if compiling:
            self._compiled = True
            log.info("the first generation call took %.1f s, compile included", time.perf_counter() - started)
        return results

    def round_metrics(self) -> dict[str, float]:
        """Generated tokens, seconds spent in `generate` and their ratio since the last read; then reset."""
        return self.meter.read()

    # ------------------------------------------------------------------------------ batches

    def generation_config(self, max_new_tokens: int) -> GenerationConfig:
        """Greedy decoding with every distribution-changing flag neutral; sampling is our processor's job."""
        eos_ids = self.policy.eos_ids
        pad_id = self.policy.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = eos_ids[0]
        model_config = getattr(self.policy.model, "generation_config", None)
        if model_config is not None and not self._warned_foreign:
            self._warned_foreign = True
            foreign = [k for k in _UNNEUTRALISABLE if getattr(model_config, k, None) not in (None, [], {})]
            if foreign:
                log.warning(
                    "the model's generation_config sets %s; transformers applies them to local generation too",
                    ", ".join(foreign),
                )
        with _quiet_generate():
            static = {"cache_implementation": "static"} if self.static_cache else {}
            return GenerationConfig(
                **_NEUTRAL, max_new_tokens=max_new_tokens, eos_token_id=eos_ids, pad_token_id=pad_id, **static
            )

    def _generate_batch(
        self, rows: Sequence[_Row], params: SamplingParams, progress: TokenProgress | None = None
    ) -> list[Completion]:
        policy = self.policy
        pad_id = policy.tokenizer.pad_token_id
        eos_ids = policy.eos_ids
        if pad_id is None:
            pad_id = eos_ids[0]
        width = max(len(r.prompt) for r in rows)
        if self.static_cache:
            # The compiled graphs are specialised on shapes: round the width up so that batches
            # of nearby prompt lengths share them instead of compiling anew.
            width = -(-width // _STATIC_WIDTH_STEP) * _STATIC_WIDTH_STEP
        input_ids, attention_mask = _left_padded([r.prompt for r in rows], width, pad_id, policy.device)
        self._warn_past_context(width, params.max_new_tokens)
        processors = self._logits_processors(rows, width, params, progress)
        criteria = StoppingCriteriaList()
        recorder: _StopStringRecorder | None = None
        stops = [s for s in params.stop if s]
        if stops:
            recorder = _StopStringRecorder(StopStringCriteria(policy.tokenizer, stops), width, len(rows), policy.device)
            criteria.append(recorder)
        config = self.generation_config(params.max_new_tokens)
        with _quiet_generate():
            output = self.weights.model().generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=criteria,
            )
        fired = recorder.fired_at.tolist() if recorder is not None else [-1] * len(rows)
        generated = output[:, width:]
        sampler = next((p for p in processors if isinstance(p, GumbelSampler)), None)
        logprobs = sampler.logprobs[:, : generated.shape[1]].tolist() if sampler is not None else None
        return _completions(generated.tolist(), fired, eos_ids, stops, policy.tokenizer, logprobs)

    def _warn_past_context(self, width: int, max_new_tokens: int) -> None:
        context = getattr(getattr(self.policy.model, "config", None), "max_position_embeddings", None)
        if isinstance(context, int) and width + max_new_tokens > context and not self._warned_context:
            self._warned_context = True  # transformers' own warning is silenced with the rest
            log.warning(
                "prompt (%d tokens) + max_new_tokens (%d) exceed the model's context (%d)",
                width,
                max_new_tokens,
                context,
            )

    def _logits_processors(
        self, rows: Sequence[_Row], width: int, params: SamplingParams, progress: TokenProgress | None
    ) -> LogitsProcessorList:
        """The progress counter where progress is shown, then the seeded sampler unless decoding is greedy."""
        processors = LogitsProcessorList()
        if progress is not None and progress.shown:
            processors.append(_TokenCounter(progress, len(rows)))
        if params.temperature > 0:
            processors.append(
                GumbelSampler(
                    [r.seed for r in rows],
                    width,
                    temperature=params.temperature,
                    top_k=params.top_k,
                    top_p=params.top_p,
                    max_steps=params.max_new_tokens,
                    device=self.policy.device,
                    compile=None if self.settings.compile_sampler else False,
                )
            )
        return processors


def _left_padded(
    prompts: Sequence[Sequence[int]], width: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts left-padded to ``width``, as input ids and attention mask on ``device``."""
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[i, width - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def static_cache(preference: str, device: Any) -> bool:
    """Whether ``inference.cache_implementation`` (``auto``, ``static`` or ``dynamic``) means a static cache on ``device``."""
    return preference == "static" or (preference == "auto" and getattr(device, "type", None) == "cuda")


def _completions(
    generated: Sequence[list[int]],
    fired: Sequence[int],
    eos_ids: Sequence[int],
    stops: Sequence[str],
    tokenizer: Any,
    logprobs: Sequence[list[float]] | None = None,
) -> list[Completion]:
    """Each row's new tokens up to its end, decoded; ``fired``: how many it had when a stop string matched, or -1.

    A row ends at its first EOS id (kept), at the token that completed a stop string (whose text
    is then cut off), or at ``max_new_tokens`` (finish reason ``length``). ``logprobs``: the
    sampler's, one per generated token of each row, kept for the row's kept tokens.
    """
    eos = set(eos_ids)
    kept: list[list[int]] = []
    reasons: list[str] = []
    for ids, stop_at in zip(generated, fired):
        end = next((j for j, t in enumerate(ids) if t in eos), None)
        if stop_at > 0 and (end is None or stop_at <= end):
            kept.append(ids[:stop_at])  # a stop string ended it (the padding after it may be EOS ids)
            reasons.append("stop")
        elif end is not None:
            kept.append(ids[: end + 1])
            reasons.append("stop")
        else:
            kept.append(ids)
            reasons.append("length")
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    completions = []
    for row, (ids, text, reason) in enumerate(zip(kept, texts, reasons)):
        if stops:
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        row_logprobs = None if logprobs is None else tuple(logprobs[row][: len(ids)])
        # A row with no finite score (token 0 by default) has no usable q, and a peer would refuse it.
        if row_logprobs is not None and not all(math.isfinite(v) for v in row_logprobs):
            row_logprobs = None
        completions.append(
            Completion(
                text=text, finish_reason=reason, num_tokens=len(ids), token_ids=tuple(ids), logprobs=row_logprobs
            )
        )
    return completions


def _oom_errors() -> tuple[type[BaseException], ...]:
    errors = [getattr(torch, "OutOfMemoryError", None), getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)]
    return tuple({e for e in errors if isinstance(e, type)}) or (MemoryError,)


def _empty_cache(device: Any) -> None:
    if getattr(device, "type", None) == "cuda":
        torch.cuda.empty_cache()


def build_local_inference(settings: LocalInferenceSettings | None, context: BackendContext) -> LocalInference:
    """Factory of the ``local`` inference backend: the node's shared policy, loaded on first use."""
    settings = settings or LocalInferenceSettings()
    return LocalInference(get_policy(context, device=settings.device, dtype=settings.dtype), settings)
