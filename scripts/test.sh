#!/usr/bin/env bash
# Set up everything on a fresh machine (scripts/setup.sh, then what only the tests need) and run
# the test suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k codec -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# llama.cpp's OpenAI-compatible server: the real server sapo-openai's (and sapo-vllm's) tests run
# against. It compiles (minutes on 2 cores; pip's wheel cache makes a second install quick), so it
# is skipped when present, and the main job's set-up (scripts/demo.sh, quickstart.sh) never builds it.
# GGML_NATIVE=OFF: portable AVX2 kernels. The default, -march=native, compiles in llama.cpp's AMX
# kernels on a Xeon that has AMX, and this version's first AMX matrix product dies of a general
# protection fault (ldtilecfg): the server lists its model, then exits (SIGSEGV) on the first
# completion. Such a build (installed before, or in pip's wheel cache, whose key ignores CMAKE_ARGS)
# is replaced.
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
llama_ready() {
  .venv/bin/python -c "import sys, llama_cpp, llama_cpp.server.app
sys.exit(b'AMX_INT8 = 1' in llama_cpp.llama_print_system_info())" 2>/dev/null
}
if ! llama_ready; then
  if .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    "${pip[@]}" uninstall -y llama-cpp-python
    "${pip[@]}" cache remove 'llama_cpp_python-*' || true
  fi
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "${pip[@]}" install 'llama-cpp-python[server]==0.3.36'
  llama_ready || { echo "llama-cpp-python: the build has AMX kernels or no server" >&2; exit 1; }
fi
exec .venv/bin/python -m pytest "$@"
