#!/usr/bin/env python3
"""Writes the bad-input catalogue, Tests/Fixtures/bad/: one small file or folder per case and
cases.json, which Tests/loraTests/BadInputTests.swift runs (`lora` must exit 1 with one
`error:` line naming the file or key, and write nothing). Stdlib only; built from the tiny
fixtures in Tests/Fixtures. Large inputs are symlinks to those fixtures, so the catalogue
stays small. Run from the repository root: python3 scripts/make_bad_inputs.py
"""
import json, os, shutil, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "Fixtures")
BAD = os.path.join(FIX, "bad")
TINY = os.path.join(FIX, "tiny-mha")
CASES = []
shutil.rmtree(BAD, ignore_errors=True)


def case(name, args, expect):
    """args: $BAD, $FIX and $OUT are replaced by the test; expect: substrings of the error line."""
    CASES.append({"name": name, "args": args, "expect": expect})


def path(*p):
    full = os.path.join(BAD, *p)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    return full


def write(rel, data):
    with open(path(rel), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def link(rel, target):
    """A relative symlink to a fixture file (the loader follows it, git stores it small)."""
    p = path(rel)
    os.symlink(os.path.relpath(target, os.path.dirname(p)), p)


def tiny_config():
    with open(os.path.join(TINY, "config.json")) as f:
        return json.load(f)


def generate(folder):
    return ["generate", "--base-model", folder, "--prompt", "hi", "--max-new-tokens", "1", "--load-8bit", "false"]


def finetune(*extra):
    return ["finetune", "--base-model", "$FIX/tiny-mha", "--data-path", "$FIX/records.json", "--output-dir", "$OUT",
            "--batch-size", "2", "--micro-batch-size", "1", "--val-set-size", "0", "--max-steps", "2",
            "--cutoff-len", "64", "--load-8bit", "false", *extra]


def safetensors(tensors, meta=None):
    """tensors: [(name, dtype, shape, bytes)] -> file bytes."""
    header, off, data = {}, 0, b""
    if meta:
        header["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def raw_header(header_obj, data=b""):
    h = json.dumps(header_obj).encode()
    return struct.pack("<Q", len(h)) + h + data


# ---- config.json: one folder per case, config.json only (it is read first) ----
def config_case(name, change, key, drop=()):
    c = tiny_config()
    c.update(change)
    for k in drop:
        c.pop(k, None)
    write(f"config/{name}/config.json", json.dumps(c, indent=1))
    case(f"config_{name}", generate(f"$BAD/config/{name}"), ["config.json", key])


config_case("max_position_huge", {"max_position_embeddings": 1 << 40}, "max_position_embeddings")
config_case("rope_table_too_big", {"max_position_embeddings": 1 << 20, "head_dim": 1024}, "max_position_embeddings")
config_case("hidden_huge", {"hidden_size": 1 << 40}, "hidden_size")
config_case("heads_zero", {"num_attention_heads": 0}, "num_attention_heads")
config_case("kv_heads_not_divisor", {"num_key_value_heads": 3}, "num_key_value_heads")
config_case("hidden_not_multiple_of_heads", {"num_attention_heads": 5, "num_key_value_heads": 5}, "hidden_size", drop=["head_dim"])
config_case("vocab_2_31", {"vocab_size": 1 << 31}, "vocab_size")
config_case("layers_huge", {"num_hidden_layers": 100000}, "num_hidden_layers")
config_case("intermediate_negative", {"intermediate_size": -1}, "intermediate_size")
config_case("head_dim_odd", {"head_dim": 15}, "head_dim")
config_case("eos_id_2_31", {"eos_token_id": 1 << 31}, "eos_token_id")
config_case("bos_id_past_vocab", {"bos_token_id": 600}, "bos_token_id")
config_case("hidden_wrong_type", {"hidden_size": "64"}, "hidden_size")
config_case("rope_theta_negative", {"rope_theta": -1.0, "rope_parameters": None}, "rope_theta")
write("config/not_utf8/config.json", b'{"hidden_size": 64, "model_type": "ll\xff\xfema"}')
case("config_not_utf8", generate("$BAD/config/not_utf8"), ["config.json"])
write("config/truncated/config.json", open(os.path.join(TINY, "config.json"), "rb").read()[:120])
case("config_truncated", generate("$BAD/config/truncated"), ["config.json"])


# ---- safetensors: config.json and tokenizer from tiny-mha, a bad model.safetensors ----
def st_folder(name, data, expect):
    write(f"safetensors/{name}/config.json", json.dumps(tiny_config(), indent=1))
    link(f"safetensors/{name}/tokenizer.model", os.path.join(TINY, "tokenizer.model"))
    if data is not None:
        write(f"safetensors/{name}/model.safetensors", data)
    case(f"safetensors_{name}", generate(f"$BAD/safetensors/{name}"), expect)


model_bytes = open(os.path.join(TINY, "model.safetensors"), "rb").read()
st_folder("truncated", model_bytes[:1500], ["model.safetensors"])
st_folder("header_length_huge", b"\xff" * 8 + b"{}", ["model.safetensors", "header length"])
st_folder("header_not_json", struct.pack("<Q", 8) + b"{{{{{{{{", ["model.safetensors", "JSON"])
st_folder("offsets_past_end", raw_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, b"\0" * 16),
          ["model.safetensors", "data_offsets"])
st_folder("shape_overflow", raw_header({"a": {"dtype": "F32", "shape": [1 << 39, 1 << 39, 1 << 39], "data_offsets": [0, 16]}}, b"\0" * 16),
          ["model.safetensors", "'a'"])
st_folder("bytes_mismatch", raw_header({"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}, b"\0" * 8),
          ["model.safetensors", "'a'"])
st_folder("missing_tensor", safetensors([("model.norm.weight", "F32", [64], b"\0" * 256)]), ["model.safetensors", "missing tensor"])
st_folder("bad_dtype", raw_header({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), ["model.safetensors", "Q9"])
write("safetensors/index_traversal/model.safetensors.index.json",
      json.dumps({"weight_map": {"model.norm.weight": "../../tiny-mha/model.safetensors"}}))
st_folder("index_traversal", None, ["model.safetensors.index.json", "model.norm.weight"])


# NaN weights: a small model of its own (hidden 8) so the file stays small; one NaN in a layer.
def nan_model():
    c = tiny_config()
    c.update({"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2,
              "head_dim": 4, "num_hidden_layers": 1, "tie_word_embeddings": True})
    V, C, I = c["vocab_size"], 8, 16
    import random
    rnd = random.Random(7)

    def f32(n, nan_at=None):
        vals = [rnd.uniform(-0.1, 0.1) for _ in range(n)]
        if nan_at is not None:
            vals[nan_at] = float("nan")
        return struct.pack(f"<{n}f", *vals)
    t = [("model.embed_tokens.weight", "F32", [V, C], f32(V * C)), ("model.norm.weight", "F32", [C], f32(C))]
    p = "model.layers.0."
    for n, shape in [("input_layernorm", [C]), ("post_attention_layernorm", [C]), ("self_attn.q_proj", [C, C]),
                     ("self_attn.k_proj", [C, C]), ("self_attn.v_proj", [C, C]), ("self_attn.o_proj", [C, C]),
                     ("mlp.gate_proj", [I, C]), ("mlp.up_proj", [I, C]), ("mlp.down_proj", [C, I])]:
        count = 1
        for d in shape:
            count *= d
        t.append((p + n + ".weight", "F32", shape, f32(count, 5 if n == "mlp.up_proj" else None)))
    write("weights/nan_model/config.json", json.dumps(c, indent=1))
    link("weights/nan_model/tokenizer.model", os.path.join(TINY, "tokenizer.model"))
    write("weights/nan_model/model.safetensors", safetensors(t))
    case("weights_nan_in_model", generate("$BAD/weights/nan_model"), ["model.safetensors", "model.layers.0.mlp.up_proj.weight"])


nan_model()


# ---- tokenizer.json: folder with config + model symlinked, a bad tokenizer.json ----
def bpe(vocab, added=None, merges=None):
    j = {"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": merges or []},
         "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
         "decoder": {"type": "ByteLevel"}}
    if added is not None:
        j["added_tokens"] = added
    return json.dumps(j)


def byte_vocab(n):
    """n distinct tokens: the byte-level alphabet first, then filler."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, k = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + k); k += 1
    toks = [chr(c) for c in cs]
    toks += [f"tok{i}" for i in range(n - len(toks))]
    return {t: i for i, t in enumerate(toks[:n])}


def tok_folder(name, tokenizer_json, expect, tokenizer_config=None):
    write(f"tokenizer/{name}/config.json", json.dumps(tiny_config(), indent=1))
    link(f"tokenizer/{name}/model.safetensors", os.path.join(TINY, "model.safetensors"))
    write(f"tokenizer/{name}/tokenizer.json", tokenizer_json)
    if tokenizer_config is not None:
        write(f"tokenizer/{name}/tokenizer_config.json", json.dumps(tokenizer_config))
    case(f"tokenizer_{name}", generate(f"$BAD/tokenizer/{name}"), expect)


v = byte_vocab(300)
tok_folder("id_2_31", bpe({**v, "huge": (1 << 31) - 1}), ["tokenizer.json", "huge"])
tok_folder("negative_id", bpe({**v, "neg": -5}), ["tokenizer.json", "neg"])
tok_folder("added_id_2_31", bpe(v, added=[{"id": 1 << 31, "content": "<x>", "special": True}]), ["tokenizer.json", "added_tokens"])
tok_folder("past_model_vocab", bpe(byte_vocab(600)), ["tokenizer.json", "vocab"])
tok_folder("added_past_model_vocab", bpe(v, added=[{"id": 4000, "content": "<x>", "special": True}]), ["tokenizer.json", "vocab"])
tok_folder("pad_not_in_vocab", bpe(v), ["tokenizer_config.json", "pad_token"], tokenizer_config={"pad_token": "<nope>"})
tok_folder("not_utf8", b'{"model": {"type": "BPE", "vocab": {"\xff\xfe": 0}}}', ["tokenizer.json"])
tok_folder("truncated", bpe(v)[:200], ["tokenizer.json"])


# ---- GGUF: metadata-only files written here (readConfig runs before any tensor is needed) ----
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gkv(key, typ, value):
    fmt = {4: "<I", 5: "<i", 6: "<f", 10: "<Q"}
    if typ == 8:
        return gstr(key) + struct.pack("<I", 8) + gstr(value)
    return gstr(key) + struct.pack("<I", typ) + struct.pack(fmt[typ], value)


def gguf(kvs, tensors=b"", n_tensors=0, n_kv=None):
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + tensors


def llama_kvs(**over):
    vals = {"block_count": 2, "embedding_length": 64, "feed_forward_length": 176, "attention.head_count": 4,
            "attention.head_count_kv": 4, "context_length": 256}
    vals.update(over)
    kvs = [gkv("general.architecture", 8, "llama")]
    for k, v in vals.items():
        kvs.append(gkv("llama." + k, 4, v))
    kvs.append(gkv("llama.attention.layer_norm_rms_epsilon", 6, 1e-5))
    kvs.append(gkv("llama.vocab_size", 4, 512))
    return kvs


def gguf_case(name, data, expect):
    write(f"gguf/{name}.gguf", data)
    case(f"gguf_{name}", generate(f"$BAD/gguf/{name}.gguf"), [f"{name}.gguf"] + expect)


tiny_gguf = open(os.path.join(FIX, "gguf", "tiny-mha.gguf"), "rb").read()
gguf_case("truncated", tiny_gguf[:300], [])
gguf_case("bad_magic", b"GGUG" + tiny_gguf[4:64], ["magic"])
gguf_case("tensor_count_huge", b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 0), ["tensor count"])
gguf_case("kv_count_huge", b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 60), ["metadata count"])
gguf_case("key_length_huge", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62) + b"x" * 64, ["string length"])
gguf_case("array_count_huge", gguf([gstr("a") + struct.pack("<IIQ", 9, 4, 1 << 61)]), ["array"])
gguf_case("context_length_huge", gguf(llama_kvs(context_length=1 << 24)), ["llama.context_length"])
gguf_case("head_count_kv_not_divisor", gguf(llama_kvs(**{"attention.head_count_kv": 3})), ["llama.attention.head_count_kv"])
gguf_case("embedding_length_huge", gguf(llama_kvs(embedding_length=1 << 30)), ["llama.embedding_length"])
# A token type outside llama.cpp's 0 ... 6 (fuzz, session 7: garbage types left SentencePiece
# unable to segment text, and encoding trapped).
def gguf_tokenizer_kvs(types):
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + ["\u2581", "a", "b"]
    arr = lambda typ, items: struct.pack("<IQ", typ, len(items)) + b"".join(items)
    return [gkv("tokenizer.ggml.model", 8, "llama"),
            gstr("tokenizer.ggml.tokens") + struct.pack("<I", 9) + arr(8, [gstr(t) for t in toks]),
            gstr("tokenizer.ggml.token_type") + struct.pack("<I", 9) + arr(5, [struct.pack("<i", t) for t in types(len(toks))])]


write("gguf/token_type_out_of_range.gguf", gguf(llama_kvs() + gguf_tokenizer_kvs(lambda n: [2, 3, 3] + [6] * 256 + [1, 1115, 1])))
# Valid types, but a single character as a control token: libsentencepiece loads it and then
# cannot segment text ("all normalized characters are not consumed"); refused at load.
write("gguf/single_char_control.gguf", gguf(gguf_tokenizer_kvs(lambda n: [2, 3, 3] + [6] * 256 + [1, 3, 1])))
case("gguf_single_char_control", ["tokenize", "--base-model", "$BAD/gguf/single_char_control.gguf", "--text", "hi"],
     ["single_char_control.gguf", "cannot encode"])
case("gguf_token_type_out_of_range", ["tokenize", "--base-model", "$BAD/gguf/token_type_out_of_range.gguf", "--text", "hi"],
     ["token_type_out_of_range.gguf", "tokenizer.ggml.token_type[260]", "1115"])
gguf_case("tensor_offset_past_end",
          gguf(llama_kvs(), tensors=gstr("token_embd.weight") + struct.pack("<IQQIQ", 2, 64, 512, 0, 1 << 40) + b"\0" * 64, n_tensors=1),
          ["token_embd.weight"])


# NaN scale: the q8 fixture with the f16 scale of one Q8_0 block set to NaN.
def nan_scale():
    b = bytearray(open(os.path.join(FIX, "gguf", "tiny-gqa-q8.gguf"), "rb").read())
    pos = 4
    _, nt, nkv = struct.unpack_from("<IQQ", b, pos); pos += 20

    def rstr(p):
        n = struct.unpack_from("<Q", b, p)[0]
        return b[p + 8:p + 8 + n].decode(), p + 8 + n
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def rval(t, p):
        if t == 8:
            return rstr(p)
        if t == 9:
            et, n = struct.unpack_from("<IQ", b, p); p += 12
            for _ in range(n):
                _, p = rval(et, p)
            return None, p
        if t == 4 and False:
            pass
        v = b[p:p + sizes[t]]
        return (struct.unpack("<I", v)[0] if t == 4 else None), p + sizes[t]
    align = 32
    for _ in range(nkv):
        k, pos = rstr(pos)
        t = struct.unpack_from("<I", b, pos)[0]; pos += 4
        val, pos = rval(t, pos)
        if k == "general.alignment":
            align = val
    infos = []
    for _ in range(nt):
        name, pos = rstr(pos)
        nd = struct.unpack_from("<I", b, pos)[0]; pos += 4
        pos += 8 * nd
        typ, off = struct.unpack_from("<IQ", b, pos); pos += 12
        infos.append((name, typ, off))
    data = (pos + align - 1) // align * align
    name, typ, off = next(i for i in infos if i[1] == 8 and i[0].startswith("blk.0.ffn_up"))   # Q8_0
    struct.pack_into("<H", b, data + off, 0x7E00)   # f16 NaN as the first block's scale
    write("gguf/nan_scale.gguf", bytes(b))
    case("gguf_nan_scale", generate("$BAD/gguf/nan_scale.gguf"), ["nan_scale.gguf", name])


nan_scale()


# ---- finetune YAML ----
def yaml_case(name, text, expect, extra=()):
    write(f"yaml/{name}.yml", text)
    case(f"yaml_{name}", ["finetune", "--config", f"$BAD/yaml/{name}.yml", "--output-dir", "$OUT", *extra], expect)


yaml_case("deep_flow_nesting", "lora_target_modules: " + "[" * 5000 + "]" * 5000 + "\n", ["deep_flow_nesting.yml", "nested"])
yaml_case("deep_block_nesting", "".join(" " * i + f"k{i}:\n" for i in range(200)), ["deep_block_nesting.yml", "nested"])
# Yams reads "1:2:..." given to an integer key as sexagesimal, with arithmetic that traps on overflow.
yaml_case("sexagesimal_overflow", "cutoff_len: 1:2:3:4:5:6:7:8:9:10:11:12\n", ["sexagesimal_overflow.yml", "cutoff_len"])
yaml_case("deep_dash_nesting", "lora_target_modules:\n" + "- " * 500 + "q_proj\n", ["deep_dash_nesting.yml", "nested"])
laughs = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
for i in range(1, 9):
    p, q = chr(ord("a") + i - 1), chr(ord("a") + i)
    laughs += f"{q}: &{q} [" + ", ".join([f"*{p}"] * 9) + "]\n"
yaml_case("billion_laughs", laughs, ["billion_laughs.yml", "alias"])
# A quote inside a plain key is text, not the start of a quoted scalar that hides what follows
# (fuzz crash, session 7: the dashes below overflowed the stack inside Yams).
yaml_case("deep_dash_nesting_after_quote", "lora_ ' x:\n" + "- " * 500 + "q_proj\n", ["deep_dash_nesting_after_quote.yml", "nested"])
yaml_case("complex_key", "? [a]\n: 1\n", ["complex_key.yml", "complex"])
yaml_case("complex_flow_key", "[a, b]: 1\n", ["complex_flow_key.yml", "complex"])
yaml_case("learning_rate_inf", "learning_rate: .inf\n", ["learning_rate"])
yaml_case("learning_rate_nan", "learning_rate: .nan\n", ["learning_rate"])
yaml_case("lora_alpha_neg_inf", "lora_alpha: -.inf\n", ["lora_alpha"])
yaml_case("lora_r_huge", "lora_r: 100000000\n", ["lora_r"])
yaml_case("micro_batch_huge", "micro_batch_size: 1000000\nbatch_size: 1000000\n", ["micro_batch_size"])
yaml_case("batch_size_huge", "batch_size: 4000000000\n", ["batch_size"])
yaml_case("cutoff_len_huge", "cutoff_len: 1000000000\n", ["cutoff_len"])
yaml_case("num_epochs_huge", "num_epochs: 1.0e+300\n", ["num_epochs"])
yaml_case("max_steps_huge", "max_steps: 9000000000000\n", ["max_steps"])
yaml_case("save_total_limit_huge", "save_total_limit: 1000000000\n", ["save_total_limit"])
yaml_case("threads_huge", "threads: 100000\n", ["threads"])
yaml_case("dropout_one", "lora_dropout: 1.0\n", ["lora_dropout"])
yaml_case("weight_decay_negative", "weight_decay: -0.1\n", ["weight_decay"])
yaml_case("max_grad_norm_inf", "max_grad_norm: .inf\n", ["max_grad_norm"])
yaml_case("warmup_negative", "warmup_steps: -5\n", ["warmup_steps"])
yaml_case("lora_r_wrong_type", "lora_r: [8]\n", ["lora_r"])
write("yaml/not_utf8.yml", b"lora_r: \xff\xfe\n")
case("yaml_not_utf8", ["finetune", "--config", "$BAD/yaml/not_utf8.yml", "--output-dir", "$OUT"], ["not_utf8.yml", "UTF-8"])
yaml_case("cutoff_past_context", "cutoff_len: 1024\n", ["cutoff_len"], extra=finetune()[1:-2] + ["--cutoff-len", "1024"])


# ---- trainer_state.json of a checkpoint given to resume_from_checkpoint ----
ADAPTER = os.path.join(FIX, "merge", "tiny-mha-a.adapter")


def state_case(name, change, key):
    st = {"step": 1, "epoch": 0, "micro_batch": 1, "total_steps": 2, "rng": ["1", "2", "3", "4"],
          "best_eval_loss": None, "best_step": None}
    st.update(change)
    for f in ["adapter_config.json", "adapter_model.safetensors"]:
        link(f"state/{name}/{f}", os.path.join(ADAPTER, f))
    write(f"state/{name}/trainer_state.json", json.dumps(st))
    case(f"state_{name}", finetune("--resume-from-checkpoint", f"$BAD/state/{name}"), ["trainer_state.json", key])


state_case("negative_step", {"step": -3}, "step")
state_case("negative_micro_batch", {"micro_batch": -1}, "micro_batch")
state_case("micro_batch_past_epoch", {"micro_batch": 99999}, "micro_batch")
state_case("step_past_total", {"step": 50}, "step")
state_case("total_mismatch", {"total_steps": 7}, "total_steps")
state_case("epoch_inconsistent", {"epoch": 1000000}, "epoch")
state_case("rng_zero", {"rng": ["0", "0", "0", "0"]}, "rng")
state_case("best_step_past_step", {"best_step": 9, "best_eval_loss": 1.0}, "best_step")


# ---- adapter folders ----
def adapter_case(name, config_change, expect, weights=None, command="generate"):
    with open(os.path.join(ADAPTER, "adapter_config.json")) as f:
        c = json.load(f)
    c.update(config_change)
    write(f"adapter/{name}/adapter_config.json", json.dumps(c, indent=1))
    if weights is None:
        link(f"adapter/{name}/adapter_model.safetensors", os.path.join(ADAPTER, "adapter_model.safetensors"))
    else:
        write(f"adapter/{name}/adapter_model.safetensors", weights)
    if command == "generate":
        args = generate("$FIX/tiny-mha") + ["--lora-weights", f"$BAD/adapter/{name}"]
    else:
        args = finetune("--resume-from-checkpoint", f"$BAD/adapter/{name}")
    case(f"adapter_{name}", args, expect)


adapter_case("traversal_target", {"target_modules": ["../../../etc/passwd"]}, ["adapter_config.json", "target_modules"])
adapter_case("r_huge", {"r": 1 << 40}, ["adapter_config.json", "'r'"])
adapter_case("alpha_negative", {"lora_alpha": -16}, ["adapter_config.json", "lora_alpha"])
adapter_case("dropout_two", {"lora_dropout": 2.0}, ["adapter_config.json", "lora_dropout"])
adapter_case("layers_out_of_range", {"layers_to_transform": [0, 99]}, ["adapter_config.json", "layers_to_transform"])


def nan_adapter():
    raw = open(os.path.join(ADAPTER, "adapter_model.safetensors"), "rb").read()
    n = struct.unpack_from("<Q", raw)[0]
    h = json.loads(raw[8:8 + n])
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    b = bytearray(raw)
    struct.pack_into("<f", b, 8 + n + h[name]["data_offsets"][0] + 12, float("inf"))
    return bytes(b), name[len("base_model.model."):]


w, tname = nan_adapter()
adapter_case("inf_weight", {}, ["adapter_model.safetensors", tname], weights=w, command="finetune")


# ---- Alpaca data ----
def data_case(name, data, expect):
    write(f"data/{name}.json", data)
    case(f"data_{name}", finetune()[:3] + ["--data-path", f"$BAD/data/{name}.json"] + finetune()[5:], [f"{name}.json"] + expect)


data_case("not_utf8", b'[{"instruction": "a\xff\xfe", "input": "", "output": "b"}]', [])
data_case("wrong_type", json.dumps([{"instruction": 5, "input": "", "output": "b"}]), ["instruction"])
data_case("truncated", open(os.path.join(FIX, "records.json"), "rb").read()[:150], [])

data_case("jsonl_record_wrong_type", "\n".join(json.dumps(r) for r in [
    {"instruction": "a", "input": "", "output": "b"}, {"instruction": "a", "input": ["x"], "output": "b"}]) + "\n", ["record 1", "input"])
write("data/bad_line.jsonl", "\n".join([json.dumps({"instruction": "a", "input": "", "output": "b"})] * 2)
      + '\n{"instruction": "a", "output":\n' + json.dumps({"instruction": "c", "input": "", "output": "d"}) + "\n")
case("data_jsonl_bad_line", finetune()[:3] + ["--data-path", "$BAD/data/bad_line.jsonl"] + finetune()[5:], ["bad_line.jsonl", "line 3"])
case("data_is_a_directory", ["eval", "--base-model", "$FIX/tiny-mha", "--data-path", "$BAD/data", "--load-8bit", "false"],
     ["data", "is a directory"])
case("data_through_a_file", ["eval", "--base-model", "$FIX/tiny-mha", "--data-path", "$BAD/data/not_utf8.json/x.json",
                              "--load-8bit", "false"], ["not_utf8.json/x.json", "not a directory"])


# ---- chat-format data (issue 11): the first record decides the format; errors name the record and field ----
def chat_case(name, records, expect, extra=()):
    write(f"chat/{name}.json", json.dumps(records) if not isinstance(records, bytes) else records)
    case(f"chat_{name}", finetune()[:3] + ["--data-path", f"$BAD/chat/{name}.json"] + finetune()[5:]
         + ["--chat-template", "chatml", *extra], [f"{name}.json"] + expect)


CHAT_OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
chat_case("messages_not_a_list", [CHAT_OK, {"messages": "hi"}], ["record 1", "'messages'", "list"])
chat_case("messages_empty", [CHAT_OK, {"messages": []}], ["record 1", "'messages'", "empty"])
chat_case("role_missing", [CHAT_OK, CHAT_OK, {"messages": [{"content": "x"}, CHAT_OK["messages"][1]]}],
          ["record 2", "messages[0].role", "missing"])
chat_case("content_wrong_type", [{"messages": [{"role": "user", "content": ["x"]}, CHAT_OK["messages"][1]]}],
          ["record 0", "messages[0].content", "array"])
chat_case("message_not_an_object", [{"messages": ["hi", CHAT_OK["messages"][1]]}], ["record 0", "messages[0]", "object"])
chat_case("no_assistant_turn", [CHAT_OK, {"messages": [{"role": "user", "content": "hi"}]}], ["record 1", "assistant"])
chat_case("alpaca_record_after_chat", [CHAT_OK, {"instruction": "a", "input": "", "output": "b"}],
          ["record 1", "'messages'", "missing"])
chat_case("roles_not_alternating", [CHAT_OK, {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                                          {"role": "assistant", "content": "c"}]}],
          ["record 1", "messages[1]", "alternate"], ["--chat-template", "llama2"])
write("chat/ok.json", json.dumps([CHAT_OK, CHAT_OK]))
case("chat_template_unknown_name", finetune()[:3] + ["--data-path", "$BAD/chat/ok.json"] + finetune()[5:] + ["--chat-template", "vicuna"],
     ["vicuna", "chatml, llama2, llama3, mistral, alpaca"])
case("chat_model_has_no_template", finetune()[:3] + ["--data-path", "$BAD/chat/ok.json"] + finetune()[5:],
     ["no chat template", "--chat-template"])
write("chat/unknown_template.jinja", "{% for m in messages %}<start_of_turn>{{ m['content'] }}<end_of_turn>{% endfor %}")
case("chat_template_file_unrecognized", finetune()[:3] + ["--data-path", "$BAD/chat/ok.json"] + finetune()[5:]
     + ["--chat-template", "$BAD/chat/unknown_template.jinja"], ["unknown_template.jinja", "unrecognized chat template"])


# ---- prompt templates given as files: finetune --prompt-template-name, generate/eval --prompt-template ----
def template_case(name, data, expect, command="generate", file=None):
    rel = f"template/{file or name + '.json'}"
    if data is not None:
        write(rel, data)
    t = f"$BAD/{rel}"
    if command == "generate":
        args = ["generate", "--base-model", "$FIX/tiny-mha", "--instruction", "hi", "--max-new-tokens", "1",
                "--load-8bit", "false", "--prompt-template", t]
    elif command == "eval":
        args = ["eval", "--base-model", "$FIX/tiny-mha", "--data-path", "$FIX/records.json", "--load-8bit", "false",
                "--prompt-template", t]
    else:
        args = finetune("--prompt-template-name", t)
    case(f"template_{name}", args, [file or name + ".json"] + expect)


GOOD_TEMPLATE = {"description": "x", "prompt_input": "{instruction}\n{input}\n### Response:\n",
                 "prompt_no_input": "{instruction}\n### Response:\n", "response_split": "### Response:"}


def template(**change):
    t = dict(GOOD_TEMPLATE)
    for k, v in change.items():
        if v is None:
            t.pop(k)
        else:
            t[k] = v
    return json.dumps(t, indent=1)


template_case("missing_key", template(prompt_no_input=None), ["prompt_no_input"])
template_case("missing_response_split", template(response_split=None), ["response_split"], command="finetune")
template_case("wrong_type", template(prompt_no_input=5), ["prompt_no_input", "string"], command="finetune")
template_case("wrong_type_eval", template(response_split=["###"]), ["response_split", "string"], command="eval")
template_case("not_object", json.dumps([GOOD_TEMPLATE]), ["JSON object"])
template_case("not_utf8", b'{"prompt_input": "{instruction} \xff\xfe {input}", "prompt_no_input": "{instruction}", "response_split": "x"}',
              ["UTF-8"], command="finetune")
template_case("not_utf8_eval", b'{"prompt_input": "\xc3", "prompt_no_input": "{instruction}", "response_split": "x"}',
              ["UTF-8"], command="eval")
template_case("truncated", template()[:40], ["JSON", "end of text"])
template_case("unknown_placeholder", template(prompt_input="{instruction} {output}"), ["prompt_input", "{output}"], command="finetune")
template_case("missing_file", None, ["no such file or directory"], file="does_not_exist.json")


# ---- adapter folders that are not there, and ranks past the tensors or the limit ----
case("adapter_folder_missing", generate("$FIX/tiny-mha") + ["--lora-weights", "$BAD/adapter/does_not_exist"],
     ["does_not_exist", "no such file or directory"])
case("adapter_folder_is_a_file", generate("$FIX/tiny-mha") + ["--lora-weights", "$BAD/adapter/r_huge/adapter_config.json"],
     ["adapter_config.json", "not a directory"])
adapter_case("r_past_tensors", {"r": 16}, ["adapter_config.json", "'r'", "rank"])
adapter_case("r_past_limit", {"r": 4096}, ["adapter_config.json", "'r'", "4096"], command="finetune")
case("merge_adapter_r_past_limit", ["merge", "--base-model", "$FIX/tiny-mha", "--lora-weights", "$BAD/adapter/r_past_limit",
                                    "--output", "$OUT"], ["adapter_config.json", "'r'"])


# ---- merge into an output whose parent is a file (refused before the model is read) ----
write("merge/a_file", "not a folder\n")
MERGE = ["merge", "--base-model", "$FIX/tiny-mha", "--lora-weights", "$FIX/merge/tiny-mha-a.adapter"]
case("merge_parent_is_file", MERGE + ["--output", "$BAD/merge/a_file/merged"], ["a_file/merged", "not a directory"])
case("merge_gguf_parent_is_file", MERGE + ["--output", "$BAD/merge/a_file/sub/merged.gguf", "--format", "gguf"],
     ["merged.gguf", "not a directory"])


# ---- file-system errors in the other commands: one line with the path and the reason ----
case("tokenize_model_missing", ["tokenize", "--base-model", "$BAD/does_not_exist", "--text", "hi"],
     ["does_not_exist", "no such file or directory"])
case("tokenize_model_is_a_file", ["tokenize", "--base-model", "$BAD/merge/a_file", "--text", "hi"], ["a_file", "not a directory"])
case("yaml_is_a_directory", ["finetune", "--config", "$BAD/yaml", "--output-dir", "$OUT"], ["yaml", "is a directory"])


# ---- more threads than CPUs (1024 is past any CI machine's count; spinning workers would thrash) ----
case("threads_past_cpus", generate("$FIX/tiny-mha") + ["--threads", "1024"], ["threads = 1024", "CPUs"])
case("finetune_threads_past_cpus", finetune("--threads", "1024"), ["threads = 1024", "CPUs"])

with open(os.path.join(BAD, "cases.json"), "w") as f:
    json.dump(CASES, f, indent=1)
    f.write("\n")
print(f"{len(CASES)} cases in {os.path.relpath(BAD, ROOT)}")
