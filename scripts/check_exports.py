#!/usr/bin/env python3
"""Checks `lora merge`'s exports with the programs users load them with.

For each tiny fixture model (Tests/Fixtures/tiny-mha, tiny-gqa) and its two merge adapters
(Tests/Fixtures/merge/<model>-a.adapter, rsLoRA r=8 on q,v; <model>-b.adapter, r=2 on k,o,up,down):

 1. `lora generate` with both adapters applied unmerged (a:1, b:0.5), greedy, 24 new tokens:
    the text to match. `lora tokenize` gives the prompt's ids.
 2. `lora merge --format hf` (f32, f16, bf16) -> transformers AutoModelForCausalLM.from_pretrained:
    loading info must list no missing, unexpected or mismatched weights and transformers must log
    no warning; the greedy continuation (model.generate, do_sample=False) of the same prompt ids,
    decoded after the prompt with the exported tokenizer files, must equal lora generate's text.
 3. `lora merge --format gguf` (f32, f16, q8_0) -> llama-cpp-python: llama.cpp's own tokenization
    of the prompt is compared with lora's ids (reported), then the greedy continuation of lora's
    prompt ids (argmax of llama.cpp's logits, one token at a time) must equal transformers' ids
    for f32 and lora generate's text.
 4. `lora merge --adapter-only --format gguf` for adapter a, applied by llama.cpp (lora_path) to a
    GGUF of the unmerged base (written by lora merge with the adapter at weight 0), against
    `lora generate --lora-weights a`.

With `--smollm GGUF` (default models/SmolLM2-135M-Instruct.Q4_1.gguf, skipped when absent), the
GGUF-base case, with a random r=4 adapter on q_proj,v_proj written here (PEFT's file layout):
 5. `lora merge --format hf --dtype f32` from the GGUF: transformers loads the folder with
    AutoTokenizer and AutoModelForCausalLM alone; its token ids of a multilingual text equal
    `lora tokenize` on the GGUF; its greedy continuation equals `lora generate` (GGUF base,
    the adapter unmerged, f32 weights).
 6. That folder reduced to tokenizer.json (no tokenizer_config.json, special_tokens_map.json or
    tokenizer.model) -> `lora merge --format gguf --dtype f32` -> llama.cpp loads it, tokenizes the
    text to the same ids, and its greedy continuation equals transformers' ids.

 7. A SentencePiece GGUF base (Tests/Fixtures/gguf/tiny-mha.gguf) merged to HF: transformers loads
    the tokenizer.model written from the GGUF's pieces and encodes a text to lora's ids.

f32 exports must match exactly (same ids). f16 / bf16 / q8_0 exports round the weights, so a different
greedy token is possible on these random tiny models; such a difference is reported, not failed.

Run from the repository root after building (the venv of scripts/requirements-ref.txt plus
`pip install llama-cpp-python`, which builds llama.cpp from source):

    swift build -c release
    /root/.cache/lora/venv-ref/bin/python scripts/check_exports.py [--lora .build/release/lora]

Exit status 0 when every required check passes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "Tests" / "Fixtures"
PROMPT = "The sky is a bright and calm blue that"
NEW_TOKENS = 24
WEIGHTS = {"a": 1.0, "b": 0.5}

failures: list[str] = []


def check(ok: bool, what: str, required: bool = True) -> None:
    tag = "ok  " if ok else ("FAIL" if required else "diff")
    print(f"  [{tag}] {what}")
    if not ok and required:
        failures.append(what)


def run(lora: Path, *args: str) -> str:
    p = subprocess.run([str(lora), *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"lora {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p.stdout


def lora_generate(lora: Path, model: str, adapters: list[str]) -> str:
    args = ["generate", "--base-model", model, "--prompt", PROMPT, "--prompt-template", "none",
            "--num-beams", "1", "--max-new-tokens", str(NEW_TOKENS)]
    for a in adapters:
        args += ["--lora-weights", a]
    out = run(lora, *args)
    assert out.endswith("\n")
    return out[:-1]


def decode_after(spm_model: Path, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text new_ids add after the prompt, as lora's streaming decoder prints it: the pieces'
    bytes (byte pieces <0xNN> as that byte, "\u2581" as a space, control pieces as nothing),
    decoded as UTF-8 with each invalid sequence (maximal subpart) replaced by U+FFFD.
    SentencePiece's own decode replaces a whole run of byte pieces when any of it is invalid, so
    it prints the random tiny models' byte soup differently; the ids are the same."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))

    def raw(ids: list[int]) -> bytes:
        out = b""
        for i in ids:
            if sp.IsControl(i):
                continue
            piece = sp.IdToPiece(i)
            if sp.IsByte(i):
                out += bytes([int(piece[3:5], 16)])
            else:
                out += piece.replace("\u2581", " ").encode("utf-8")
        return out

    head = raw(prompt_ids)
    full = (head + raw(new_ids)).decode("utf-8", errors="replace")
    head_text = head.decode("utf-8", errors="replace")
    assert full.startswith(head_text)
    return full[len(head_text):]


def strip_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def transformers_greedy(hf_dir: Path, prompt_ids: list[int]) -> tuple[list[int], str, list[str], np.ndarray]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    tlog = transformers.logging.get_logger("transformers")
    tlog.addHandler(handler)
    transformers.logging.set_verbosity_warning()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, output_loading_info=True)
    finally:
        tlog.removeHandler(handler)
        transformers.logging.set_verbosity_error()
    problems = [f"{k}: {v}" for k, v in info.items() if v]
    problems += [line for line in stream.getvalue().splitlines() if line.strip()]
    model.eval()
    AutoTokenizer.from_pretrained(str(hf_dir))  # the copied tokenizer files load
    eos = model.config.eos_token_id
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        logits = model(input_ids=ids).logits[0, -1].float().numpy()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                             num_beams=1, eos_token_id=eos, pad_token_id=eos)
    new = strip_eos(out[0, len(prompt_ids):].tolist(), eos)
    return new, decode_after(hf_dir / "tokenizer.model", prompt_ids, new), problems, logits


def llama_cpp_greedy(gguf: Path, prompt_ids: list[int], lora_path: Path | None = None) -> tuple[list[int], list[int], np.ndarray]:
    from llama_cpp import Llama
    kw = {"lora_path": str(lora_path)} if lora_path else {}
    # f32 KV cache (type_k/type_v 0 = GGML_TYPE_F32): llama.cpp's default f16 cache rounds K and V.
    llm = Llama(model_path=str(gguf), n_ctx=256, n_batch=256, n_threads=2, logits_all=True, verbose=False, seed=0,
                type_k=0, type_v=0, **kw)
    own_ids = llm.tokenize(PROMPT.encode("utf-8"), add_bos=True, special=False)
    eos = llm.token_eos()
    llm.reset()
    llm.eval(prompt_ids)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    new: list[int] = []
    for _ in range(NEW_TOKENS):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if nxt == eos:
            break
        new.append(nxt)
        llm.eval([nxt])
    llm.close()
    return new, own_ids, first


MULTILINGUAL = "Hello, world! Grüße aus Köln: 1234 Äpfel. 東京は晴れ。Привет, как дела? مرحبا 😀\n\n  indented\tend"
SMOL_PROMPT = "The three primary colors are"


def smollm_adapter(gguf_path: Path, out: Path) -> None:
    """A PEFT LoRA adapter (r=4, alpha 8, q_proj and v_proj) with random A and B for the model in
    the GGUF, shapes from its metadata; B is not zero, so the merge changes the weights."""
    import gguf
    from safetensors.torch import save_file
    r = gguf.GGUFReader(str(gguf_path))

    def meta(key: str) -> int:
        f = r.fields[key]
        return int(f.parts[f.data[0]][0])

    C, L = meta("llama.embedding_length"), meta("llama.block_count")
    H, KV = meta("llama.attention.head_count"), meta("llama.attention.head_count_kv")
    dims = {"q_proj": C, "v_proj": C // H * KV}
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(L):
        for m, o in dims.items():
            p = f"base_model.model.model.layers.{i}.self_attn.{m}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(4, C, generator=g) * 0.02
            tensors[f"{p}.lora_B.weight"] = torch.randn(o, 4, generator=g) * 0.02
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "use_rslora": False, "fan_in_fan_out": False,
        "base_model_name_or_path": str(gguf_path)}))


def check_gguf_base(lora: Path, gguf_path: Path, tmp: Path) -> None:
    print(f"\n== GGUF base {gguf_path.name}")
    adapter = tmp / "smollm-adapter"
    smollm_adapter(gguf_path, adapter)
    hf = tmp / "smollm-hf"
    run(lora, "merge", "--base-model", str(gguf_path), "--lora-weights", str(adapter), "--output", str(hf), "--dtype", "f32")
    print(f"  lora merge --format hf wrote: {sorted(p.name for p in hf.iterdir())}")
    tok = AutoTokenizer.from_pretrained(str(hf))
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    model.eval()
    print(f"  transformers: {type(tok).__name__}, {type(model).__name__}")
    lora_ids = json.loads(run(lora, "tokenize", "--base-model", str(gguf_path), "--text", MULTILINGUAL))["ids"]
    hf_ids = tok(MULTILINGUAL)["input_ids"]
    check(hf_ids == lora_ids, f"transformers' tokenizer from the GGUF's vocabulary: {len(hf_ids)} ids of the multilingual text "
          "equal lora tokenize on the GGUF" + ("" if hf_ids == lora_ids else f": {hf_ids} vs {lora_ids}"))
    check(tok.decode(hf_ids) == MULTILINGUAL, "transformers decodes them back to the text")
    cfg = json.loads((hf / "tokenizer_config.json").read_text())
    check(bool(cfg.get("chat_template")) and tok.chat_template == cfg["chat_template"],
          "tokenizer_config.json carries the GGUF's chat template")
    msgs = [{"role": "user", "content": "Hi"}]
    print(f"  chat template renders: {tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)!r}")

    want = run(lora, "generate", "--base-model", str(gguf_path), "--lora-weights", str(adapter), "--quantization", "none",
               "--prompt", SMOL_PROMPT, "--prompt-template", "none", "--num-beams", "1",
               "--max-new-tokens", str(NEW_TOKENS), "--quiet")[:-1]
    prompt_ids = json.loads(run(lora, "tokenize", "--base-model", str(gguf_path), "--text", SMOL_PROMPT))["ids"]
    check(tok(SMOL_PROMPT)["input_ids"] == prompt_ids, "prompt ids equal")
    eos = model.config.eos_token_id
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                             num_beams=1, eos_token_id=eos, pad_token_id=eos)
    new = out[0, len(prompt_ids):].tolist()
    new = strip_eos(new, eos if isinstance(eos, int) else eos[0])
    text = tok.decode(new, skip_special_tokens=True)
    print(f"  lora generate (GGUF base, adapter unmerged, f32): {want!r}")
    check(text == want, "transformers greedy on the merged HF folder equals lora generate" + ("" if text == want else f": {text!r}"))

    # A folder whose tokenizer is only tokenizer.json, exported to GGUF for llama.cpp.
    bpe = tmp / "smollm-bpe-only"
    bpe.mkdir()
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]:
        os.link(hf / f, bpe / f)
    out_gguf = tmp / "smollm-from-bpe.gguf"
    run(lora, "merge", "--base-model", str(bpe), "--lora-weights", f"{adapter}:0", "--format", "gguf", "--dtype", "f32",
        "--output", str(out_gguf), "--quiet")
    from llama_cpp import Llama
    llm = Llama(model_path=str(out_gguf), n_ctx=256, n_batch=256, n_threads=2, verbose=False, seed=0, type_k=0, type_v=0)
    cpp_ids = llm.tokenize(MULTILINGUAL.encode("utf-8"), add_bos=True, special=False)
    llm.close()
    check(cpp_ids == lora_ids, "llama.cpp loads the GGUF made from a tokenizer.json-only folder and tokenizes the text to the same ids"
          + ("" if cpp_ids == lora_ids else f": {cpp_ids}"))
    cpp_new, _, _ = llama_cpp_greedy(out_gguf, prompt_ids)
    check(cpp_new == new, "llama.cpp greedy ids on it equal transformers' on the HF folder" + ("" if cpp_new == new else f": {cpp_new} vs {new}"))


def check_spm_gguf_base(lora: Path, tmp: Path) -> None:
    """A SentencePiece GGUF base (the tiny fixture): the merged folder's tokenizer.model, written
    from the GGUF's pieces, loads in transformers and encodes like lora."""
    gguf_path = FIX / "gguf" / "tiny-mha.gguf"
    print(f"\n== SentencePiece GGUF base {gguf_path.name}")
    hf = tmp / "tiny-mha-from-gguf"
    run(lora, "merge", "--base-model", str(gguf_path), "--lora-weights", str(FIX / "merge" / "tiny-mha-a.adapter"),
        "--output", str(hf), "--dtype", "f32", "--quiet")
    print(f"  lora merge --format hf wrote: {sorted(p.name for p in hf.iterdir())}")
    tok = AutoTokenizer.from_pretrained(str(hf))
    AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    text = "Hello, world! Grüße aus Köln: 1234 Äpfel. The sky is blue."
    lora_ids = json.loads(run(lora, "tokenize", "--base-model", str(gguf_path), "--text", text))["ids"]
    hf_ids = tok(text)["input_ids"]
    check(hf_ids == lora_ids, f"transformers ({type(tok).__name__}) on tokenizer.model from the GGUF: {len(hf_ids)} ids equal lora tokenize"
          + ("" if hf_ids == lora_ids else f": {hf_ids} vs {lora_ids}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lora", type=Path, default=ROOT / ".build" / "release" / "lora", help="the lora binary")
    ap.add_argument("--smollm", type=Path, default=ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="a GGUF base for the GGUF-base checks (skipped when absent)")
    ap.add_argument("--only-gguf-base", action="store_true", help="run only the GGUF-base checks")
    args = ap.parse_args()
    lora = args.lora.resolve()
    if not lora.exists():
        raise SystemExit(f"{lora}: not found; build with `swift build -c release` or pass --lora")
    import llama_cpp
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}")
    print(f"prompt {PROMPT!r}, greedy, {NEW_TOKENS} new tokens, adapters {WEIGHTS}")

    with tempfile.TemporaryDirectory(prefix="lora-exports-") as tmp_s:
        tmp = Path(tmp_s)
        if args.smollm.exists():
            check_gguf_base(lora, args.smollm.resolve(), tmp)
        else:
            print(f"\n== GGUF base: {args.smollm} not found, skipped")
        check_spm_gguf_base(lora, tmp)
        for name in ([] if args.only_gguf_base else ["tiny-mha", "tiny-gqa"]):
            model = str(FIX / name)
            ad = {k: str(FIX / "merge" / f"{name}-{k}.adapter") for k in WEIGHTS}
            specs = [f"{ad[k]}:{w}" for k, w in WEIGHTS.items()]
            print(f"\n== {name}")
            want = lora_generate(lora, model, specs)
            prompt_ids = json.loads(run(lora, "tokenize", "--base-model", model, "--text", PROMPT))["ids"]
            print(f"  lora generate (unmerged a:1 + b:0.5): {want!r}")
            print(f"  prompt ids {prompt_ids}")
            merge = ["merge", "--base-model", model] + sum((["--lora-weights", s] for s in specs), [])

            hf_ids = None
            for dtype in ["f32", "f16", "bf16"]:
                out = tmp / f"{name}-{dtype}"
                run(lora, *merge, "--output", str(out), "--dtype", dtype)
                ids, text, problems, hf_logits = transformers_greedy(out, prompt_ids)
                exact = dtype == "f32"
                check(not problems, f"transformers loads the {dtype} HF export with no missing/unused weights or warnings"
                      + ("" if not problems else f": {problems}"))
                check(text == want, f"transformers greedy on the {dtype} HF export equals lora generate"
                      + ("" if text == want else f": {text!r}"), required=exact)
                if exact:
                    hf_ids, hf_logits32 = ids, hf_logits

            for dtype in ["f32", "f16", "q8_0"]:
                out = tmp / f"{name}-{dtype}.gguf"
                run(lora, *merge, "--format", "gguf", "--output", str(out), "--dtype", dtype)
                ids, own_ids, cpp_logits = llama_cpp_greedy(out, prompt_ids)
                exact = dtype == "f32"
                text = decode_after(FIX / name / "tokenizer.model", prompt_ids, ids)
                if dtype == "f32":
                    check(own_ids == prompt_ids, "llama.cpp tokenizes the prompt to lora's ids"
                          + ("" if own_ids == prompt_ids else f": {own_ids}"), required=False)
                    d = float(np.abs(cpp_logits - hf_logits32).max())
                    check(d < 1e-4, f"llama.cpp f32 GGUF last-token logits vs transformers f32 HF: max |diff| {d:.2e}")
                    check(ids == hf_ids, "llama.cpp greedy ids on the f32 GGUF equal transformers' on the f32 HF export"
                          + ("" if ids == hf_ids else f": {ids} vs {hf_ids}"))
                check(text == want, f"llama.cpp greedy on the {dtype} GGUF equals lora generate"
                      + ("" if text == want else f": {text!r}"), required=exact)

            # The adapter alone, applied by llama.cpp at run time.
            base_gguf = tmp / f"{name}-base.gguf"
            run(lora, "merge", "--base-model", model, "--lora-weights", f"{ad['a']}:0", "--format", "gguf",
                "--dtype", "f32", "--output", str(base_gguf))
            adapter_gguf = tmp / f"{name}-a.lora.gguf"
            run(lora, "merge", "--adapter-only", "--format", "gguf", "--base-model", model, "--lora-weights", ad["a"],
                "--output", str(adapter_gguf))
            want_a = lora_generate(lora, model, [ad["a"]])
            ids, _, _ = llama_cpp_greedy(base_gguf, prompt_ids, lora_path=adapter_gguf)
            text = decode_after(FIX / name / "tokenizer.model", prompt_ids, ids)
            print(f"  lora generate (unmerged a): {want_a!r}")
            check(text == want_a, "llama.cpp --lora with the GGUF adapter (rsLoRA) equals lora generate --lora-weights a"
                  + ("" if text == want_a else f": {text!r}"))

    print()
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all required checks passed")


if __name__ == "__main__":
    main()
