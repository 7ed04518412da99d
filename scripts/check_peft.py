#!/usr/bin/env python3
"""Load an adapter that `lora finetune` wrote with Hugging Face PEFT and compare losses.

Checks that PeftModel.from_pretrained accepts the folder unchanged (no missing or unexpected
keys), then computes the mean token loss over an Alpaca data file with transformers + PEFT and
prints it next to `lora eval`'s number for the same adapter and data.

Usage (venv as in scripts/make_reference.py: torch, transformers, peft, safetensors,
sentencepiece from PyPI):
    python scripts/check_peft.py --base-model Tests/Fixtures/tiny-mha --adapter OUT_DIR \
        --data Tests/Fixtures/records.json [--cutoff-len 128] [--train-on-inputs true] [--lora PATH_TO_LORA_BINARY]
The base model is a Hugging Face folder (safetensors + tokenizer.model); int8 is not used.
A DoRA adapter (use_dora: true) is checked the same way: PEFT must load every lora_magnitude_vector
unchanged (the tensors it holds equal the file's) and give `lora eval`'s loss.

With --nf4 (bitsandbytes==0.50.2 in the venv) the base is loaded in 4-bit by transformers +
bitsandbytes on the CPU (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=float32)), as QLoRA trains, and `lora eval`
runs with --quantization nf4: an adapter trained with `quantization: nf4` gives the same loss.
bitsandbytes' float32 path is used (its AVX512-BF16 inference kernel computes in bf16), and its
flat-block dequantization (its CPU kernel looks absmax up per row, which differs when in_features
is not a multiple of 64; see make_reference.py nf4_flat_dequantize_).
"""
import argparse
import json
import subprocess
import sys

import sentencepiece as spm
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def prompt(rec, template):
    if rec.get("input"):
        return template["prompt_input"].format(instruction=rec["instruction"], input=rec["input"])
    return template["prompt_no_input"].format(instruction=rec["instruction"])


def tokenize(sp, text, cutoff, add_eos, bos, eos):
    ids = ([bos] + sp.encode(text))[:cutoff]
    if add_eos and ids[-1] != eos and len(ids) < cutoff:
        ids.append(eos)
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cutoff-len", type=int, default=256)
    ap.add_argument("--train-on-inputs", default="true")
    ap.add_argument("--template", default="configs/templates/alpaca.json")
    ap.add_argument("--lora", default=".build/release/lora")
    ap.add_argument("--nf4", action="store_true", help="4-bit NF4 base on both sides (QLoRA)")
    # One record per batch on both sides, padded to a multiple of 8 as the collator pads.
    a = ap.parse_args()
    train_on_inputs = a.train_on_inputs.lower() == "true"

    if a.nf4:
        import bitsandbytes
        import torch._dynamo
        from transformers import BitsAndBytesConfig
        from bitsandbytes.backends.default import ops as default_ops
        from bitsandbytes.backends.utils import _get_4bit_code
        torch._dynamo.config.disable = True

        def flat(A, absmax, blocksize, quant_type, shape, dtype):
            return default_ops._dequantize_4bit_compute(A.view(torch.uint8).reshape(-1), absmax,
                                                        _get_4bit_code(quant_type, A.device), blocksize, shape, dtype)
        torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", flat)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(a.base_model, dtype=torch.float32, attn_implementation="eager",
                                                    quantization_config=q, device_map="cpu")
        for mod in base.modules():
            if hasattr(mod, "support_avx512bf16_for_cpu"):
                mod.support_avx512bf16_for_cpu = False
        n4 = sum(type(mod).__name__ == "Linear4bit" for mod in base.modules())
        print(f"base in 4-bit: {n4} Linear4bit layers (bitsandbytes {bitsandbytes.__version__}), lm_head {type(base.lm_head).__name__}")
    else:
        base = AutoModelForCausalLM.from_pretrained(a.base_model, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, a.adapter)
    # from_pretrained warns but does not fail on key mismatches: check them explicitly.
    from peft.utils import load_peft_weights
    saved = load_peft_weights(a.adapter)
    def saved_name(k):
        # PEFT saves DoRA's magnitude without the adapter name and without ".weight".
        k = k.replace(".default", "")
        return k[: -len(".weight")] if k.endswith(".lora_magnitude_vector.weight") else k
    state = {saved_name(k): v for k, v in model.state_dict().items() if "lora_" in k}
    expected = set(state)
    missing = sorted(expected - set(saved))
    unexpected = sorted(set(saved) - expected)
    print(f"adapter keys: {len(saved)}, missing: {missing}, unexpected: {unexpected}")
    # Every tensor PEFT holds is the saved one, exactly (a DoRA magnitude that PEFT re-initialised
    # from the base's row norms instead of loading would show here).
    changed = sorted(k for k in expected & set(saved) if not torch.equal(state[k].float(), saved[k].float()))
    dora = bool(model.peft_config["default"].use_dora)
    magnitudes = sum(1 for k in saved if k.endswith("lora_magnitude_vector"))
    print(f"use_dora: {dora}, magnitude vectors: {magnitudes}, tensors PEFT holds differently from the file: {changed}")
    model.eval()

    sp = spm.SentencePieceProcessor(model_file=f"{a.base_model}/tokenizer.model")
    bos, eos = sp.bos_id(), sp.eos_id()
    template = json.load(open(a.template))
    records = json.load(open(a.data))
    total, count = 0.0, 0
    with torch.no_grad():
        for r in records:
            full = prompt(r, template) + r["output"]
            ids = tokenize(sp, full, a.cutoff_len, True, bos, eos)
            labels = list(ids)
            if not train_on_inputs:
                n = len(tokenize(sp, prompt(r, template), a.cutoff_len, False, bos, eos))
                labels = [-100] * n + labels[n:]
            # Pad as alpaca-lora's collator does (left, id 0, to a multiple of 8, labels -100).
            pad = (-len(ids)) % 8
            x = torch.tensor([[0] * pad + ids])
            mask = torch.tensor([[0] * pad + [1] * len(ids)])
            labels = [-100] * pad + labels
            logits = model(input_ids=x, attention_mask=mask).logits[0, :-1]
            y = torch.tensor(labels[1:])
            m = y != -100
            total += torch.nn.functional.cross_entropy(logits[m], y[m], reduction="sum").item()
            count += int(m.sum())
    peft_loss = total / max(count, 1)
    out = subprocess.run([a.lora, "eval", "--base-model", a.base_model, "--lora-weights", a.adapter,
                          "--data-path", a.data, "--cutoff-len", str(a.cutoff_len),
                          "--train-on-inputs", a.train_on_inputs, "--quantization", "nf4" if a.nf4 else "none",
                          "--micro-batch-size", "1", "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        sys.exit(1)
    ours = json.loads(out.stdout)
    print(f"PEFT loss {peft_loss:.6f} over {count} tokens; lora eval loss {ours['loss']:.6f} over {ours['tokens']} tokens; "
          f"difference {abs(peft_loss - ours['loss']):.2e}")
    ok = not missing and not unexpected and not changed and (magnitudes > 0) == dora and count == ours["tokens"] and abs(peft_loss - ours["loss"]) < 1e-4
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
