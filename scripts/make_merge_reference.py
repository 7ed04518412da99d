#!/usr/bin/env python3
"""Reference fixtures for `lora merge`: PEFT merge_and_unload() on the tiny checkpoints.

Like scripts/make_reference.py this is the Python oracle, not needed to build or test the Swift
package: its outputs are committed under Tests/Fixtures/merge/. It reads the committed tiny models
(Tests/Fixtures/tiny-mha, tiny-gqa) and writes, deterministically (fixed seeds, one torch thread,
files overwritten in place):

    merge/<model>-a.adapter/    PEFT adapter "a": r=8, lora_alpha=16, use_rslora=True, q_proj + v_proj
    merge/<model>-b.adapter/    PEFT adapter "b": r=2, lora_alpha=4, k_proj, o_proj, up_proj, down_proj
    merge/<model>.safetensors   f32 tensors:
        peft.a.<hf name>          merge_and_unload() of adapter a alone, for every tensor it changes
        peft.b.<hf name>          the same for adapter b
        combo.<hf name>           W + 0.7 * s_a * B_a A_a - 1.3 * s_b * B_b A_b, computed in float64
                                  from the f32 base weights and rounded once to f32
        logits.a                  [T, V] PEFT model with adapter a, unmerged, on `ids`
        logits.ab                 [T, V] PEFT model with a and b both active (weight 1 each), unmerged
        logits.combo              [T, V] the combo weights loaded into LlamaForCausalLM
    merge/<model>.json          what was computed: scales, weights, ids, versions

The base is loaded in float32 (tiny-gqa is stored as bf16; its values upcast exactly), so PEFT's
merge runs in f32, as `lora merge` does ("the merge is computed from full-precision weights").

PEFT's add_weighted_adapter(combination_type="linear") is NOT used for the combination: it
requires equal ranks and mixes A and B separately (sqrt(weight) on each), which is not
sum_i w_i s_i B_i A_i. Its "cat" combination is that sum (w_i s_i folded into A_i, the new adapter
gets lora_alpha = r, so scale 1) -- provided the first adapter listed is not rsLoRA: the new config
copies use_rslora from it, and the scale becomes sqrt(r) instead of 1. The script checks the float64
formula against PEFT's cat (adapters listed b first) as a sanity check.

Run (the venv of scripts/requirements-ref.txt):

    /root/.cache/lora/venv-ref/bin/python scripts/make_merge_reference.py
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":
    # PEFT stores target_modules from a set: fix string hashing so adapter_config.json is reproducible
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "Tests" / "Fixtures"
OUT = FIX / "merge"

MODELS = ["tiny-mha", "tiny-gqa"]
ADAPTERS = {
    "a": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"], seed=11),
    "b": dict(r=2, lora_alpha=4, use_rslora=False, target_modules=["k_proj", "o_proj", "up_proj", "down_proj"], seed=12),
}
COMBO_WEIGHTS = {"a": 0.7, "b": -1.3}
IDS = [1, 37, 200, 15, 99, 310, 7, 45, 260, 3]


def scale(spec: dict) -> float:
    r, alpha = spec["r"], spec["lora_alpha"]
    return alpha / math.sqrt(r) if spec["use_rslora"] else alpha / r


def load_base(name: str) -> LlamaForCausalLM:
    m = LlamaForCausalLM.from_pretrained(str(FIX / name), dtype=torch.float32, attn_implementation="eager")
    m.config._name_or_path = f"Tests/Fixtures/{name}"
    m.name_or_path = f"Tests/Fixtures/{name}"
    m.eval()
    return m


def make_adapter(model: str, key: str) -> Path:
    spec = ADAPTERS[key]
    base = load_base(model)
    cfg = LoraConfig(r=spec["r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0, bias="none",
                     target_modules=list(spec["target_modules"]), use_rslora=spec["use_rslora"],
                     task_type="CAUSAL_LM")
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
            if "lora_A" in name:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    out = OUT / f"{model}-{key}.adapter"
    if out.exists():
        shutil.rmtree(out)
    pm.save_pretrained(str(out), safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)
    return out


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].float()


def lora_factors(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """HF weight name -> (A [r, in], B [out, r]) from a saved adapter."""
    from safetensors.torch import load_file
    st = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for k, a in st.items():
        if ".lora_A." not in k:
            continue
        hf = k.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        out[hf] = (a, st[k.replace(".lora_A.", ".lora_B.")])
    return out


def reference(model: str) -> dict:
    dirs = {k: make_adapter(model, k) for k in ADAPTERS}
    base_sd = {k: v.clone() for k, v in load_base(model).state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    changed: dict[str, list[str]] = {}

    # 1. PEFT merge_and_unload, one adapter at a time; record every tensor it changed.
    for k, d in dirs.items():
        pm = PeftModel.from_pretrained(load_base(model), str(d))
        pm.eval()
        if k == "a":
            tensors["logits.a"] = logits(pm)
        merged = pm.merge_and_unload().state_dict()
        names = sorted(n for n, v in merged.items() if n in base_sd and not torch.equal(v, base_sd[n]))
        assert names == sorted(lora_factors(d)), (k, names)
        changed[k] = names
        for n in names:
            tensors[f"peft.{k}.{n}"] = merged[n]

    # 2. Both adapters active at once, unmerged (PEFT's multi-adapter forward, weight 1 each).
    pm = PeftModel.from_pretrained(load_base(model), str(dirs["a"]), adapter_name="a")
    pm.load_adapter(str(dirs["b"]), adapter_name="b")
    pm.base_model.set_adapter(["a", "b"])
    pm.eval()
    tensors["logits.ab"] = logits(pm)

    # 3. The weighted combination, in float64 from the f32 base: W + sum_i w_i s_i B_i A_i.
    def combo(weights: dict[str, float]) -> dict[str, torch.Tensor]:
        acc = {n: base_sd[n].double() for n in set(changed["a"]) | set(changed["b"])}
        for k, w in weights.items():
            s = scale(ADAPTERS[k])
            for n, (a, b) in lora_factors(dirs[k]).items():
                acc[n] += w * s * (b.double() @ a.double())
        return {n: v.float() for n, v in acc.items()}

    cw = combo(COMBO_WEIGHTS)
    for n, v in cw.items():
        tensors[f"combo.{n}"] = v
    m = load_base(model)
    sd = m.state_dict()
    with torch.no_grad():
        for n, v in cw.items():
            sd[n].copy_(v)
    tensors["logits.combo"] = logits(m)

    # 4. Sanity: PEFT's own "cat" combination equals the formula above. b (not rsLoRA) is listed
    # first: the combined adapter's config is copied from the first one, use_rslora included.
    pm = PeftModel.from_pretrained(load_base(model), str(dirs["b"]), adapter_name="b")
    pm.load_adapter(str(dirs["a"]), adapter_name="a")
    pm.add_weighted_adapter(["b", "a"], [COMBO_WEIGHTS["b"], COMBO_WEIGHTS["a"]], adapter_name="cat",
                            combination_type="cat")
    pm.set_adapter("cat")
    cat = pm.merge_and_unload(adapter_names=["cat"]).state_dict()
    cat_err = max(((cat[n] - v).abs().max() / v.abs().max()).item() for n, v in cw.items())
    assert cat_err < 1e-6, f"PEFT cat combination differs from sum w*s*B@A: {cat_err}"

    out = {
        "notes": {
            "merge": "merged W = W + sum_i weight_i * scale_i * B_i @ A_i; scale = lora_alpha / r, "
                     "or lora_alpha / sqrt(r) with use_rslora",
            "peft": "peft.<adapter>.<name>: PeftModel.from_pretrained(f32 base).merge_and_unload(), "
                    "only the tensors the adapter changes (every other tensor equals the base)",
            "combo": "combo.<name>: float64 W + sum_i w_i s_i B_i A_i rounded to f32, with `combo_weights`",
            "logits": "logits.a: PEFT adapter a unmerged; logits.ab: adapters a and b active together "
                      "(weight 1 each) unmerged; logits.combo: the combo weights in LlamaForCausalLM; "
                      "all on `ids`, eager attention, f32",
            "peft_cat_check": "PEFT add_weighted_adapter(['b', 'a'], combination_type='cat') with the "
                              f"combo weights agrees with the float64 formula to {cat_err:.2e} "
                              "(max abs difference / max abs value, per tensor)",
        },
        "adapters": {k: {"dir": f"Tests/Fixtures/merge/{model}-{k}.adapter", "r": s["r"],
                         "lora_alpha": s["lora_alpha"], "use_rslora": s["use_rslora"],
                         "target_modules": s["target_modules"], "scale": scale(s), "changed": changed[k]}
                     for k, s in ADAPTERS.items()},
        "combo_weights": COMBO_WEIGHTS,
        "ids": IDS,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": sys.version.split()[0]},
    }
    save_file({k: v.detach().float().contiguous() for k, v in sorted(tensors.items())},
              str(OUT / f"{model}.safetensors"), metadata={"format": "pt"})
    (OUT / f"{model}.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"{model}: {len(tensors)} tensors; PEFT cat vs formula {cat_err:.2e}")
    return out


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    for m in MODELS:
        reference(m)


if __name__ == "__main__":
    main()
