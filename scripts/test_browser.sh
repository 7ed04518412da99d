#!/usr/bin/env bash
# The `lora serve` page in a real browser: headless Chromium (Debian's chromium and
# chromium-driver) driven by Selenium (PyPI, in .venv-browser), both installed here when
# missing. Starts the built server on a free loopback port with the tiny fixture model and two
# adapters, loads the page, picks an adapter, sends a prompt and reads the streamed answer,
# side by side with a second adapter. Needs a release build (scripts/test.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
LORA=${LORA:-.build/release/lora}
[ -x "$LORA" ] || { echo "test_browser: build first ($LORA missing)" >&2; exit 1; }

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing chromium chromium-driver" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
VENV=.venv-browser
if ! "$VENV/bin/python" -c "import selenium" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "selenium>=4.20,<5"
fi

F=Tests/Fixtures
# The server's log, Chromium's profile and (unless SHOT names a file to keep) the screenshot
# live in one folder that goes when the script exits.
WORK=$(mktemp -d /tmp/lora-browser.XXXXXX)
LOG=$WORK/serve.log; SHOT=${SHOT:-$WORK/page.png}
"$LORA" serve --port 0 --base-model $F/tiny-mha --chat-template chatml \
  --adapter a=$F/merge/tiny-mha-a.adapter --adapter b=$F/merge/tiny-mha-b.adapter 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=""
for _ in $(seq 1 600); do
  PORT=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$LOG" | head -1)
  [ -n "$PORT" ] && break
  kill -0 $PID 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[ -n "$PORT" ] || { echo "test_browser: server did not start" >&2; cat "$LOG" >&2; exit 1; }

"$VENV/bin/python" - "$PORT" "$SHOT" "$WORK/chromium" <<'EOF'
import json, sys, time, urllib.request
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

port, shot, profile = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://127.0.0.1:{port}"
# What the API answers for the same chat, to compare with what the page shows.
def api(model):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Name a colour."}],
                       "max_tokens": 24, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["choices"][0]["message"]["content"]

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,800",
          f"--user-data-dir={profile}"]:
    opts.add_argument(a)
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    t0 = time.time()
    d.get(base + "/")
    wait = WebDriverWait(d, 60)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) >= 3)
    names = [o.get_attribute("value") for o in Select(d.find_element(By.ID, "model")).options]
    assert names == ["tiny-mha", "a", "b"], names
    Select(d.find_element(By.ID, "model")).select_by_value("a")
    Select(d.find_element(By.ID, "model2")).select_by_value("b")
    d.find_element(By.ID, "maxTokens").clear(); d.find_element(By.ID, "maxTokens").send_keys("24")
    d.find_element(By.ID, "prompt").send_keys("Name a colour.")
    d.find_element(By.ID, "send").click()
    done = lambda d: [e.get_attribute("data-done") for e in d.find_elements(By.CSS_SELECTOR, ".assistant")]
    wait.until(lambda d: done(d) and all(x in ("true", "error") for x in done(d)) and len(done(d)) == 2)
    status = d.find_element(By.ID, "status").text
    assert not status, "page error: " + status
    # textContent is the streamed text as the page assembled it (.text would normalise spaces).
    left = d.find_element(By.CSS_SELECTOR, "#out1 .assistant").get_attribute("textContent")
    right = d.find_element(By.CSS_SELECTOR, "#out2 .assistant").get_attribute("textContent")
    want_a, want_b = api("a"), api("b")
    assert left == want_a, (left, want_a)
    assert right == want_b, (right, want_b)
    assert left != right, "two adapters answered the same"
    d.save_screenshot(shot)
    print(f"browser: adapter a streamed {left!r}; b side by side {right!r} ({time.time() - t0:.1f} s); screenshot {shot}")
finally:
    d.quit()
EOF
echo "browser test passed" >&2
