#!/usr/bin/env python3
"""Driver of scripts/bench_big.sh: issue 10's measurements on make_big.py's checkpoints, one run each.

    bench_big.py DIR [--only gen,finetune,scaling] [--finetune 1:true,1:false,4:true,4:false]

DIR is make_big.py's OUT/SHAPE (q4_0.gguf, q8_0.gguf, bf16/, shape.json).
- gen: `lora generate`, 32 new tokens, greedy, --stats, on the Q4_0 GGUF (stored), the Q8_0 GGUF
  (stored) and the bf16 folder (--quantization int8); llama.cpp (llama-cpp-python, this
  interpreter) on both GGUFs; peers alternate (lora Q4_0, llama.cpp Q4_0, lora Q8_0, llama.cpp Q8_0,
  lora bf16->int8). Peak RSS from /usr/bin/time -v around each process.
- finetune: `lora finetune` on the Q4_0 file (stored), r 16 on q_proj,v_proj, cutoff 512, one
  optimizer step of one micro-batch (batch = micro-batch), with gradient_checkpointing true / false;
  a plan that does not fit is refused before training (exit 1): its table is printed, by design.
- scaling: time per trained token at T = 512, 1024, 2048 on SmolLM2-135M (models/, Q4_1 as
  stored), micro-batch 1, 2 optimizer steps each: at 135M parameters and 30 layers of 9 heads,
  attention is a large share of the work at these lengths (4 T hd per head per layer per token vs
  ~0.27 GFLOP of projections), so a kernel that went quadratic in memory or time shows here;
  time per token must grow at most linearly in T (a + b T).
Each line notes the load average (uptime): numbers on a busy machine are not comparable."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import atexit as _atexit
import shutil as _shutil
# Every temporary file of a run (finetune outputs, data, the peak probe) under one folder that
# goes when the script exits, so repeated runs leave nothing in /tmp.
RUN_TMP = tempfile.mkdtemp(prefix="lora-bench-run-")
_atexit.register(_shutil.rmtree, RUN_TMP, True)

LORA = os.environ.get("LORA", ".build/release/lora")
PROMPT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
NEW = 32
SMOLLM = os.environ.get("LORA_SCALING_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")


def load():
    return open("/proc/loadavg").read().split()[0]


def timed(cmd, ok_codes=(0,)):
    t0 = time.time()
    r = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    wall = time.time() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    rss = int(m.group(1)) * 1024 if m else 0
    if r.returncode not in ok_codes:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r, rss, wall


def gb(x):
    return f"{x / 1e9:.2f} GB"


def lora_generate(path, quantization):
    r, rss, wall = timed([LORA, "generate", "--base-model", path, "--quantization", quantization, "--prompt", PROMPT,
                          "--num-beams", "1", "--max-new-tokens", str(NEW), "--min-new-tokens", str(NEW), "--stats",
                          "--quiet"])
    m = re.search(r"time to first token ([\d.]+) s; decode ([\d.]+) tokens/s", r.stderr)
    if not m:
        sys.exit(f"no --stats line in:\n{r.stderr[-2000:]}")
    return {"tps": float(m.group(2)), "ttft": float(m.group(1)), "rss": rss, "wall": wall}


def llama_generate(path):
    code = f"""
import json, os, time
from llama_cpp import Llama
m = Llama(model_path={path!r}, n_ctx=512, n_threads=os.cpu_count(), verbose=False)
ids = m.tokenize({PROMPT!r}.encode())
t0 = time.time(); first = None; n = 0
for tok in m.generate(ids, temp=0.0, top_k=1, reset=True):
    if first is None: first = time.time()
    n += 1
    if n == {NEW}: break
t1 = time.time()
print(json.dumps({{"ttft": first - t0, "decode": (n - 1) / (t1 - first)}}))
"""
    r, rss, wall = timed([sys.executable, "-c", code])
    j = json.loads(r.stdout.strip().splitlines()[-1])
    return {"tps": j["decode"], "ttft": j["ttft"], "rss": rss, "wall": wall}


def gen(d, meta):
    q4, q8, bf = os.path.join(d, "q4_0.gguf"), os.path.join(d, "q8_0.gguf"), os.path.join(d, "bf16")
    peers = [("lora Q4_0 (stored)", lambda: lora_generate(q4, "stored")),
             ("llama.cpp Q4_0", lambda: llama_generate(q4)),
             ("lora Q8_0 (stored)", lambda: lora_generate(q8, "stored")),
             ("llama.cpp Q8_0", lambda: llama_generate(q8)),
             ("lora bf16 as int8", lambda: lora_generate(bf, "int8"))]
    res = {}
    print(f"\n== generate, {NEW} new tokens, greedy ({meta['shape']})")
    print(f"{'peer':24} {'tokens/s':>9} {'TTFT s':>7} {'peak RSS':>10} {'wall s':>7}  load")
    for name, fn in peers:
        la = load()
        v = fn()
        res[name] = v
        print(f"{name:24} {v['tps']:9.2f} {v['ttft']:7.2f} {gb(v['rss']):>10} {v['wall']:7.1f}  {la}", flush=True)
    print("\ntargets:")
    for fmt, fname in (("Q4_0", "q4_0.gguf"), ("Q8_0", "q8_0.gguf")):
        w = meta["bytes"][fname]
        l, c = res[f"lora {fmt} (stored)"], res[f"llama.cpp {fmt}"]
        bound = w + 1e9
        print(f"  {fmt}: peak RSS {gb(l['rss'])} vs file weights + 1 GB = {gb(bound)}: "
              f"{'ok' if l['rss'] <= bound else 'OVER'} ({l['rss'] / bound:.2f}x); "
              f"tokens/s {l['tps']:.2f} vs llama.cpp {c['tps']:.2f}: {l['tps'] / c['tps']:.2f}x "
              f"({'ok' if l['tps'] >= c['tps'] else 'BELOW'} 1.0x)")
    b = res["lora bf16 as int8"]
    print(f"  bf16 as int8: peak RSS {gb(b['rss'])} vs 7.5 GB: {'ok' if b['rss'] <= 7.5e9 else 'OVER'} ({b['rss'] / 7.5e9:.2f}x)")


def train_data(path, n, words):
    """Alpaca records long enough that every one is cut at the cutoff (deterministic)."""
    import random
    vocab = ("the model reads every token of the batch and learns from the loss of the next token while the frozen "
             "weights stay fixed and only the small adapters move a little at each step numbers like 12 345 and 6789 "
             "appear too as do names such as Alice Bob Carol and places").split()
    rng = random.Random(1234)
    recs = [{"instruction": f"Continue the text number {i}.", "input": "",
             "output": " ".join(rng.choice(vocab) for _ in range(words))} for i in range(n)]
    with open(path, "w") as f:
        json.dump(recs, f)


def lora_finetune(model, quantization, data, mb, cutoff, ckpt, steps, extra=()):
    out = tempfile.mkdtemp(prefix="lora-big-", dir=RUN_TMP)
    cmd = [LORA, "finetune", "--base-model", model, "--quantization", quantization, "--data-path", data,
           "--output-dir", out, "--cutoff-len", str(cutoff), "--micro-batch-size", str(mb), "--batch-size", str(mb),
           "--max-steps", str(steps), "--val-set-size", "0", "--lora-r", "16", "--lora-alpha", "32",
           "--lora-dropout", "0.05", "--lora-target-modules", "q_proj,v_proj", "--warmup-steps", "0",
           "--logging-steps", "1", "--save-steps", "100000", "--gradient-checkpointing", ckpt, *extra]
    r, rss, wall = timed(cmd, ok_codes=(0, 1))
    lines, plan, inside = r.stderr.splitlines(), [], False
    for l in lines:   # the plan table: from "memory plan" to "available", and any refusal line
        inside = inside or l.startswith("memory plan")
        if inside or re.search(r"does not fit|refus", l, re.I):
            plan.append(l)
        if l.strip().startswith("available"):
            inside = False
    plan = "\n".join(plan)
    if r.returncode == 1:
        return {"refused": True, "plan": plan, "rss": rss, "wall": wall, "stderr": r.stderr[-3000:]}
    m = re.search(r"done: (\d+) steps in ([\d.]+) s, ([\d.]+) tokens/s", r.stderr)
    steps_done, secs, tps = int(m.group(1)), float(m.group(2)), float(m.group(3))
    return {"refused": False, "plan": plan, "rss": rss, "wall": wall, "s_per_step": secs / max(1, steps_done), "tps": tps}


def finetune(d, meta, runs):
    q4 = os.path.join(d, "q4_0.gguf")
    data = os.path.join(tempfile.mkdtemp(prefix="lora-big-data-", dir=RUN_TMP), "train.json")
    train_data(data, 16, 600)
    print(f"\n== finetune on {meta['shape']} Q4_0 (stored), r 16 on q_proj,v_proj, cutoff 512, 1 step of 1 micro-batch")
    for mb, ckpt in runs:
        la = load()
        v = lora_finetune(q4, "stored", data, mb, 512, ckpt, 1)
        print(f"-- micro-batch {mb} x 512, gradient_checkpointing {ckpt} (load {la})")
        print(v["plan"])
        if v["refused"]:
            print(f"   REFUSED by the memory plan before training (designed behaviour); peak RSS {gb(v['rss'])}")
        else:
            ok = "" if mb != 4 else (f"; 4x512 target 16 GB: {'ok' if v['rss'] <= 16e9 else 'OVER'}")
            print(f"   {v['s_per_step']:.1f} s per step, {v['tps']:.1f} tokens/s, peak RSS {gb(v['rss'])}{ok}", flush=True)


def scaling():
    if not os.path.exists(SMOLLM):
        print(f"\n== scaling: {SMOLLM} missing (scripts/setup.sh fetches it); skipped")
        return
    data = os.path.join(tempfile.mkdtemp(prefix="lora-big-data-", dir=RUN_TMP), "long.json")
    train_data(data, 8, 3000)   # ~3500 tokens each with SmolLM2's tokenizer: cut at every T below
    print(f"\n== scaling: {SMOLLM} (stored), micro-batch 1, 2 steps, time per trained token")
    rows = []
    for T in (512, 1024, 2048):
        la = load()
        v = lora_finetune(SMOLLM, "stored", data, 1, T, "false", 2)
        per = 1e3 / v["tps"]
        rows.append((T, per))
        print(f"T {T:5}: {per:7.3f} ms/token ({v['tps']:.1f} tokens/s), peak RSS {gb(v['rss'])}  load {la}", flush=True)
    (t0, p0), (t2, p2) = rows[0], rows[-1]
    b = (p2 - p0) / (t2 - t0)
    a = p0 - b * t0
    pred = a + b * rows[1][0]
    print(f"fit a + b T through T={t0} and T={t2}: a {a:.3f} ms, b {b * 1e3:.3f} us/token of context; "
          f"T={rows[1][0]} predicted {pred:.3f} ms, measured {rows[1][1]:.3f} ms ({rows[1][1] / pred:.2f}x); "
          f"2048 vs 512: {p2 / p0:.2f}x per token. Linear growth: the middle point lies on the line (ratio ~1.0); "
          f"a cost quadratic in T per token would put it well below (ratio < 1 by the curvature)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--only", default="gen,finetune,scaling")
    ap.add_argument("--finetune", default="1:true,1:false,4:true,4:false", help="MB:CHECKPOINTING,... runs")
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.dir, "shape.json")))
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("model name")), "").strip()
    print(f"{flags}; {os.cpu_count()} cores; {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"{meta['shape']}: {meta['parameters'] / 1e9:.2f} B parameters; files " +
          ", ".join(f"{k} {gb(v)}" for k, v in meta["bytes"].items()))
    only = a.only.split(",")
    if "gen" in only:
        gen(a.dir, meta)
    if "finetune" in only:
        finetune(a.dir, meta, [(int(x.split(":")[0]), x.split(":")[1]) for x in a.finetune.split(",")])
    if "scaling" in only:
        scaling()


if __name__ == "__main__":
    main()
