#!/usr/bin/env bash
# The offline quickstart, set-up included: GRPO on the bundled SmolLM2-135M, one process, no
# swarm, on easy arithmetic, a few minutes on a 2-core CPU. It prints one line per round,
# evaluates before and after on held-out problems, and draws the reward curve.
# Extra arguments go to `sapo run`, e.g. `bash scripts/quickstart.sh --rounds 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run_dir="runs/quickstart/$(date -u +%Y%m%d-%H%M%S)"
.venv/bin/sapo run --config configs/quickstart.toml --run-dir "$run_dir" "$@" > /dev/null
.venv/bin/sapo report "$run_dir" -o "$run_dir/reward.png"
