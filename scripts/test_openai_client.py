#!/usr/bin/env python3
"""The `openai` Python client, unchanged, against `lora serve` (run by scripts/test.sh).

Starts the built server on a free loopback port with the tiny fixture model, two fixture
adapters and an API key, then through the client: models.list, completions.create and
chat.completions.create (streamed and not, with usage), an unknown model (openai.NotFoundError)
and a wrong key (openai.AuthenticationError). Greedy answers must equal `lora generate`'s for
the same prompt text and adapter.

Run with any python3: without the `openai` package it creates ~/.cache/lora/venv-openai,
installs `openai` from PyPI there (once) and runs itself again inside it; when PyPI cannot be
reached it prints SKIP and exits 0.

    scripts/test_openai_client.py [--lora .build/release/lora]
"""
import argparse, os, re, signal, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path.home() / ".cache" / "lora" / "venv-openai"


def bootstrap():
    try:
        import openai  # noqa: F401
        return
    except ImportError:
        pass
    py = VENV / "bin" / "python"
    if os.environ.get("LORA_OPENAI_VENV") == "1":
        sys.exit("test_openai_client: openai still missing inside " + str(VENV))
    if not py.exists() or subprocess.run([str(py), "-c", "import openai"], capture_output=True).returncode != 0:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--timeout", "30",
                            "openai>=1.40,<4"], capture_output=True, text=True)
        if p.returncode != 0:
            print("SKIP test_openai_client: cannot install openai from PyPI:\n" + p.stderr[-1500:], file=sys.stderr)
            sys.exit(0)
    os.execve(str(py), [str(py), __file__] + sys.argv[1:], {**os.environ, "LORA_OPENAI_VENV": "1"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lora", default=str(ROOT / ".build" / "release" / "lora"))
    args = ap.parse_args()
    bootstrap()
    import openai
    from openai import OpenAI

    lora = args.lora
    F = ROOT / "Tests" / "Fixtures"
    model = str(F / "tiny-mha")
    ad = {k: str(F / "merge" / f"tiny-mha-{k}.adapter") for k in "ab"}

    def generate(prompt, adapter, tokens):
        cmd = [lora, "generate", "--base-model", model, "--prompt", prompt, "--prompt-template", "none",
               "--num-beams", "1", "--max-new-tokens", str(tokens)]
        if adapter:
            cmd += ["--lora-weights", ad[adapter]]
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert p.stdout.endswith("\n")
        return p.stdout[:-1]

    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    server = subprocess.Popen([lora, "serve", "--port", "0", "--base-model", model, "--chat-template", "chatml",
                               "--api-key", "sk-lora-test", "--adapter", f"a={ad['a']}", "--adapter", f"b={ad['b']}"],
                              stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        port = None
        for _ in range(1200):
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", Path(log.name).read_text())
            if m:
                port = int(m.group(1))
                break
            assert server.poll() is None, Path(log.name).read_text()
            time.sleep(0.1)
        assert port, "server did not start: " + Path(log.name).read_text()
        base = f"http://127.0.0.1:{port}/v1"
        client = OpenAI(base_url=base, api_key="sk-lora-test", max_retries=0, timeout=120)

        ids = [m.id for m in client.models.list().data]
        assert ids == ["tiny-mha", "a", "b"], ids

        prompt = "The sky is a bright and calm blue that"
        want = generate(prompt, "a", 24)
        c = client.completions.create(model="a", prompt=prompt, max_tokens=24, temperature=0)
        assert c.choices[0].text == want, (c.choices[0].text, want)
        assert c.choices[0].finish_reason == "length", c.choices[0].finish_reason
        assert c.usage.completion_tokens == 24 and c.usage.total_tokens == c.usage.prompt_tokens + 24, c.usage

        text, usage = "", None
        for ch in client.completions.create(model="a", prompt=prompt, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}):
            if ch.choices:
                text += ch.choices[0].text
            if ch.usage:
                usage = ch.usage
        assert text == want, (text, want)
        assert usage and usage.completion_tokens == 24, usage

        base_want = generate(prompt, None, 24)
        c0 = client.completions.create(model="tiny-mha", prompt=prompt, max_tokens=24, temperature=0)
        assert c0.choices[0].text == base_want, (c0.choices[0].text, base_want)

        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
        rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
        chat_want = generate(rendered, "b", 16)
        r = client.chat.completions.create(model="b", messages=msgs, max_tokens=16, temperature=0)
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].message.content == chat_want, (r.choices[0].message.content, chat_want)
        assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage

        text, usage, roles = "", None, []
        for ch in client.chat.completions.create(model="b", messages=msgs, max_tokens=16, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}):
            if ch.choices:
                d = ch.choices[0].delta
                if d.role:
                    roles.append(d.role)
                text += d.content or ""
            if ch.usage:
                usage = ch.usage
        assert text == chat_want, (text, chat_want)
        assert roles == ["assistant"], roles
        assert usage and usage.completion_tokens == r.usage.completion_tokens, (usage, r.usage)

        try:
            client.completions.create(model="no-such-adapter", prompt="Hi", max_tokens=2)
            raise AssertionError("an unknown model was accepted")
        except openai.NotFoundError as e:
            assert e.status_code == 404 and "no-such-adapter" in str(e), e
        try:
            OpenAI(base_url=base, api_key="wrong", max_retries=0, timeout=60).models.list()
            raise AssertionError("a wrong API key was accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401, e
        print(f"openai {openai.__version__} client: models {ids}; completion of {c.usage.completion_tokens} tokens and chat of "
              f"{r.usage.completion_tokens} tokens equal lora generate (streamed and not, usage checked); "
              f"NotFoundError and AuthenticationError raised")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        os.unlink(log.name)
    assert server.returncode == 0, f"lora serve exited {server.returncode}"


if __name__ == "__main__":
    main()
