#!/usr/bin/env python3
"""Writes Alpaca records long enough that every one is cut at cutoff_len tokens, so `lora
finetune` and scripts/bench_peft.py see identical full [micro_batch, cutoff_len] batches.
Deterministic (fixed seed, standard library only). Usage: bench_data.py OUT.json [N]"""
import json
import random
import sys

WORDS = ("the model reads every token of the batch and learns from the loss of the next token "
         "while the frozen weights stay fixed and only the small adapters move a little at each step "
         "numbers like 12 345 and 6789 appear too as do names such as Alice Bob Carol and places").split()


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    rng = random.Random(1234)
    recs = []
    for i in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(600))
        recs.append({"instruction": f"Continue the text number {i}.", "input": "", "output": body})
    with open(out, "w") as f:
        json.dump(recs, f)


if __name__ == "__main__":
    main()
