"""Train a model hosted by `sapo serve` on the sort task, with the reward computed in this process.

    export SAPO_SERVE_API_KEY=...                       # the key the server was started with
    python docs/examples/serve_sort_client.py --url http://127.0.0.1:8080 --requests 20

Each request asks for G completions of a few sort problems, scores them here with the task's
own verifier (plus a little for the answer format), and posts the rewards back; the server
trains on every `--batch-groups` complete groups. Needs only sapo-core on this machine.
"""

from __future__ import annotations

import argparse
import json

from sapo_core.answers import extract_answer, format_score
from sapo_core.records import Problem
from sapo_core.remote import RemoteTrainer
from sapo_core.tasks.sort import SortTask


def reward(task: SortTask, problem: Problem, text: str) -> float:
    """Correctness of the tagged answer in [0, 1], plus 0.1 for the <think>/<answer> format."""
    answer = extract_answer(text)
    return (task.verify(problem, answer) if answer is not None else 0.0) + 0.1 * format_score(text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--requests", type=int, default=20, help="rollout requests to make")
    parser.add_argument("--prompts", type=int, default=2, help="problems per request")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    task = SortTask()
    with RemoteTrainer(args.url) as trainer:
        start = trainer.status()["learner_steps"]
        total, count = 0.0, 0
        for request in range(args.requests):
            problems = [task.generate(args.seed + request * args.prompts + i) for i in range(args.prompts)]
            groups = trainer.rollouts([p.messages for p in problems])
            rewards = {r.rollout_id: reward(task, problems[g.index], r.text) for g in groups for r in g.rollouts}
            answer = trainer.post_rewards(rewards)
            total, count = total + sum(rewards.values()), count + len(rewards)
            print(
                json.dumps({"request": request, "groups": len(groups), "mean_reward": total / max(count, 1), **answer}),
                flush=True,
            )
        status = trainer.status()
        summary = {
            "learner_steps": status["learner_steps"] - start,
            "mean_reward": total / max(count, 1),
            "completions": count,
        }
        print(json.dumps(summary), flush=True)
        return summary


if __name__ == "__main__":
    main()
