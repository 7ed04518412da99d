#!/usr/bin/env python3
"""Random LLaMA-shaped checkpoints for the memory and speed proofs of issue 10 (nothing here is
committed; the files are many GB).

    ~/.cache/lora/venv-ref/bin/python scripts/make_big.py --shape 7b [--out ~/.cache/lora/big]

Environment: the reference venv (scripts/requirements-ref.txt: numpy, gguf, sentencepiece);
this script needs only numpy, gguf and sentencepiece (`pip install numpy gguf sentencepiece`).

Writes OUT/SHAPE/ (LORA_BIG_DIR for Tests/LLaMATests/BigModelTests.swift, the folder
scripts/bench_big.sh takes):
    q4_0.gguf   every 2-D tensor Q4_0 (llama.cpp's --pure: no Q6_K output), norms F32
    q8_0.gguf   every 2-D tensor Q8_0, norms F32
    bf16/       config.json, model-0000N-of-0000M.safetensors + model.safetensors.index.json (bf16),
                tokenizer.model, tokenizer_config.json, special_tokens_map.json
    shape.json  the shape, seed and file sizes (read by the test and the bench)

All three hold the same model: each tensor is drawn once (N(0, 0.02) from a generator seeded by
the seed and the tensor's index; norms 1.0, so activations stay finite through 32 layers), rounded
to bf16, and those values are what the GGUF quantizers see (q/k rows permuted as
convert_hf_to_gguf.py does). Tensors are produced in row chunks of at most CHUNK elements and
written before the next is drawn: the peak memory is a few hundred MB whatever the shape (the
7B bf16 model is 13.5 GB; the machine has 23 GB, shared).

Tokenizer: the SentencePiece model of Tests/Fixtures/tiny-gqa (512 pieces; <unk> 0, <s> 1, </s> 2).
The safetensors folder keeps it as is (vocab_size 32000 in config.json; lora accepts a tokenizer
smaller than the embedding, ids < vocab_size). The GGUF vocabularies are padded to vocab_size with
pieces "<unused_N>" of type UNUSED (score -1e9), because llama.cpp takes its vocabulary size from
tokenizer.ggml.tokens and checks token_embd against it.

Every file is written under a temporary name and renamed once all are complete; shape.json, written
last, marks a complete set (kept unless --force; an interrupted run starts again).
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "Tests" / "Fixtures" / "tiny-gqa"

SHAPES = {
    # LLaMA-2-7B (meta-llama/Llama-2-7b-hf config.json)
    "7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=32000, context=4096,
               eps=1e-5, theta=10000.0),
    # TinyLlama-1.1B (GQA, 4 kv heads)
    "1b": dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000, context=2048,
               eps=1e-5, theta=10000.0),
    # CI-sized: the same code paths (GQA, padded vocabulary, sharding) in ~35 MB of bf16
    "tiny": dict(hidden=256, layers=2, heads=8, kv_heads=4, intermediate=768, vocab=32000, context=512,
                 eps=1e-5, theta=10000.0),
}
CHUNK = 1 << 24  # elements drawn at once (64 MB of f32)
STD = 0.02


def tensor_list(s: dict) -> list[tuple[str, str, tuple[int, int] | tuple[int]]]:
    """(HF name, GGUF name, HF shape) in the order HF and convert_hf_to_gguf.py write them."""
    C, I, V, hd = s["hidden"], s["intermediate"], s["vocab"], s["hidden"] // s["heads"]
    KV = s["kv_heads"] * hd
    out = [("model.embed_tokens.weight", "token_embd.weight", (V, C))]
    for n in range(s["layers"]):
        p, g = f"model.layers.{n}.", f"blk.{n}."
        out += [(p + "input_layernorm.weight", g + "attn_norm.weight", (C,)),
                (p + "self_attn.q_proj.weight", g + "attn_q.weight", (C, C)),
                (p + "self_attn.k_proj.weight", g + "attn_k.weight", (KV, C)),
                (p + "self_attn.v_proj.weight", g + "attn_v.weight", (KV, C)),
                (p + "self_attn.o_proj.weight", g + "attn_output.weight", (C, C)),
                (p + "post_attention_layernorm.weight", g + "ffn_norm.weight", (C,)),
                (p + "mlp.gate_proj.weight", g + "ffn_gate.weight", (I, C)),
                (p + "mlp.up_proj.weight", g + "ffn_up.weight", (I, C)),
                (p + "mlp.down_proj.weight", g + "ffn_down.weight", (C, I))]
    out += [("model.norm.weight", "output_norm.weight", (C,)), ("lm_head.weight", "output.weight", (V, C))]
    return out


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """f32 -> bf16 bits, round to nearest even (no NaN in N(0, 0.02) draws)."""
    u = x.view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's q/k permutation: HF rotate-half rows -> llama.cpp interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(s: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": s["hidden"], "intermediate_size": s["intermediate"], "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
        "max_position_embeddings": s["context"], "rms_norm_eps": s["eps"], "rope_theta": s["theta"],
        "rope_scaling": None, "vocab_size": s["vocab"], "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
        "initializer_range": STD, "torch_dtype": "bfloat16", "use_cache": True,
    }


def gguf_writer(gguf, path: Path, s: dict, qtype, tensors, name: str):
    """A GGUFWriter with the metadata, vocabulary and tensor infos, header written, ready for
    write_tensor_data in `tensors` order."""
    import sentencepiece as spm
    from spm_vocab import spm_vocab
    T = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_block_count(s["layers"])
    w.add_context_length(s["context"])
    w.add_embedding_length(s["hidden"])
    w.add_feed_forward_length(s["intermediate"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(s["theta"])
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_vocab_size(s["vocab"])
    w.add_rope_dimension_count(s["hidden"] // s["heads"])
    w.add_file_type({T.Q4_0: 2, T.Q8_0: 7}[qtype])  # LLAMA_FTYPE_MOSTLY_Q4_0 / _Q8_0
    sp = spm.SentencePieceProcessor(model_file=str(FIXTURE / "tokenizer.model"))
    tokens, scores, types = spm_vocab(sp)
    for i in range(len(tokens), s["vocab"]):  # pad: llama.cpp's vocabulary size is the token list's
        tokens.append(f"<unused_{i}>".encode())
        scores.append(-1e9)
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(True)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    for _, g, shape in tensors:
        if len(shape) == 1:
            w.add_tensor_info(g, shape, np.dtype(np.float32), shape[0] * 4)
        else:
            rows, cols = shape
            w.add_tensor_info(g, (rows, cols * size // block), np.dtype(np.uint8), rows * cols // block * size,
                              raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return w


class SafetensorsShards:
    """bf16 shards of at most `shard_bytes`, headers computed up front so data is appended as drawn."""

    def __init__(self, folder: Path, tensors, shard_bytes: int):
        self.folder = folder
        groups, cur, cur_bytes = [], [], 0
        for hf, _, shape in tensors:
            n = int(np.prod(shape)) * 2
            if cur and cur_bytes + n > shard_bytes:
                groups.append(cur)
                cur, cur_bytes = [], 0
            cur.append((hf, shape, n))
            cur_bytes += n
        groups.append(cur)
        self.names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
        self.shard_of, self.headers = {}, []
        for fname, g in zip(self.names, groups):
            header, off = {"__metadata__": {"format": "pt"}}, 0
            for hf, shape, n in g:
                header[hf] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
                off += n
                self.shard_of[hf] = fname
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # data starts 8-aligned
            self.headers.append(raw)
        self.total = sum(int(np.prod(sh)) * 2 for _, _, sh in tensors)
        self.current, self.fp = -1, None

    def write(self, hf: str, bits: np.ndarray):
        i = self.names.index(self.shard_of[hf])
        if i != self.current:
            self.close()
            self.current = i
            self.fp = open(self.folder / self.names[i], "wb")
            self.fp.write(len(self.headers[i]).to_bytes(8, "little"))
            self.fp.write(self.headers[i])
        bits.tofile(self.fp)

    def close(self):
        if self.fp:
            self.fp.close()
            self.fp = None

    def write_index(self):
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(self.shard_of)}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def drop_cache(fp):
    """Written pages go to disk and out of the page cache: 25 GB of dirty pages would crowd the others."""
    try:
        fp.flush()
        os.fdatasync(fp.fileno())
        os.posix_fadvise(fp.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/lora/big"),
                    help="parent folder; files go to OUT/SHAPE (default ~/.cache/lora/big)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gb", type=float, default=4.0, help="most GB per safetensors shard")
    ap.add_argument("--force", action="store_true", help="rewrite even when OUT/SHAPE/shape.json says it is complete")
    a = ap.parse_args()
    import gguf
    T = gguf.GGMLQuantizationType

    s = SHAPES[a.shape]
    out = Path(a.out).expanduser() / a.shape
    if ROOT in out.resolve().parents or out.resolve() == ROOT:
        sys.exit(f"--out {out}: inside the repository; big files never go there")
    if (out / "shape.json").exists() and not a.force:
        print(f"{out}: complete already (shape.json); --force rewrites it")
        return
    out.mkdir(parents=True, exist_ok=True)
    need = sum(int(np.prod(sh)) for _, _, sh in tensor_list(s)) * (2 + 34 / 32 + 18 / 32) * 1.02
    free = shutil.disk_usage(out).free
    if free < need:
        sys.exit(f"{out}: {free / 1e9:.1f} GB free, these files need {need / 1e9:.1f} GB")

    tensors = tensor_list(s)
    tmp = f".tmp-{os.getpid()}"
    folder_tmp = out / ("bf16" + tmp)
    folder_tmp.mkdir()
    shards = SafetensorsShards(folder_tmp, tensors, int(a.shard_gb * 1e9))
    ggufs = {qt: (out / f"{qt.name.lower()}.gguf{tmp}") for qt in (T.Q4_0, T.Q8_0)}
    writers = {qt: gguf_writer(gguf, p, s, qt, tensors, f"random-llama-{a.shape}-{qt.name}") for qt, p in ggufs.items()}
    quant = {qt: gguf.quants.quantize for qt in writers}
    block = {qt: gguf.GGML_QUANT_SIZES[qt] for qt in writers}

    t0, done, total = time.time(), 0, sum(int(np.prod(sh)) for _, _, sh in tensors)
    for idx, (hf, g, shape) in enumerate(tensors):
        rng = np.random.default_rng([a.seed, idx])
        if len(shape) == 1:  # RMSNorm weights: 1.0, as LLaMA's initialisation
            x = np.ones(shape, dtype=np.float32)
            shards.write(hf, bf16_bits(x))
            for w in writers.values():
                w.write_tensor_data(x)
            done += x.size
            continue
        rows, cols = shape
        heads = s["heads"] if ".attn_q." in g else s["kv_heads"] if ".attn_k." in g else 0
        # q/k are permuted whole (a permutation mixes rows across chunks; at most 64 MB for 7B)
        step = rows if heads else max(1, CHUNK // cols)
        qbufs = {qt: np.empty((rows, cols // block[qt][0] * block[qt][1]), dtype=np.uint8) for qt in writers}
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            x = rng.standard_normal((r1 - r0, cols), dtype=np.float32)
            x *= np.float32(STD)
            bits = bf16_bits(x)
            shards.write(hf, bits)
            x = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)  # the bf16 values, exactly
            if heads:
                x = np.ascontiguousarray(permute_rows(x, heads))
            for qt in writers:
                qbufs[qt][r0:r1] = quant[qt](x, qt)
            done += x.size
        for qt, w in writers.items():
            w.write_tensor_data(qbufs[qt])
            drop_cache(w.fout[0])
        drop_cache(shards.fp)
        el = time.time() - t0
        print(f"\r{idx + 1}/{len(tensors)} tensors, {done / total:6.1%}, {el:5.0f} s, "
              f"~{el / done * (total - done):5.0f} s left", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    shards.close()
    for w in writers.values():
        w.close()

    shards.write_index()
    (folder_tmp / "config.json").write_text(json.dumps(hf_config(s), indent=2) + "\n")
    shutil.copy(FIXTURE / "tokenizer.model", folder_tmp / "tokenizer.model")
    tc = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    tc["model_max_length"] = s["context"]
    (folder_tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=1) + "\n")
    shutil.copy(FIXTURE / "special_tokens_map.json", folder_tmp / "special_tokens_map.json")
    if (out / "bf16").exists():
        shutil.rmtree(out / "bf16")
    folder_tmp.rename(out / "bf16")
    sizes = {}
    for qt, p in ggufs.items():
        final = out / f"{qt.name.lower()}.gguf"
        p.rename(final)
        sizes[final.name] = final.stat().st_size
    sizes["bf16"] = sum(f.stat().st_size for f in (out / "bf16").iterdir())
    meta = {"shape": a.shape, **s, "seed": a.seed, "std": STD, "bytes": sizes,
            "parameters": total, "seconds": round(time.time() - t0, 1)}
    tmpj = out / ("shape.json" + tmp)
    tmpj.write_text(json.dumps(meta, indent=2) + "\n")
    tmpj.rename(out / "shape.json")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
