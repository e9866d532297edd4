"""Round sizes that fit the device: `sapo run` without a config must not take hours on a CPU.

The defaults of the keys that size a round (`CPU_SIZES`' keys) are a GPU's: 8 problems x 8
completions x 256 tokens, 16,384 tokens a round to generate and train on, which the bundled
135M model takes minutes a round for on a laptop's CPU (`estimate`). Before a run, the plugins
say where its inference backend will generate (hook ``inference_device``). On a CPU, each of
those keys the user left at its default (``config.source(key) == "default"``):

* offline (``swarm.transport = "none"``): takes its `CPU_SIZES` value, and one log line says
  which, with the round's estimated time before and after and the ``--set`` flags for the
  GPU-sized values;
* in a swarm stays as it is, since every node must agree on the problems and completions a
  round whatever its device (`sapo_core.peers.SHARED_SETTINGS`): a warning gives the round's
  estimated time and the flags that make it smaller.

A key set anywhere (file, environment, flag, --set) is never changed, nor a run whose backend
does not say "cpu" (a GPU, an API, a server).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sapo_core.config import Config
from sapo_core.plugins import Plugins
from sapo_core.progress import duration

log = logging.getLogger("sapo.sizing")

#: A round on a CPU: 4 problems x 8 completions x 128 tokens (4,096 tokens, about a minute on 2
#: cores). The group size stays at 8, which GRPO's advantages need more than more problems.
CPU_SIZES: Mapping[str, int] = {
    "tasks.problems_per_round": 4,
    "inference.num_completions": 8,
    "inference.max_new_tokens": 128,
}
#: Tokens a second a CPU round gets through: generated (rows x max_new_tokens, about 120/s) and
#: then trained on (the completions with a learning signal, about 90/s), with the bundled
#: SmolLM2-135M on the 2-core development machine (docs/local.md). A rough figure: more cores
#: are faster, a bigger model or a loaded machine slower.
CPU_TOKENS_PER_SECOND = 80.0
#: The source that `Config.source` reports for a value chosen here.
SOURCE = "CPU size"


def _value(config: Config, key: str) -> int:
    section, name = key.split(".")
    return int(getattr(getattr(config, section), name))


def round_tokens(config: Config, sizes: Mapping[str, int] | None = None) -> int:
    """Tokens a round's first batch generates at most: problems x completions x max_new_tokens
    (``sizes`` over ``config``); ``tasks.resample`` may add as many again per extra batch."""
    sizes = sizes or {}
    total = 1
    for key in CPU_SIZES:
        total *= sizes.get(key, _value(config, key))
    return total


def estimate(tokens: int) -> str:
    """A CPU round of ``tokens`` in rough time: ``6.1 min``."""
    return duration(tokens / CPU_TOKENS_PER_SECOND)


def _flags(sizes: Mapping[str, int]) -> str:
    return " ".join(f"--set {key}={value}" for key, value in sizes.items())


def device_sizes(config: Config, plugins: Plugins, *, show: bool = True) -> dict[str, tuple[Any, str]]:
    """The round sizes this run takes instead of its defaults, as `sapo_core.cli.resolve`'s
    ``extra`` (key -> (value, source)); empty when nothing changes. Logs what it decided
    (``show``: False in the other processes of a distributed launch, which decide the same).
    """
    if config.run.role == "coordinator":  # it generates nothing
        return {}
    smaller = {
        key: value
        for key, value in CPU_SIZES.items()
        if config.source(key) == "default" and value < _value(config, key)
    }
    if not smaller or plugins.ask("inference_device", config=config) != "cpu":
        return {}
    node = config.run.node_id
    now = round_tokens(config)
    if config.swarm.transport != "none":
        if show:
            log.warning(
                "%s: the inference backend generates on the CPU and the round sizes are the GPU-sized defaults: "
                "%s tokens a round (problems x completions x max_new_tokens), roughly %s a round here (at ~%.0f "
                "tokens/s). Smaller, with the same values on every node of the swarm: %s",
                node,
                f"{now:,}",
                estimate(now),
                CPU_TOKENS_PER_SECOND,
                _flags(smaller),
            )
        return {}
    if show:
        then = round_tokens(config, smaller)
        log.info(
            "%s: running on the CPU, so %s instead of the GPU-sized defaults: %s tokens a round instead of %s, "
            "roughly %s a round here instead of %s. For the defaults: %s",
            node,
            ", ".join(f"{key}={value}" for key, value in smaller.items()),
            f"{then:,}",
            f"{now:,}",
            estimate(then),
            estimate(now),
            _flags({key: _value(config, key) for key in smaller}),
        )
    return {key: (value, SOURCE) for key, value in smaller.items()}
