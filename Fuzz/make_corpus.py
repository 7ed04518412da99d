#!/usr/bin/env python3
"""Writes the fuzz seed corpus (Fuzz/corpus/<target>/) from Tests/Fixtures: small fixtures as they
are, big ones as minimal variants (a GGUF of one tiny layer, a safetensors file of a few
tensors), plus the bad-input catalogue. Run from anywhere; rerunning rewrites the seeds it owns
(files named seed-*), leaving inputs merged in by `scripts/fuzz.sh --merge` alone."""
import json, os, struct, glob, shutil
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "Fixtures")
OUT = os.path.join(ROOT, "Fuzz", "corpus")
# Joins the files of a multi-file input (Fuzz/Sources/FuzzSupport: `parts`).
SEP = b"\x00\x00FUZZ\x00\x00"

# --- GGUF ---------------------------------------------------------------------------------
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
SCALAR = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i", T_F32: "<f",
          T_BOOL: "<?", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}

def read_gguf(path):
    b = open(path, "rb").read()
    o = 0
    def take(fmt):
        nonlocal o
        v = struct.unpack_from(fmt, b, o); o += struct.calcsize(fmt); return v[0]
    def string():
        nonlocal o
        n = take("<Q"); s = b[o:o + n].decode(); o += n; return s
    def value(t):
        if t == T_STR: return string()
        if t == T_ARR:
            et = take("<I"); n = take("<Q"); return (et, [value(et) for _ in range(n)])
        return take(SCALAR[t])
    assert b[:4] == b"GGUF"; o = 4
    take("<I"); nt = take("<Q"); nkv = take("<Q")
    kv = []
    for _ in range(nkv):
        k = string(); t = take("<I"); kv.append((k, t, value(t)))
    return kv

def write_gguf(kv, tensors, align=32):
    def s(x):
        x = x.encode(); return struct.pack("<Q", len(x)) + x
    def val(t, v):
        if t == T_STR: return s(v)
        if t == T_ARR:
            et, items = v; return struct.pack("<IQ", et, len(items)) + b"".join(val(et, i) for i in items)
        return struct.pack(SCALAR[t], v)
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, t, v in kv: out += s(k) + struct.pack("<I", t) + val(t, v)
    data, infos = b"", b""
    for name, ggml_type, dims, raw in tensors:
        while len(data) % align: data += b"\0"
        infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ggml_type, len(data))
        data += raw
    out += infos
    while len(out) % align: out += b"\0"
    return out + data

def q8_0(x):   # GGML Q8_0: blocks of 32 as f16 scale + 32 int8
    out = b""
    for blk in x.reshape(-1, 32):
        d = float(np.abs(blk).max()) / 127 or 1.0
        out += np.float16(d).tobytes() + np.round(blk / d).astype(np.int8).tobytes()
    return out

def tiny_gguf(kv_src, vocab, hidden=32, ffn=64, heads=2, kv_heads=1, tok_model="llama", q8=True):
    rng = np.random.default_rng(0)
    over = {"llama.embedding_length": hidden, "llama.feed_forward_length": ffn, "llama.block_count": 1,
            "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
            "llama.context_length": 64, "llama.vocab_size": vocab, "llama.rope.dimension_count": hidden // heads}
    kv = []
    for k, t, v in kv_src:
        if k in over: v = over.pop(k)
        if k.startswith("tokenizer.ggml.") and t == T_ARR: v = (v[0], v[1][:vocab])
        if k == "tokenizer.ggml.model": v = tok_model
        kv.append((k, t, v))
    kv += [(k, T_U32, v) for k, v in over.items()]
    if tok_model == "gpt2":
        kv = [e for e in kv if e[0] not in ("tokenizer.ggml.scores",)]
        kv.append(("tokenizer.ggml.merges", T_ARR, (T_STR, ["a b", "ab c"])))
        kv.append(("tokenizer.ggml.pre", T_STR, "llama-bpe"))
    hd = hidden // heads
    shapes = {"token_embd.weight": [hidden, vocab], "output_norm.weight": [hidden], "output.weight": [hidden, vocab],
              "blk.0.attn_norm.weight": [hidden], "blk.0.ffn_norm.weight": [hidden],
              "blk.0.attn_q.weight": [hidden, hidden], "blk.0.attn_k.weight": [hidden, kv_heads * hd],
              "blk.0.attn_v.weight": [hidden, kv_heads * hd], "blk.0.attn_output.weight": [hidden, hidden],
              "blk.0.ffn_gate.weight": [hidden, ffn], "blk.0.ffn_up.weight": [hidden, ffn],
              "blk.0.ffn_down.weight": [ffn, hidden]}
    tensors = []
    for name, dims in shapes.items():
        x = rng.standard_normal(int(np.prod(dims))).astype(np.float32) * 0.1
        if q8 and len(dims) == 2: tensors.append((name, 8, dims, q8_0(x)))
        elif len(dims) == 2: tensors.append((name, 1, dims, x.astype(np.float16).tobytes()))
        else: tensors.append((name, 0, dims, x.tobytes()))
    return write_gguf(kv, tensors)

# --- safetensors --------------------------------------------------------------------------
def safetensors(items, meta=None):
    header, data = {}, b""
    if meta: header["__metadata__"] = meta
    for name, dtype, shape, raw in items:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b)[0]
    h = json.loads(b[8:8 + n]); return h, b[8 + n:]

def small_safetensors(path, limit=4096):
    """The fixture's tensors that are small, whole; the rest cut to their first row."""
    h, data = read_safetensors(path)
    items = []
    for name, e in h.items():
        if name == "__metadata__": continue
        raw = data[e["data_offsets"][0]:e["data_offsets"][1]]
        shape = e["shape"]
        if len(raw) > limit and len(shape) >= 1 and shape[0] > 1:
            row = len(raw) // shape[0]; k = max(1, limit // row)
            shape = [k] + shape[1:]; raw = raw[:k * row]
        if len(raw) > limit: continue
        items.append((name, e["dtype"], shape, raw))
    return safetensors(items[:12], h.get("__metadata__"))

# --- writing ------------------------------------------------------------------------------
def put(target, name, data):
    d = os.path.join(OUT, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f: f.write(data)

def rd(*p): return open(os.path.join(FIX, *p), "rb").read()

def main():
    for d in glob.glob(os.path.join(OUT, "*", "seed-*")): os.remove(d)
    bad = os.path.join(FIX, "bad")

    # safetensors: a whole small file, trimmed fixtures, the catalogue's broken ones
    put("safetensors", "adapter", rd("reference", "train-mha-qv.adapter", "adapter_model.safetensors"))
    put("safetensors", "tiny-mha", small_safetensors(os.path.join(FIX, "tiny-mha", "model.safetensors")))
    put("safetensors", "quants", small_safetensors(os.path.join(FIX, "gguf", "quants.safetensors")))
    put("safetensors", "dtypes", safetensors([
        ("f16", "F16", [2, 2], np.arange(4, dtype=np.float16).tobytes()),
        ("bf16", "BF16", [3], b"\x80\x3f" * 3), ("f64", "F64", [1], struct.pack("<d", 1.5)),
        ("i64", "I64", [2], struct.pack("<qq", 1, -1)), ("i32", "I32", [1], struct.pack("<i", 7)),
        ("u8", "U8", [2], b"\1\2"), ("i8", "I8", [1], b"\xff"), ("empty", "F32", [0, 3], b"")],
        {"format": "pt"}))
    for p in sorted(glob.glob(os.path.join(bad, "safetensors", "*", "model.safetensors"))):
        put("safetensors", "bad-" + os.path.basename(os.path.dirname(p)), small_or_whole(p))
    put("safetensors", "nan", small_safetensors(os.path.join(bad, "weights", "nan_model", "model.safetensors")))

    # safetensors_index: index JSON SEP shard
    shard = small_safetensors(os.path.join(FIX, "tiny-mha", "model.safetensors"), limit=1024)
    h, _ = read_safetensors_bytes(shard)
    index = {"metadata": {"total_size": len(shard)},
             "weight_map": {k: "model-00001-of-00001.safetensors" for k in h if k != "__metadata__"}}
    put("safetensors_index", "ok", json.dumps(index, indent=1).encode() + SEP + shard)
    put("safetensors_index", "traversal", rd("bad", "safetensors", "index_traversal", "model.safetensors.index.json") + SEP + shard)

    # gguf and its tokenizer metadata: tiny one-layer models (llama SPM and gpt2 BPE vocabularies)
    kv = read_gguf(os.path.join(FIX, "gguf", "tiny-mha.gguf"))
    g_llama = tiny_gguf(kv, vocab=64)
    g_f16 = tiny_gguf(kv, vocab=64, q8=False, kv_heads=2)
    g_gpt2 = tiny_gguf(kv, vocab=64, tok_model="gpt2")
    for t in ("gguf", "gguf_tokenizer"):
        put(t, "tiny-q8", g_llama); put(t, "tiny-f16", g_f16); put(t, "tiny-gpt2", g_gpt2)
        put(t, "meta-only", write_gguf(kv, []))
    for p in sorted(glob.glob(os.path.join(bad, "gguf", "*.gguf"))):
        b = open(p, "rb").read()
        if len(b) <= 64 * 1024: put("gguf", "bad-" + os.path.basename(p)[:-5], b)

    # config.json
    for m in ("tiny-mha", "tiny-gqa"): put("config", m, rd(m, "config.json"))
    for p in sorted(glob.glob(os.path.join(bad, "config", "*", "config.json"))):
        put("config", "bad-" + os.path.basename(os.path.dirname(p)), open(p, "rb").read())

    # adapter_config.json
    for p in sorted(glob.glob(os.path.join(FIX, "reference", "*.adapter", "adapter_config.json"))):
        put("adapter_config", os.path.basename(os.path.dirname(p))[:-8], open(p, "rb").read())
    for p in sorted(glob.glob(os.path.join(bad, "adapter", "*", "adapter_config.json"))):
        put("adapter_config", "bad-" + os.path.basename(os.path.dirname(p)), open(p, "rb").read())

    # tokenizer.json SEP tokenizer_config.json SEP config.json (the model the tokenizer must fit)
    cfg = rd("bpe", "tokenizer_config.json")
    model_cfg = json.dumps({**json.loads(rd("tiny-mha", "config.json")), "vocab_size": 49152}).encode()
    put("tokenizer_json", "smollm2", rd("bpe", "tokenizer.json") + SEP + cfg + SEP + model_cfg)
    tj = json.loads(rd("bpe", "tokenizer.json"))
    vocab = dict(list(tj["model"]["vocab"].items())[:400])
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = [m for m in tj["model"]["merges"][:200]
                             if all(x in vocab for x in (m.split(" ") if isinstance(m, str) else m))]
    tj["added_tokens"] = [a for a in tj.get("added_tokens", []) if a["id"] < 400]
    put("tokenizer_json", "small", json.dumps(tj).encode() + SEP + cfg + SEP + model_cfg)
    for d in sorted(glob.glob(os.path.join(bad, "tokenizer", "*"))):
        parts = [open(os.path.join(d, f), "rb").read() if os.path.exists(os.path.join(d, f)) else b""
                 for f in ("tokenizer.json", "tokenizer_config.json", "config.json")]
        if len(parts[0]) <= 64 * 1024: put("tokenizer_json", "bad-" + os.path.basename(d), SEP.join(parts))

    # Alpaca / chat data: a leading byte picks the file name (0: .json, 1: .jsonl)
    recs = json.loads(rd("records.json"))
    put("data", "records", b"\0" + rd("records.json"))
    put("data", "sample", b"\0" + open(os.path.join(ROOT, "data", "alpaca_sample.json"), "rb").read())
    put("data", "jsonl", b"\1" + "\n".join(json.dumps(r) for r in recs[:8]).encode())
    put("data", "chat", b"\1" + json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}]}).encode())
    for p in sorted(glob.glob(os.path.join(bad, "data", "*.json"))):
        put("data", "bad-" + os.path.basename(p)[:-5], b"\0" + open(p, "rb").read())

    # chat data: a leading byte picks the file name (bit 0: .json / .jsonl) and the template
    # kind (byte / 2: chatml, llama2, llama3, mistral, alpaca)
    chat = json.loads(rd(os.path.join("chat", "conversations.json")))
    for k, kind in enumerate(["chatml", "llama2", "llama3", "mistral", "alpaca"]):
        put("chat_data", "conversations-" + kind, bytes([2 * k]) + rd(os.path.join("chat", "conversations.json")))
    put("chat_data", "jsonl", b"\1" + "\n".join(json.dumps(r, ensure_ascii=False) for r in chat).encode())
    for p in sorted(glob.glob(os.path.join(bad, "chat", "*.json*"))):
        put("chat_data", "bad-" + os.path.basename(p).rsplit(".", 1)[0], b"\0" + open(p, "rb").read())
    put("chat_data", "template-smollm2", b"\0" + json.loads(rd(os.path.join("chat", "reference.json")))["templates"]["smollm2"]["source"].encode())

    # finetune YAML
    for p in sorted(glob.glob(os.path.join(ROOT, "configs", "*.y*ml"))):
        put("yaml", os.path.basename(p).rsplit(".", 1)[0], open(p, "rb").read())
    for p in sorted(glob.glob(os.path.join(bad, "yaml", "*.yml"))):
        put("yaml", "bad-" + os.path.basename(p)[:-4], open(p, "rb").read())

    # prompt templates
    for p in sorted(glob.glob(os.path.join(ROOT, "configs", "templates", "*.json"))):
        put("prompter", os.path.basename(p)[:-5], open(p, "rb").read())
    put("prompter", "alpaca-inline", json.dumps({
        "description": "Template used by Alpaca-LoRA.",
        "prompt_input": "Below is an instruction.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "prompt_no_input": "Below is an instruction.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
        "response_split": "### Response:"}))

    # gguf_lora: llama.cpp adapter files (f32 and f16, MHA and GQA; the last byte picks the model)
    for n in ("tiny-mha-a.lora", "tiny-mha-a.lora-f16", "tiny-gqa-b.lora"):
        b = rd("gguf", n + ".gguf")
        put("gguf_lora", n, b[:-1] + bytes([(b[-1] & 0xFE) | (1 if "gqa" in n else 0)]))

    # resume: trainer_state.json SEP optimizer.safetensors
    ok_state = {"step": 3, "epoch": 1, "micro_batch": 0, "total_steps": 6, "rng": ["1", "2", "3", "4"],
                "best_eval_loss": 2.5, "best_step": 2}
    z = np.zeros(64, np.float32).tobytes()
    opt = safetensors([(f"{w}.{k}", "F32", [64], z) for w in ("m", "v", "best") for k in range(4)], {"adamw_step": "3"})
    put("resume", "ok", json.dumps(ok_state).encode() + SEP + opt)
    for p in sorted(glob.glob(os.path.join(bad, "state", "*", "trainer_state.json"))):
        put("resume", "bad-" + os.path.basename(os.path.dirname(p)), open(p, "rb").read() + SEP + opt)

def read_safetensors_bytes(b):
    n = struct.unpack_from("<Q", b)[0]; return json.loads(b[8:8 + n]), b[8 + n:]

def small_or_whole(p):
    b = open(p, "rb").read()
    if len(b) <= 8192: return b
    try: return small_safetensors(p)
    except Exception: return b[:8192]

if __name__ == "__main__":
    main()
