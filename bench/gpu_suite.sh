#!/usr/bin/env bash
# The GPU half of the benchmark suite in one call (GPU time is scarce), as run for docs/benchmarks.md:
#   bash bench/gpu_suite.sh OUT_DIR     (PYTHON=python3; trl and its missing dependencies installed)
# Steps run in priority order, each under its own time limit; one that fails or runs out of time
# is reported and the next one runs. Everything printed goes to OUT_DIR/suite.log.
set -uo pipefail
out=${1:?usage: bench/gpu_suite.sh OUT_DIR}
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

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
  # sapo's learner compiles its log-prob chunk kernels on CUDA (train.compile_logprobs); the
  # compilation falls in the untimed warm-up step. sapo-previous: the pass before those kernels.
  step 110 bench/learner_step.py --shape smollm2-135m --tokenizer "$tokenizer" --timeout 100
  step 200 bench/learner_step.py --shape qwen2-0.5b --tokenizer "$tokenizer" --timeout 130 --profile "$out/profile-qwen2" \
    --impl sapo --impl trl --impl sapo-previous
  step 150 bench/logprob_memory.py --tokens 8192 --vocab 151936 --hidden 896 --timeout 55 --repeats 5
  step 280 bench/generation.py --shape smollm2-135m --tokenizer "$tokenizer" --repeats 1 --timeout 150 \
    --variant plain --variant sapo --variant sapo-static
  step 120 bench/generation.py --shape qwen2-0.5b --tokenizer "$tokenizer" --repeats 1 --timeout 100 \
    --variant plain --variant sapo
  step 110 bench/learner_step.py --shape qwen2-0.5b --tokenizer "$tokenizer" --timeout 100 --gradient-checkpointing
  echo "=== $(date +%T) done"
} 2>&1 | tee "$out/suite.log"
