#!/usr/bin/env bash
# The GPU half of the benchmark suite, one part per call (GPU time is scarce), as run for docs/benchmarks.md:
#   bash bench/gpu_suite.sh OUT_DIR          learner vs TRL, log-prob memory, generation (two lanes
#                                            side by side when the machine has two GPUs)
#   bash bench/gpu_suite.sh OUT_DIR ddp      two GPUs: the learner under accelerate launch, and whole rounds
# (PYTHON=python3; trl and its missing dependencies installed for the first, sapo-core and sapo-local
# installed for the second.) Steps run in priority order, each under its own time limit; one that
# fails or runs out of time is reported and the next one runs. Everything printed goes to
# OUT_DIR/suite.log (OUT_DIR/ddp.log).
set -uo pipefail
out=${1:?usage: bench/gpu_suite.sh OUT_DIR [ddp]}
part=${2:-single}
py=${PYTHON:-python3}
tokenizer=${BENCH_TOKENIZER:-build/smollm2-shape}
export PYTHONUNBUFFERED=1
mkdir -p "$out"

step() {
  local limit=$1
  shift
  echo "=== $(date +%T) $*"
  timeout "$limit" "$py" "$@" || echo "=== exit $? (limit ${limit} s)"
}

# A reward that needs no skill (a hash of the text), so a randomly initialised model's round has
# advantages to train on; installed the way pip leaves a plugin (sapo_core.testing, needs pytest).
hash_reward_site() {
  "$py" -c 'import sys; from pathlib import Path; from sapo_core.testing import HASH_REWARD, install_plugin; install_plugin(Path(sys.argv[1]), "hash-reward", "hash_reward", HASH_REWARD)' "$1"
}

# Whole offline rounds (generate, score, train) through the CLI under accelerate launch: every rank
# generates the round's rollouts, trains on its share; rank 0 alone writes the run directory.
rounds() {
  local processes=$1 mode=()
  [ "$processes" -gt 1 ] && mode=(--multi_gpu)
  echo "=== $(date +%T) sapo run under accelerate launch, $processes process(es)"
  PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}" timeout 200 "$py" -m accelerate.commands.launch "${mode[@]}" \
    --num_processes "$processes" --num_machines 1 --mixed_precision no --dynamo_backend no \
    -m sapo_core run --model "random:$tokenizer" --transport none --rounds 3 --run-dir "$out/run-$processes" \
    --set 'rewards.weights={hash=1.0}' --set tasks.problems_per_round=8 --set inference.num_completions=8 \
    --set "inference.max_new_tokens=${ROUND_TOKENS:-256}" --set eval.every=0 --set checkpoint.every=3 \
    || echo "=== exit $? (limit 200 s)"
  "$py" - "$out/run-$processes" <<'PY'
import json, sys
from pathlib import Path
for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines():
    m = json.loads(line)
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()
           if k == "round" or k.startswith(("time/", "inference/tokens", "train/"))})
PY
}

if [ "$part" = ddp ]; then
  hash_reward_site "$out/site"
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$py" -c "import torch, transformers, accelerate, sapo_local; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'GPUs', torch.cuda.device_count())"
    step 200 bench/learner_ddp.py --shape smollm2-135m --tokenizer "$tokenizer" --steps 5 --timeout 90
    rounds 1
    rounds 2
    step 150 bench/learner_ddp.py --shape qwen2-0.5b --tokenizer "$tokenizer" --steps 3 --timeout 70
    echo "=== $(date +%T) done"
  } 2>&1 | tee "$out/ddp.log"
  exit 0
fi

# sapo's learner compiles its log-prob chunk kernels on CUDA (train.compile_logprobs); the
# compilation falls in the untimed warm-up step. sapo-previous: the pass before those kernels.
learner_lane() {
  step 110 bench/learner_step.py --shape smollm2-135m --tokenizer "$tokenizer" --timeout 100
  step 200 bench/learner_step.py --shape qwen2-0.5b --tokenizer "$tokenizer" --timeout 130 --profile "$out/profile-qwen2" \
    --impl sapo --impl trl --impl sapo-previous
  step 110 bench/learner_step.py --shape qwen2-0.5b --tokenizer "$tokenizer" --timeout 100 --gradient-checkpointing
  step 60 bench/learner_step.py --shape qwen2-0.5b --tokenizer "$tokenizer" --timeout 55 --impl sapo --logprob-chunk-size 256
}

generation_lane() {
  step 150 bench/logprob_memory.py --tokens 8192 --vocab 151936 --hidden 896 --timeout 55 --repeats 5
  step 280 bench/generation.py --shape smollm2-135m --tokenizer "$tokenizer" --repeats 1 --timeout 150 \
    --variant plain --variant sapo --variant sapo-static
  step 120 bench/generation.py --shape qwen2-0.5b --tokenizer "$tokenizer" --repeats 1 --timeout 100 \
    --variant plain --variant sapo
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
  if [ "$("$py" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    # Two GPUs: the lanes run side by side, one GPU each (own temporary folders: shape folders and
    # compile caches are not shared), so the whole suite fits in one call.
    mkdir -p /tmp/lane-learner /tmp/lane-generation
    CUDA_VISIBLE_DEVICES=0 TMPDIR=/tmp/lane-learner learner_lane > "$out/learner.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 TMPDIR=/tmp/lane-generation generation_lane > "$out/generation.log" 2>&1 &
    wait
    cat "$out/learner.log" "$out/generation.log"
  else
    learner_lane
    generation_lane
  fi
  echo "=== $(date +%T) done"
} 2>&1 | tee "$out/suite.log"
