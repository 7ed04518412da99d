#!/usr/bin/env python3
"""Build the tiny LLaMA fixtures and dump reference numbers from transformers + PEFT.

This is the Python "oracle" for the Swift re-implementation of alpaca-lora. It is NOT needed to build
or test the Swift package: its outputs are committed under Tests/Fixtures/. Re-run it only to regenerate
them (it is deterministic: fixed seeds, single-threaded torch, outputs overwritten in place).

Environment (once):

    python3 -m venv /root/.cache/lora/venv-ref
    /root/.cache/lora/venv-ref/bin/pip install -r scripts/requirements-ref.txt

SentencePiece training uses the `spm_train` command line tool (Debian/Ubuntu package `sentencepiece`)
when it is on PATH; otherwise the Python binding's trainer with the same flags (can give a different
model with a different SentencePiece version, which changes every downstream number).

Run from anywhere:

    /root/.cache/lora/venv-ref/bin/python scripts/make_reference.py

Outputs (all under Tests/Fixtures/):

    spm_corpus.txt                       generated English corpus the tokenizer is trained on
    records.json                         6 Alpaca records {instruction, input, output}
    tiny-mha/, tiny-gqa/                 LlamaForCausalLM checkpoints (config.json, generation_config.json,
                                         model.safetensors, tokenizer.model, tokenizer_config.json,
                                         special_tokens_map.json)
    reference/<model>.forward.json|.safetensors   logits (f32 and int8-dequantized weights), greedy/beam
                                                   generations, tokenizer cases
    reference/train-<case>.json|.safetensors      PEFT LoRA training references (loss, grads, 10 AdamW steps)
    reference/train-<case>.adapter/               the initial adapter, PEFT save_pretrained
    reference/alpaca_tokenize.json                alpaca-lora tokenization/masking for all records
    reference/nf4/                       bitsandbytes NF4 (double quant) arrays and dequantized values of a few
                                         tensors, the tiny models' loss in 4-bit (transformers + bitsandbytes),
                                         one LoRA step on the 4-bit tiny-gqa against PEFT (loss, every gradient)
    gguf/quants.safetensors              raw GGML blocks of each dequantized type + gguf.quants' f32 values;
                                         Q8_0/F16 quantizer inputs and outputs
    gguf/tiny-mha.gguf, tiny-gqa-q8.gguf the tiny checkpoints as llama.cpp files (F32; F16/BF16/Q8_0, tied)
    gguf/tiny-gqa-q8.forward.safetensors logits of the Q8_0 file's dequantized weights (transformers)
    reference/dora/<case>.json|.safetensors|.adapter/|.final.adapter/   PEFT DoRA (use_dora=True) references:
                                         loss, grads, 10 AdamW steps with weight decay, logits, merge_and_unload
    gguf/reference.json                  notes, diffs, and (when models/SmolLM2-135M-Instruct.Q4_1.gguf exists)
                                         that model's last-position logits from transformers' GGUF loader

`--only gguf` regenerates only gguf/ from the committed tiny checkpoints (the other files stay byte-identical);
`--only dora` likewise only reference/dora/.

The JSON files carry a "notes"/"semantics" block describing exactly what was computed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":
    # PEFT stores target_modules from a set: fix string hashing so adapter_config.json is reproducible
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402
import safetensors  # noqa: E402
import sentencepiece as spm  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "Tests" / "Fixtures"
REF = FIX / "reference"

VERSIONS = {
    "python": sys.version.split()[0],
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "peft": peft.__version__,
    "safetensors": safetensors.__version__,
    "sentencepiece_python": spm.__version__,
    "numpy": np.__version__,
}

PROJ_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# --------------------------------------------------------------------------------------------------
# Alpaca template (data: must match tloen/alpaca-lora templates/alpaca.json exactly)
# --------------------------------------------------------------------------------------------------
ALPACA_TEMPLATE = {
    "description": "Template used by Alpaca-LoRA.",
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
    "response_split": "### Response:",
}


def alpaca_prompt(instruction: str, input_text: str | None = None, label: str | None = None) -> str:
    """Prompt construction with the semantics of alpaca-lora's Prompter.generate_prompt."""
    if input_text:  # empty string / None -> no-input template
        res = ALPACA_TEMPLATE["prompt_input"].format(instruction=instruction, input=input_text)
    else:
        res = ALPACA_TEMPLATE["prompt_no_input"].format(instruction=instruction)
    if label:
        res = f"{res}{label}"
    return res


RECORDS = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "Eat well, sleep well and walk every day."},
    {"instruction": "Translate the word into French.", "input": "cat", "output": "chat"},
    {"instruction": "Add the two numbers.", "input": "12 and 30", "output": "The sum is 42."},
    {"instruction": "Describe the sky.", "input": "",
     "output": "The sky is a bright and calm blue that stretches over the hills, the river, the quiet garden "
               "and the old city, and it looks the same from every window in the morning light."},
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue and yellow."},
    {"instruction": "Rewrite the sentence in the past tense.", "input": "The dog runs to the park.",
     "output": "The dog ran to the park."},
]

# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def set_determinism(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _is_scalar(x) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def to_json(obj, level: int = 0) -> str:
    """Readable but compact JSON: dicts indented, lists of scalars on one line, matrices one row per line."""
    pad, pad1 = " " * level, " " * (level + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(str(k), ensure_ascii=False)}: {to_json(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(_is_scalar(x) for x in obj):
            return json.dumps(list(obj), ensure_ascii=False)
        return "[\n" + ",\n".join(pad1 + to_json(x, level + 1) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_json(obj) + "\n"
    assert json.loads(text) == json.loads(json.dumps(obj))
    path.write_text(text, encoding="utf-8")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in sorted(tensors.items())}
    save_file(out, str(path), metadata=metadata or {"format": "pt"})


def rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --------------------------------------------------------------------------------------------------
# 1. Corpus + SentencePiece
# --------------------------------------------------------------------------------------------------


def make_corpus(seed: int = 1234, target_bytes: int = 80_000) -> str:
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the teacher", "our team", "the little bird", "a young girl",
                "the old man", "this model", "the computer", "a farmer", "the river", "her brother", "the city",
                "every student", "the small robot", "a happy child", "the doctor", "his sister", "the weather"]
    verbs = ["sees", "likes", "finds", "builds", "writes", "reads", "paints", "carries", "opens", "moves",
             "follows", "describes", "explains", "helps", "answers", "learns", "makes", "takes", "gives", "wants"]
    objects = ["a red ball", "the green door", "an old book", "the long road", "a new song", "the blue sky",
               "a cup of tea", "the morning light", "a simple task", "the final answer", "a short story",
               "the big house", "a warm coat", "the quiet garden", "three apples", "the correct response",
               "a list of words", "the next step", "a clear instruction", "the open window"]
    adverbs = ["quickly", "slowly", "carefully", "happily", "again", "today", "every day", "at night",
               "in the morning", "without a word", "with great care", "for a long time"]
    places = ["in the park", "at home", "near the lake", "on the hill", "in the kitchen", "at school",
              "by the sea", "in Paris", "in Zürich", "in São Paulo", "at the café", "in the forest"]
    accented = ["café", "naïve", "résumé", "über", "señor", "façade", "jalapeño", "Zürich", "São Paulo",
                "crème brûlée", "déjà vu", "piñata", "Ångström", "fiancée", "coöperate", "élan"]
    instructions = ["Give three tips for staying healthy.", "Translate the sentence into French.",
                    "Add the two numbers.", "Write a short poem about the sea.", "Summarize the text below.",
                    "Describe the color of the sky.", "List five kinds of fruit.", "Explain why the sky is blue.",
                    "Classify the animal as a mammal or a bird.", "Rewrite the sentence in the past tense.",
                    "What is the capital of France?", "Name three primary colors.", "Count from 1 to 10."]
    template_no_input = ("Below is an instruction that describes a task. Write a response that appropriately "
                         "completes the request.")
    template_input = ("Below is an instruction that describes a task, paired with an input that provides further "
                      "context. Write a response that appropriately completes the request.")
    lines: list[str] = []
    size = 0

    def add(line: str) -> None:
        nonlocal size
        lines.append(line)
        size += len(line.encode("utf-8")) + 1

    while size < target_bytes:
        k = rng.randrange(14)
        if k < 5:
            s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(adverbs)}"
            if rng.random() < 0.5:
                s += f" {rng.choice(places)}"
            s = s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?", ";", "..."])
            add(s)
        elif k in (5, 6):
            add(rng.choice([template_no_input, template_input]))
        elif k in (7, 8):
            add(rng.choice(["### Instruction:", "### Input:", "### Response:"]))
            add(rng.choice(instructions))
        elif k == 9:
            a, b = rng.randrange(0, 1000), rng.randrange(0, 100000)
            add(rng.choice([f"In {1900 + a % 125}, about {b} people lived {rng.choice(places)}.",
                            f"The sum of {a} and {b} is {a + b}.",
                            f"Call 555-{a:04d} before {a % 12 + 1}:{b % 60:02d} (or e-mail us).",
                            f"Price: ${a}.{b % 100:02d}, 3.5% off, 2/3 left, #{b}!"]))
        elif k == 10:
            add(f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} the {rng.choice(accented)} "
                f"{rng.choice(places)}.")
        elif k == 11:
            add(f"\"{rng.choice(objects).capitalize()}\", said {rng.choice(subjects)} -- (and [then] {{so}} on) "
                f"<ok> | a_b @ 100% & 'yes'*")
        else:
            add(f"{rng.choice(['Yes', 'No', 'Maybe', 'Sure', 'OK'])}, {rng.choice(subjects)} {rng.choice(verbs)} "
                f"{rng.choice(objects)}: {rng.choice(adverbs)}.")
    return "\n".join(lines) + "\n"


SPM_FLAGS = [
    "--vocab_size=512", "--model_type=bpe", "--byte_fallback=true", "--character_coverage=1.0",
    "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
    # LLaMA-like normalisation (identity, keep whitespace as is, split digits, dummy prefix):
    "--normalization_rule_name=identity", "--remove_extra_whitespaces=false", "--split_digits=true",
    "--allow_whitespace_only_pieces=true", "--add_dummy_prefix=true",
    # determinism
    "--num_threads=1", "--random_seed=42", "--input_sentence_size=0", "--shuffle_input_sentence=false",
]


def train_tokenizer(corpus: str) -> tuple[bytes, dict]:
    with tempfile.TemporaryDirectory() as td:
        # fixed relative names: the trainer spec stored in the model embeds input path and prefix
        (Path(td) / "spm_corpus.txt").write_text(corpus, encoding="utf-8")
        args = ["--input=spm_corpus.txt", "--model_prefix=tokenizer"] + SPM_FLAGS
        exe = shutil.which("spm_train")
        if exe:
            r = subprocess.run([exe] + args, cwd=td, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-3000:])
            ver = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
            how = {"trainer": "spm_train (CLI)", "trainer_version": ver}
        else:
            cwd = os.getcwd()
            os.chdir(td)
            try:
                spm.SentencePieceTrainer.train(" ".join(args))
            finally:
                os.chdir(cwd)
            how = {"trainer": "sentencepiece python SentencePieceTrainer", "trainer_version": spm.__version__}
        how["flags"] = ["--input=spm_corpus.txt", "--model_prefix=tokenizer"] + SPM_FLAGS
        return (Path(td) / "tokenizer.model").read_bytes(), how


TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "clean_up_tokenization_spaces": False,
    "legacy": False,
    "model_max_length": 256,
    "tokenizer_class": "LlamaTokenizer",
}
SPECIAL_TOKENS_MAP = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


# --------------------------------------------------------------------------------------------------
# 2. Tiny models
# --------------------------------------------------------------------------------------------------

MODELS = {
    "tiny-mha": dict(
        config=dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_attention_heads=4,
                    num_key_value_heads=4, num_hidden_layers=2, max_position_embeddings=256, rope_theta=10000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=False),
        dtype=torch.float32, seed=1001, embed_std=0.5, linear_std=0.1, head_std=0.3, final_norm=(0.6, 1.4),
    ),
    "tiny-gqa": dict(
        config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=2, num_hidden_layers=3, max_position_embeddings=256, rope_theta=500000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True),
        # tied embeddings: small embeddings (so the residual stream is not dominated by the current token's own
        # embedding, which makes greedy decoding repeat it) and a larger final norm to keep logits spread out
        dtype=torch.bfloat16, seed=2002, embed_std=0.1, linear_std=0.15, head_std=None, final_norm=(2.5, 3.5),
    ),
}


def build_model(name: str, tokenizer_model: bytes) -> None:
    spec = MODELS[name]
    cfg = LlamaConfig(
        **spec["config"], bos_token_id=1, eos_token_id=2, pad_token_id=None, hidden_act="silu",
        initializer_range=spec["linear_std"], attention_bias=False, mlp_bias=False, use_cache=True,
    )
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if pname == "model.norm.weight":
                p.copy_(torch.empty(p.shape).uniform_(*spec["final_norm"], generator=g))
            elif pname.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.6, 1.4, generator=g))
            elif "embed_tokens" in pname:
                p.copy_(torch.randn(p.shape, generator=g) * spec["embed_std"])
            elif pname.startswith("lm_head"):
                p.copy_(torch.randn(p.shape, generator=g) * spec["head_std"])
            else:
                p.copy_(torch.randn(p.shape, generator=g) * spec["linear_std"])
    model = model.to(spec["dtype"])
    out = FIX / name
    rm(out)
    model.save_pretrained(str(out), safe_serialization=True)
    # Legacy top-level keys many LLaMA configs carry (transformers 5 writes "dtype" + "rope_parameters").
    cfg_path = out / "config.json"
    cj = json.loads(cfg_path.read_text())
    cj["torch_dtype"] = cj.get("dtype", str(spec["dtype"]).replace("torch.", ""))
    cj["rope_theta"] = spec["config"]["rope_theta"]
    cj["rope_scaling"] = None
    cfg_path.write_text(json.dumps(dict(sorted(cj.items())), indent=2) + "\n")
    (out / "tokenizer.model").write_bytes(tokenizer_model)
    write_json(out / "tokenizer_config.json", TOKENIZER_CONFIG)
    write_json(out / "special_tokens_map.json", SPECIAL_TOKENS_MAP)


def load_model(name: str, dtype=torch.float32) -> LlamaForCausalLM:
    m = LlamaForCausalLM.from_pretrained(str(FIX / name), dtype=dtype, attn_implementation="eager")
    m.config._name_or_path = f"Tests/Fixtures/{name}"  # recorded by PEFT as base_model_name_or_path
    m.name_or_path = f"Tests/Fixtures/{name}"
    m.eval()
    return m


# --------------------------------------------------------------------------------------------------
# int8 rule
# --------------------------------------------------------------------------------------------------


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-row symmetric int8. w: [out, in] float32. Returns q (float32 holding ints), scale [out]."""
    w = w.detach().to(torch.float32)
    absmax = w.abs().amax(dim=1)
    scale = absmax / 127.0  # float32
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(w / safe[:, None]), -127, 127)  # round half to even
    q = torch.where(scale[:, None] == 0, torch.zeros_like(q), q)
    return q, scale


def dequant_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q * scale[:, None]


def apply_int8_(model: LlamaForCausalLM) -> None:
    with torch.no_grad():
        for layer in model.model.layers:
            for mod in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                q, s = quantize_int8(mod.weight)
                mod.weight.copy_(dequant_int8(q, s))


INT8_NOTES = {
    "applies_to": "every q/k/v/o_proj and gate/up/down_proj weight W [out, in] (not embeddings, norms, lm_head)",
    "scale": "scale[o] = max_i |W[o, i]| / 127  (float32)",
    "q": "q = clamp(torch.round(W / scale[:, None]), -127, 127)  (round half to even); rows with absmax 0 -> q=0, scale=0",
    "dequant": "W' = q * scale[:, None]  (float32)",
}


# --------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------


class Tok:
    def __init__(self, model_dir: Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        self.hf = AutoTokenizer.from_pretrained(str(model_dir))
        self.hf.pad_token_id = 0  # as alpaca-lora
        self.hf.padding_side = "left"

    def sp_ids(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def sp_bos(self, text: str) -> list[int]:
        return [1] + self.sp_ids(text)

    def hf_ids(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=True)["input_ids"])


def spm_cli_ids(model_path: Path, texts: list[str]) -> list[list[int] | None]:
    """ids from the Debian spm_encode (libsentencepiece) for single-line texts; None when not applicable."""
    exe = shutil.which("spm_encode")
    res: list[list[int] | None] = [None] * len(texts)
    if not exe:
        return res
    idx = [i for i, t in enumerate(texts) if "\n" not in t and "\r" not in t and t != ""]
    inp = "\n".join(texts[i] for i in idx) + "\n"
    r = subprocess.run([exe, f"--model={model_path}", "--output_format=id"], input=inp.encode("utf-8"),
                       capture_output=True)
    lines = r.stdout.decode("utf-8").split("\n")
    for j, i in enumerate(idx):
        res[i] = [int(x) for x in lines[j].split()] if lines[j].strip() else []
    return res


def spm_cli_decode(model_path: Path, id_lists: list[list[int]]) -> list[str | None]:
    """Debian spm_decode --input_format=id (libsentencepiece), None where the output has a newline or no CLI."""
    exe = shutil.which("spm_decode")
    if not exe:
        return [None] * len(id_lists)
    out: list[str | None] = []
    for ids in id_lists:
        r = subprocess.run([exe, f"--model={model_path}", "--input_format=id"],
                           input=(" ".join(map(str, ids)) + "\n").encode(), capture_output=True)
        text = r.stdout.decode("utf-8", errors="replace")
        text = text[:-1] if text.endswith("\n") else text
        out.append(None if "\n" in text or r.returncode != 0 else text)
    return out


TOKENIZER_STRINGS = [
    "",
    "Hello world",
    "The cat sees a red ball in the park.",
    "In 2019, about 981 people lived at home.",
    "Price: $349.96, 3.5% off!",
    "two  spaces   and    four",
    " leading space",
    "trailing space ",
    "line one\nline two\n\nend",
    "tab\tseparated\tvalues",
    "café crème brûlée in Zürich, São Paulo",
    "naïve señor Ångström",
    "日本語のテキスト",
    "emoji 😀 and 👍🏽!",
    "### Response:\n",
    "Below is an instruction that describes a task.",
    "   ",
]

def tokenizer_cases(tok: Tok, model_dir: Path) -> dict:
    cli = spm_cli_ids(model_dir / "tokenizer.model", TOKENIZER_STRINGS)
    cases = []
    for i, text in enumerate(TOKENIZER_STRINGS):
        sp_ids = tok.sp_ids(text)
        hf_ids = tok.hf_ids(text)
        cases.append({
            "text": text,
            "sp_ids": sp_ids,
            "sp_pieces": [tok.sp.id_to_piece(x) for x in sp_ids],
            "hf_ids": hf_ids,
            "agree": hf_ids[1:] == sp_ids and hf_ids[:1] == [1],
            "spm_cli_ids": cli[i],
            "sp_decode": tok.sp.decode(sp_ids),
            "roundtrip": tok.sp.decode(sp_ids) == text,
        })
    # decode checks on hand-made id lists
    em = tok.sp_ids("emoji 😀!")
    byte_ids = [x for x in em if tok.sp.id_to_piece(x).startswith("<0x")]
    decode_lists = [
        tok.sp_ids("The cat sees a red ball."),
        [1] + tok.sp_ids("The cat") + [2],            # control tokens are dropped by sp.decode
        tok.sp_ids(" leading space"),                  # leading '▁▁' -> one space kept
        [tok.sp.piece_to_id("▁")] + tok.sp_ids("a"),   # lone '▁' piece first
        tok.sp_ids("tab\tx\ny"),                        # <0x09>, <0x0A> byte pieces
        em,
        byte_ids[:2],                                   # truncated UTF-8 sequence -> U+FFFD handling
        byte_ids[1:],                                   # stray continuation bytes
        [0],                                            # <unk>
        [tok.sp.piece_to_id("<0x41>"), tok.sp.piece_to_id("<0xC3>"), tok.sp.piece_to_id("<0xA9>")],  # "Aé"
    ]
    cli_dec = spm_cli_decode(model_dir / "tokenizer.model", decode_lists)
    decodes = [{"ids": ids, "sp_decode": tok.sp.decode(ids), "spm_cli_decode": cli_dec[i],
                "hf_decode_skip_special": tok.hf.decode(ids, skip_special_tokens=True)}
               for i, ids in enumerate(decode_lists)]
    return {
        "notes": {
            "sp_ids": "sentencepiece python binding sp.encode(text): no BOS/EOS",
            "hf_ids": "transformers AutoTokenizer.from_pretrained(model folder)(text, add_special_tokens=True): with BOS",
            "agree": "hf_ids == [1] + sp_ids",
            "spm_cli_ids": "Debian spm_encode --output_format=id (libsentencepiece C++), single-line non-empty texts only, else null",
            "sp_decode": "sp.decode(ids) (python binding); spm_cli_decode: Debian spm_decode --input_format=id "
                         "(null when the text contains a newline); <unk> decodes to ' ⁇ ', control ids are dropped, "
                         "invalid UTF-8 byte pieces become U+FFFD",
            "hf_tokenizer_class": type(tok.hf).__name__,
        },
        "encode": cases,
        "decode": decodes,
    }


# --------------------------------------------------------------------------------------------------
# 3. Forward references
# --------------------------------------------------------------------------------------------------

FORWARD_PROMPTS = [
    "",
    "The cat sees a red ball in the park.",
    alpaca_prompt("Name three primary colors."),
    "Café in Zürich costs 4.50 € — naïve 2024!",
]
GEN_MAX_NEW = 24


def np_llama_forward(name: str, ids: np.ndarray, key_mask: np.ndarray | None = None,
                     int8: bool = False) -> np.ndarray:
    """Independent float64 numpy LLaMA forward straight from model.safetensors, following ARCH_NOTES.

    ids [B, T]; key_mask [B, T] (1 = real token) or None; position_ids = arange(T) for every row.
    """
    cfg = json.loads((FIX / name / "config.json").read_text())
    with safetensors.safe_open(str(FIX / name / "model.safetensors"), "pt") as f:
        sd = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}
    if int8:
        for k in list(sd):
            if any(k.endswith(f"{p}.weight") for p in PROJ_NAMES):
                sd[k] = dequant_int8(*quantize_int8(sd[k]))
    W = {k: v.numpy().astype(np.float64) for k, v in sd.items()}
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, theta = H // nh, cfg["rms_norm_eps"], cfg["rope_theta"]
    B, T = ids.shape
    if key_mask is None:
        key_mask = np.ones((B, T))

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # x [B, heads, T, hd]; HF rotate_half convention (halves, not interleaved pairs)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    allowed = np.tril(np.ones((T, T), bool))[None] & (key_mask[:, None, :] > 0)  # [B, Tq, Tk]
    x = W["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)  # query head j uses kv head j // g
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        sc = np.where(allowed[:, None], sc, -1e300)
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        a = (sc / sc.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(0, 2, 1, 3).reshape(B, T, H) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g, u = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"])
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return x @ head.T


ARCH_NOTES = {
    "checkpoint_layout": "HF LlamaForCausalLM names (model.embed_tokens, model.layers.N.{input_layernorm, "
                         "self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, "
                         "lm_head; lm_head absent when tie_word_embeddings); Linear weights are [out, in], y = x W^T",
    "rmsnorm": "x / sqrt(mean(x^2) + eps) * weight, computed in float32",
    "rope": "HF rotate_half convention: inv_freq[i] = 1 / theta^(2i/head_dim), i < head_dim/2; angle = pos * "
            "inv_freq duplicated to head_dim ([a, a]); x*cos + cat(-x[hd/2:], x[:hd/2])*sin (halves, not "
            "interleaved pairs)",
    "gqa": "query head j uses key/value head j // (num_heads / num_kv_heads)",
    "attention": "softmax(q k^T / sqrt(head_dim) + mask) v, causal; eager",
    "mlp": "down(silu(gate(x)) * up(x))",
    "independent_check": "np_llama_forward() in scripts/make_reference.py re-implements this in float64 numpy from "
                         "model.safetensors; max |diff| vs the stored logits is recorded below",
}


def min_margin(scores) -> float:
    """smallest (top1 - top2) of the (processed) logits over the generation steps: how robust the argmax path is."""
    m = float("inf")
    for sc in scores:
        top = torch.topk(sc[0].float(), 2).values
        m = min(m, float(top[0] - top[1]))
    return m


@torch.no_grad()
def forward_reference(name: str, tok: Tok) -> dict:
    model = load_model(name)
    model_i8 = load_model(name)
    apply_int8_(model_i8)
    tensors: dict[str, torch.Tensor] = {}
    q, s = quantize_int8(model.model.layers[0].self_attn.q_proj.weight)
    tensors["int8.q.layers.0.self_attn.q_proj"] = q
    tensors["int8.scale.layers.0.self_attn.q_proj"] = s

    prompts = []
    for i, text in enumerate(FORWARD_PROMPTS):
        sp_bos = tok.sp_bos(text)
        hf_ids = tok.hf_ids(text)
        ids = torch.tensor([sp_bos])
        logits = model(input_ids=ids).logits[0].float()
        logits8 = model_i8(input_ids=ids).logits[0].float()
        assert torch.isfinite(logits).all() and torch.isfinite(logits8).all()
        tensors[f"logits.{i}"] = logits
        tensors[f"logits_int8.{i}"] = logits8
        prompts.append({
            "index": i, "text": text, "input_ids": sp_bos, "hf_input_ids": hf_ids, "hf_sp_agree": hf_ids == sp_bos,
            "logits_key": f"logits.{i}", "logits_int8_key": f"logits_int8.{i}", "shape": list(logits.shape),
            "argmax": logits.argmax(-1).tolist(), "argmax_int8": logits8.argmax(-1).tolist(),
            "logits_std": float(logits.std()), "max_abs_diff_int8_vs_f32": float((logits - logits8).abs().max()),
        })

    # independent check of the stored numbers and of ARCH_NOTES (incl. left padding + arange positions)
    np_diff, np_diff8 = 0.0, 0.0
    for i, text in enumerate(FORWARD_PROMPTS):
        ids = np.array([tok.sp_bos(text)])
        np_diff = max(np_diff, float(np.abs(np_llama_forward(name, ids)[0] - tensors[f"logits.{i}"].numpy()).max()))
        np_diff8 = max(np_diff8, float(np.abs(np_llama_forward(name, ids, int8=True)[0]
                                              - tensors[f"logits_int8.{i}"].numpy()).max()))
    a, b = tok.sp_bos(FORWARD_PROMPTS[1]), tok.sp_bos(FORWARD_PROMPTS[3])
    T = max(len(a), len(b))
    pad_ids = np.array([[0] * (T - len(x)) + x for x in (a, b)])
    pad_mask = np.array([[0] * (T - len(x)) + [1] * len(x) for x in (a, b)])
    hf_pad = model(input_ids=torch.tensor(pad_ids), attention_mask=torch.tensor(pad_mask)).logits.float().numpy()
    np_pad = np_llama_forward(name, pad_ids, pad_mask)
    pad_diff = float(np.abs(np.where(pad_mask[..., None] > 0, hf_pad - np_pad, 0)).max())
    assert np_diff < 1e-3 and np_diff8 < 1e-3 and pad_diff < 1e-3, (np_diff, np_diff8, pad_diff)
    independent = {"numpy_f64_vs_logits_max_abs_diff": np_diff, "numpy_f64_vs_logits_int8_max_abs_diff": np_diff8,
                   "left_padded_batch_max_abs_diff": pad_diff,
                   "left_padded_batch": "prompts 1 and 3 left-padded with id 0 to the same length, attention_mask 0 "
                                        "on pads, no position_ids passed; compared at non-pad positions against numpy "
                                        "with position_ids = arange(T) (so positions are NOT shifted by left padding)"}

    # generation (float32 model, eager attention, KV cache on, batch size 1, no padding)
    gen_kw_common = dict(do_sample=False, max_new_tokens=GEN_MAX_NEW, eos_token_id=2, pad_token_id=0,
                         bos_token_id=1)
    greedy, beam, rep = [], [], []
    for i, text in enumerate(FORWARD_PROMPTS):
        ids = torch.tensor([tok.sp_bos(text)])
        am = torch.ones_like(ids)
        T = ids.shape[1]
        out = model.generate(input_ids=ids, attention_mask=am, num_beams=1, return_dict_in_generate=True,
                             output_scores=True, **gen_kw_common)
        new = out.sequences[0, T:].tolist()
        greedy.append({"prompt_index": i, "new_ids": new, "ended_with_eos": bool(new and new[-1] == 2),
                       "min_top2_margin": min_margin(out.scores), "text": tok.sp.decode(new)})
        out = model.generate(input_ids=ids, attention_mask=am, num_beams=4, length_penalty=1.0, early_stopping=False,
                             num_return_sequences=1, return_dict_in_generate=True, output_scores=True,
                             **gen_kw_common)
        new = out.sequences[0, T:].tolist()
        beam.append({"prompt_index": i, "num_beams": 4, "new_ids": new,
                     "ended_with_eos": bool(new and new[-1] == 2),
                     "sequence_score": float(out.sequences_scores[0]), "text": tok.sp.decode(new)})
    for i in (1, 2):
        ids = torch.tensor([tok.sp_bos(FORWARD_PROMPTS[i])])
        T = ids.shape[1]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=1,
                             repetition_penalty=1.3, return_dict_in_generate=True, output_scores=True,
                             **gen_kw_common)
        new = out.sequences[0, T:].tolist()
        rep.append({"prompt_index": i, "repetition_penalty": 1.3, "new_ids": new,
                    "ended_with_eos": bool(new and new[-1] == 2), "min_top2_margin": min_margin(out.scores),
                    "text": tok.sp.decode(new)})

    getdef = getattr(transformers.GenerationConfig, "_get_default_generation_params", None)
    all_defaults = getdef() if getdef else transformers.GenerationConfig().to_dict()
    gen_defaults = {k: all_defaults.get(k) for k in (
        "min_length", "early_stopping", "length_penalty", "num_return_sequences", "repetition_penalty",
        "no_repeat_ngram_size", "temperature", "top_k", "top_p", "use_cache", "remove_invalid_values",
        "exponential_decay_length_penalty", "forced_eos_token_id", "suppress_tokens")}
    spec = MODELS[name]
    meta = {
        "model": name,
        "model_dir": f"Tests/Fixtures/{name}",
        "stored_dtype": str(spec["dtype"]).replace("torch.", ""),
        "compute": "from_pretrained(dtype=float32, attn_implementation='eager'), eval(), no padding, "
                   "position_ids = arange(T) (transformers default)",
        "versions": VERSIONS,
        "vocab_size": spec["config"]["vocab_size"],
        "input_ids_source": "sentencepiece sp.encode(text) with BOS (1) prepended; hf_input_ids is the transformers "
                            "tokenizer (add_special_tokens=True); hf_sp_agree says whether they are equal",
        "architecture": ARCH_NOTES,
        "independent_check": independent,
        "prompts": prompts,
        "int8": dict(INT8_NOTES, check_tensors=["int8.q.layers.0.self_attn.q_proj",
                                                 "int8.scale.layers.0.self_attn.q_proj"],
                     logits="logits_int8.<i>: same forward with every projection weight replaced by its dequantized "
                            "int8 version (f32 compute)"),
        "generation": {
            "common_args": dict(gen_kw_common, use_cache=True, attention_mask="ones"),
            "greedy_args": {"num_beams": 1},
            "beam_args": {"num_beams": 4, "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1},
            "repetition_penalty_args": {"num_beams": 1, "repetition_penalty": 1.3},
            "generation_config_defaults": gen_defaults,
            "generation_config_defaults_note": "transformers 5 GenerationConfig._get_default_generation_params(): "
                                               "values used for everything not set explicitly (the model's "
                                               "generation_config.json only sets bos/eos)",
            "model_generation_config": json.loads(model.generation_config.to_json_string(use_diff=True)),
            "semantics": {
                "new_ids": "generated ids after the prompt; includes the final EOS (2) when generation stopped on it; "
                           "at most max_new_tokens",
                "greedy": "argmax of raw logits at each step (no processors)",
                "min_top2_margin": "smallest top1-top2 logit gap along the greedy path (after processors); a tiny "
                                   "value means a reimplementation may legitimately diverge there",
                "repetition_penalty": "HF RepetitionPenaltyLogitsProcessor over all ids in the sequence so far "
                                      "(prompt incl. BOS + generated; only left-pad positions are excluded): each "
                                      "distinct id's logit x -> x*1.3 if x<0 else x/1.3, then argmax",
                "beam": "HF beam search (transformers 5 vectorised implementation): per step log_softmax(logits) + "
                        "running beam score; top 2*num_beams candidates over num_beams*vocab; candidates ending in "
                        "EOS (or reaching max_length) among the top num_beams become finished hypotheses with score "
                        "sum_logprobs / (generated_len ** length_penalty), generated_len = new tokens incl. EOS; "
                        "the best num_beams non-finished continue; early_stopping=False heuristic: stop when "
                        "best_running_score / (cur_generated_len ** length_penalty) <= worst finished score (once "
                        "num_beams hypotheses are finished); the returned sequence is the best finished hypothesis; "
                        "sequence_score is its length-penalised score",
            },
            "greedy": greedy,
            "beam": beam,
            "greedy_repetition_penalty": rep,
        },
        "tokenizer_cases": tokenizer_cases(tok, FIX / name),
    }
    save_tensors(REF / f"{name}.forward.safetensors", tensors)
    write_json(REF / f"{name}.forward.json", meta)
    return meta


# --------------------------------------------------------------------------------------------------
# 4/5. alpaca-lora tokenization
# --------------------------------------------------------------------------------------------------


def alpaca_tokenize(tok: Tok, record: dict, cutoff_len: int, train_on_inputs: bool, add_eos_token: bool,
                    source: str = "sp") -> dict:
    """Semantics of alpaca-lora finetune.py tokenize() / generate_and_tokenize_prompt() (final version).

    tokenizer(prompt, truncation=True, max_length=cutoff_len) == ([BOS] + sp.encode(prompt))[:cutoff_len]
    (source="sp"), or the transformers tokenizer itself (source="hf").
    """
    def enc(text: str) -> list[int]:
        if source == "sp":
            return tok.sp_bos(text)[:cutoff_len]
        return list(tok.hf(text, truncation=True, max_length=cutoff_len, padding=False)["input_ids"])

    def tokenize(prompt: str, add_eos: bool = True) -> list[int]:
        ids = enc(prompt)
        if ids[-1] != 2 and len(ids) < cutoff_len and add_eos:
            ids = ids + [2]
        return ids

    full = alpaca_prompt(record["instruction"], record["input"], record["output"])
    input_ids = tokenize(full)  # NB: the full prompt always uses tokenize()'s default add_eos_token=True
    labels = list(input_ids)
    user_len = None
    if not train_on_inputs:
        user = alpaca_prompt(record["instruction"], record["input"])
        user_ids = tokenize(user, add_eos=add_eos_token)
        user_len = len(user_ids)
        if add_eos_token:
            user_len -= 1
        labels = [-100] * user_len + labels[user_len:]
    return {"input_ids": input_ids, "labels": labels, "user_prompt_len": user_len,
            "truncated": len(enc_untruncated(tok, full, source)) > cutoff_len}


def enc_untruncated(tok: Tok, text: str, source: str) -> list[int]:
    return tok.sp_bos(text) if source == "sp" else tok.hf_ids(text)


ALPACA_TOKENIZE_NOTES = {
    "prompt": "alpaca-lora Prompter.generate_prompt with templates/alpaca.json: prompt_input if input is non-empty "
              "else prompt_no_input; the output (label) is appended directly when non-empty",
    "tokenize(prompt, add_eos_token=True)": "ids = tokenizer(prompt, truncation=True, max_length=cutoff_len) "
              "(BOS + pieces, truncated to the first cutoff_len ids, BOS kept); if ids[-1] != EOS and len(ids) < "
              "cutoff_len and add_eos_token: append EOS (2); labels = copy of ids",
    "full prompt": "tokenize(full_prompt) -> always add_eos_token=True (the tokenize() default), independent of the "
                   "add_eos_token setting",
    "train_on_inputs=False": "user_len = len(tokenize(user_prompt, add_eos_token=<setting>)); if <setting>: "
                             "user_len -= 1 (even when no EOS was appended because of truncation); labels[:user_len] "
                             "= -100",
    "add_eos_token": "the alpaca-lora finetune.py CLI setting add_eos_token (default False); it only affects the "
                     "user-prompt length computation",
    "ids": "sentencepiece sp.encode(text) with BOS prepended (equal to the transformers tokenizer for all these "
           "texts, see hf_agree)",
}


def alpaca_tokenize_reference(tok: Tok, cutoffs: list[int]) -> dict:
    runs = []
    all_agree = True
    for cutoff in cutoffs:
        for toi in (True, False):
            for add_eos in (False, True):
                items = []
                for r in RECORDS:
                    a = alpaca_tokenize(tok, r, cutoff, toi, add_eos, "sp")
                    b = alpaca_tokenize(tok, r, cutoff, toi, add_eos, "hf")
                    agree = a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
                    all_agree &= agree
                    items.append(dict(a, hf_agree=agree))
                runs.append({"cutoff_len": cutoff, "train_on_inputs": toi, "add_eos_token": add_eos,
                             "records": items})
    return {"notes": ALPACA_TOKENIZE_NOTES, "tokenizer": "Tests/Fixtures/tiny-mha/tokenizer.model",
            "records_file": "Tests/Fixtures/records.json", "records": RECORDS, "hf_agree_all": all_agree,
            "full_prompts": [alpaca_prompt(r["instruction"], r["input"], r["output"]) for r in RECORDS],
            "user_prompts": [alpaca_prompt(r["instruction"], r["input"]) for r in RECORDS],
            "runs": runs, "versions": VERSIONS}


# --------------------------------------------------------------------------------------------------
# 4. Training references (PEFT LoRA)
# --------------------------------------------------------------------------------------------------

TRAIN_CUTOFF = 128
TRAIN_STEPS = 10
WARMUP = 3
LR = 1e-2
MICRO_BS = 2
BATCH_SIZE = 4

CASES = {
    "mha-qv": dict(model="tiny-mha", targets=["q_proj", "v_proj"], train_on_inputs=True, r=4, alpha=8,
                   rslora=False, int8=False, max_grad_norm=None),
    "mha-all": dict(model="tiny-mha", targets=PROJ_NAMES, train_on_inputs=False, r=4, alpha=8, rslora=False,
                    int8=False, max_grad_norm=None),
    "gqa-qv": dict(model="tiny-gqa", targets=["q_proj", "v_proj"], train_on_inputs=False, r=8, alpha=16,
                   rslora=True, int8=False, max_grad_norm=None),
    "gqa-all-int8": dict(model="tiny-gqa", targets=PROJ_NAMES, train_on_inputs=True, r=4, alpha=16, rslora=False,
                         int8=True, max_grad_norm=None),
}


def lr_lambda(step: int) -> float:
    """transformers get_linear_schedule_with_warmup lambda (num_warmup_steps=WARMUP, num_training_steps=TRAIN_STEPS)."""
    if step < WARMUP:
        return float(step) / float(max(1, WARMUP))
    return max(0.0, float(TRAIN_STEPS - step) / float(max(1, TRAIN_STEPS - WARMUP)))


def collate(tok: Tok, feats: list[dict]) -> dict:
    coll = transformers.DataCollatorForSeq2Seq(tok.hf, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    batch = coll([{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]),
                   "labels": f["labels"]} for f in feats])
    return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}


def peft_model_for(case: dict) -> tuple[torch.nn.Module, LoraConfig]:
    base = load_model(case["model"])
    if case["int8"]:
        apply_int8_(base)
    base.config.use_cache = False
    cfg = LoraConfig(r=case["r"], lora_alpha=case["alpha"], lora_dropout=0.0, target_modules=list(case["targets"]),
                     bias="none", task_type="CAUSAL_LM", use_rslora=case["rslora"])
    pm = get_peft_model(base, cfg)
    return pm, cfg


def init_lora_(pm: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
            if "lora_A" in name:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def peft_key(pm, name: str) -> str:
    """named_parameters() name -> key as stored in adapter_model.safetensors."""
    return name.replace(".default", "")


def batch_loss(pm, mbs: list[dict], n_items: int) -> torch.Tensor:
    """Sum over micro-batches of sum-CE(shifted) / n_items; backward per micro-batch (grad accumulation)."""
    total = 0.0
    for mb in mbs:
        logits = pm(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits.float()
        shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
        shift_labels = mb["labels"][:, 1:].reshape(-1)
        loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
        loss = loss / n_items
        loss.backward()
        total += float(loss.detach())
    return total


def train_features(tok: Tok, train_on_inputs: bool) -> list[dict]:
    """The first BATCH_SIZE records tokenized as alpaca-lora does for training (sentencepiece ids, no EOS)."""
    return [alpaca_tokenize(tok, r, TRAIN_CUTOFF, train_on_inputs, False, "sp") for r in RECORDS[:BATCH_SIZE]]


def train_batches(tok: Tok, train_on_inputs: bool) -> tuple[list[dict], list[dict], int]:
    """train_features, their micro-batches in order, and the shifted label count (num_items)."""
    feats = train_features(tok, train_on_inputs)
    mbs = [collate(tok, feats[i:i + MICRO_BS]) for i in range(0, BATCH_SIZE, MICRO_BS)]
    n_items = int(sum((mb["labels"][:, 1:] != -100).sum() for mb in mbs))
    return feats, mbs, n_items


def save_adapter(pm, adapter_dir: Path) -> None:
    """PEFT's save_pretrained into a fresh folder, without the generated README."""
    rm(adapter_dir)
    pm.save_pretrained(str(adapter_dir), safe_serialization=True)
    rm(adapter_dir / "README.md")


def train_steps(pm, params: list, opt, sched, mbs: list[dict], n_items: int,
                max_grad_norm: float) -> tuple[list[float], list[float], list[float], list[bool]]:
    """TRAIN_STEPS optimizer steps on the same micro-batches: per step the loss, the pre-clip grad
    norm, the lr used and whether clipping applied."""
    losses, norms, lrs, clipped = [], [], [], []
    for step in range(TRAIN_STEPS):
        opt.zero_grad(set_to_none=True)
        losses.append(batch_loss(pm, mbs, n_items))
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], max_grad_norm)
        norms.append(float(norm))
        clipped.append(bool(float(norm) > max_grad_norm))
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return losses, norms, lrs, clipped


def reloaded_loss(case: dict, adapter_dir: Path, mbs: list[dict], n_items: int, expected) -> float:
    """Loads the saved adapter through PEFT over a fresh base (int8 when the case says), asserts
    each lora_ tensor equals expected(model, name), and returns its loss on the micro-batches."""
    base = load_model(case["model"])
    if case["int8"]:
        apply_int8_(base)
    reloaded = peft.PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    for n, p in reloaded.named_parameters():
        if "lora_" in n:
            assert torch.equal(p.detach(), expected(reloaded, n)), n
    return batch_loss(reloaded, mbs, n_items)


def run_with_clip(run, cname: str, tok: Tok) -> dict:
    """A probe run without clipping picks max_grad_norm (choose_clip); the recorded run uses it and
    must clip in some steps but not all."""
    probe = run(cname, tok, max_grad_norm=float("inf"))
    clip = choose_clip(probe["grad_norms"])
    res = run(cname, tok, max_grad_norm=clip)
    assert any(res["clipped"]) and not all(res["clipped"]), (cname, res["grad_norms"], clip)
    return res


def run_case(case_name: str, tok: Tok, max_grad_norm: float | None) -> dict:
    case = CASES[case_name]
    set_determinism(0)
    feats, mbs, n_items = train_batches(tok, case["train_on_inputs"])
    n_items_unshifted = int(sum((mb["labels"] != -100).sum() for mb in mbs))

    pm, lcfg = peft_model_for(case)
    init_lora_(pm, seed=hash_seed(case_name))
    adapter_dir = REF / f"train-{case_name}.adapter"
    save_adapter(pm, adapter_dir)

    params = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n, _ in params)
    names = [n for n, _ in params]
    tensors: dict[str, torch.Tensor] = {}
    for n, p in params:
        tensors["init." + peft_key(pm, n)] = p.detach().clone()
    pm.train()

    # step 0: loss and grads at the initial params
    pm.zero_grad(set_to_none=True)
    loss0 = batch_loss(pm, mbs, n_items)
    for n, p in params:
        tensors["grad." + peft_key(pm, n)] = p.grad.detach().clone()
    pm.zero_grad(set_to_none=True)

    if max_grad_norm is None:  # choose a clip that bites in some steps only (pass 1, not recorded)
        max_grad_norm = float("inf")
    opt = torch.optim.AdamW([p for _, p in params], lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    losses, norms, lrs, clipped = train_steps(pm, params, opt, sched, mbs, n_items, max_grad_norm)
    for n, p in params:
        tensors["final." + peft_key(pm, n)] = p.detach().clone()

    saved_keys = sorted(safetensors.safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt").keys())
    assert sorted(peft_key(pm, n) for n in names) == saved_keys, (saved_keys[:3], names[:3])
    # the saved adapter reloads through PEFT to exactly the initial values and reproduces loss0
    reloaded_loss0 = reloaded_loss(case, adapter_dir, mbs, n_items, lambda m, n: tensors["init." + peft_key(m, n)])
    assert abs(reloaded_loss0 - loss0) < 1e-5, (reloaded_loss0, loss0)

    scaling = case["alpha"] / (math.sqrt(case["r"]) if case["rslora"] else case["r"])
    result = {
        "case": case_name,
        "model": case["model"],
        "model_dir": f"Tests/Fixtures/{case['model']}",
        "adapter_dir": f"Tests/Fixtures/reference/train-{case_name}.adapter",
        "versions": VERSIONS,
        "settings": {
            "target_modules": case["targets"], "r": case["r"], "lora_alpha": case["alpha"], "use_rslora": case["rslora"],
            "scaling": scaling, "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM",
            "train_on_inputs": case["train_on_inputs"], "add_eos_token": False, "cutoff_len": TRAIN_CUTOFF,
            "micro_batch_size": MICRO_BS, "batch_size": BATCH_SIZE,
            "gradient_accumulation_steps": BATCH_SIZE // MICRO_BS, "steps": TRAIN_STEPS,
            "optimizer": {"type": "torch.optim.AdamW", "lr": LR, "betas": [0.9, 0.999], "eps": 1e-8,
                          "weight_decay": 0.0, "amsgrad": False},
            "scheduler": {"type": "linear warmup + linear decay (transformers get_linear_schedule_with_warmup)",
                          "num_warmup_steps": WARMUP, "num_training_steps": TRAIN_STEPS,
                          "lr(step k, 0-based)": "LR * (k/3 if k < 3 else max(0, (10-k)/7)); step 0 uses lr 0"},
            "max_grad_norm": max_grad_norm,
            "base_weights": ("float32 upcast of the bf16 checkpoint" if case["model"] == "tiny-gqa" else "float32")
                            + ("; q/k/v/o/gate/up/down_proj replaced by int8 dequantized weights" if case["int8"]
                               else ""),
            "int8": INT8_NOTES if case["int8"] else None,
            "attn_implementation": "eager", "compute_dtype": "float32",
            "lora_init": "after get_peft_model: iterate named_parameters sorted by name with torch.Generator seeded "
                         f"{hash_seed(case_name)}; lora_A ~ U(-1/sqrt(in), 1/sqrt(in)), lora_B ~ N(0, 0.05^2); "
                         "values saved in the adapter folder and as init.<key>",
        },
        "semantics": {
            "forward": "model(input_ids, attention_mask) only; no position_ids are passed, so transformers uses "
                       "position_ids = arange(padded_len) for every row (NOT shifted for left padding: the first real "
                       "token of a left-padded row has position = number of pads). The 4D mask is causal AND key "
                       "attention_mask (pad keys masked with the dtype minimum, rows of pad queries are fully masked "
                       "and produce finite garbage that never reaches the loss).",
            "loss": "per micro-batch: sum over positions t<T-1 of CE(logits[:, t], labels[:, t+1]) ignoring -100, "
                    "divided by num_items (the whole accumulated batch); step loss = sum over the micro-batches "
                    "(= mean CE over all valid shifted targets of the 4 records)",
            "num_items": "sum over both micro-batches of (labels[..., 1:] != -100), i.e. SHIFTED count. transformers "
                         f"{transformers.__version__} Trainer._get_num_items_in_batch counts labels[..., 1:] for "
                         "causal-LM losses (ForCausalLMLoss), and the model divides the summed CE by it without "
                         "dividing by gradient_accumulation_steps, so Trainer is equivalent to this.",
            "step": "zero grads; loss+backward over both micro-batches; total_norm = clip_grad_norm_(lora params, "
                    "max_grad_norm) (global L2 over all lora_A/lora_B grads, returned BEFORE clipping; clip factor "
                    "max_grad_norm/(total_norm+1e-6) applied when < 1); AdamW step with the scheduler's current lr; "
                    "scheduler.step()",
            "lora": "for each targeted Linear W [out, in]: y = x W^T + scaling * (x A^T) B^T, A = lora_A [r, in], "
                    "B = lora_B [out, r], scaling = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora); dropout 0; "
                    "only lora_A/lora_B are trainable",
            "batches": "the same 2 micro-batches (records 0,1 and 2,3 in order) every step",
            "records_ids": "per-record ids: sentencepiece ids with BOS prepended (identical to the transformers "
                           "tokenizer for these records, see alpaca_tokenize.json hf_agree)",
        },
        "records": RECORDS[:BATCH_SIZE],
        "per_record": [{"input_ids": f["input_ids"], "labels": f["labels"], "user_prompt_len": f["user_prompt_len"],
                        "truncated": f["truncated"]} for f in feats],
        "micro_batches": [{k: v.tolist() for k, v in mb.items()} for mb in mbs],
        "padding": {"side": "left", "pad_id": 0, "label_pad": -100, "attention_mask_pad": 0, "pad_to_multiple_of": 8,
                    "per_micro_batch": "pad to max len in the micro-batch rounded up to a multiple of 8 "
                                       "(transformers DataCollatorForSeq2Seq)"},
        "num_items": n_items,
        "num_items_unshifted": n_items_unshifted,
        "loss0": loss0,
        "loss0_from_reloaded_adapter": reloaded_loss0,
        "losses": losses,
        "grad_norms": norms,
        "lrs": lrs,
        "clipped": clipped,
        "lora_param_keys": sorted(peft_key(pm, n) for n in names),
        "tensors": {"init.<key>": "initial lora values (same as the adapter folder)",
                    "grad.<key>": "gradient of loss0 w.r.t. each lora param at the initial values",
                    "final.<key>": f"params after {TRAIN_STEPS} optimizer steps"},
    }
    save_tensors(REF / f"train-{case_name}.safetensors", tensors)
    write_json(REF / f"train-{case_name}.json", result)
    return result


def hash_seed(s: str) -> int:
    return 7000 + sum((i + 1) * ord(c) for i, c in enumerate(s))


def choose_clip(norms: list[float]) -> float:
    """A max_grad_norm between the smallest and largest pre-clip norm, rounded to 3 significant digits."""
    srt = sorted(norms)
    mid = 0.5 * (srt[len(srt) // 2 - 1] + srt[len(srt) // 2])
    return float(f"{mid:.3g}")


def trainer_logs(pm, tok: Tok, train_on_inputs: bool, weight_decay: float, max_grad_norm: float) -> list[dict]:
    """transformers.Trainer for TRAIN_STEPS steps on the training records in order (adamw_torch, the
    linear warmup schedule, DataCollatorForSeq2Seq padding to multiples of 8), from pm's current
    values; the log entry of every step."""
    feats = train_features(tok, train_on_inputs)
    data = [{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]), "labels": f["labels"]}
            for f in feats] * TRAIN_STEPS
    with tempfile.TemporaryDirectory() as td:
        args = transformers.TrainingArguments(
            output_dir=td, per_device_train_batch_size=MICRO_BS, gradient_accumulation_steps=BATCH_SIZE // MICRO_BS,
            max_steps=TRAIN_STEPS, learning_rate=LR, warmup_steps=WARMUP, lr_scheduler_type="linear",
            weight_decay=weight_decay, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch",
            max_grad_norm=max_grad_norm, logging_steps=1, save_strategy="no",
            report_to="none", use_cpu=True, seed=0, train_sampling_strategy="sequential", disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = transformers.Trainer(
            model=pm, args=args, train_dataset=data,
            data_collator=transformers.DataCollatorForSeq2Seq(tok.hf, pad_to_multiple_of=8, return_tensors="pt",
                                                              padding=True))
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        trainer.train()
        return [h for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]


def trainer_crosscheck(case_name: str, tok: Tok, result: dict) -> dict:
    """Run transformers.Trainer on the same setup and compare final params / per-step grad norms."""
    case = CASES[case_name]
    set_determinism(0)
    pm, _ = peft_model_for(case)
    # load the saved initial adapter values
    with safetensors.safe_open(str(REF / f"train-{case_name}.safetensors"), "pt") as f:
        init = {k[len("init."):]: f.get_tensor(k) for k in f.keys() if k.startswith("init.")}
        final = {k[len("final."):]: f.get_tensor(k) for k in f.keys() if k.startswith("final.")}
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.copy_(init[peft_key(pm, n)])
    logs = trainer_logs(pm, tok, case["train_on_inputs"], weight_decay=0.0,
                        max_grad_norm=result["settings"]["max_grad_norm"])
    diff = 0.0
    for n, p in pm.named_parameters():
        if p.requires_grad:
            diff = max(diff, float((p.detach() - final[peft_key(pm, n)]).abs().max()))
    norm_diff = max(abs(float(h["grad_norm"]) - g) for h, g in zip(logs, result["grad_norms"]))
    loss_diff = max(abs(float(h["loss"]) - l) for h, l in zip(logs, result["losses"]))
    lr_diff = max(abs(float(h["learning_rate"]) - l) for h, l in zip(logs, result["lrs"]))
    return {"final_params_max_abs_diff": diff, "grad_norms_max_abs_diff": norm_diff,
            "logged_loss_max_abs_diff": loss_diff, "logged_lr_max_abs_diff": lr_diff, "n_logged_steps": len(logs),
            "how": "transformers.Trainer(optim=adamw_torch, lr_scheduler_type=linear, warmup_steps=3, max_steps=10, "
                   "train_sampling_strategy=sequential, same data/collator/initial adapter), compared with this "
                   "file's final.<key>, grad_norms, losses and lrs (logged per optimizer step)"}


# --------------------------------------------------------------------------------------------------
# 6. GGUF (llama.cpp files): dequantization, tiny GGUF models, a real model's logits
# --------------------------------------------------------------------------------------------------

GGUF_DIR = FIX / "gguf"
SMOLLM_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"  # git-ignored; optional
GGUF_Q8_PROMPTS = [1, 3]  # indices into <model>.forward.json prompts whose logits the Q8_0 fixture stores
# The tiny-gqa GGUF mixes storage types (its safetensors weights are bf16, so F16/BF16 copies are exact
# except F16 subnormals):
GGUF_GQA_TYPES = {"token_embd": "F16", "attn_q": "Q8_0", "attn_k": "Q8_0", "attn_v": "Q8_0",
                  "attn_output": "Q8_0", "ffn_gate": "Q8_0", "ffn_up": "Q8_0", "ffn_down": "BF16"}
GGUF_HF_NAMES = {  # llama.cpp name -> Hugging Face name (per block where "{n}")
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{n}.attn_norm.weight": "model.layers.{n}.input_layernorm.weight",
    "blk.{n}.attn_q.weight": "model.layers.{n}.self_attn.q_proj.weight",
    "blk.{n}.attn_k.weight": "model.layers.{n}.self_attn.k_proj.weight",
    "blk.{n}.attn_v.weight": "model.layers.{n}.self_attn.v_proj.weight",
    "blk.{n}.attn_output.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "blk.{n}.ffn_norm.weight": "model.layers.{n}.post_attention_layernorm.weight",
    "blk.{n}.ffn_gate.weight": "model.layers.{n}.mlp.gate_proj.weight",
    "blk.{n}.ffn_up.weight": "model.layers.{n}.mlp.up_proj.weight",
    "blk.{n}.ffn_down.weight": "model.layers.{n}.mlp.down_proj.weight",
}


def gguf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> llama.cpp interleaved-pair rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_random_raw(gguf, qtype, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """n_blocks of random but valid bytes of `qtype`: random quants, sane f16 scales (and a few edge scales)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        return (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-4, 3, n_blocks)).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        v = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-7, 4, n_blocks)).astype(np.float16)
        v[:6] = np.array([0.0, -0.0, 65504.0, -65504.0, 2.0 ** -24, -(2.0 ** -14)], dtype=np.float16)
        return v.view(np.uint8)
    if qtype == T.BF16:
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        bits[((bits >> 7) & 0xFF) == 0xFF] &= np.uint16(0xBFFF)  # no inf/NaN: clear one exponent bit
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    scale = (rng.uniform(0.5, 2.0, (n_blocks, 2)) * 10.0 ** rng.integers(-4, 0, (n_blocks, 2))
             * rng.choice([-1.0, 1.0], (n_blocks, 2))).astype(np.float16)
    scale[0, 0] = 0.0                 # a zero scale
    scale[1, 0] = np.float16(3e-6)    # a subnormal half scale
    half_offsets = {T.Q8_0: [0], T.Q4_0: [0], T.Q5_0: [0], T.Q4_1: [0, 2], T.Q5_1: [0, 2],
                    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}[qtype]
    for k, off in enumerate(half_offsets):
        raw[:, off:off + 2] = scale[:, k:k + 1].copy().view(np.uint8)
    return raw.reshape(-1)


def gguf_quant_fixtures(gguf) -> dict:
    """Raw blocks of every type we dequantize with gguf.quants.dequantize's values; Q8_0/F16 quantizer outputs."""
    from safetensors.numpy import save_file as save_np
    T = gguf.GGMLQuantizationType
    rng = np.random.default_rng(5005)
    out: dict[str, np.ndarray] = {}
    info = {}
    for name in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]:
        qt = T[name]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        n_blocks = {1: 512, 32: 16, 256: 4}[block]
        raw = gguf_random_raw(gguf, qt, n_blocks, rng)
        assert raw.size == n_blocks * size
        # F32/F16 are numpy views; the others take rows of whole blocks of bytes
        vals = np.asarray(gguf.quants.dequantize(raw if qt in (T.F32, T.F16) else raw.reshape(1, -1), qt))
        vals = vals.reshape(-1).astype(np.float32)
        assert vals.size == n_blocks * block and np.isfinite(vals).all(), name
        out[f"{name}.raw"] = raw
        out[f"{name}.f32"] = vals
        info[name] = {"blocks": n_blocks, "block_size": block, "type_size": size}
    # Quantizers: ggml's quantize_row_q8_0_ref (the gguf package is bit-exact with it) and F16 (RNE)
    x = rng.standard_normal((24, 32)).astype(np.float32) * (10.0 ** rng.uniform(-6, 2, (24, 1))).astype(np.float32)
    x[0] = 0.0                                                          # amax 0: d = 0, id = 0
    x[1] = np.arange(-16, 16, dtype=np.float32) + 0.5                   # ties once scaled ...
    x[1, 0] = -127.0                                                    # ... amax 127 -> d = 1, id = 1
    x[2] = np.linspace(-1, 1, 32, dtype=np.float32)
    x[3, 5] = 1e30                                                      # one huge value
    x[4] = x[4] * np.float32(1e-30)                                     # d underflows in half
    q8 = gguf.quants.quantize(x, T.Q8_0)
    out["Q8_0.quantize.input"] = x.reshape(-1)
    out["Q8_0.quantize.bytes"] = np.ascontiguousarray(q8).reshape(-1).view(np.uint8)
    xf = np.concatenate([x.reshape(-1)[:256], np.array([65519.0, 65520.0, 1e-8, 2.0 ** -25, 3 * 2.0 ** -25,
                                                        1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11], np.float32)])
    out["F16.quantize.input"] = xf
    out["F16.quantize.bytes"] = gguf.quants.quantize(xf, T.F16).view(np.uint8)
    GGUF_DIR.mkdir(parents=True, exist_ok=True)
    save_np(dict(sorted(out.items())), str(GGUF_DIR / "quants.safetensors"), metadata={"format": "np"})
    return info


def gguf_write_tiny(gguf, name: str, out_name: str, types: dict[str, str]) -> Path:
    """A tiny checkpoint as llama.cpp's convert_hf_to_gguf.py would write it (names, q/k permute, metadata,
    SentencePiece vocabulary as tokenizer.ggml.*), tensors stored as `types` (default F32)."""
    from sentencepiece import sentencepiece_model_pb2
    from spm_vocab import spm_vocab
    T = gguf.GGMLQuantizationType
    cfg = json.loads((FIX / name / "config.json").read_text())
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    with safetensors.safe_open(str(FIX / name / "model.safetensors"), "pt") as f:
        sd = {k: f.get_tensor(k).to(torch.float32).numpy() for k in f.keys()}
    path = GGUF_DIR / out_name
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_file_type(7 if "Q8_0" in types.values() else 0)  # LLAMA_FTYPE_MOSTLY_Q8_0 / ALL_F32
    # vocabulary, as convert_hf_to_gguf.py _create_vocab_sentencepiece
    sp = spm.SentencePieceProcessor(model_file=str(FIX / name / "tokenizer.model"))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((FIX / name / "tokenizer.model").read_bytes())
    tokens, scores, ttypes = spm_vocab(sp)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(ttypes)
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(TOKENIZER_CONFIG["add_bos_token"])
    w.add_add_eos_token(TOKENIZER_CONFIG["add_eos_token"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    names = []
    for n in range(cfg["num_hidden_layers"]):
        names += [g.format(n=n) for g in GGUF_HF_NAMES if "{n}" in g]
    names = ["token_embd.weight"] + names + ["output_norm.weight"] + (["output.weight"] if "lm_head.weight" in sd else [])
    hf_of = {g.format(n=n): h.format(n=n) for g, h in GGUF_HF_NAMES.items() for n in range(cfg["num_hidden_layers"])}
    for g in names:
        t = sd[hf_of[g]]
        if ".attn_q." in g:
            t = gguf_permute(t, nh)
        elif ".attn_k." in g:
            t = gguf_permute(t, nkv)
        kind = g.split(".")[-2]
        qt = T[types.get(kind, "F32")] if t.ndim == 2 else T.F32
        if qt == T.F32:
            w.add_tensor(g, np.ascontiguousarray(t, dtype=np.float32))
        elif qt == T.F16:
            w.add_tensor(g, t.astype(np.float16))
        else:
            w.add_tensor(g, gguf.quants.quantize(np.ascontiguousarray(t), qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_read_hf(gguf, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads a GGUF back into Hugging Face names: gguf.quants.dequantize, dims reversed (numpy already gives
    [out, in]), q/k rows un-permuted."""
    r = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.")}
    nh, nkv = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    hf_of = {g.format(n=n): h.format(n=n) for g, h in GGUF_HF_NAMES.items() for n in range(f["llama.block_count"])}
    sd = {}
    for t in r.tensors:
        a = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
            [int(d) for d in reversed(t.shape)])
        if ".attn_q." in t.name:
            a = gguf_unpermute(a, nh)
        elif ".attn_k." in t.name:
            a = gguf_unpermute(a, nkv)
        sd[hf_of[t.name]] = torch.from_numpy(a.copy())
    return sd, f


@torch.no_grad()
def gguf_reference() -> dict:
    import gguf
    from importlib.metadata import version as package_version
    res: dict = {"versions": {**VERSIONS, "gguf": package_version("gguf")}}
    res["quants"] = {
        "file": "gguf/quants.safetensors",
        "types": gguf_quant_fixtures(gguf),
        "semantics": "<TYPE>.raw: U8 bytes of whole blocks (random quants, random half scales in 1e-4..2 with a "
                     "zero and a subnormal scale; F16/BF16/F32: random finite values incl. +-0, 65504, subnormals); "
                     "<TYPE>.f32: gguf.quants.dequantize of those bytes (bit-exact with ggml's dequantize_row_*). "
                     "Q8_0.quantize.input -> Q8_0.quantize.bytes: gguf.quants.quantize(x [24, 32], Q8_0) (bit-exact "
                     "with ggml's quantize_row_q8_0_ref: d = amax/127, id = 1/d, roundf(x*id), d as half; row 0 all "
                     "zero, row 1 exact .5 ties with d = 1). F16.quantize.*: numpy astype(float16) (round to "
                     "nearest even), with overflow and subnormal edge values.",
    }

    # Tiny models as GGUF.
    q8_types = dict(GGUF_GQA_TYPES)
    mha = gguf_write_tiny(gguf, "tiny-mha", "tiny-mha.gguf", {})
    gqa = gguf_write_tiny(gguf, "tiny-gqa", "tiny-gqa-q8.gguf", q8_types)
    res["tiny"] = {}
    for name, path in [("tiny-mha", mha), ("tiny-gqa", gqa)]:
        sd, meta = gguf_read_hf(gguf, path)
        ref = load_model(name)
        ref_sd = {k: v.float() for k, v in ref.state_dict().items() if k in sd}
        diffs = {k: float((sd[k] - ref_sd[k]).abs().max()) for k in sorted(sd)}
        if name == "tiny-mha":
            assert all(d == 0 for d in diffs.values()), diffs  # F32 + exact un-permute
        entry = {"file": f"gguf/{path.name}", "bytes": path.stat().st_size,
                 "types": {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors},
                 "weights_max_abs_diff_vs_safetensors": max(diffs.values()),
                 "tied_embeddings": "lm_head.weight" not in sd}
        if name == "tiny-gqa":
            # Expected logits: transformers (f32, eager) with the GGUF's dequantized weights.
            model = load_model(name)
            missing, unexpected = model.load_state_dict(sd, strict=False)
            assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
            model.tie_weights()
            assert torch.equal(model.lm_head.weight, sd["model.embed_tokens.weight"])
            fwd = json.loads((REF / f"{name}.forward.json").read_text())
            with safetensors.safe_open(str(REF / f"{name}.forward.safetensors"), "pt") as f:
                tensors, prompts = {}, []
                for i in GGUF_Q8_PROMPTS:
                    p = fwd["prompts"][i]
                    logits = model(input_ids=torch.tensor([p["input_ids"]])).logits[0].float()
                    ref_logits = f.get_tensor(p["logits_key"]).float()
                    tensors[f"logits.{i}"] = logits
                    prompts.append({"index": i, "input_ids": p["input_ids"], "logits_key": f"logits.{i}",
                                    "max_abs_diff_vs_f32_reference": float((logits - ref_logits).abs().max()),
                                    "argmax_agree_with_f32_reference": float(
                                        (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())})
            save_tensors(GGUF_DIR / "tiny-gqa-q8.forward.safetensors", tensors)
            entry.update(prompts=prompts, logits_file="gguf/tiny-gqa-q8.forward.safetensors",
                         how="logits.<i>: LlamaForCausalLM (f32, eager) from tiny-gqa with every weight replaced by "
                             "the GGUF's (gguf.quants.dequantize, q/k un-permuted, lm_head tied), input_ids of "
                             f"{name}.forward.json prompt i")
            # Cross-check against transformers' own GGUF loader (dequantize + reverse permute + tie).
            try:
                tm = transformers.AutoModelForCausalLM.from_pretrained(
                    str(GGUF_DIR), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
                d = max(float((tm(input_ids=torch.tensor([p["input_ids"]])).logits[0].float()
                               - tensors[p["logits_key"]]).abs().max()) for p in prompts)
                entry["transformers_gguf_loader_max_abs_diff"] = d
                assert d < 1e-4, d
            except Exception as e:  # noqa: BLE001
                entry["transformers_gguf_loader_error"] = f"{type(e).__name__}: {e}"[:300]
        else:
            try:
                tm = transformers.AutoModelForCausalLM.from_pretrained(
                    str(GGUF_DIR), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
                fwd = json.loads((REF / f"{name}.forward.json").read_text())
                with safetensors.safe_open(str(REF / f"{name}.forward.safetensors"), "pt") as f:
                    d = max(float((tm(input_ids=torch.tensor([p["input_ids"]])).logits[0].float()
                                   - f.get_tensor(p["logits_key"]).float()).abs().max()) for p in fwd["prompts"])
                entry["transformers_gguf_loader_max_abs_diff_vs_forward_reference"] = d
                assert d < 1e-4, d
            except Exception as e:  # noqa: BLE001
                entry["transformers_gguf_loader_error"] = f"{type(e).__name__}: {e}"[:300]
        res["tiny"][name] = entry

    # A real llama.cpp file, when present (git-ignored): transformers' GGUF loader is the reference.
    if SMOLLM_GGUF.exists():
        res["smollm2"] = gguf_smollm_reference()
    elif (GGUF_DIR / "reference.json").exists():
        old = json.loads((GGUF_DIR / "reference.json").read_text())
        if "smollm2" in old:
            res["smollm2"] = old["smollm2"]  # keep the committed numbers
    write_json(GGUF_DIR / "reference.json", res)
    return res


SMOLLM_PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Gravity is the force that",
]


@torch.no_grad()
def gguf_smollm_reference() -> dict:
    d, fname = str(SMOLLM_GGUF.parent), SMOLLM_GGUF.name
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    assert model.config.tie_word_embeddings and torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
        id_lists = [tok(p, add_special_tokens=False)["input_ids"] for p in SMOLLM_PROMPTS]
        ids_from = "AutoTokenizer.from_pretrained(models/, gguf_file=...)(text, add_special_tokens=False)"
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"tokenizer from GGUF failed: {e}")
    rng = np.random.default_rng(7007)
    probe = sorted(int(i) for i in rng.choice(model.config.vocab_size, 32, replace=False))
    prompts = []
    for text, ids in zip(SMOLLM_PROMPTS, id_lists):
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        last = logits[-1]
        top = torch.topk(last, 20)
        prompts.append({"text": text, "input_ids": ids,
                        "top20_ids": top.indices.tolist(), "top20_logits": top.values.tolist(),
                        "probe_ids": probe, "probe_logits": last[probe].tolist(),
                        "argmax_all_positions": logits.argmax(-1).tolist(),
                        "top1_top2_margin": float(top.values[0] - top.values[1])})
    return {"file": f"models/{fname} (git-ignored, not committed)", "bytes": SMOLLM_GGUF.stat().st_size,
            "input_ids_from": ids_from,
            "how": "transformers AutoModelForCausalLM.from_pretrained(models/, gguf_file=..., dtype=float32, "
                   "attn_implementation=eager) (dequantizes with gguf.quants, reverses the q/k permute, ties "
                   "lm_head); logits of the last position: top-20 (ids, values) and 32 fixed probe ids",
            "config": {k: getattr(model.config, k) for k in
                       ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                        "num_hidden_layers", "rms_norm_eps", "vocab_size", "max_position_embeddings",
                        "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "head_dim"]
                       if hasattr(model.config, k)}
                      | {"rope_theta": (getattr(model.config, "rope_parameters", None) or {}).get(
                          "rope_theta", getattr(model.config, "rope_theta", None))},
            "prompts": prompts}


def print_gguf_summary(res: dict) -> None:
    for name, e in res["tiny"].items():
        print(f"gguf {name}: {e['bytes']} bytes, weights max diff vs safetensors {e['weights_max_abs_diff_vs_safetensors']:.3g}",
              {k: v for k, v in e.items() if k.startswith("transformers_")})
        for p in e.get("prompts", []):
            print(f"  prompt {p['index']}: max |q8 - f32 reference| {p['max_abs_diff_vs_f32_reference']:.4f}, "
                  f"argmax agree {p['argmax_agree_with_f32_reference']:.2f}")
    if "smollm2" in res:
        for p in res["smollm2"]["prompts"]:
            print(f"smollm2: ids {p['input_ids']} top5 {p['top20_ids'][:5]} margin {p['top1_top2_margin']:.3f}")
    for p in sorted(GGUF_DIR.rglob("*")):
        print(f"{p.stat().st_size:>9}  {p.relative_to(ROOT)}")


# --------------------------------------------------------------------------------------------------
# LLM.int8() (quantization: llm_int8): bitsandbytes' Linear8bitLt forward (--only llm_int8)
# --------------------------------------------------------------------------------------------------

LLM_INT8_DIR = REF / "llm_int8"
# name: (M, N, K, threshold, outliers: [(row, col, value)])
LLM_INT8_CASES = {
    "a": (5, 33, 70, 6.0, [(0, 3, 7.25), (2, 41, -9.5), (4, 3, -6.0)]),  # a row of zeros below
    "b": (1, 40, 64, 6.0, [(0, 17, 12.0)]),                               # one row (decoding)
    "c": (37, 50, 96, 6.0, []),                                           # no outlier
    "d": (16, 17, 33, 6.0, [(3, 5, 5.9985), (9, 30, 5.998), (12, 0, 6.0)]),  # half rounding at 6
    "e": (64, 48, 160, 4.5, []),                                          # several outlier columns
}


def bnb_linear8bit(q: torch.Tensor, scale: torch.Tensor, threshold: float):
    """A Linear8bitLt (eval) holding our int8 rows: CB = q, SCB = scale * 127 (f32), as
    transformers' load_in_8bit would hold bitsandbytes' own (CPU eval runs MatMul8bitLt)."""
    import bitsandbytes as bnb
    N, K = q.shape
    lin = bnb.nn.Linear8bitLt(K, N, bias=False, has_fp16_weights=False, threshold=threshold)
    cb = q.to(torch.int8)
    lin.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False)
    lin.weight.CB = cb
    lin.weight.SCB = (scale * 127).to(torch.float32)
    return lin.eval()


def llm_int8_input(M: int, K: int, outliers, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(M, K, generator=gen) * 1.3
    x = x.clamp(-5.5, 5.5)
    for r, c, v in outliers:
        x[r, c] = v
    return x


def llm_int8_reference(tok: Tok) -> None:
    import bitsandbytes as bnb
    gen = torch.Generator().manual_seed(8)
    tensors: dict[str, torch.Tensor] = {}
    cases = {}
    for name, (M, N, K, thr, outliers) in LLM_INT8_CASES.items():
        x = llm_int8_input(M, K, outliers, gen)
        if name == "a":
            x[1].zero_()
        w = torch.randn(N, K, generator=gen) * 0.05
        q, s = quantize_int8(w)
        with torch.no_grad():
            y = bnb_linear8bit(q, s, thr)(x).float()
        deq = (x @ dequant_int8(q, s).t()).float()
        cols = torch.argwhere((x.half().abs() >= thr).any(dim=0)).view(-1).tolist()
        tensors[f"{name}.x"], tensors[f"{name}.q"], tensors[f"{name}.scale"], tensors[f"{name}.y"] = x, q, s, y
        cases[name] = {"M": M, "N": N, "K": K, "threshold": thr, "outlier_columns": cols,
                       "max_abs_diff_vs_dequantized_f32": float((y - deq).abs().max()),
                       "y_abs_max": float(y.abs().max())}
    save_tensors(LLM_INT8_DIR / "ops.safetensors", tensors)

    # tiny-gqa with every projection a Linear8bitLt over our int8 rows: logits of forward.json's
    # prompts, at the default threshold and at 0.5 (where the tiny model has outlier columns).
    fwd = json.loads((REF / "tiny-gqa.forward.json").read_text())
    model_tensors: dict[str, torch.Tensor] = {}
    prompts = []
    seen: dict[float, set] = {}
    for thr in (6.0, 0.5):
        model = load_model("tiny-gqa")
        seen[thr] = set()
        with torch.no_grad():
            for li, layer in enumerate(model.model.layers):
                for parent, attr in ((layer.self_attn, "q_proj"), (layer.self_attn, "k_proj"), (layer.self_attn, "v_proj"),
                                     (layer.self_attn, "o_proj"), (layer.mlp, "gate_proj"), (layer.mlp, "up_proj"),
                                     (layer.mlp, "down_proj")):
                    q, s = quantize_int8(getattr(parent, attr).weight)
                    lin = bnb_linear8bit(q, s, thr)
                    def hook(mod, inp, _out, key=f"{li}.{attr}", t=thr):
                        if (inp[0].half().abs() >= t).any():
                            seen[t].add(key)
                    lin.register_forward_hook(hook)
                    setattr(parent, attr, lin)
            for p in fwd["prompts"]:
                ids = torch.tensor([p["input_ids"]])
                model_tensors[f"logits.t{thr}.{p['index']}"] = model(input_ids=ids).logits[0].float()
    for p in fwd["prompts"]:
        prompts.append({"index": p["index"], "input_ids": p["input_ids"],
                        "logits_keys": {str(t): f"logits.t{t}.{p['index']}" for t in (6.0, 0.5)}})
    save_tensors(LLM_INT8_DIR / "tiny-gqa.safetensors", model_tensors)
    write_json(LLM_INT8_DIR / "llm_int8.json", {
        "generator": "scripts/make_reference.py --only llm_int8",
        "versions": {"torch": torch.__version__, "bitsandbytes": bnb.__version__},
        "semantics": "bitsandbytes.nn.Linear8bitLt(has_fp16_weights=False, threshold=t) in eval mode on the CPU "
                     "(MatMul8bitLt: int8_vectorwise_quant of x.half(), int8_mixed_scaled_mm with the outlier "
                     "columns in f32), weights CB = our int8 rows q, SCB = scale * 127",
        "int8": INT8_NOTES,
        "ops": {"cases": cases, "tensors": "ops.safetensors: <case>.x [M, K], .q [N, K] (ints as f32), .scale [N], .y [M, N]"},
        "tiny-gqa": {"prompts": prompts, "projections_with_outliers": {str(t): sorted(v) for t, v in seen.items()},
                     "tensors": "tiny-gqa.safetensors: logits.t<threshold>.<prompt index> [T, V]"},
    })
    print("llm_int8:", {k: (v["outlier_columns"], round(v["max_abs_diff_vs_dequantized_f32"], 6)) for k, v in cases.items()})
    print("tiny-gqa projections with outliers:", {t: len(v) for t, v in seen.items()})


# --------------------------------------------------------------------------------------------------
# NF4 (QLoRA base): bitsandbytes 4-bit quantization and a LoRA step on a 4-bit base (--only nf4)
# --------------------------------------------------------------------------------------------------

NF4_DIR = REF / "nf4"
NF4_SHAPES = {"a": (64, 64), "b": (7, 13), "c": (33, 176), "d": (3, 100)}
NF4_BIG = (192, 576)  # 1728 blocks: 7 nested groups; inputs made by nf4_det_input, only the arrays kept


def nf4_det_input(n: int) -> torch.Tensor:
    """Deterministic f32 values both sides compute exactly: an integer hash scaled by a power of 2."""
    i = torch.arange(n, dtype=torch.int64)
    h = (i * 2654435761 + 12345) % 4294967296
    h = (h ^ (h >> 13)) % 20001 - 10000          # -10000..10000
    row_scale = 1 + (i // 576) % 5               # rows of different magnitude
    return (h * row_scale).to(torch.float32) / 262144.0


def nf4_quantize(w: torch.Tensor):
    """bitsandbytes' NF4 with double quantization, as Linear4bit under load_in_4bit stores it."""
    import bitsandbytes.functional as bnbf
    q, st = bnbf.quantize_4bit(w.contiguous(), blocksize=64, compress_statistics=True, quant_type="nf4")
    deq = bnbf.dequantize_4bit(q, st)
    return q, st, deq


def nf4_bnb_config():
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def load_model_4bit(name: str) -> LlamaForCausalLM:
    m = LlamaForCausalLM.from_pretrained(str(FIX / name), dtype=torch.float32, attn_implementation="eager",
                                         quantization_config=nf4_bnb_config(), device_map="cpu")
    m.config._name_or_path = f"Tests/Fixtures/{name}"
    m.name_or_path = f"Tests/Fixtures/{name}"
    nf4_f32_path_(m)
    m.eval()
    return m


def nf4_f32_path_(m) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes' Linear4bit switches inference (eval, no grad) to a repacked
    bf16 kernel; turn that off so the reference is the float32 path (dequantize, then F.linear) on every CPU."""
    for mod in m.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False


def nf4_flat_dequantize_() -> None:
    """bitsandbytes 0.50.2's CPU dequantize_4bit kernel looks a weight's absmax up per row (row * (in // 64) +
    col // 64), which is its quantizer's flat block layout only when in_features is a multiple of 64 (tiny-mha's
    down_proj has 176). Use bitsandbytes' own backend-independent implementation (backends/default/ops.py, flat
    blocks, as quantize_4bit and the CUDA kernels define them) for every dequantization instead."""
    from bitsandbytes.backends.default import ops as default_ops
    from bitsandbytes.backends.utils import _get_4bit_code

    def flat(A, absmax, blocksize, quant_type, shape, dtype):
        return default_ops._dequantize_4bit_compute(A.view(torch.uint8).reshape(-1), absmax,
                                                    _get_4bit_code(quant_type, A.device), blocksize, shape, dtype)
    torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", flat)


def nf4_reference(tok: Tok) -> dict:
    import bitsandbytes
    import bitsandbytes.functional as bnbf
    import torch._dynamo
    # bitsandbytes wraps its dequantization in torch.compile when it can; the eager op is the same
    # arithmetic and does not spend minutes compiling on a small machine.
    torch._dynamo.config.disable = True
    nf4_flat_dequantize_()
    NF4_DIR.mkdir(parents=True, exist_ok=True)
    set_determinism(0)
    tensors: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(4444)
    cases = {}
    for key, shape in NF4_SHAPES.items():
        w = torch.randn(shape, generator=g) * 0.05
        if key == "d":
            w[0, :64] = 0  # an all-zero block
        q, st, deq = nf4_quantize(w)
        tensors.update({f"{key}.w": w, f"{key}.q": q.reshape(-1), f"{key}.absmax8": st.absmax.reshape(-1),
                        f"{key}.nested": st.state2.absmax.reshape(-1), f"{key}.offset": st.offset.reshape(1).float(),
                        f"{key}.deq": deq})
        cases[key] = {"shape": list(shape)}
    n = NF4_BIG[0] * NF4_BIG[1]
    wbig = nf4_det_input(n).reshape(NF4_BIG)
    q, st, deq = nf4_quantize(wbig)
    tensors.update({"big.q": q.reshape(-1), "big.absmax8": st.absmax.reshape(-1), "big.nested": st.state2.absmax.reshape(-1),
                    "big.offset": st.offset.reshape(1).float(), "big.deq_sum": deq.double().sum().reshape(1)})
    cases["big"] = {"shape": list(NF4_BIG), "input": "nf4_det_input (not stored)", "deq_sum": float(deq.double().sum())}
    tensors["code"] = st.code.float()
    tensors["dynamic"] = st.state2.code.float()

    # The tiny models loaded in 4-bit by transformers + bitsandbytes: loss on the training batches.
    losses = {}
    for name in MODELS:
        m = load_model_4bit(name)
        lin = m.model.layers[0].self_attn.q_proj
        assert type(lin).__name__ == "Linear4bit", type(lin)
        assert type(m.lm_head).__name__ == "Linear", type(m.lm_head)
        # the dequantized layer-0 q_proj, for a direct check of the loader's quantization
        tensors[f"{name}.q_proj0.deq"] = bnbf.dequantize_4bit(lin.weight.data, lin.weight.quant_state).float()
        _, mbs, n_items = train_batches(tok, True)
        with torch.no_grad():
            total = 0.0
            for mb in mbs:
                logits = m(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits.float()
                total += float(torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), mb["labels"][:, 1:].reshape(-1),
                    ignore_index=-100, reduction="sum")) / n_items
        losses[name] = {"loss": total, "num_items": n_items,
                        "micro_batches": [{k: v.tolist() for k, v in mb.items()} for mb in mbs]}
    # codes stay uint8 (save_tensors would widen them to float32)
    save_file({k: v.detach().contiguous().cpu() if v.dtype == torch.uint8 else v.detach().float().contiguous().cpu()
               for k, v in sorted(tensors.items())}, str(NF4_DIR / "quant.safetensors"), metadata={"format": "pt"})

    # One LoRA step on the 4-bit tiny-gqa base (all projections) against PEFT: loss and every gradient.
    case_name = "gqa-all-nf4"
    set_determinism(0)
    _, mbs, n_items = train_batches(tok, True)
    base = load_model_4bit("tiny-gqa")
    base.config.use_cache = False
    lcfg = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=list(PROJ_NAMES), bias="none",
                      task_type="CAUSAL_LM")
    pm = get_peft_model(base, lcfg)
    init_lora_(pm, seed=hash_seed(case_name))
    adapter_dir = NF4_DIR / f"train-{case_name}.adapter"
    save_adapter(pm, adapter_dir)
    params = [(nm, p) for nm, p in pm.named_parameters() if p.requires_grad]
    assert params and all("lora_" in nm for nm, _ in params)
    grads: dict[str, torch.Tensor] = {}
    pm.train()
    pm.zero_grad(set_to_none=True)
    loss0 = batch_loss(pm, mbs, n_items)
    for nm, p in params:  # the initial values are in the adapter folder
        grads["grad." + peft_key(pm, nm)] = p.grad.detach().clone()
    save_tensors(NF4_DIR / f"train-{case_name}.safetensors", grads)
    train = {
        "case": case_name, "model": "tiny-gqa", "adapter_dir": f"Tests/Fixtures/reference/nf4/train-{case_name}.adapter",
        "settings": {"target_modules": PROJ_NAMES, "r": 4, "lora_alpha": 16, "scaling": 4.0, "lora_dropout": 0.0,
                     "train_on_inputs": True, "cutoff_len": TRAIN_CUTOFF, "micro_batch_size": MICRO_BS,
                     "batch_size": BATCH_SIZE, "base": "tiny-gqa loaded with BitsAndBytesConfig(load_in_4bit, nf4, "
                     "double quant, compute dtype float32) from the float32 upcast of its bf16 weights; no "
                     "prepare_model_for_kbit_training (everything is already float32)"},
        "num_items": n_items, "loss0": loss0, "lora_param_keys": sorted(peft_key(pm, nm) for nm, _ in params),
        "micro_batches": [{k: v.tolist() for k, v in mb.items()} for mb in mbs],
    }
    meta = {
        "versions": dict(VERSIONS, bitsandbytes=bitsandbytes.__version__),
        "notes": {
            "quantize": "bitsandbytes.functional.quantize_4bit(w, blocksize=64, compress_statistics=True, "
                        "quant_type='nf4') on the CPU; dequantization everywhere (here and inside Linear4bit) is "
                        "bitsandbytes' flat-block default implementation (see nf4_flat_dequantize_); <k>.q packed codes (even element in the high nibble), "
                        "<k>.absmax8 the 8-bit absmax codes, <k>.nested state2.absmax, <k>.offset; "
                        "<k>.deq = dequantize_4bit(q, state)",
            "code": "quant_state.code (NF4 code book); dynamic: state2.code (create_dynamic_map(), signed)",
            "big": "input nf4_det_input(n) reshaped to " + str(list(NF4_BIG)) + ", not stored; big.deq_sum the "
                   "float64 sum of its dequantized values",
            "models": "<model>.q_proj0.deq: layer 0 q_proj of the model loaded in 4-bit, dequantized; losses: "
                      "mean shifted CE over the 4 training records (train_on_inputs, cutoff 128), f32 compute",
        },
        "cases": cases, "losses": losses, "train": train,
    }
    write_json(NF4_DIR / "nf4.json", meta)
    print("nf4:", {k: round(v["loss"], 6) for k, v in losses.items()}, "train loss0", round(loss0, 6),
          "bytes", sum(p.stat().st_size for p in NF4_DIR.rglob("*") if p.is_file()))
    return meta


# --------------------------------------------------------------------------------------------------
# 7. DoRA references (PEFT LoraConfig(use_dora=True)); fixtures under reference/dora/
# --------------------------------------------------------------------------------------------------
#
# PEFT's DoRA on a Linear W [out, in] (peft tuners/lora/dora.py, DoraLinearLayer):
#   n = ||W + scaling * B A|| per output row, computed from the DEQUANTIZED base weight and detached;
#   y = W x + (m / n - 1) * W x + (m / n) * scaling * B A x   (dropout 0)
# The cases below use the same data, schedule and clipping as section 4, plus AdamW weight decay with
# the parameter groups transformers.Trainer builds, and a perturbed magnitude so m / n != 1 everywhere.

DORA = REF / "dora"
DORA_WEIGHT_DECAY = 0.1
DORA_CASES = {
    "mha-qv": dict(model="tiny-mha", targets=["q_proj", "v_proj"], train_on_inputs=True, r=4, alpha=8, rslora=False,
                   int8=False),
    "gqa-all-int8": dict(model="tiny-gqa", targets=PROJ_NAMES, train_on_inputs=False, r=4, alpha=16, rslora=False,
                         int8=True),
}
DORA_LOGIT_POSITIONS = 16


def dora_key(name: str) -> str:
    """named_parameters() name -> key in adapter_model.safetensors (PEFT drops the adapter name, and the
    magnitude's '.weight')."""
    k = name.replace(".default", "")
    return k[: -len(".weight")] if k.endswith(".lora_magnitude_vector.weight") else k


def dora_peft_model(case: dict) -> torch.nn.Module:
    base = load_model(case["model"])
    if case["int8"]:
        apply_int8_(base)
    base.config.use_cache = False
    cfg = LoraConfig(r=case["r"], lora_alpha=case["alpha"], lora_dropout=0.0, target_modules=list(case["targets"]),
                     bias="none", task_type="CAUSAL_LM", use_rslora=case["rslora"], use_dora=True)
    return get_peft_model(base, cfg)


def dora_init_(pm: torch.nn.Module, seed: int) -> float:
    """Section 4's A/B init, then m *= 1 + 0.1 N(0, 1). Returns max |m0 - ||W|| row| before the change
    (PEFT inits m to the row norms of the dequantized weight)."""
    diff = 0.0
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_magnitude_vector") and "default" in mod.lora_magnitude_vector:
            w = mod.get_base_layer().weight.detach()
            m0 = mod.lora_magnitude_vector["default"].weight.detach()
            diff = max(diff, float((m0 - w.norm(dim=1)).abs().max()))
    init_lora_(pm, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return diff


def dora_param_groups(pm: torch.nn.Module, params: list) -> tuple[list[dict], list[str]]:
    """transformers.Trainer's AdamW groups: weight decay on get_decay_parameter_names, 0 on the rest."""
    args = transformers.TrainingArguments(output_dir=tempfile.gettempdir(), report_to="none", use_cpu=True)
    decay = set(transformers.Trainer(model=pm, args=args).get_decay_parameter_names(pm))
    groups = [{"params": [p for n, p in params if n in decay], "weight_decay": DORA_WEIGHT_DECAY},
              {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0}]
    return groups, sorted(dora_key(n) for n, _ in params if n not in decay)


def dora_manual_forward_check(pm: torch.nn.Module, case: dict, ids: torch.Tensor) -> float:
    """Independent check of PEFT's DoRA forward: a plain transformers model with every adapted Linear
    replaced by (m / ||W + sBA||) * (W + sBA); returns max |logits difference|."""
    plain = load_model(case["model"])
    if case["int8"]:
        apply_int8_(plain)
    with torch.no_grad():
        for name, mod in pm.named_modules():
            if hasattr(mod, "lora_magnitude_vector") and "default" in mod.lora_magnitude_vector:
                w = mod.get_base_layer().weight.detach()
                s = mod.scaling["default"]
                wd = w + s * mod.lora_B["default"].weight @ mod.lora_A["default"].weight
                m = mod.lora_magnitude_vector["default"].weight
                target = plain.get_submodule(name.replace("base_model.model.", "", 1))
                target.weight.copy_((m / wd.norm(dim=1))[:, None] * wd)
        a = pm(input_ids=ids).logits
        b = plain(input_ids=ids).logits
    return float((a - b).abs().max())


def run_dora_case(cname: str, tok: Tok, max_grad_norm: float) -> dict:
    import copy
    case = DORA_CASES[cname]
    set_determinism(0)
    feats, mbs, n_items = train_batches(tok, case["train_on_inputs"])

    pm = dora_peft_model(case)
    m0_vs_row_norm = dora_init_(pm, seed=hash_seed("dora-" + cname))
    assert m0_vs_row_norm < 1e-5, m0_vs_row_norm
    adapter_dir = DORA / f"{cname}.adapter"
    save_adapter(pm, adapter_dir)
    saved_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved_cfg["use_dora"] is True
    with safetensors.safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        saved_shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    params = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n, _ in params)
    keys = sorted(dora_key(n) for n, _ in params)
    assert keys == sorted(saved_shapes), (keys[:3], sorted(saved_shapes)[:3])
    tensors: dict[str, torch.Tensor] = {}
    init = {dora_key(n): p.detach().clone() for n, p in params}
    pm.train()

    pm.zero_grad(set_to_none=True)
    loss0 = batch_loss(pm, mbs, n_items)
    for n, p in params:
        tensors["grad." + dora_key(n)] = p.grad.detach().clone()

    groups, no_decay = dora_param_groups(pm, params)
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    losses, norms, lrs, clipped = train_steps(pm, params, opt, sched, mbs, n_items, max_grad_norm)
    final = {dora_key(n): p.detach().clone() for n, p in params}

    # the initial adapter reloads through PEFT to exactly its values and reproduces loss0
    reloaded_loss0 = reloaded_loss(case, adapter_dir, mbs, n_items, lambda m, n: init[dora_key(n)])
    assert abs(reloaded_loss0 - loss0) < 1e-5, (reloaded_loss0, loss0)

    # eval-mode logits of the trained adapter on record 0 (unpadded), and PEFT's merge_and_unload
    pm.eval()
    ids = torch.tensor([feats[0]["input_ids"][:DORA_LOGIT_POSITIONS]])
    with torch.no_grad():
        logits = pm(input_ids=ids).logits[0]
    tensors["logits"] = logits
    manual_diff = dora_manual_forward_check(pm, case, ids)
    assert manual_diff < 1e-4, manual_diff
    final_dir = DORA / f"{cname}.final.adapter"
    save_adapter(pm, final_dir)
    with safetensors.safe_open(str(final_dir / "adapter_model.safetensors"), "pt") as f:
        assert all(torch.equal(f.get_tensor(k), final[k]) for k in keys)
    merged = copy.deepcopy(pm).merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits[0]
    merged_vs_unmerged = float((merged_logits - logits).abs().max())
    sd = merged.state_dict()
    merged_names = []
    if not case["int8"]:  # merged into the checkpoint's own f32 weights (an int8 base would merge into its copy)
        for name in sorted(sd):
            if any(f".{t}." in name for t in case["targets"]):
                tensors["merged." + name] = sd[name]
                merged_names.append(name)

    scaling = case["alpha"] / (math.sqrt(case["r"]) if case["rslora"] else case["r"])
    result = {
        "case": cname, "model": case["model"], "model_dir": f"Tests/Fixtures/{case['model']}",
        "adapter_dir": f"Tests/Fixtures/reference/dora/{cname}.adapter",
        "final_adapter_dir": f"Tests/Fixtures/reference/dora/{cname}.final.adapter",
        "versions": VERSIONS,
        "settings": {
            "target_modules": case["targets"], "r": case["r"], "lora_alpha": case["alpha"], "use_rslora": case["rslora"],
            "use_dora": True, "scaling": scaling, "lora_dropout": 0.0, "train_on_inputs": case["train_on_inputs"],
            "cutoff_len": TRAIN_CUTOFF, "micro_batch_size": MICRO_BS, "batch_size": BATCH_SIZE, "steps": TRAIN_STEPS,
            "optimizer": {"type": "torch.optim.AdamW", "lr": LR, "betas": [0.9, 0.999], "eps": 1e-8,
                          "weight_decay": DORA_WEIGHT_DECAY,
                          "no_decay_keys": no_decay,
                          "groups": "transformers.Trainer.get_decay_parameter_names: weight decay on every other "
                                    "trainable tensor (lora_A, lora_B and lora_magnitude_vector alike)"},
            "scheduler": {"num_warmup_steps": WARMUP, "num_training_steps": TRAIN_STEPS},
            "max_grad_norm": max_grad_norm,
            "int8": INT8_NOTES if case["int8"] else None,
            "init": "section 4's lora_A/lora_B init (seed hash_seed('dora-<case>')), then every magnitude multiplied "
                    "by 1 + 0.1 N(0,1) (generator seed + 1); before that PEFT's m0 equalled the row norms "
                    f"of the (dequantized) base weight within {m0_vs_row_norm:.2e}",
        },
        "semantics": {
            "dora": "n = ||W + scaling * B A|| per output row of the (int8-dequantized) base weight, detached; "
                    "y = (m / n) * (W x + scaling * B A x)",
            "saved_keys": "lora_A.weight [r, in], lora_B.weight [out, r], lora_magnitude_vector [out] (no .weight)",
            "rest": "as train-<case>.json (section 4): the same micro-batches, loss, clipping and schedule",
        },
        "saved_shapes": saved_shapes,
        "micro_batches": [{k: v.tolist() for k, v in mb.items()} for mb in mbs],
        "num_items": n_items,
        "loss0": loss0, "loss0_from_reloaded_adapter": reloaded_loss0,
        "losses": losses, "grad_norms": norms, "lrs": lrs, "clipped": clipped,
        "param_keys": keys,
        "logits_input_ids": ids[0].tolist(),
        "manual_dora_forward_vs_peft_max_abs_diff": manual_diff,
        "merged_vs_unmerged_logits_max_abs_diff": merged_vs_unmerged,
        "merged_names": merged_names,
        "tensors": {"grad.<key>": "gradient of loss0 at the adapter folder's values",
                    "(final values)": f"after {TRAIN_STEPS} steps: the final adapter folder",
                    "logits": "eval-mode logits [T, V] of logits_input_ids with the final adapter",
                    "merged.<name>": "merge_and_unload() weights of the final adapter (f32 base only)"},
    }
    save_tensors(DORA / f"{cname}.safetensors", tensors)
    write_json(DORA / f"{cname}.json", result)
    return result


def dora_trainer_crosscheck(cname: str, tok: Tok, result: dict) -> dict:
    """transformers.Trainer (weight_decay=0.1, its own parameter groups) from the same initial adapter."""
    case = DORA_CASES[cname]
    set_determinism(0)
    base = load_model(case["model"])
    if case["int8"]:
        apply_int8_(base)
    base.config.use_cache = False
    pm = peft.PeftModel.from_pretrained(base, str(DORA / f"{cname}.adapter"), is_trainable=True)
    with safetensors.safe_open(str(DORA / f"{cname}.final.adapter" / "adapter_model.safetensors"), "pt") as f:
        final = {k: f.get_tensor(k) for k in f.keys()}
    logs = trainer_logs(pm, tok, case["train_on_inputs"], weight_decay=DORA_WEIGHT_DECAY,
                        max_grad_norm=result["settings"]["max_grad_norm"])
    diff = 0.0
    for n, p in pm.named_parameters():
        if p.requires_grad:
            diff = max(diff, float((p.detach() - final[dora_key(n)]).abs().max()))
    return {"final_params_max_abs_diff": diff,
            "grad_norms_max_abs_diff": max(abs(float(h["grad_norm"]) - g) for h, g in zip(logs, result["grad_norms"])),
            "logged_loss_max_abs_diff": max(abs(float(h["loss"]) - l) for h, l in zip(logs, result["losses"])),
            "n_logged_steps": len(logs),
            "how": "transformers.Trainer(optim=adamw_torch, weight_decay=0.1, linear schedule, sequential sampling) "
                   "from the saved initial adapter, compared with final.<key>, grad_norms and losses"}


def dora_reference(tok: Tok, trainer_check: bool = True) -> dict:
    DORA.mkdir(parents=True, exist_ok=True)
    out = {}
    for cname in DORA_CASES:
        res = run_with_clip(run_dora_case, cname, tok)
        if trainer_check:
            res["trainer_crosscheck"] = dora_trainer_crosscheck(cname, tok, res)
            write_json(DORA / f"{cname}.json", res)
        out[cname] = res
    return out


def print_dora_summary(res: dict) -> None:
    for cname, r in res.items():
        print(f"dora {cname}: loss0={r['loss0']:.6f} clip={r['settings']['max_grad_norm']} clipped={sum(r['clipped'])}/10 "
              f"manual-vs-peft={r['manual_dora_forward_vs_peft_max_abs_diff']:.2e} "
              f"merged-vs-unmerged={r['merged_vs_unmerged_logits_max_abs_diff']:.2e}\n"
              f"  losses={[round(x, 5) for x in r['losses']]}\n  no_decay={r['settings']['optimizer']['no_decay_keys']}")
        if "trainer_crosscheck" in r:
            print("  trainer crosscheck:", {k: v for k, v in r["trainer_crosscheck"].items() if k != "how"})


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-trainer-check", action="store_true",
                    help="do not cross-check the manual training loop against transformers.Trainer")
    ap.add_argument("--only", choices=["gguf", "dora", "nf4", "llm_int8"],
                    help="run only one section from the committed fixtures (gguf: Tests/Fixtures/gguf/; "
                         "dora: Tests/Fixtures/reference/dora/; nf4: Tests/Fixtures/reference/nf4/, needs bitsandbytes)")
    args = ap.parse_args()
    set_determinism(0)
    FIX.mkdir(parents=True, exist_ok=True)
    REF.mkdir(parents=True, exist_ok=True)
    if args.only == "gguf":
        print_gguf_summary(gguf_reference())
        return
    if args.only == "dora":
        print_dora_summary(dora_reference(Tok(FIX / "tiny-mha"), trainer_check=not args.skip_trainer_check))
        return
    if args.only == "nf4":
        nf4_reference(Tok(FIX / "tiny-mha"))
        return
    if args.only == "llm_int8":
        llm_int8_reference(Tok(FIX / "tiny-mha"))
        return

    # 1. corpus + tokenizer
    corpus = make_corpus()
    (FIX / "spm_corpus.txt").write_text(corpus, encoding="utf-8")
    tok_model, spm_info = train_tokenizer(corpus)
    write_json(FIX / "records.json", RECORDS)

    # 2. models
    for name in MODELS:
        build_model(name, tok_model)
    tok = Tok(FIX / "tiny-mha")

    # 3. forward references
    fwd = {name: forward_reference(name, Tok(FIX / name)) for name in MODELS}

    # 5. alpaca tokenization
    at = alpaca_tokenize_reference(tok, [40, TRAIN_CUTOFF, 256])
    at["spm_training"] = spm_info
    write_json(REF / "alpaca_tokenize.json", at)

    # 4. training references
    train = {}
    for cname in CASES:
        train[cname] = run_with_clip(run_case, cname, tok)
    if not args.skip_trainer_check:
        for cname in CASES:
            chk = trainer_crosscheck(cname, tok, train[cname])
            train[cname]["trainer_crosscheck"] = chk
            write_json(REF / f"train-{cname}.json", train[cname])

    # 6. GGUF
    gg = gguf_reference()

    # 7. DoRA
    dora = dora_reference(tok, trainer_check=not args.skip_trainer_check)

    # 8. NF4 (QLoRA base)
    nf4_reference(tok)

    # summary
    print("\n=== summary ===")
    print("versions:", VERSIONS)
    print("tokenizer:", spm_info["trainer"], spm_info["trainer_version"])
    for name, meta in fwd.items():
        tc = meta["tokenizer_cases"]["encode"]
        print(f"{name}: prompts T={[p['shape'][0] for p in meta['prompts']]} "
              f"hf/sp agree={[p['hf_sp_agree'] for p in meta['prompts']]} "
              f"logit std={[round(p['logits_std'], 2) for p in meta['prompts']]} "
              f"int8 max diff={[round(p['max_abs_diff_int8_vs_f32'], 4) for p in meta['prompts']]}")
        print(f"  tokenizer cases: {sum(c['agree'] for c in tc)}/{len(tc)} hf==sp; "
              f"disagree: {[c['text'] for c in tc if not c['agree']]}; "
              f"spm_cli==sp: {all(c['spm_cli_ids'] in (None, c['sp_ids']) for c in tc)}")
        for g in meta["generation"]["greedy"]:
            print(f"  greedy[{g['prompt_index']}]: {g['new_ids']}")
        for g in meta["generation"]["beam"]:
            print(f"  beam4 [{g['prompt_index']}]: {g['new_ids']} score={g['sequence_score']:.4f}")
        for g in meta["generation"]["greedy_repetition_penalty"]:
            print(f"  rep1.3[{g['prompt_index']}]: {g['new_ids']}")
    print("alpaca_tokenize hf==sp for all:", at["hf_agree_all"])
    for cname, r in train.items():
        print(f"{cname}: n_items={r['num_items']} loss0={r['loss0']:.6f} clip={r['settings']['max_grad_norm']} "
              f"clipped={sum(r['clipped'])}/10\n  losses={[round(x, 5) for x in r['losses']]}\n"
              f"  norms={[round(x, 4) for x in r['grad_norms']]}\n  lrs={[round(x, 6) for x in r['lrs']]}")
        if "trainer_crosscheck" in r:
            print("  trainer crosscheck:", {k: v for k, v in r["trainer_crosscheck"].items() if k != "how"})
    print_gguf_summary(gg)
    print_dora_summary(dora)
    total = 0
    for p in sorted(FIX.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"{p.stat().st_size:>9}  {p.relative_to(ROOT)}")
    print(f"{total:>9}  total")


if __name__ == "__main__":
    main()
