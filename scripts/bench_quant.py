#!/usr/bin/env python3
"""Frozen-weight formats side by side: `lora finetune` and `lora generate` on SmolLM2-135M with
--quantization none / int8 / nf4, alternating, ROUNDS rounds, in one invocation (the settings of
scripts/bench.py: LoRA r=8 on q_proj,v_proj, micro-batch 4 x 256 tokens, STEPS steps; greedy
decoding of 128 tokens). Prints medians, min-max and peak RSS, and nf4 / int8 training time.
    python3 scripts/bench_quant.py [--rounds 3] [--steps 5]   (after swift build -c release)"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import atexit as _atexit
import shutil as _shutil
# Every temporary file of a run (finetune outputs, data, the peak probe) under one folder that
# goes when the script exits, so repeated runs leave nothing in /tmp.
RUN_TMP = tempfile.mkdtemp(prefix="lora-bench-run-")
_atexit.register(_shutil.rmtree, RUN_TMP, True)

sys.path.insert(0, os.path.dirname(__file__))
from bench import LORA, lora_generate, lora_train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    data = os.path.join(tempfile.mkdtemp(prefix="lora-bench-data-", dir=RUN_TMP), "bench.json")
    subprocess.run([sys.executable, "scripts/bench_data.py", data, str(4 * (a.steps + 2))], check=True)
    print(subprocess.run([LORA, "info"], capture_output=True, text=True).stdout.strip(), file=sys.stderr)
    peers = []
    for q in ["none", "int8", "nf4"]:
        peers.append((f"finetune {q}", lambda q=q: lora_train(data, a.steps, False, quantization=q)))
        peers.append((f"generate {q}", lambda q=q: lora_generate(q)[:2]))
    res = {k: ([], []) for k, _ in peers}
    for r in range(a.rounds):
        for name, fn in peers:
            tps, rss = fn()
            res[name][0].append(tps)
            res[name][1].append(rss)
            print(f"round {r + 1} {name}: {tps:.1f} tokens/s, peak RSS {rss:.0f} MB", file=sys.stderr)
    print(f"{'run':<18}{'tokens/s median':>16}{'min-max':>16}{'peak RSS MB':>13}")
    for name, (v, rss) in res.items():
        print(f"{name:<18}{statistics.median(v):>16.1f}{f'{min(v):.1f}-{max(v):.1f}':>16}{max(rss):>13.0f}")
    med = {k: statistics.median(v) for k, (v, _) in res.items()}
    print(f"training time nf4 / int8: {med['finetune int8'] / med['finetune nf4']:.2f}x  [<= 1.3]")
    print(f"decoding time nf4 / int8: {med['generate int8'] / med['generate nf4']:.2f}x")


if __name__ == "__main__":
    main()
