#!/usr/bin/env python3
"""Driver of scripts/bench.sh: runs each peer ROUNDS times, alternating, and prints the table.

Training: SmolLM2-135M-Instruct (the setup GGUF; PyTorch loads the same file through
transformers' GGUF reader, dequantized to f32), LoRA r=8 alpha=16 dropout 0.05 on q_proj,v_proj,
micro-batch 4 sequences of exactly 256 tokens (scripts/bench_data.py), STEPS optimizer steps.
Generation: greedy, 128 new tokens (EOS ignored) after a short prompt, on the same GGUF file.
Peak RSS comes from /usr/bin/time -v around each process."""
import argparse
import json
import os
import platform
import re
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

MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
LORA = ".build/release/lora"
PROMPT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def timed(cmd, env=None):
    r = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
    return r.stdout, r.stderr, rss


def lora_train(data, steps, load8bit, cutoff=256, quantization=None):
    out = tempfile.mkdtemp(prefix="lora-bench-", dir=RUN_TMP)
    _, err, rss = timed([LORA, "finetune", "--base-model", MODEL, "--data-path", data, "--output-dir", out,
                         "--cutoff-len", str(cutoff), "--micro-batch-size", "4", "--batch-size", "4", "--max-steps", str(steps),
                         "--val-set-size", "0", "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0.05",
                         "--warmup-steps", "0", "--logging-steps", "1000", "--save-steps", "100000",
                         "--quantization", quantization or ("int8" if load8bit else "none")])
    tps = float(re.search(r"([\d.]+) tokens/s, peak memory", err).group(1))
    return tps, rss


def peft_train(py, data, steps, dtype):
    out, _, rss = timed([py, "scripts/bench_peft.py", "train", "--gguf", MODEL, "--data", data, "--steps", str(steps),
                         "--dtype", dtype])
    return json.loads(out.strip().splitlines()[-1])["tokens_per_second"], rss


def lora_generate(quantization="int8"):
    _, err, rss = timed([LORA, "generate", "--base-model", MODEL, "--prompt", PROMPT, "--num-beams", "1",
                         "--max-new-tokens", "128", "--min-new-tokens", "128", "--stats", "--quantization", quantization])
    m = re.search(r"time to first token ([\d.]+) s; decode ([\d.]+) tokens/s", err)
    return float(m.group(2)), rss, float(m.group(1))


def llama_generate(py):
    code = f"""
import json, time
from llama_cpp import Llama
m = Llama(model_path={MODEL!r}, n_ctx=512, n_threads={os.cpu_count()}, verbose=False)
ids = m.tokenize({PROMPT!r}.encode())
t0 = time.time(); first = None; n = 0
for tok in m.generate(ids, temp=0.0, top_k=1, reset=True):
    if first is None: first = time.time()
    n += 1
    if n == 128: break
t1 = time.time()
print(json.dumps({{"ttft": first - t0, "decode": (n - 1) / (t1 - first)}}))
"""
    out, _, rss = timed([py, "-c", code])
    j = json.loads(out.strip().splitlines()[-1])
    return j["decode"], rss, j["ttft"]


def train_flops_per_token(T=256):
    """Multiply-adds x 2 of one trained token: every frozen weight's forward (x W^T) and input
    gradient (dy W), the lm_head both ways, causal attention (QK^T and PV, about T/2 keys per
    query) forward and twice that backward; LoRA's rank-8 products are under 1% and left out."""
    from gguf import GGUFReader
    r = GGUFReader(MODEL)
    def f(key):
        v = r.fields[key]
        return int(v.parts[v.data[0]][0])
    C, I, L = f("llama.embedding_length"), f("llama.feed_forward_length"), f("llama.block_count")
    H, KV = f("llama.attention.head_count"), f("llama.attention.head_count_kv")
    V = len(r.fields["tokenizer.ggml.tokens"].data)
    hd = C // H
    proj = L * (C * C * 2 + C * (KV * hd) * 2 + C * I * 3)
    attn = L * 2 * (T / 2) * C * 2
    return 2 * (proj + V * C) * 2 + attn * 3


def fma_peak():
    exe = os.path.join(tempfile.mkdtemp(prefix="lora-fma-", dir=RUN_TMP), "fma_peak")
    subprocess.run(["cc", "-O2", "-pthread", "scripts/fma_peak.c", "-o", exe], check=True)
    out = subprocess.run([exe], capture_output=True, text=True).stdout.strip()
    if "512-bit" in out:   # the AVX2 family's ceiling on the same CPU, for comparison
        out += "\n" + subprocess.run([exe], capture_output=True, text=True, env={**os.environ, "FMA_PEAK_WIDTH": "256"}).stdout.strip()
    # Some CPUs issue 512-bit FMAs at half the 256-bit rate: the peak is the larger of the two.
    peaks = [float(x) for x in re.findall(r"fma peak: ([\d.]+) GFLOP/s", out)]
    return (max(peaks) if peaks else None), out


def summary(xs):
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    py = sys.executable
    data = os.path.join(tempfile.mkdtemp(prefix="lora-bench-data-", dir=RUN_TMP), "bench.json")
    subprocess.run([py, "scripts/bench_data.py", data, str(4 * (a.steps + 2))], check=True)
    info = subprocess.run([LORA, "info"], capture_output=True, text=True).stdout.strip()
    print(info + "\n", file=sys.stderr)
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    # PyTorch's bf16 matmuls on a CPU without native BF16 (AVX512_BF16 or AMX) are emulated and
    # take many times the f32 time: not a peer worth minutes per round.
    bf16_native = "avx512_bf16" in flags or "amx_bf16" in flags
    peers = [("lora f32", lambda: lora_train(data, a.steps, False)),
             ("pytorch f32", lambda: peft_train(py, data, a.steps, "f32")),
             ("lora int8", lambda: lora_train(data, a.steps, True)),
             ("lora llm_int8", lambda: lora_train(data, a.steps, True, quantization="llm_int8")),
             ("pytorch bf16", lambda: peft_train(py, data, a.steps, "bf16")),
             ("lora int8 T=512", lambda: lora_train(data, a.steps, True, cutoff=512)),
             ("lora generate f32", lambda: lora_generate("none")),
             ("lora generate int8", lambda: lora_generate("int8")),
             ("lora generate llm_int8", lambda: lora_generate("llm_int8")),
             ("lora generate stored", lambda: lora_generate("stored")),
             ("llama.cpp generate", lambda: llama_generate(py))]
    if not bf16_native:
        print("skipping pytorch bf16: this CPU has no native BF16 instructions (avx512_bf16 / amx_bf16)", file=sys.stderr)
        peers = [p for p in peers if p[0] != "pytorch bf16"]
    res = {k: {"v": [], "rss": [], "ttft": []} for k, _ in peers}
    # The FMA peak before the rounds and after each: a VM's speed drifts (110 and 195 GFLOP/s
    # within minutes here), and the peak is what the cores give at best, so the largest counts.
    peaks = [fma_peak()]
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", file=sys.stderr)
        for name, fn in peers:
            v = fn()
            res[name]["v"].append(v[0]); res[name]["rss"].append(v[1])
            if len(v) > 2: res[name]["ttft"].append(v[2])
            print(f"  {name}: {v[0]:.1f} tokens/s, {v[1]:.0f} MB", file=sys.stderr)
        peaks.append(fma_peak())
    got = [p for p in peaks if p[0]]
    peak, peak_line = max(got, key=lambda p: p[0]) if got else (None, peaks[-1][1])
    if got:
        peak_line += f" (the largest of {len(got)} measurements: " + ", ".join(f"{p[0]:.1f}" for p in got) + ")"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    simd = " ".join(f for f in ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16"]
                    if f in flags.split())
    print(f"machine: {cpu}, {os.cpu_count()} cores, flags: {simd}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')}, threads = cores")
    print(info)
    print(peak_line + " (scripts/fma_peak.c: register-only FMAs, all cores, widest vectors)")
    print(f"model {MODEL}; train: LoRA r=8 q_proj,v_proj, micro-batch 4 x 256 tokens, {a.steps} steps; "
          f"generate: greedy, 128 new tokens; {a.rounds} rounds, alternating\n")
    print(f"{'peer':22} {'tokens/s median':>16} {'min-max':>16} {'peak RSS MB':>12} {'TTFT s':>8}")
    for k, d in res.items():
        m, lo, hi = summary(d["v"])
        ttft = f"{statistics.median(d['ttft']):.3f}" if d["ttft"] else "-"
        print(f"{k:22} {m:16.1f} {f'{lo:.1f}-{hi:.1f}':>16} {statistics.median(d['rss']):12.0f} {ttft:>8}")
    med = {k: statistics.median(d["v"]) for k, d in res.items()}
    rss = {k: statistics.median(d["rss"]) for k, d in res.items()}
    print("\nratios (target in brackets):")
    print(f"  train tokens/s, lora int8 / pytorch f32: {med['lora int8'] / med['pytorch f32']:.2f}x  [>= 2.0 on AVX-512]")
    print(f"  train tokens/s, lora llm_int8 / pytorch f32: {med['lora llm_int8'] / med['pytorch f32']:.2f}x")
    print(f"  train tokens/s, lora f32 / pytorch f32:  {med['lora f32'] / med['pytorch f32']:.2f}x")
    print(f"  train peak RSS, lora int8 / pytorch f32: {rss['lora int8'] / rss['pytorch f32']:.2f}x  [<= 0.4]")
    fpt = train_flops_per_token()
    if peak:
        for k in ["lora f32", "lora int8", "lora llm_int8"]:
            print(f"  train, {k}: {med[k] * fpt * 1e-9:.1f} GFLOP/s = {100 * med[k] * fpt * 1e-9 / peak:.0f}% of the FMA peak  "
                  f"[>= 85% on AVX2-only CPUs]  ({fpt / 1e6:.0f} MFLOP per token)")
    if "pytorch bf16" in med:
        print(f"  train tokens/s, lora int8 / pytorch bf16: {med['lora int8'] / med['pytorch bf16']:.2f}x  [>= 1.0]")
    print(f"  int8 / f32, train tokens/s:  {med['lora int8'] / med['lora f32']:.2f}x  [>= 1.0]")
    print(f"  int8 / f32, decode tokens/s: {med['lora generate int8'] / med['lora generate f32']:.2f}x  [>= 1.0]")
    for k in ["lora generate f32", "lora generate int8", "lora generate llm_int8", "lora generate stored"]:
        print(f"  generate tokens/s, {k} / llama.cpp: {med[k] / med['llama.cpp generate']:.2f}x  [>= 1.5]")
    print(f"  cost of a 512-token sequence / a 256-token one (lora int8): "
          f"{2 * med['lora int8'] / med['lora int8 T=512']:.2f}x  [<= 2.3]")
    tt = {k: statistics.median(d["ttft"]) for k, d in res.items() if d["ttft"]}
    print(f"  time to first token, lora int8 / llama.cpp: {tt['lora generate int8'] / tt['llama.cpp generate']:.2f}x  [<= 1.0]")


if __name__ == "__main__":
    main()
