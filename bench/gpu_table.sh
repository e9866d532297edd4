#!/usr/bin/env bash
# The SAPO table on the H200 (issue 15, docs/sapo_table.md), in calls of at most 10 minutes:
#   bash bench/gpu_table.sh start MODEL.gguf TABLE [PARTIAL.tgz]   unpack a table a past session left (if
#                           given), warm the GGUF cache, start `sapo swarm table` in its own session (it
#                           outlives the call) and return
#   bash bench/gpu_table.sh collect TABLE OUT [SECONDS]   wait up to SECONDS for it to finish, then put the
#                           table, the plot, the command, the log's end and the whole table folder
#                           (table.tgz, no checkpoints: carry it to the next session's start) in OUT
# The swarms: WORKERS (4) workers, SPLITS ("8/0 4/4"), SEEDS (0,1,2), ROUNDS (40) rounds of 8 problems x
# 8 completions x 96 tokens of arithmetic level 1 on the bundled SmolLM2-135M, 64 held-out problems at the
# start, every 10 rounds and after the last; CACHE (static) is inference.cache_implementation, CACHE= the
# default cache (the CPU). EXTRA: more `--set KEY=VALUE` words, applied last. SYNC=1: every swarm over a
# synced folder (--drive-sync: every second worker on a second copy, a simulated Drive client between).
# MPS=1: start the CUDA MPS daemon first, if it starts and a client can use it, so that the swarms'
# processes share the GPU concurrently rather than by time slices (2026-12-07, H100: three 4-worker swarms
# at once, 4 minutes each for 40 rounds; its gain against no MPS on the same code is not measured).
# sapo-core, sapo-local and sapo-gdrive must be importable (wheels in PYTHONPATH: see RECIPES.md).
set -uo pipefail
py=${PYTHON:-python3}
splits=()
for split in ${SPLITS:-8/0 4/4}; do splits+=(--split "$split"); done
read -r -a extra <<< "${EXTRA:-}"
table_args=(--workers "${WORKERS:-4}" "${splits[@]}" --seeds "${SEEDS:-0,1,2}" --rounds "${ROUNDS:-40}"
  --set 'tasks.names=["arithmetic"]' --set "tasks.arithmetic.difficulty=${LEVEL:-2}" --set tasks.problems_per_round=8
  --set inference.num_completions=8 --set inference.max_new_tokens=96 --set eval.problems=64
  --set eval.every=10 --set eval.at_start=true "${extra[@]}")
if [ -n "${SYNC:-}" ]; then table_args+=(--drive-sync --set swarm.live_seconds=60); fi
cache=${CACHE-static}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
case "${1:?usage: start MODEL TABLE [PARTIAL.tgz] | collect TABLE OUT [SECONDS]}" in
start)
  model=${2:?model} table=${3:?table} partial=${4:-}
  mkdir -p "$table"
  if [ -n "$partial" ]; then tar xzf "$partial" -C "$table" || exit 1; fi
  "$py" -c 'import sys, torch; from sapo_local.models import load_model; load_model(sys.argv[1], device=torch.device("cpu"), dtype=torch.float32)' "$model" || exit 1
  [ -n "${MPS:-}" ] && bash bench/gpu_mps.sh "$py" | tee "$table.mps"
  setsid nohup "$py" -m sapo_core swarm table "${table_args[@]}" --set "model.name=$model" ${cache:+--set "inference.cache_implementation=$cache"} \
    --out "$table" > "$table.log" 2>&1 < /dev/null &
  sleep 5
  tail -n 5 "$table.log"
  ;;
collect)
  table=${2:?table} out=${3:?out} wait=${4:-0}
  # A machine that went back between calls comes up bare: say so at once rather than wait for nothing.
  [ -f "$table.log" ] || { echo "no table in $table: this machine is a fresh one; start again" >&2; exit 3; }
  end=$((SECONDS + wait))
  while [ $SECONDS -lt $end ] && pgrep -f "sapo_core swarm table" > /dev/null; do sleep 10; done
  cp "$table"/table.md "$table"/table.json "$table"/cumulative_reward.png "$table"/command.txt "$out"/ 2>/dev/null
  { cat "$table.mps" 2> /dev/null; tail -c 4000 "$table.log"; } > "$out/table.log"
  # The rollouts, checkpoints and logs stay behind: resuming and --report read only these.
  (cd "$table" && find . -name settings.json -o -name command.txt -o -name 'table.*' -o -name done.json \
     -o -path '*/runs/*/metrics.jsonl' | tar czf "$out/table.tgz" -T -)
  cat "$out/table.md" 2>/dev/null
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  ;;
esac
