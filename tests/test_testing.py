"""`sapo_core.testing` is usable where pytest is not installed (sapo-core does not depend on it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_testing_imports_and_checks_work_without_pytest():
    code = textwrap.dedent("""
        import sys
        sys.modules["pytest"] = None  # `import pytest` now raises ImportError, as where it is not installed

        from sapo_core.records import Completion
        from sapo_core.testing import CoinFlipInference, check_inference, check_reward, sample_problems


        class Length:
            def score(self, problem, completions):
                return [min(1.0, len(c.text) / 100) for c in completions]


        assert len(check_inference(CoinFlipInference(), n=3)) == 2
        assert check_reward(Length(), sample_problems()[0], ["abc"]) == [0.03]
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_fixtures_are_fixtures_under_pytest(sapo_plugins, sapo_cli):
    assert sapo_cli("plugins", "--json").exit_code == 0
    assert "sapo-core:tasks" in sapo_plugins.infos


def test_the_hash_reward_and_the_recording_learner(tmp_path):
    from sapo_core.records import Completion
    from sapo_core.testing import HashReward, RecordingLearner, check_reward, sample_problems

    problem = sample_problems()[0]
    texts = [f"completion {i}" for i in range(8)]
    scores = check_reward(HashReward(), problem, texts)
    assert len(set(scores)) > 1 and all(0 <= s <= 1 for s in scores)
    assert HashReward().score(problem, [Completion(text=t) for t in texts]) == scores  # a pure function of the text
    learner = RecordingLearner()
    assert learner.train([], 3) == {"loss": 0.5, "groups": 0.0}
    learner.save(tmp_path)
    again = RecordingLearner()
    again.load(tmp_path)
    assert again.trained == again.loaded == [{"round": 3, "groups": []}]
