#!/usr/bin/env bash
# The H200 learning benchmark of docs/benchmarks.md (issue 12), in calls of at most 10 minutes:
#   bash bench/gpu_learning.sh start MODEL.gguf RESULTS   warm the GGUF cache, start bench/learning.py in
#                                                         its own session (it outlives the call) and return
#   bash bench/gpu_learning.sh collect RESULTS OUT [SECONDS]  wait up to SECONDS for it, then put the table,
#                                                         the plot and every run's metrics (tar.gz) in OUT
# The runs: the recipe (defaults) on each built-in task at its default difficulty, 3 seeds, 60 rounds of
# 8 problems x 8 completions x 128 tokens (bench/learning.py --preset gpu), and the same on the SAPO paper's
# mix (tasks.preset=sapo-paper, 144 held-out problems: 16 per task), 3 seeds: 15 processes, one torch thread
# each, on one GPU. TASKS, ROUNDS and VARIANTS (learning.py's --variant and --only) replace the defaults, e.g. the
# paper's mix at reasoning-gym's first curriculum level:
#   VARIANTS="--variant lvl1:tasks.rg:bf.level=1;tasks.rg:arc_1d.level=1 --only lvl1/*" TASKS=preset:sapo-paper
# MPS=1 starts CUDA's MPS daemon first (bench/gpu_mps.sh).
# sapo-core, sapo-local and sapo-reasoning-gym must be importable (wheels in PYTHONPATH: see RECIPES.md).
set -uo pipefail
py=${PYTHON:-python3}
runs=(--preset gpu --rounds "${ROUNDS:-60}" --seeds 0,1,2 --tasks "${TASKS:-arithmetic,countdown,sat,sort,preset:sapo-paper}")
# The variants and which runs get which, as learning.py arguments without spaces (read, never globbed here):
read -r -a variants <<< "${VARIANTS:---variant recipe: --variant paper:eval.problems=144 --only recipe/[!p]* --only paper/preset:*}"
runs+=("${variants[@]}")
# More variants or runs, as learning.py arguments without spaces, e.g.
#   EXTRA="--variant resample:tasks.resample=2 --only resample/arithmetic"
read -r -a extra <<< "${EXTRA:-}"
runs+=("${extra[@]}")
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
case "${1:?usage: start MODEL RESULTS | collect RESULTS OUT [SECONDS]}" in
start)
  model=${2:?model} results=${3:?results}
  mkdir -p "$results"
  "$py" -c 'import sys, torch; from sapo_local.models import load_model; load_model(sys.argv[1], device=torch.device("cpu"), dtype=torch.float32)' "$model" || exit 1
  [ -n "${MPS:-}" ] && bash bench/gpu_mps.sh "$py" | tee "$results/mps.txt"
  setsid nohup "$py" bench/learning.py "${runs[@]}" --jobs 15 --threads 1 \
    --set "model.name=$model" --set checkpoint.every=1000 --out "$results" > "$results/bench.log" 2>&1 < /dev/null &
  sleep 5
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
  ;;
collect)
  results=${2:?results} out=${3:?out} wait=${4:-0}
  # A machine that went back between calls comes up bare: say so at once rather than wait for nothing.
  [ -f "$results/bench.log" ] || { echo "no run in $results: this machine is a fresh one; start again" >&2; exit 3; }
  end=$((SECONDS + wait))
  while [ $SECONDS -lt $end ] && ! grep -q "^results:" "$results/bench.log" 2>/dev/null; do sleep 10; done
  "$py" bench/learning.py --report-only "${runs[@]}" --out "$results" --partial > /dev/null 2>&1
  cp "$results"/learning.md "$results"/learning.json "$results"/learning.png "$out"/ 2>/dev/null
  { cat "$results/mps.txt" 2> /dev/null; tail -c 4000 "$results/bench.log"; } > "$out/bench.log"
  (cd "$results" && tar czf "$out/runs.tgz" --exclude='checkpoints' --exclude='eval_iter_*' --exclude='eval_start.json' .)
  cat "$out/learning.md" 2>/dev/null
  for f in "$results"/*/*/seed*/metrics.jsonl; do echo "$f $(wc -l < "$f")"; done
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  ;;
esac
