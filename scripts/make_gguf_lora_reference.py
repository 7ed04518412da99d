#!/usr/bin/env python3
"""GGUF LoRA fixtures written by llama.cpp's own Python package (gguf-py), not by `lora`.

The oracle for `lora`'s GGUF LoRA reader (Sources/LLaMA/Adapter/GGUFLoRA.swift): each committed
PEFT merge adapter (Tests/Fixtures/merge/<model>-<k>.adapter) is written in the layout that
llama.cpp's convert_lora_to_gguf.py produces and src/llama-adapter.cpp reads:

    general.architecture = llama, general.type = adapter, adapter.type = lora,
    adapter.lora.alpha   = scale * r (llama.cpp multiplies B A x by alpha / r; convert_lora_to_gguf.py
                           writes lora_alpha and so loses rsLoRA's alpha / sqrt(r): we keep the scale)
    blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight.lora_a  A [r, in]   (GGUF dims [in, r])
    blk.N.<...>.weight.lora_b                                                       B [out, r]  (GGUF dims [r, out])

with the rows of q and k lora_b permuted as convert_hf_to_gguf.py's LlamaModel.permute does
(reshape(n_head, 2, head_dim / 2, r).swapaxes(1, 2)), by n_head for q and n_head_kv for k.
The Swift test reads these files and compares A, B and the scale with the PEFT folder: exactly
for f32; the f16 file within f16 rounding.

Outputs (tens of KB): Tests/Fixtures/gguf/<model>-<k>.lora.gguf (f32) and
Tests/Fixtures/gguf/tiny-mha-a.lora-f16.gguf.

Run (the venv of scripts/requirements-ref.txt):

    /root/.cache/lora/venv-ref/bin/python scripts/make_gguf_lora_reference.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "Tests" / "Fixtures"
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # convert_hf_to_gguf.py, LlamaModel.permute: halves of each head become interleaved pairs
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(model: str, key: str, dtype: type, out: Path) -> None:
    cfg = json.loads((FIX / model / "config.json").read_text())
    adir = FIX / "merge" / f"{model}-{key}.adapter"
    acfg = json.loads((adir / "adapter_config.json").read_text())
    r, alpha = acfg["r"], float(acfg["lora_alpha"])
    scale = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
    tensors = load_file(str(adir / "adapter_model.safetensors"))
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scale * r)
    w.add_name(f"{model}-{key}")
    items = []
    for name, t in tensors.items():
        # base_model.model.model.layers.{i}.{module}.lora_{A|B}.weight
        parts = name.split(".")
        layer, module, half = int(parts[4]), ".".join(parts[5:7]), parts[7]
        g = f"blk.{layer}.{NAMES[module]}.weight"
        if half == "lora_B" and module == "self_attn.q_proj":
            t = permute(t, cfg["num_attention_heads"])
        if half == "lora_B" and module == "self_attn.k_proj":
            t = permute(t, cfg["num_key_value_heads"])
        items.append((g + (".lora_a" if half == "lora_A" else ".lora_b"), np.ascontiguousarray(t.astype(dtype))))
    for n, t in sorted(items):
        w.add_tensor(n, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{out.relative_to(ROOT)}: {len(items)} tensors, r={r}, alpha={scale * r:.6g}, {out.stat().st_size} bytes")


def main() -> None:
    (FIX / "gguf").mkdir(exist_ok=True)
    write("tiny-mha", "a", np.float32, FIX / "gguf" / "tiny-mha-a.lora.gguf")
    write("tiny-gqa", "b", np.float32, FIX / "gguf" / "tiny-gqa-b.lora.gguf")
    write("tiny-mha", "a", np.float16, FIX / "gguf" / "tiny-mha-a.lora-f16.gguf")


if __name__ == "__main__":
    main()
