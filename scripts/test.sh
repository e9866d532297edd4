#!/usr/bin/env bash
# Set up everything on a fresh machine (scripts/setup.sh, then what only the tests need) and run
# the test suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k codec -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# llama.cpp's OpenAI-compatible server: the real server sapo-openai's (and sapo-vllm's) tests run
# against. It compiles (minutes on 2 cores; pip's wheel cache makes a second install quick), so it
# is skipped when present, and the main job's set-up (scripts/demo.sh, quickstart.sh) never builds it.
if ! .venv/bin/python -c "import llama_cpp.server.app" 2>/dev/null; then
  .venv/bin/python -m pip --disable-pip-version-check -q install 'llama-cpp-python[server]==0.3.36'
fi
exec .venv/bin/python -m pytest "$@"
