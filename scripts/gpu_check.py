#!/usr/bin/env python3
"""The PyTorch side of scripts/gpu_check.sh, run with the GPU machine's own python3 (torch,
transformers, peft): LLaMA-shaped models with random weights made on the device (nothing is
downloaded), PEFT LoRA training throughput and peak memory, and transformers greedy decoding,
with the settings the issue names (bf16, r=16 on q_proj,v_proj, micro-batch 4 x 512).
Prints one JSON line per measurement. Runs on the CPU too, with --shape tiny (a smoke test).

Usage: gpu_check.py train  --shape tiny|1b|7b [--steps 6] [--warmup 2] [--micro-batch 4] [--seq 512] [--r 16]
       gpu_check.py decode --shape tiny|1b|7b [--new-tokens 128] [--prompt-len 32]
       gpu_check.py save   --shape tiny|1b|7b OUT_DIR     (random weights as a HF folder for `lora`)
"""
import argparse
import json
import time

import torch

# LLaMA shapes: 1b = TinyLlama-1.1B's, 7b = Llama-2-7B's.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def model(shape, seed, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                      attn_implementation="sdpa", **SHAPES[shape])
    # Built directly on the device in bf16: a 7B model in f32 on the host would take minutes.
    with torch.device(device()):
        m = LlamaForCausalLM(cfg).to(dtype)
    return m, cfg


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train(a):
    from peft import LoraConfig, get_peft_model
    m, cfg = model(a.shape, a.seed, torch.bfloat16)
    m = get_peft_model(m, LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                     task_type="CAUSAL_LM"))
    # f32 master copies of the LoRA factors (as PEFT + autocast users run it).
    for n, p in m.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-4)
    g = torch.Generator(device="cpu").manual_seed(a.seed)
    ids = torch.randint(0, cfg.vocab_size, (a.micro_batch, a.seq), generator=g).to(device())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device_type=device(), dtype=torch.bfloat16):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0
    print(json.dumps(dict(what="peft_train", shape=a.shape, tokens_per_second=a.steps * a.micro_batch * a.seq / dt,
                          seconds=dt, steps=a.steps, micro_batch=a.micro_batch, seq=a.seq, r=a.r,
                          peak_gpu_mib=peak, loss=float(loss.detach()))), flush=True)


def decode(a):
    m, cfg = model(a.shape, a.seed, torch.bfloat16)
    m.eval()
    g = torch.Generator(device="cpu").manual_seed(a.seed)
    ids = torch.randint(0, cfg.vocab_size, (1, a.prompt_len), generator=g).to(device())
    kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False, use_cache=True,
              pad_token_id=0)
    with torch.no_grad():
        m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)   # warm-up
        sync()
        t0 = time.perf_counter()
        out = m.generate(ids, **kw)
        sync()
    dt = time.perf_counter() - t0
    n = out.shape[1] - a.prompt_len
    print(json.dumps(dict(what="hf_decode", shape=a.shape, tokens_per_second=n / dt, seconds=dt, new_tokens=n)), flush=True)


def save(a):
    m, _ = model(a.shape, a.seed, torch.bfloat16)
    m.save_pretrained(a.out, safe_serialization=True)
    print(json.dumps(dict(what="saved", shape=a.shape, out=a.out)), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "decode", "save"):
        s = sub.add_parser(name)
        s.add_argument("--shape", choices=sorted(SHAPES), required=True)
        s.add_argument("--seed", type=int, default=0)
        if name == "train":
            s.add_argument("--steps", type=int, default=6)
            s.add_argument("--warmup", type=int, default=2)
            s.add_argument("--micro-batch", type=int, default=4)
            s.add_argument("--seq", type=int, default=512)
            s.add_argument("--r", type=int, default=16)
        if name == "decode":
            s.add_argument("--new-tokens", type=int, default=128)
            s.add_argument("--prompt-len", type=int, default=32)
        if name == "save":
            s.add_argument("out")
    a = p.parse_args()
    {"train": train, "decode": decode, "save": save}[a.cmd](a)


if __name__ == "__main__":
    main()
