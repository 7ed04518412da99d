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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lora", type=Path, default=ROOT / ".build" / "release" / "lora", help="the lora binary")
    args = ap.parse_args()
    lora = args.lora.resolve()
    if not lora.exists():
        raise SystemExit(f"{lora}: not found; build with `swift build -c release` or pass --lora")
    import llama_cpp
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}")
    print(f"prompt {PROMPT!r}, greedy, {NEW_TOKENS} new tokens, adapters {WEIGHTS}")

    with tempfile.TemporaryDirectory(prefix="lora-exports-") as tmp_s:
        tmp = Path(tmp_s)
        for name in ["tiny-mha", "tiny-gqa"]:
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
