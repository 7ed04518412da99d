#!/usr/bin/env python3
"""Bounded load test of `lora serve` (loopback only; stops by itself).

Phases, each the same streamed completions (greedy, --max-tokens each):
  1. lora serve, --clients concurrent clients, --requests requests spread over 4 models
     (the adapters given, or 3 adapters and a weighted mix of two of them);
  2. lora serve, one client, --single-requests requests (phases 1 and 2 --repeat times,
     alternating; the run with the median ratio is reported in full);
  3. llama-cpp-python's OpenAI server (`python -m llama_cpp.server`, from --llama-python's
     environment) on --merged-gguf (the base with one adapter merged, `lora merge --format gguf`),
     one model, the same load as phase 1. Skipped when --llama-python is not given.
Reports aggregate tokens/s, p50/p99 time to first token and p50/p99 time per output token.
Only the standard library is used; every request has a timeout and every phase a deadline.

Equal work on both sides: every request bans the end-of-text ids with logit_bias (--ban) so
that answers run to --max-tokens; llama_cpp.server runs with --interrupt_requests false (by
default it cuts a stream short as soon as another request waits, which ended most of its
answers after 1-2 tokens) and gets repeat_penalty 1.0 (its default is 1.1; lora serve has none).
The tokens each request produced are counted (lora serve's
usage chunk; llama-cpp-python's stream has no usage, so its token chunks are counted, empty
ones included) and reported per phase (tokens_min / tokens_max / full_length requests). When
some answers still end early, the phase also reports tokens/s over the full-length requests
alone ("full_length_tokens_per_s": their tokens over the phase's wall time is not meaningful,
so it is their tokens over the sum of their own durations, times the clients), and
"equal_length" says whether both servers produced max_tokens for every request.

--setup-llama first makes --llama-python's environment (default ~/.cache/lora/venv-bench)
able to run `python -m llama_cpp.server`: pip installs the server's own dependencies
(fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings) when they are missing,
and llama-cpp-python itself when absent (that compiles llama.cpp: minutes). Idempotent:
nothing is installed when the server module already imports. `--setup-llama` alone (without
--base-model) only sets up.

  scripts/load_test.py --lora .build/release/lora --base-model models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --adapter qs=runs/quickstart --adapter c100=runs/quickstart/checkpoint-100 \
      --adapter c50=runs/quickstart/checkpoint-50 \
      --merged-gguf /tmp/merged.gguf --llama-python ~/.cache/lora/venv-bench/bin/python
"""
import argparse, atexit, json, os, re, signal, subprocess, sys, tempfile, threading, time, urllib.request

PROMPTS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    f"### Instruction:\n{q}\n\n### Response:\n"
    for q in ["What is 17 plus 25?", "Name three primary colours.", "Convert 3 km to meters.", "Spell 'house' backwards.",
              "What day comes after Monday?", "List four fruits.", "What is the capital of Italy?", "Count from 1 to 5."]
]


def start(cmd, log, pattern, timeout=600):
    """Starts `cmd`, waits until its log shows `pattern` (a regex with the port as group 1)."""
    f = open(log, "w")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = re.search(pattern, open(log).read())
        if m:
            return p, int(m.group(1))
        if p.poll() is not None:
            sys.exit(f"{cmd[0]} exited: {open(log).read()[-2000:]}")
        time.sleep(0.2)
    p.kill()
    sys.exit(f"{cmd[0]} did not start in {timeout} s")


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


BAN = {}  # logit_bias that bans the end-of-text ids, so every answer is max_tokens long


LLAMA_SERVER_DEPS = ["fastapi", "uvicorn", "sse-starlette", "starlette-context", "pydantic-settings"]


def setup_llama(python):
    """Makes `python -m llama_cpp.server` runnable in `python`'s environment (a venv made
    when `python` does not exist yet); installs only what is missing."""
    py = os.path.expanduser(python)
    if not os.path.exists(py):
        venv = os.path.dirname(os.path.dirname(py))
        print(f"setup-llama: creating {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    probe = lambda mod: subprocess.run([py, "-c", f"import {mod}"], capture_output=True).returncode == 0
    if probe("llama_cpp.server.app"):
        print("setup-llama: llama_cpp.server already importable", file=sys.stderr)
        return py
    need = [] if probe("llama_cpp") else ["llama-cpp-python==0.3.36"]
    print(f"setup-llama: pip install {' '.join(LLAMA_SERVER_DEPS + need)}"
          + (" (llama-cpp-python compiles llama.cpp: minutes)" if need else ""), file=sys.stderr)
    subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check"] + LLAMA_SERVER_DEPS + need, check=True)
    if not probe("llama_cpp.server.app"):
        r = subprocess.run([py, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
        sys.exit("setup-llama: llama_cpp.server still does not import:\n" + r.stderr[-2000:])
    return py


def one(port, model, prompt, max_tokens, timeout, extra=None):
    """One streamed completion: (ttft, [token arrival times], completion_tokens, seconds)."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "logit_bias": BAN, "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
    t0 = time.time()
    arrivals, usage, chunks = [], None, 0
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            j = json.loads(line[6:])
            if j.get("usage"):
                usage = j["usage"]["completion_tokens"]
            for c in j.get("choices", []):
                # One chunk per token on llama-cpp-python's server (text may be empty while a
                # character is incomplete); the last one only carries finish_reason.
                if c.get("finish_reason") is None:
                    chunks += 1
                if c.get("text"):
                    arrivals.append(time.time() - t0)
    n = usage if usage is not None else chunks
    return (arrivals[0] if arrivals else None), arrivals, n, time.time() - t0


def engine_counters(port):
    """lora serve's step counters from /metrics (None elsewhere): steps, rows, seconds, and the
    decode-only steps with their seconds."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    except Exception:
        return None
    names = ["lora_engine_steps_total", "lora_engine_rows_total", "lora_engine_step_seconds_total",
             "lora_engine_decode_steps_total", "lora_engine_decode_step_seconds_total"]
    got = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(lora_engine_\w+) ([\d.e+-]+)$", text, re.M)}
    return [got[n] for n in names] if all(n in got for n in names) else None


def phase(port, models, clients, requests, max_tokens, deadline_s, extra=None):
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(requests)]
    lock = threading.Lock()
    results, errors = [], []
    end = time.time() + deadline_s

    def worker():
        while time.time() < end:
            with lock:
                if not jobs:
                    return
                model, prompt = jobs.pop(0)
            try:
                r = one(port, model, prompt, max_tokens, timeout=max(1, end - time.time()), extra=extra)
                with lock:
                    results.append(r)
            except Exception as e:  # counted, not fatal: the report says how many failed
                with lock:
                    errors.append(repr(e))
    before = engine_counters(port)
    t0 = time.time()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(0, end - time.time()) + 5)
    wall = time.time() - t0
    after = engine_counters(port) if before else None
    tokens = sum(r[2] for r in results)
    ttft = sorted(r[0] for r in results if r[0] is not None)
    tpot = sorted((r[1][-1] - r[1][0]) / (len(r[1]) - 1) for r in results if len(r[1]) > 1)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    counts = [r[2] for r in results]
    full = [r for r in results if r[2] >= max_tokens]
    out = {"clients": clients, "requests": len(results), "errors": len(errors), "first_error": errors[0] if errors else None,
           "wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
           "max_tokens": max_tokens, "tokens_min": min(counts, default=0), "tokens_max": max(counts, default=0),
           "full_length": len(full),
           "ttft_p50_ms": round(1000 * pct(ttft, 0.5), 1), "ttft_p99_ms": round(1000 * pct(ttft, 0.99), 1),
           "tpot_p50_ms": round(1000 * pct(tpot, 0.5), 1), "tpot_p99_ms": round(1000 * pct(tpot, 0.99), 1)}
    if full and len(full) < len(results):
        busy = sum(r[3] for r in full)
        out["full_length_tokens_per_s"] = round(sum(r[2] for r in full) / busy * min(clients, len(results)), 1)
    if before and after:
        # The engine's own time: inside its model steps (the rest of the wall time is HTTP,
        # sampling, the clients and waiting), and the steps where every request decoded.
        steps, rows, secs, dsteps, dsecs = (a - b for a, b in zip(after, before))
        out["engine"] = {"steps": int(steps), "rows_per_step": round(rows / max(steps, 1), 2),
                         "busy_fraction": round(secs / wall, 3), "ms_per_step": round(1000 * secs / max(steps, 1), 2),
                         "decode_steps": int(dsteps), "ms_per_decode_step": round(1000 * dsecs / max(dsteps, 1), 2)}
    return out


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--lora", default=".build/release/lora")
    a.add_argument("--base-model")
    a.add_argument("--setup-llama", action="store_true",
                   help="pip install what `python -m llama_cpp.server` needs into --llama-python's venv (idempotent)")
    a.add_argument("--quantization", default="stored")
    a.add_argument("--adapter", action="append", default=[], help="NAME=DIR (3 or 4)")
    a.add_argument("--clients", type=int, default=8)
    a.add_argument("--requests", type=int, default=64)
    a.add_argument("--single-requests", type=int, default=16)
    a.add_argument("--repeat", type=int, default=1,
                   help="run the two lora serve phases this many times, alternating; report the run with the median ratio "
                        "and list every run (the one-client rate moves with whatever else wakes on a 2-core machine)")
    a.add_argument("--max-tokens", type=int, default=64)
    a.add_argument("--deadline", type=float, default=900, help="seconds per phase")
    a.add_argument("--merged-gguf")
    a.add_argument("--llama-python", help="python of the venv with llama-cpp-python (with --setup-llama: default ~/.cache/lora/venv-bench/bin/python)")
    a.add_argument("--threads", type=int, default=0)
    a.add_argument("--out", help="write the results as JSON here")
    a.add_argument("--ban", default="0,1,2", help="token ids given logit_bias -100 (SmolLM2: <|endoftext|>, <|im_start|>, <|im_end|>)")
    o = a.parse_args()
    if o.setup_llama:
        o.llama_python = setup_llama(o.llama_python or "~/.cache/lora/venv-bench/bin/python")
        if not o.base_model:
            return
    if not o.base_model:
        a.error("--base-model is required")
    BAN.update({i: -100 for i in o.ban.split(",") if i})
    names = [s.split("=", 1)[0] for s in o.adapter]
    if len(names) not in (3, 4):
        sys.exit("give 3 adapters (a mix of the first two is the 4th) or 4")
    fd, log = tempfile.mkstemp(prefix="lora-load-test-", suffix=".log")  # the servers' output; removed at exit
    os.close(fd)
    atexit.register(lambda: os.path.exists(log) and os.remove(log))
    cmd = [o.lora, "serve", "--port", "0", "--base-model", o.base_model, "--quantization", o.quantization,
           "--max-batch", str(o.clients), "--threads", str(o.threads)]
    for s in o.adapter:
        cmd += ["--adapter", s]
    p, port = start(cmd, log, r"listening on http://127\.0\.0\.1:(\d+)")
    report = {}
    try:
        if len(names) == 3:
            body = json.dumps({"name": "mix", "adapters": {names[0]: 0.5, names[1]: 0.5}}).encode()
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/adapters", body,
                                                          {"Content-Type": "application/json"}), timeout=60)
            names.append("mix")
        one(port, names[0], PROMPTS[0], 4, 300)  # warm-up
        runs = []
        for _ in range(max(1, o.repeat)):
            runs.append((phase(port, names, o.clients, o.requests, o.max_tokens, o.deadline),
                         phase(port, names, 1, o.single_requests, o.max_tokens, o.deadline)))
        # With --repeat, the run whose ratio is the median is reported in full, and every run's figures.
        ratio = lambda r: r[0]["tokens_per_s"] / max(r[1]["tokens_per_s"], 1e-9)
        mid = sorted(runs, key=ratio)[(len(runs) - 1) // 2]
        report["lora_serve_concurrent"], report["lora_serve_one_client"] = mid
        if len(runs) > 1:
            report["repeats"] = [{"concurrent_tokens_per_s": c["tokens_per_s"], "one_client_tokens_per_s": s["tokens_per_s"],
                                  "ratio": round(ratio((c, s)), 2)} for c, s in runs]
    finally:
        stop(p)
    if o.llama_python and o.merged_gguf:
        # interrupt_requests (default true) ends a stream with [DONE] as soon as another request
        # waits for the model: with concurrent clients most answers stopped after 1-2 tokens.
        cmd = [o.llama_python, "-m", "llama_cpp.server", "--model", o.merged_gguf, "--host", "127.0.0.1", "--port", "0",
               "--n_ctx", "2048", "--interrupt_requests", "false"]
        if o.threads:
            cmd += ["--n_threads", str(o.threads)]
        # llama_cpp.server takes no port 0; pick a free one.
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); free = s.getsockname()[1]; s.close()
        cmd[cmd.index("--port") + 1] = str(free)
        p, port = start(cmd, log, r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
        try:
            # Greedy as lora serve's: its server's default repeat_penalty is 1.1.
            same = {"repeat_penalty": 1.0}
            one(port, "m", PROMPTS[0], 4, 300, extra=same)
            report["llama_cpp_server_concurrent"] = phase(port, ["m"], o.clients, o.requests, o.max_tokens, o.deadline, extra=same)
        finally:
            stop(p)
    c = report["lora_serve_concurrent"]
    report["ratio_vs_one_client"] = round(c["tokens_per_s"] / max(report["lora_serve_one_client"]["tokens_per_s"], 1e-9), 2)
    if "llama_cpp_server_concurrent" in report:
        l = report["llama_cpp_server_concurrent"]
        report["ratio_vs_llama_cpp"] = round(c["tokens_per_s"] / max(l["tokens_per_s"], 1e-9), 2)
        report["equal_length"] = all(p["full_length"] == p["requests"] for p in (c, l))
        report["tokens_produced"] = {"lora_serve": [c["tokens_min"], c["tokens_max"]], "llama_cpp": [l["tokens_min"], l["tokens_max"]],
                                     "max_tokens": o.max_tokens}
        if not report["equal_length"] and "full_length_tokens_per_s" in l:
            report["note"] = ("llama-cpp-python ended some answers before max_tokens; compare full_length_tokens_per_s "
                              "or rerun with answers of equal length")
    print(json.dumps(report, indent=2))
    if o.out:
        open(o.out, "w").write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
