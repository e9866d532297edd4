"""A user's install: sapo-core, sapo-openai, sapo-gdrive and a third-party plugin in a fresh venv.

Plain (non-editable) pip installs from this repository, as a user would get them: no torch, fast
to install, plugins discovered through their entry points, and the offline loop runs end to end
on the example plugin's ``guess`` backend (a node without a learner falls back to contributor).
Run with ``pytest -s -m slow tests/test_fresh_venv.py`` to see the measured install time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
INSTALL_BUDGET_S = 60.0
PIP_FLAGS = ["--disable-pip-version-check", "-q"]
# Settings that would change what the fresh install does; the user's shell may have them.
SCRUB = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "SAPO_", "GDRIVE_PATH", "EXPERIMENT_NAME", "NODE_ROLE",
         "NODE_ID", "MODEL_NAME", "PIP_REQUIRE_VIRTUALENV")


def clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["NO_COLOR"] = "1"
    return env


def run(args: list[str | Path], env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_fresh_venv_install_and_offline_run(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    ok(run([sys.executable, "-m", "venv", venv], os.environ.copy(), tmp_path))
    env = clean_env(venv)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", *PIP_FLAGS]

    started = time.perf_counter()
    ok(run([*pip, ROOT, ROOT / "plugins" / "sapo_openai", ROOT / "plugins" / "sapo_gdrive"], env, tmp_path))
    install_s = time.perf_counter() - started
    print(f"\nfresh venv: pip install sapo-core sapo-openai sapo-gdrive took {install_s:.1f} s")
    ok(run([*pip, ROOT / "docs" / "examples" / "sapo-hello"], env, tmp_path))
    assert install_s < INSTALL_BUDGET_S, f"installing core+openai+gdrive took {install_s:.1f} s (budget {INSTALL_BUDGET_S} s)"

    no_torch = run([python, "-c", "import torch"], env, tmp_path)
    assert no_torch.returncode != 0 and "ModuleNotFoundError" in no_torch.stderr, "torch must not be installed"

    sapo = venv / "bin" / "sapo"
    rows = json.loads(ok(run([sapo, "plugins", "--json"], env, tmp_path)).stdout)
    by_name = {row["name"]: row for row in rows}
    assert {"sapo-openai", "sapo-gdrive", "sapo-hello"} <= {row["distribution"] for row in rows}
    assert all(row["error"] is None for row in rows), rows
    hello = by_name["hello"]
    assert hello["distribution"] == "sapo-hello" and not hello["builtin"]
    assert hello["registers"]["inference"] == ["guess"]

    help_text = ok(run([sapo, "--help"], env, tmp_path)).stdout
    assert any(line.split()[:1] == ["hello"] for line in help_text.splitlines()), help_text
    assert "Hello from sapo-hello" in ok(run([sapo, "hello"], env, tmp_path)).stdout

    workdir = tmp_path / "runs"
    result = ok(run([sapo, "run", "--inference", "guess", "--transport", "none", "--rounds", "1",
                     "--set", f"run.workdir={workdir}"], env, tmp_path))
    metrics = json.loads(result.stdout)  # stdout is the final metrics JSON and nothing else
    assert "reward/mean" in metrics and metrics["round"] == 0
    assert "contributor" in result.stderr  # no learner installed: the node only contributes rollouts
    (node_dir,) = (p.parent for p in (workdir / "default").glob("*/metrics.jsonl"))
    lines = (node_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0]
    assert (node_dir / "hello.csv").read_text(encoding="utf-8").splitlines()[0] == "round,reward_mean"
