#!/usr/bin/env bash
# The first run: set up, measure the model on the held-out task set, fine-tune it on the bundled
# training set (configs/quickstart.yml, ~15 minutes on 2 cores), measure again, show an answer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
L=.build/release/lora
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=runs/quickstart
EVAL=data/tasks_eval.json
mkdir -p runs

echo "== exact match before fine-tuning ($EVAL)" >&2
$L eval --metric exact_match --base-model "$MODEL" --data-path "$EVAL" --json --show-failures 0 > runs/before.json
echo "== fine-tuning (configs/quickstart.yml)" >&2
start=$(date +%s)
$L finetune --config configs/quickstart.yml --output-dir "$OUT"
end=$(date +%s)
echo "== exact match after fine-tuning" >&2
$L eval --metric exact_match --base-model "$MODEL" --lora-weights "$OUT" --data-path "$EVAL" --json --show-failures 3 > runs/after.json

python3 - "$((end - start))" <<'PY'
import json, sys
b, a = json.load(open("runs/before.json")), json.load(open("runs/after.json"))
print(f"\nexact match on data/tasks_eval.json ({a['total']} held-out records)")
print(f"  before: {100 * b['accuracy']:.1f}%   after: {100 * a['accuracy']:.1f}%   "
      f"gain: {100 * (a['accuracy'] - b['accuracy']):+.1f} points   (fine-tune: {int(sys.argv[1]) // 60} min {int(sys.argv[1]) % 60} s)")
for f in a.get("failures", []):
    print(f"  still wrong: {f['instruction']!r} {f['input']!r}: expected {f['expected']!r}, got {f['got']!r}")
PY
echo >&2
echo "== a sample answer" >&2
Q="What is 17 plus 25?"
echo "instruction: $Q"
printf "answer: "
$L generate --base-model "$MODEL" --lora-weights "$OUT" --instruction "$Q" --num-beams 1 --max-new-tokens 16
