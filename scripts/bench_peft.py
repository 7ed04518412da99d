#!/usr/bin/env python3
"""PyTorch + transformers + PEFT side of scripts/bench.sh: LoRA training throughput and greedy
generation on the same model and data as `lora`.

The model is the same GGUF file, loaded by transformers' GGUF reader (dequantized to f32, or cast
to bf16 with --dtype bf16). Records are tokenized with the model's tokenizer through alpaca-lora's
prompt (templates/alpaca.json) and cut at cutoff_len, so batches are [micro_batch, cutoff_len]
exactly as `lora finetune` builds them from the same file (scripts/bench_data.py makes records
long enough). Prints one JSON line: tokens_per_second, seconds, steps, peak_rss_mb.
Usage: bench_peft.py train --gguf FILE --data FILE [--steps 5] [--micro-batch 4] [--cutoff 256] [--dtype f32|bf16|int8]
       bench_peft.py generate --gguf FILE --prompt TEXT [--new-tokens 128]
"""
import argparse
import json
import os
import resource
import time

import torch


def load(gguf, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    kw = {"dtype": torch.bfloat16 if dtype == "bf16" else torch.float32}
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, **kw)
    return model, tok


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(a):
    from peft import LoraConfig, get_peft_model
    model, tok = load(a.gguf, a.dtype)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                             bias="none", task_type="CAUSAL_LM"))
    tmpl = json.load(open(a.template))
    recs = json.load(open(a.data))
    ids = []
    for r in recs[: a.steps * a.micro_batch + a.micro_batch]:
        text = tmpl["prompt_no_input"].format(instruction=r["instruction"]) + r["output"]
        t = tok(text, truncation=True, max_length=a.cutoff)["input_ids"]
        assert len(t) == a.cutoff, f"record too short: {len(t)} tokens"
        ids.append(t)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    model.train()

    def step(i):
        x = torch.tensor(ids[i * a.micro_batch:(i + 1) * a.micro_batch])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss.item()

    step(0)  # warm-up, not timed (lora also reports from its loop only)
    t0 = time.time()
    for i in range(1, a.steps + 1):
        step(i)
    dt = time.time() - t0
    print(json.dumps({"peer": f"pytorch-peft-{a.dtype}", "tokens_per_second": a.steps * a.micro_batch * a.cutoff / dt,
                      "seconds": dt, "steps": a.steps, "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


def generate(a):
    model, tok = load(a.gguf, a.dtype)
    model.eval()
    x = tok(a.prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        t0 = time.time()
        out = model.generate(x, do_sample=False, num_beams=1, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens)
        dt = time.time() - t0
    n = out.shape[1] - x.shape[1]
    print(json.dumps({"peer": f"pytorch-{a.dtype}", "tokens_per_second": n / dt, "seconds": dt, "new_tokens": n,
                      "peak_rss_mb": peak_rss_mb()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "generate"])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data")
    ap.add_argument("--template", default="configs/templates/alpaca.json")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--prompt", default="Below is an instruction that describes a task.")
    ap.add_argument("--new-tokens", type=int, default=128)
    a = ap.parse_args()
    torch.manual_seed(0)
    train(a) if a.mode == "train" else generate(a)


if __name__ == "__main__":
    main()
