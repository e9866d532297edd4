#!/usr/bin/env bash
# Set up everything on a fresh machine (scripts/setup.sh, then what only the tests need) and run
# the test suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k codec -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# llama.cpp's OpenAI-compatible server: the real server sapo-openai's (and sapo-vllm's) tests run
# against. It compiles (minutes on 2 cores; pip's wheel cache makes a second install quick), so it
# is skipped when present, and the main job's set-up (scripts/demo.sh, quickstart.sh) never builds it.
# The native build (-march=native) is what CI has passed with. On the development VM its AMX kernels
# crash the server (general protection fault in ldtilecfg); there, CMAKE_ARGS=-DGGML_NATIVE=OFF avoids
# that, but that build failed the tests' same-seed determinism checks under load: not made the default.
if ! .venv/bin/python -c "import llama_cpp.server.app" 2>/dev/null; then
  .venv/bin/python -m pip --disable-pip-version-check -q install -c constraints/lock.txt 'llama-cpp-python[server]==0.3.36'
fi
# Style first, as llm's CI does (settings in pyproject.toml): lint, the format check, types of sapo-core.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Every test, slow ones included (pyproject's addopts skip them in a plain `pytest`); a -m given here wins.
exec .venv/bin/python -m pytest -m "slow or not slow" "$@"
