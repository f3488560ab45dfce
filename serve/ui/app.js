// toolace's built-in page: plain JavaScript, no build step, no resource from anywhere but this server.
// The HTTP surface it drives is documented in docs/page.md; every /ui/api/ request carries the per-start token.
"use strict";

const TOKEN = document.querySelector('meta[name="toolace-token"]').content;
const HEADERS = { "content-type": "application/json", "x-toolace-token": TOKEN };
const STORE = "toolace.conversations", CURRENT = "toolace.current", OPTIONS = "toolace.options";
const FOLD_CHARS = 400, FOLD_LINES = 8; // longer results start folded
const $ = (id) => document.getElementById(id);

let conversations = load();
let conv = conversations.find((c) => c.id === localStorage.getItem(CURRENT)) || newConversation();
let run = null; // {id, controller, bubble} while a run streams

function load() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE) || "[]");
    for (const c of list) for (const it of c.items) {
      if (it.kind === "call" && (it.state === "waiting" || it.state === "ask")) it.state = "not decided (the page was closed)";
      delete it.streaming;
    }
    return list;
  } catch (e) { return []; }
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(conversations));
  localStorage.setItem(CURRENT, conv.id);
}

function newConversation() {
  const c = { id: "c" + Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "", items: [],
              messages: [], allowed: [] };
  conversations.unshift(c);
  return c;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child); // text is always a text node: no HTML injection
  return node;
}

// --- rendering --------------------------------------------------------------------------------------------------------
function render() {
  const log = $("log");
  log.replaceChildren(...conv.items.map(renderItem));
  log.scrollTop = log.scrollHeight;
  renderConversations();
  $("send").disabled = !!run;
  $("stop").disabled = !run;
}

function renderItem(it) {
  if (it.kind === "call") return renderCall(it);
  const node = el("div", { class: "msg " + it.kind }, it.text);
  if (it.streaming && run) run.bubble = node;
  return node;
}

function renderCall(it) {
  const mark = it.valid
    ? el("span", { class: "valid", title: it.checked || "" }, "✓ valid")
    : el("span", { class: "invalid", title: (it.errors || []).join("; ") },
         it.truncated ? "✗ cut short by max_tokens: not run" : "✗ breaks the schema: not run");
  const rows = Object.entries(it.arguments || {}).map(([k, v]) =>
    el("tr", {}, el("th", {}, k), el("td", { class: "value" }, typeof v === "string" ? v : JSON.stringify(v))));
  const table = rows.length ? el("table", { class: "args" }, ...rows) : el("div", { class: "muted" }, "no arguments");
  const card = el("div", { class: "card", "data-call": it.id },
    el("div", { class: "head" }, el("span", { class: "name" }, it.name), mark,
       el("span", { class: "muted" }, it.source || "")),
    table, renderActions(it), el("div", { class: "state" }, it.state || ""));
  if (it.result) card.append(renderResult(it.result));
  return card;
}

function renderActions(it) {
  if (!run || (it.state !== "waiting" && it.state !== "ask")) return null;
  if (it.state === "ask") {
    const box = el("textarea", { rows: "2", "aria-label": "Result of " + it.name, placeholder: "Type the result" });
    return el("div", { class: "actions" }, box,
      el("button", { type: "button", class: "approve", onclick: () => decide(it, "result", false, box.value) }, "Send result"),
      el("button", { type: "button", class: "deny", onclick: () => decide(it, "deny", false) }, "Deny"));
  }
  return el("div", { class: "actions" },
    el("button", { type: "button", class: "approve", onclick: () => decide(it, "approve", false) }, "Approve"),
    el("button", { type: "button", class: "deny", onclick: () => decide(it, "deny", false) }, "Deny"),
    el("button", { type: "button", class: "allow", onclick: () => decide(it, "approve", true) },
       `Allow ${it.name} for this conversation`));
}

function renderResult(r) {
  const text = r.content || "";
  const label = (r.is_error ? "error" : "result") + ` (${text.length} chars, ${r.seconds || 0} s)`;
  const pre = el("pre", {}, text);
  const long = text.length > FOLD_CHARS || text.split("\n").length > FOLD_LINES;
  const body = long ? el("details", {}, el("summary", {}, label), pre) : el("div", {}, el("div", { class: "muted" }, label), pre);
  return el("div", { class: "result" + (r.is_error ? " error" : "") }, body);
}

function renderConversations() {
  $("conversations").replaceChildren(...conversations.map((c) => el("li", {
    class: c === conv ? "current" : "", tabindex: "0", title: c.title || "(new)",
    onclick: () => switchTo(c), onkeydown: (e) => { if (e.key === "Enter") switchTo(c); },
  }, c.title || "(new conversation)")));
}

function switchTo(c) {
  if (run) return; // one run at a time; Stop first
  conv = c; save(); render();
}

function note(text) { conv.items.push({ kind: "note", text }); render(); save(); }

// --- the server ---------------------------------------------------------------------------------------------------
async function info() {
  const r = await fetch("/ui/api/info", { headers: HEADERS });
  if (!r.ok) { $("model").textContent = "cannot reach the server"; return; }
  const data = await r.json();
  $("model").textContent = `${data.model} · ${data.quant} · ctx ${data.n_ctx}` + (data.auto_approve ? " · --yes: calls run without asking" : "");
  const groups = data.sources.map((s) => el("div", { class: "source" }, el("h3", {}, s.source),
    el("ul", {}, ...s.tools.map((t) => el("li", { title: t.description }, t.name + (t.runs ? "" : " (you answer)"))))));
  $("tools").replaceChildren(...(groups.length ? groups : [el("p", { class: "muted" }, "none: plain chat")]));
}

async function send() {
  const input = $("input"), text = input.value.trim();
  if (!text || run) return;
  let extra;
  try { extra = JSON.parse($("options").value.trim() || "{}"); } catch (e) { note("request options are not valid JSON: " + e.message); return; }
  localStorage.setItem(OPTIONS, $("options").value);
  if (!conv.title) conv.title = text.slice(0, 60);
  conv.items.push({ kind: "user", text });
  conv.messages.push({ role: "user", content: text });
  input.value = "";
  run = { id: null, controller: new AbortController(), bubble: null, done: false };
  render(); save();
  try {
    const r = await fetch("/ui/api/runs", { method: "POST", headers: HEADERS, signal: run.controller.signal,
      body: JSON.stringify({ ...extra, messages: conv.messages, allowed_tools: conv.allowed }) });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      conv.messages.pop();
      throw new Error((body.error && body.error.message) || `HTTP ${r.status}`);
    }
    await readEvents(r);
  } catch (e) {
    if (e.name !== "AbortError") conv.items.push({ kind: "note", text: "error: " + e.message });
  } finally {
    for (const it of conv.items) delete it.streaming;
    run = null; render(); save();
  }
}

async function readEvents(response) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) handle(kind, JSON.parse(data));
    }
  }
}

function findCall(id) { return conv.items.find((it) => it.kind === "call" && it.id === id); }

function handle(kind, data) {
  if (kind === "run") { run.id = data.id; return; }
  if (kind === "text") {
    let last = conv.items[conv.items.length - 1];
    if (!last || !last.streaming) { last = { kind: "assistant", text: "", streaming: true }; conv.items.push(last); render(); }
    last.text += data.text;
    if (run.bubble) run.bubble.textContent = last.text; else render();
    return;
  }
  if (kind === "turn") {
    const speed = data.tokens_per_s == null ? "–" : data.tokens_per_s.toFixed(1);
    $("speed").textContent = `TTFT ${(data.ttft_s * 1000).toFixed(0)} ms · ${speed} tok/s`;
    const last = conv.items[conv.items.length - 1];
    if (last && last.streaming) { delete last.streaming; if (data.calls && !last.text.trim()) conv.items.pop(); }
    run.bubble = null;
  } else if (kind === "call") {
    conv.items.push({ kind: "call", ...data, state: "", result: null });
  } else if (kind === "approval") {
    const it = findCall(data.id);
    if (it && data.auto) it.state = "approved automatically (" + data.auto + ")";
    else if (it && !data.ask && conv.allowed.includes(it.name)) { decide(it, "approve", false); return; }
    else if (it) it.state = data.ask ? "ask" : "waiting";
  } else if (kind === "result") {
    const it = findCall(data.id);
    if (it) { it.result = data; if (it.state === "" ) it.state = it.truncated || !it.valid ? "not run" : ""; }
  } else if (kind === "done") {
    conv.messages = data.messages;
    if (data.finish_reason !== "answer") conv.items.push({ kind: "note", text: "run ended: " + ({
      cancelled: "stopped", refused: "stopped at an approval", max_steps: "the model kept calling tools (max_steps)",
      length: "the answer hit max_tokens or began to repeat itself" }[data.finish_reason] || data.finish_reason) });
  } else if (kind === "error") {
    conv.items.push({ kind: "note", text: "error: " + data.error.message });
  }
  render(); save();
}

async function decide(it, decision, allow, content) {
  if (!run || !run.id) return;
  const r = await fetch(`/ui/api/runs/${encodeURIComponent(run.id)}/calls/${encodeURIComponent(it.id)}`, {
    method: "POST", headers: HEADERS, body: JSON.stringify({ decision, allow_tool: allow, content: content || "" }) });
  if (!r.ok) { const body = await r.json().catch(() => ({})); note("error: " + ((body.error || {}).message || r.status)); return; }
  if (allow && !conv.allowed.includes(it.name)) conv.allowed.push(it.name);
  it.state = decision === "deny" ? "denied" : decision === "result" ? "result given"
    : allow ? `approved; ${it.name} allowed for this conversation` : "approved";
  render(); save();
}

async function stop() {
  if (!run) return;
  if (run.id) await fetch(`/ui/api/runs/${encodeURIComponent(run.id)}/stop`, { method: "POST", headers: HEADERS, body: "{}" });
  else run.controller.abort(); // not started yet: hanging up cancels it
}

function exportConversation() {
  const blob = new Blob([JSON.stringify(conv, null, 2)], { type: "application/json" });
  const a = el("a", { href: URL.createObjectURL(blob), download: `toolace-${conv.id}.json` });
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// --- wiring -------------------------------------------------------------------------------------------------------
$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", stop);
$("new").addEventListener("click", () => { if (!run) { conv = newConversation(); save(); render(); $("input").focus(); } });
$("export").addEventListener("click", exportConversation);
$("clear").addEventListener("click", () => {
  if (run || !confirm("Delete every stored conversation?")) return;
  conversations = []; conv = newConversation(); save(); render();
});
$("options").value = localStorage.getItem(OPTIONS) || "";
render();
info();
$("input").focus();
