#!/usr/bin/env python3
"""Writes Tests/Fixtures/chat/reference.json: conversations rendered by transformers'
`apply_chat_template` (jinja2) with the real chat templates of the models each ChatTemplateKind
comes from. ChatTemplateTests compares lora's renderer with it string for string.

    ~/.cache/lora/venv-ref/bin/pip install transformers==5.24.0 tokenizers==0.23.3 jinja2
    ~/.cache/lora/venv-ref/bin/python scripts/make_chat_reference.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]

No torch is needed: a three-token tokenizer carries the template and the special tokens.
The template texts are the `chat_template` values of the models' tokenizer_config.json files
(SmolLM2's is checked against the GGUF's tokenizer.chat_template when --gguf is given).
"""
import argparse
import json
import os
import struct
import sys

from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "Tests", "Fixtures")
OUT = os.path.join(FIX, "chat", "reference.json")

ALT = "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"

# name -> (expected kind or None for "must be refused", bos, eos, template text)
TEMPLATES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct (also the GGUF's tokenizer.chat_template)
    "smollm2": ("chatml", "<|im_start|>", "<|im_end|>",
                "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    # teknium/OpenHermes-2.5-Mistral-7B: plain ChatML
    "chatml": ("chatml", "<s>", "<|im_end|>",
               "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    # cognitivecomputations/dolphin-2.5-mixtral-8x7b: ChatML with a guard on add_generation_prompt
    "dolphin": ("chatml", "<s>", "<|im_end|>",
                "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    # Qwen/Qwen2-0.5B-Instruct: ChatML with another default system prompt
    "qwen2": ("chatml", None, "<|im_end|>",
              "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    # meta-llama/Llama-2-7b-chat-hf (the JSON file holds '\\n', so the Jinja source has backslash-n)
    "llama2": ("llama2", "<s>", "</s>",
               r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
               + ALT +
               r"{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"),
    # meta-llama/Meta-Llama-3-8B-Instruct (current revision)
    "llama3": ("llama3", "<|begin_of_text|>", "<|eot_id|>",
               "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    # meta-llama/Meta-Llama-3-8B-Instruct (first revision: the assistant header always follows)
    "llama3_first": ("llama3", "<|begin_of_text|>", "<|end_of_text|>",
                     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"),
    # mistralai/Mistral-7B-Instruct-v0.1
    "mistral_v01": ("mistral", "<s>", "</s>",
                    "{{ bos_token }}{% for message in messages %}" + ALT + "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
    # mistralai/Mistral-7B-Instruct-v0.2, Mixtral-8x7B-Instruct-v0.1
    "mistral_v02": ("mistral", "<s>", "</s>",
                    "{{ bos_token }}{% for message in messages %}" + ALT + "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
    # lora's own (ChatTemplate.alpacaJinja; no upstream Alpaca chat template exists)
    "alpaca": ("alpaca", "<s>", "</s>", None),
    # Refused: formats lora does not render.
    "gemma": (None, "<bos>", "<eos>",
              "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}" + ALT + "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"),
    "llama31_excerpt": (None, "<|begin_of_text|>", "<|eot_id|>",
                        "{{- bos_token }}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}{{- \"<|eot_id|>\" }}"),
    "mistral_v03_tools_excerpt": (None, "<s>", "</s>",
                                  "{%- for message in loop_messages %}{%- if message[\"role\"] == \"user\" %}{%- if tools is not none and (message == user_messages[-1]) %}{{- \"[AVAILABLE_TOOLS] [\" }}{%- endif %}{{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}{%- endif %}{%- endfor %}"),
}

S = "You are a terse assistant."
CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What is 2+2?"}],
    "one_turn": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    "system_one_turn": [{"role": "system", "content": S}, {"role": "user", "content": "Name a colour."},
                        {"role": "assistant", "content": "Blue."}],
    "system_two_turns": [{"role": "system", "content": S}, {"role": "user", "content": "Hi!"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Count to 3."},
                         {"role": "assistant", "content": "1, 2, 3."}],
    "system_then_question": [{"role": "system", "content": S}, {"role": "user", "content": "Hi!"},
                             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And now?"}],
    "whitespace_unicode": [{"role": "user", "content": "  Padded question\twith tab \n"},
                           {"role": "assistant", "content": "\n Ünïcödé 答え 🙂 and {{ braces }} {% raw %} '\"quotes\"'  \n\n"},
                           {"role": "user", "content": "line one\nline two"}],
    "empty_contents": [{"role": "system", "content": ""}, {"role": "user", "content": ""},
                       {"role": "assistant", "content": ""}],
    "assistant_first": [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "Odd."}],
    "two_users": [{"role": "user", "content": "One."}, {"role": "user", "content": "Two."}],
    "tool_role": [{"role": "user", "content": "Weather?"}, {"role": "tool", "content": "sunny"}],
}


def tokenizer(bos, eos):
    vocab = {"<unk>": 0}
    for t in (bos, eos):
        if t and t not in vocab:
            vocab[t] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    kwargs = {"unk_token": "<unk>", "eos_token": eos}
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)


def gguf_chat_template(path):
    """tokenizer.chat_template from a GGUF header, read with struct (no gguf package needed)."""
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
        _version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))

        def string():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode()

        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def skip(t):
            if t == 8:
                string()
            elif t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                for _ in range(n):
                    skip(et)
            else:
                f.read(sizes[t])

        for _ in range(n_kv):
            key = string()
            (t,) = struct.unpack("<I", f.read(4))
            if key == "tokenizer.chat_template":
                assert t == 8
                return string()
            skip(t)
    return None


def alpaca_jinja():
    """ChatTemplate.alpacaJinja, read from the Swift source so the two cannot drift."""
    src = open(os.path.join(HERE, "..", "Sources", "LLaMA", "Prompt", "ChatTemplate+Detect.swift")).read()
    start = src.index('alpacaJinja = #"') + len('alpacaJinja = #"')
    return src[start:src.index('"#', start)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="SmolLM2-135M-Instruct GGUF to check the smollm2 template against")
    args = ap.parse_args()
    if args.gguf:
        assert gguf_chat_template(args.gguf) == TEMPLATES["smollm2"][3], "smollm2 template differs from the GGUF's"
        print("smollm2 template == GGUF tokenizer.chat_template")

    templates, cases = {}, []
    for name, (kind, bos, eos, text) in TEMPLATES.items():
        if text is None:
            text = alpaca_jinja()
        templates[name] = {"kind": kind, "bos_token": bos or "", "eos_token": eos, "source": text}
        if kind is None:
            continue
        tok = tokenizer(bos, eos)
        for conv_name, messages in CONVERSATIONS.items():
            for gen in (False, True):
                case = {"template": name, "conversation": conv_name, "add_generation_prompt": gen}
                try:
                    case["text"] = tok.apply_chat_template(messages, chat_template=text, tokenize=False,
                                                           add_generation_prompt=gen)
                except Exception as e:  # the template's raise_exception (jinja2 TemplateError)
                    case["error"] = str(e)
                cases.append(case)
    # Token ids of the training fixture's conversations, apply_chat_template(tokenize=True), with
    # the fixtures' own tokenizers: SentencePiece (tiny-mha) and byte-level BPE (bpe/).
    records = json.load(open(os.path.join(FIX, "chat", "conversations.json")))
    tokenized = []
    for folder, names in (("tiny-mha", ["llama2", "mistral_v02", "alpaca"]), ("bpe", ["smollm2", "chatml"])):
        tok = AutoTokenizer.from_pretrained(os.path.join(FIX, folder))
        for name in names:
            src = templates[name]["source"]
            # Mistral's template has no system role.
            keep = [i for i, r in enumerate(records) if not (name.startswith("mistral") and r["messages"][0]["role"] == "system")]
            ids = [tok.apply_chat_template(records[i]["messages"], chat_template=src, tokenize=True, return_dict=True)["input_ids"]
                   for i in keep]
            tokenized.append({"tokenizer": folder, "template": name, "records": keep,
                              "input_ids": [list(map(int, x)) for x in ids]})
    out = {"generator": "scripts/make_chat_reference.py (transformers apply_chat_template)",
           "templates": templates, "conversations": CONVERSATIONS, "cases": cases, "tokenized": tokenized}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, OUT)
    print(f"wrote {os.path.relpath(OUT)}: {len(templates)} templates, {len(cases)} cases, "
          f"{sum('error' in c for c in cases)} refused by the template")


if __name__ == "__main__":
    sys.exit(main())
