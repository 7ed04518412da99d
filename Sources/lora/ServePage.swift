// The page `GET /` serves: plain HTML and JavaScript, no build step, shipped in the binary.
// Pick a model (base, adapter or mix), chat with streamed answers, optionally a second model
// answering the same prompt side by side, and define a weighted mix.
let servePageHTML = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>lora serve</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 70em; }
.row { display: flex; gap: 1em; }
.pane { flex: 1; border: 1px solid #ccc; border-radius: 6px; padding: .6em; min-height: 12em; }
.msg { margin: .3em 0; white-space: pre-wrap; }
.user { color: #555; }
.assistant { color: #000; }
label { margin-right: .5em; }
textarea { width: 100%; height: 4em; }
#status { color: #a00; margin: .4em 0; min-height: 1.2em; }
</style>
</head>
<body>
<h1>lora serve</h1>
<div>
  <label>Model <select id="model"></select></label>
  <label>Side by side with <select id="model2"><option value="">(none)</option></select></label>
  <label>Max tokens <input id="maxTokens" type="number" value="64" min="1" style="width:5em"></label>
  <label>Temperature <input id="temperature" type="number" value="0" min="0" max="2" step="0.1" style="width:4em"></label>
  <label>API key <input id="apiKey" type="password" style="width:10em"></label>
</div>
<div style="margin:.5em 0">
  <label>New mix <input id="mixName" placeholder="name" style="width:7em"></label>
  <input id="mixSpec" placeholder="a:0.7, b:0.3" style="width:14em">
  <button id="mixButton">Add mix</button>
</div>
<div class="row">
  <div class="pane" id="pane1"><b id="title1"></b><div id="out1"></div></div>
  <div class="pane" id="pane2" hidden><b id="title2"></b><div id="out2"></div></div>
</div>
<div id="status"></div>
<textarea id="prompt" placeholder="Say something"></textarea>
<button id="send">Send</button> <button id="clear">Clear</button>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const histories = { 1: [], 2: [] };

function headers() {
  const h = { "Content-Type": "application/json" };
  const k = $("apiKey").value;
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : r.status);
    for (const sel of [$("model"), $("model2")]) {
      const keep = sel.value;
      [...sel.options].filter(o => o.value !== "").forEach(o => o.remove());
      for (const m of j.data) {
        const o = document.createElement("option");
        o.value = m.id; o.textContent = m.id + (m.adapters ? " (mix)" : m.parent ? " (adapter)" : " (base)");
        sel.appendChild(o);
      }
      if (keep) sel.value = keep;
    }
  } catch (e) { $("status").textContent = "models: " + e.message; }
}

function addMessage(pane, role, text) {
  const d = document.createElement("div");
  d.className = "msg " + role;
  d.textContent = (role === "user" ? "> " : "") + text;
  $("out" + pane).appendChild(d);
  return d;
}

// Streams one chat answer into `pane`, parsing server-sent events from the fetch body.
async function ask(pane, model) {
  const history = histories[pane];
  const div = addMessage(pane, "assistant", "");
  div.dataset.done = "false";
  const body = { model, messages: history, stream: true,
                 max_tokens: parseInt($("maxTokens").value, 10) || 64,
                 temperature: parseFloat($("temperature").value) || 0 };
  const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!r.ok) {
    const j = await r.json().catch(() => ({}));
    div.dataset.done = "error";
    throw new Error(j.error ? j.error.message : "HTTP " + r.status);
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i); buf = buf.slice(i + 2);
      if (!ev.startsWith("data: ")) continue;
      const data = ev.slice(6);
      if (data === "[DONE]") continue;
      const j = JSON.parse(data);
      if (j.error) throw new Error(j.error.message);
      const c = j.choices && j.choices[0];
      if (c && c.delta && c.delta.content) { text += c.delta.content; div.textContent = text; }
    }
  }
  history.push({ role: "assistant", content: text });
  div.dataset.done = "true";
}

async function sendPrompt() {
  const text = $("prompt").value.trim();
  if (!text) return;
  $("status").textContent = "";
  $("prompt").value = "";
  const m1 = $("model").value, m2 = $("model2").value;
  $("title1").textContent = m1;
  $("pane2").hidden = !m2;
  $("title2").textContent = m2;
  const jobs = [];
  histories[1].push({ role: "user", content: text }); addMessage(1, "user", text);
  jobs.push(ask(1, m1));
  if (m2) { histories[2].push({ role: "user", content: text }); addMessage(2, "user", text); jobs.push(ask(2, m2)); }
  try { await Promise.all(jobs); } catch (e) { $("status").textContent = e.message; }
}

async function addMix() {
  const adapters = {};
  for (const part of $("mixSpec").value.split(",")) {
    const [n, w] = part.split(":").map(s => s.trim());
    if (n) adapters[n] = parseFloat(w || "1");
  }
  const r = await fetch("/v1/adapters", { method: "POST", headers: headers(),
                                          body: JSON.stringify({ name: $("mixName").value.trim(), adapters }) });
  const j = await r.json().catch(() => ({}));
  $("status").textContent = r.ok ? "" : "mix: " + (j.error ? j.error.message : r.status);
  await loadModels();
}

$("send").addEventListener("click", sendPrompt);
$("clear").addEventListener("click", () => { histories[1] = []; histories[2] = []; $("out1").textContent = ""; $("out2").textContent = ""; });
$("mixButton").addEventListener("click", addMix);
$("apiKey").addEventListener("change", loadModels);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sendPrompt(); } });
loadModels();
</script>
</body>
</html>
"""#
