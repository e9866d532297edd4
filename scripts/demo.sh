#!/usr/bin/env bash
# The main job, set-up included: a SAPO swarm on this machine. A coordinator and 3 workers run
# as separate processes over a shared local folder, each with the bundled SmolLM2-135M, GRPO on
# easy arithmetic, training on its own and its peers' rollouts. It shows each node's reward per
# round and draws the reward curves into runs/swarm/<timestamp>/reward.png.
# Extra arguments go to `sapo swarm run`, e.g. `bash scripts/demo.sh --nodes 2 --rounds 8`.
# The offline single-process run is scripts/quickstart.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sapo swarm run --nodes 3 --config configs/swarm.toml "$@"
