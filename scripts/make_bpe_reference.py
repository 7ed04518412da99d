#!/usr/bin/env python3
"""Byte-level BPE fixtures for BPETokenizer (Sources/LLaMA/BPETokenizer.swift), from Hugging Face `tokenizers`.

The oracle for the Swift byte-level BPE tokenizer. Not needed to build or test the Swift package: its
outputs are committed under Tests/Fixtures/bpe/. Re-run it only to regenerate them. It is deterministic:
the only randomness is a fixed-seed generator for the stress text, and the BPE trainer gives the same
tokenizer.json on every run (checked: two runs write identical files).

Environment: the venv of scripts/make_reference.py (scripts/requirements-ref.txt: tokenizers, transformers),
plus the `gguf` package (gguf==0.19.0) for the optional SmolLM2 part.

    /root/.cache/lora/venv-ref/bin/python scripts/make_bpe_reference.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]

Outputs (Tests/Fixtures/bpe/):

    tokenizer.json          a tiny byte-level BPE (vocabulary 800 + added tokens) trained on
                            Tests/Fixtures/spm_corpus.txt plus a few lines of accented, CJK, emoji and digit
                            text, with SmolLM2's pre-tokenizer: Sequence[Digits(individual_digits=True),
                            ByteLevel(add_prefix_space=False, use_regex=True)], ByteLevel decoder, no
                            post-processor (no BOS), and these added tokens:
                              <|endoftext|> <|im_start|> <|im_end|>   special (ids 0, 1, 2, as in SmolLM2)
                              <sep>        special, lstrip and rstrip (swallows the whitespace around it)
                              <|a b|>      special, with a character outside the byte alphabet (decodes raw)
                              <think>      not special, normalized (matched in a second pass)
    tokenizer_config.json   bos <|im_start|>, eos and pad <|im_end|>, unk <|endoftext|> (SmolLM2's choices)
    reference.json          for every case string: the ids (`tokenizer.encode(s).ids`), the ids with the same
                            vocabulary under LLaMA 3's pre-tokenizer (Split(regex, isolated) + ByteLevel
                            without regex), and the raw pre-tokenizer pieces for the GPT-2 regex, the SmolLM
                            chain (digits isolated, then GPT-2) and the LLaMA 3 regex; decode cases (ids ->
                            `tokenizer.decode(ids, skip_special_tokens=False)`); and an FNV-1a hash of the ids
                            of the whole corpus (too long to store).
    smollm2_reference.json  (with --gguf) the same case strings with SmolLM2-135M-Instruct's vocabulary: a
                            `tokenizers` BPE built from the GGUF's tokens and merges with the Digits + ByteLevel
                            pre-tokenizer of SmolLM2's tokenizer.json, control tokens added as special.
                            Where transformers' own GGUF loading (`AutoTokenizer.from_pretrained(dir,
                            gguf_file=...)`) gives other ids they are stored too (`transformers_gguf_ids`): it
                            knows no "smollm" pre-tokenizer and keeps plain ByteLevel, so " ½" or " ²" stay one
                            piece there (SmolLM2 has no token of two ASCII digits or a space and a digit, so
                            ASCII numbers agree).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "Fixtures" / "bpe"

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

EXTRA_TRAINING_LINES = [
    "café déjà vu, naïve résumé, São Paulo, Ångström, façade, coöperate",
    "日本語のテキストと中文字符。東京 北京 한국어 텍스트",
    "emoji 😀 👍🏽 🇫🇷 ❤️ 👨‍👩‍👧‍👦 and more 😀😀",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 1,000,000",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'd go.",
    "def f(x):\n    return x ** 2  # comment\n\tindented\r\n",
]

CASES = [
    "",
    " ",
    "\n",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "12345678901234567890",
    "Pi is 3.14159, e is 2.71828; 1,000,000 and the 42nd time in 2024.",
    "   leading spaces",
    "trailing spaces   ",
    "multiple    internal     spaces and a tab\tthere",
    "line one\nline two\n\nline four\n",
    "\ttabs\tand\r\nCRLF\r\n\r\n",
    "  \n  \n  end \n\n",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'd go.",
    "CAPS: IT'S DON'T WE'LL THEY'RE",
    "a'b 's 'S 'll' ''s x's '",
    "café déjà vu, naïve résumé, São Paulo, coöperate",
    "e\u0301 combining acute, a\u0308\u0304 two marks",
    "日本語のテキスト、中文字符。",
    "한국어 텍스트입니다",
    "Ελληνικά και русский язык",
    "emoji 😀👍🏽🇫🇷 and ❤️",
    "family 👨\u200d👩\u200d👧\u200d👦 ZWJ 🏳️\u200d🌈",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|endoftext|>",
    "<|im_end <|im_start|<|im_start|>>",
    "a<think>b <think> c",
    "x <sep>  y\n<sep>z",
    "say <|a b|> now",
    "def f(x):\n    return x ** 2  # comment\n",
    "nbsp\u00a0and\u3000ideographic\u2003em space\u2028line sep",
    "zero\u200bwidth\ufeffbom \u00ad soft",
    "!!!???...---((())) @#$%^&*_+=[]{}|\\;:\"<>,./~`",
    "$100.00 + 20% = ¥15,000 ½ ² Ⅻ ٣٤ ① x²",
    "mixed123abc456 x1y2z3 _9_",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "\u0000\u0001control chars\u007f\u0085next",
    " 'tis the 're 've 'm 'd",
]


def stress_text(seed: int = 5, length: int = 3000) -> str:
    """Characters from every class the pre-tokenizers distinguish, in random runs."""
    palette = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        + list("0123456789") + ["٣", "½", "²", "Ⅻ", "①", "߀"]
        + list("éàüßøñçÅ") + list("日本語中文字한국어") + list("ελληνικάрусский")
        + list(".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`") + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL"]
        + [" ", " ", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2003", "\u0085", "\u000b", "\u000c"]
        + ["😀", "👍🏽", "🇫🇷", "👨\u200d👩\u200d👧", "\u0301", "\u200b", "\ufeff", "\u0000"]
        + ["<|im_end|>", "<|endoftext|>", "<think>", "<sep>", "<|im_start|", "<thi"]
    )
    rng = random.Random(seed)
    out: list[str] = []
    while sum(len(s) for s in out) < length:
        out.append(rng.choice(palette) * rng.choice([1, 1, 1, 2, 3]))
    return "".join(out)


def fnv1a64(ids: list[int]) -> str:
    """FNV-1a over the ids as little-endian 32-bit words; hex. BPETokenizerTests computes the same."""
    h = 0xCBF29CE484222325
    for i in ids:
        for b in (i & 0xFFFFFFFF).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def smollm_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


def llama3_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def train_tiny() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = smollm_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = (ROOT / "Tests" / "Fixtures" / "spm_corpus.txt").read_text(encoding="utf-8").splitlines()
    tok.train_from_iterator(lines + EXTRA_TRAINING_LINES * 3, trainer)
    tok.add_special_tokens([
        AddedToken("<sep>", special=True, normalized=False, lstrip=True, rstrip=True),
        AddedToken("<|a b|>", special=True, normalized=False),
    ])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=True)])
    return tok


def pieces(pre, text: str) -> list[str]:
    return [p for p, _ in pre.pre_tokenize_str(text)]


def decode_cases(tok: Tokenizer) -> list[dict]:
    """Id sequences whose decode is worth pinning: bytes of one character split apart, added tokens."""
    out = []
    emoji = tok.encode("😀").ids
    accent = tok.encode("é").ids
    seqs = [
        emoji, emoji[:1], emoji[:-1], emoji[1:], emoji[:2] + emoji[:2], accent[:1] + tok.encode("x").ids,
        tok.encode("Hello <|a b|> world").ids, tok.encode("<think>ok").ids,
        tok.encode("<|endoftext|>").ids, tok.encode("café 日本 😀").ids,
        [tok.token_to_id("Ċ"), tok.token_to_id("Ġ"), tok.token_to_id("ĉ")],
    ]
    for ids in seqs:
        out.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False)})
    return out


def write_json(path: Path, obj: dict) -> None:
    """One top-level key per line group, one list element per line: small, and diffs stay readable."""
    lines = ["{"]
    for n, (key, value) in enumerate(obj.items()):
        comma = "," if n + 1 < len(obj) else ""
        if isinstance(value, list):
            lines.append(f"  {json.dumps(key)}: [")
            lines += ["    " + json.dumps(v, ensure_ascii=False) + ("," if i + 1 < len(value) else "")
                      for i, v in enumerate(value)]
            lines.append("  ]" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def make_tiny() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = train_tiny()
    tok.save(str(OUT / "tokenizer.json"), pretty=True)
    print(f"wrote {(OUT / 'tokenizer.json').relative_to(ROOT)} (vocab {tok.get_vocab_size()})")
    write_json(OUT / "tokenizer_config.json", {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "tokenizer_class": "GPT2Tokenizer",
    })
    # Reload from the file, so the reference is what the committed file gives.
    tok = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    llama3 = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    llama3.pre_tokenizer = llama3_pre_tokenizer()

    gpt2_split = pre_tokenizers.Split(Regex(GPT2_REGEX), behavior="isolated")
    smollm_split = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2_split])
    llama3_split = pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated")

    stress = stress_text()
    cases = []
    for text in CASES + [stress]:
        cases.append({
            "text": text,
            "ids": tok.encode(text).ids,
            "ids_llama3": llama3.encode(text).ids,
            "pieces_gpt2": pieces(gpt2_split, text),
            "pieces_smollm": pieces(smollm_split, text),
            "pieces_llama3": pieces(llama3_split, text),
        })
    corpus = (ROOT / "Tests" / "Fixtures" / "spm_corpus.txt").read_text(encoding="utf-8")
    corpus_ids = tok.encode(corpus).ids
    write_json(OUT / "reference.json", {
        "notes": "Written by scripts/make_bpe_reference.py with tokenizers " + __import__("tokenizers").__version__
                 + ". ids: Tokenizer.from_file('tokenizer.json').encode(text).ids (no BOS: no post-processor). "
                 "ids_llama3: the same vocabulary with pre_tokenizer Sequence[Split(LLaMA 3 regex, isolated), "
                 "ByteLevel(use_regex=False)]. pieces_*: raw pre-tokenizer pieces (Split(regex, isolated).pre_tokenize_str; "
                 "smollm = Digits(individual_digits=True) then the GPT-2 regex). decode: "
                 "decode(ids, skip_special_tokens=False). corpus: spm_corpus.txt, ids hashed with FNV-1a 64 over "
                 "little-endian u32 words. The last case is a random stress text (seed 5).",
        "cases": cases,
        "decode": decode_cases(tok),
        "corpus": {"file": "spm_corpus.txt", "count": len(corpus_ids), "fnv1a64": fnv1a64(corpus_ids)},
    })


def make_smollm2(gguf_path: Path) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def strings(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = reader.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in strings("tokenizer.ggml.merges")]
    types = ints("tokenizer.ggml.token_type")
    assert strings("tokenizer.ggml.pre") == ["smollm"], "expected SmolLM's pre-tokenizer"
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = smollm_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    assert tok.get_vocab_size() == len(tokens)

    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)

    stress = stress_text()
    cases = []
    for text in CASES + [stress]:
        ids = tok.encode(text).ids
        case = {"text": text, "ids": ids}
        other = hf.encode(text, add_special_tokens=False)
        if other != ids:
            case["transformers_gguf_ids"] = other
        cases.append(case)
    corpus = (ROOT / "Tests" / "Fixtures" / "spm_corpus.txt").read_text(encoding="utf-8")
    corpus_ids = tok.encode(corpus).ids
    write_json(OUT / "smollm2_reference.json", {
        "notes": f"Written by scripts/make_bpe_reference.py from {gguf_path.name}: tokenizers BPE from the GGUF's "
                 "tokens and merges, pre_tokenizer Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)], "
                 "control tokens (token_type 3) added as special; no BOS (add_bos_token false). "
                 "transformers_gguf_ids: what AutoTokenizer.from_pretrained(gguf_file=...) gives instead, where it "
                 "differs (it knows no 'smollm' pre-tokenizer, so a space stays glued to a number like '½').",
        "cases": cases,
        "decode": [{"ids": c["ids"], "text": tok.decode(c["ids"], skip_special_tokens=False)} for c in cases[:8]],
        "corpus": {"file": "spm_corpus.txt", "count": len(corpus_ids), "fnv1a64": fnv1a64(corpus_ids)},
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, default=ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="SmolLM2's GGUF; smollm2_reference.json is skipped when it is absent")
    args = ap.parse_args()
    make_tiny()
    if args.gguf.exists():
        make_smollm2(args.gguf)
    else:
        print(f"{args.gguf} not found: smollm2_reference.json left as it is")


if __name__ == "__main__":
    main()
