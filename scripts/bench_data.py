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
    # Plain argv on purpose (no dependencies), but never treat a flag as the output path:
    # `bench_data.py --help` once wrote 800 KB of records to a file named "--help".
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    if not 1 <= len(args) <= 2 or args[0].startswith("-") or (len(args) == 2 and not args[1].isdigit()):
        sys.exit("usage: bench_data.py OUT.json [N]  (N: a positive record count, default 256)")
    out = args[0]
    n = int(args[1]) if len(args) > 1 else 256
    rng = random.Random(1234)
    recs = []
    for i in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(600))
        recs.append({"instruction": f"Continue the text number {i}.", "input": "", "output": body})
    with open(out, "w") as f:
        json.dump(recs, f)


if __name__ == "__main__":
    main()
