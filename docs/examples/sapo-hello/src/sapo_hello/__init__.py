"""sapo-hello: an example sapo plugin, small enough to copy.

* inference backend ``guess``: a seeded random-policy baseline that answers every problem in
  the expected ``<think>...</think>`` / ``<answer>...</answer>`` format with a random integer;
* reward ``brevity``: 1.0 up to ``target_chars`` characters, then decaying with length;
* observer ``round_finished``: appends ``round,reward_mean`` to ``<workdir>/hello.csv``;
* command ``sapo hello``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import click

import sapo_core
from sapo_core.interfaces import BackendContext, SamplingParams
from sapo_core.records import Completion, Problem
from sapo_core.registry import Register
from sapo_core.seeding import derive_seed

# ------------------------------------------------------------------ inference: guess


@attrs.frozen
class GuessSettings:
    """``inference.*`` keys of the ``guess`` backend, e.g. ``--set inference.max_value=10``."""

    think: str = "I cannot compute this, so I guess."
    max_value: int = attrs.field(default=100, validator=attrs.validators.ge(0))


class GuessBackend:
    """Answers every problem with a uniform random integer in [-max_value, max_value]."""

    def __init__(self, settings: GuessSettings) -> None:
        self.settings = settings
        self.requests = 0

    def generate(self, problems: Sequence[Problem], n: int, params: SamplingParams) -> list[list[Completion]]:
        self.requests += 1
        out = []
        for problem in problems:
            completions = []
            for i in range(n):
                # One seed per (call seed, problem, replicate): the same config gives the same rollouts.
                rng = random.Random(derive_seed(params.seed, problem.id, i))
                guess = rng.randint(-self.settings.max_value, self.settings.max_value)
                text = f"<think>{self.settings.think}</think>\n<answer>{guess}</answer>"
                completions.append(Completion(text=text, finish_reason="stop", num_tokens=len(text.split())))
            out.append(completions)
        return out

    def round_metrics(self) -> Mapping[str, float]:
        """Optional: merged into the round's metrics as ``inference/requests``."""
        requests, self.requests = self.requests, 0
        return {"requests": requests}


def build_guess(settings: GuessSettings, context: BackendContext) -> GuessBackend:
    return GuessBackend(settings)


# -------------------------------------------------------------------- reward: brevity


@attrs.frozen
class BrevitySettings:
    """``rewards.brevity.*`` keys, e.g. ``--set rewards.brevity.target_chars=100``."""

    target_chars: int = attrs.field(default=200, validator=attrs.validators.ge(1))


class Brevity:
    """1.0 for completions of at most ``target_chars`` characters, then ``target_chars / length``."""

    def __init__(self, settings: BrevitySettings) -> None:
        self.target = settings.target_chars

    def score(self, problem: Problem, completions: Sequence[Completion]) -> list[float]:
        # Never raises: whatever the text, the score is a finite float in (0, 1].
        return [1.0 if len(c.text) <= self.target else self.target / len(c.text) for c in completions]


def build_brevity(settings: BrevitySettings, context: BackendContext) -> Brevity:
    return Brevity(settings)


# ------------------------------------------------------------------------------ hooks


@sapo_core.hookimpl
def register_inference(register: Register) -> None:
    register("guess", build_guess, settings=GuessSettings, description="Random integer guesses (a baseline)")


@sapo_core.hookimpl
def register_rewards(register: Register) -> None:
    register("brevity", build_brevity, settings=BrevitySettings, description="1.0 for short completions")


@sapo_core.hookimpl
def round_finished(context: BackendContext, round: int, metrics: Mapping[str, Any]) -> None:
    path = context.workdir / "hello.csv"
    header = "" if path.exists() else "round,reward_mean\n"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{header}{round},{metrics.get('reward/mean', '')}\n")


@sapo_core.hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command()
    def hello() -> None:
        """Say hello and list the installed inference backends."""
        from sapo_core.plugins import get_plugins

        names = get_plugins().registry.names("inference")
        click.echo(f"Hello from sapo-hello! Inference backends: {', '.join(names)}")
