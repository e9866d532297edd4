#!/usr/bin/env bash
# One offline GRPO iteration on a GPU with a model of SmolLM2-135M's shape (random weights:
# throughput does not depend on them), 8 problems x 8 completions x 256 new tokens, then the
# same with LoRA and with a KL reference; prints the throughput figures of each.
#
# On the GPU machine (no network, no gguf): build the wheels and the shape folder here first,
#   pip wheel --no-deps --no-build-isolation . plugins/sapo_local -w build/wheels
#   cp <converted SmolLM2 folder>/{config.json,generation_config.json,tokenizer*.json,chat_template.jinja} build/smollm2-shape/
# then run this with build/wheels and build/smollm2-shape carried.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/sapo-gpu-smoke}
mkdir -p "$out"
pip install -q --no-deps build/wheels/*.whl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
model="random:$PWD/build/smollm2-shape"
common=(--model "$model" --transport none --rounds 1 --task arithmetic
        --set tasks.problems_per_round=8 --set inference.num_completions=8 --set inference.max_new_tokens=256
        --set eval.every=0 --set checkpoint.every=1000 --set run.workdir="$out/runs")
summary() {
  python - "$1" <<'PY'
import json, sys
m = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
keys = ["time/generate", "inference/tokens", "inference/tokens_per_second", "time/train", "train/tokens",
        "train/tokens_per_second", "train/micro_batches", "train/loss", "train/grad_norm", "time/round"]
print(json.dumps({k: round(m[k], 3) if isinstance(m.get(k), float) else m.get(k) for k in keys}))
PY
}
for variant in "full" "lora" "kl"; do
  extra=()
  [ "$variant" = lora ] && extra=(--set train.lora=true)
  [ "$variant" = kl ] && extra=(--set train.beta=0.04 --set train.loss_type=dapo)
  echo "== $variant"
  sapo run "${common[@]}" "${extra[@]}" --experiment "smoke-$variant" > "$out/$variant.json" 2> "$out/$variant.log"
  summary "$out/$variant.json"
done
