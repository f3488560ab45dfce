"""`toolace bench soak`: a real `toolace serve` under a mix of good and hostile clients for a bounded time, on
loopback only (docs/security.md, "Soak").

C client threads loop until the time is up, each request drawn (seeded) from SCENARIOS: valid tool calls (stream and
not), structured outputs, malformed JSON, oversized bodies, slow bodies (sent within the limit, or stalled until the
server gives up), clients that hang up at a random point, and cross-origin / foreign-Host attempts. The report gives
requests by scenario and outcome, p50/p95 latency of the valid ones, the server's RSS over time (and a chart), its
slots and queue at the end, and the checks the hardening issue sets (`checks`)."""

from __future__ import annotations

import json
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from toolace.errors import InputError
from toolace.limits import MAX_BODY_BYTES

from .bench import save_json, save_png, subplots
from .bench_serve import free_port, server_process

MAX_SOAK_MINUTES = 120.0  # a soak is bounded: longer runs belong to a scheduled job, not a command
MAX_SOAK_CLIENTS = 256  # client threads; above the server's default queue (128) most would only see 429
RSS_SAMPLE_SECONDS = 1.0  # how often the server's resident memory is read (/proc/PID/status)
WARMUP_SHARE = 0.2  # the first fifth of the run is warm-up: caches, compiled tool sets and arenas fill there
TARGET_RSS_GROWTH_MB = 50.0  # growth after warm-up the issue allows
STALL_SECONDS = 35.0  # a stalled body is held this long at most (the server's body timeout is 30 s)
CLIENT_SECONDS = 120.0  # one request of the soak, queue wait included
SLOW_BODY_STEP_SECONDS = 0.2  # the "slow but honest" body arrives in a few pieces this far apart
SOAK_MAX_TOKENS = 48  # tokens per generation: enough for the calls, short enough for many requests per minute

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {
        "name": "create_event", "description": "Add an event to the calendar.",
        "parameters": {"type": "object", "required": ["title", "date"], "properties": {
            "title": {"type": "string"}, "date": {"type": "string", "format": "date"},
            "attendees": {"type": "array", "items": {"type": "string"}}}}}}]
QUESTIONS = ["What's the weather like in Paris in celsius?", "Schedule Budget review on 2026-12-01 with Ana.",
             "Is it raining in Lisbon?", "Put lunch with Sam on 2026-12-03 in my calendar."]
SCHEMA = {"type": "object", "required": ["city", "population"], "additionalProperties": False,
          "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}}


class Soak:
    """One run's client side: the server's URL, a seeded random source per client, the outcome table."""

    def __init__(self, url: str, seed: int) -> None:
        self.url, self.seed = url, seed
        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def record(self, scenario: str, outcome: str, latency: float | None = None) -> None:
        with self.lock:
            self.rows.append({"scenario": scenario, "outcome": outcome, "latency": latency})

    def chat_body(self, rng: random.Random, **extra: Any) -> dict[str, Any]:
        return {"model": "soak", "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}], "tools": TOOLS,
                "tool_choice": "required", "temperature": 0, "max_tokens": SOAK_MAX_TOKENS, **extra}


def _valid_calls(calls: list[dict[str, Any]]) -> bool:
    names = {t["function"]["name"] for t in TOOLS}
    try:
        return bool(calls) and all(c["function"]["name"] in names and isinstance(
            json.loads(c["function"]["arguments"]), dict) for c in calls)
    except (KeyError, TypeError, ValueError):
        return False


def call(s: Soak, rng: random.Random) -> str:
    r = httpx.post(f"{s.url}/v1/chat/completions", json=s.chat_body(rng), timeout=CLIENT_SECONDS)
    if r.status_code != 200:
        return str(r.status_code)
    return "ok" if _valid_calls(r.json()["choices"][0]["message"].get("tool_calls") or []) else "invalid"


def call_stream(s: Soak, rng: random.Random) -> str:
    args: dict[int, dict[str, str]] = defaultdict(lambda: {"name": "", "arguments": ""})
    done = False
    with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=s.chat_body(rng, stream=True),
                      timeout=CLIENT_SECONDS) as r:
        if r.status_code != 200:
            return str(r.status_code)
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return f"stream_error_{chunk['error'].get('code')}"
                for tc in chunk["choices"][0]["delta"].get("tool_calls") or []:
                    a = args[tc["index"]]
                    a["name"] += tc["function"].get("name") or ""
                    a["arguments"] += tc["function"].get("arguments") or ""
    calls = [{"function": a} for _, a in sorted(args.items())]
    return "ok" if done and _valid_calls(calls) else "invalid"


def structured(s: Soak, rng: random.Random) -> str:
    body = {"model": "soak", "messages": [{"role": "user", "content": f"Describe {rng.choice(['Lisbon', 'Oslo'])}."}],
            "temperature": 0, "max_tokens": SOAK_MAX_TOKENS,
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}}
    r = httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=CLIENT_SECONDS)
    if r.status_code != 200:
        return str(r.status_code)
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "length":
        return "ok"  # cut by the budget: the guard's business, counted as answered
    try:
        return "ok" if isinstance(json.loads(choice["message"]["content"]), dict) else "invalid"
    except ValueError:
        return "invalid"


def _raw(s: Soak, head: bytes, body: bytes = b"") -> socket.socket:
    port = int(s.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_SECONDS)
    sock.sendall(head + body)
    return sock


def _status(sock: socket.socket) -> str:
    try:
        line = sock.recv(64).split(b"\r\n", 1)[0].split()
        return line[1].decode() if len(line) > 1 else "closed"
    except OSError:
        return "closed"
    finally:
        sock.close()


def _head(length: int, content_type: str = "application/json", path: str = "/v1/chat/completions",
          extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()


def malformed(s: Soak, rng: random.Random) -> str:
    body = rng.choice([b'{"model": "m", "messages": [', b"[1, 2]", b"\xff\xfe", b'{"messages": "hi"}',
                       b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}'])
    r = httpx.post(f"{s.url}/v1/chat/completions", content=body, timeout=CLIENT_SECONDS,
                   headers={"content-type": "application/json"})
    return str(r.status_code)


def oversized(s: Soak, rng: random.Random) -> str:
    return _status(_raw(s, _head(MAX_BODY_BYTES + rng.randint(1, 10 ** 9)), b'{"messages": '))


def slow_body(s: Soak, rng: random.Random) -> str:
    """A body sent in pieces, slowly but within the limit: answered like any other."""
    body = json.dumps(s.chat_body(rng)).encode()
    sock = _raw(s, _head(len(body)))
    cut = [0, len(body) // 3, 2 * len(body) // 3, len(body)]
    for a, b in zip(cut, cut[1:], strict=False):
        time.sleep(SLOW_BODY_STEP_SECONDS)
        sock.sendall(body[a:b])
    status = _status(sock)
    return "ok" if status == "200" else status


def stalled_body(s: Soak, rng: random.Random) -> str:
    """Content-Length 1000, one byte, silence: the server must give up (408) and free the place."""
    sock = _raw(s, _head(1000), b"{")
    sock.settimeout(STALL_SECONDS)
    return _status(sock)


def disconnect(s: Soak, rng: random.Random) -> str:
    """Hang up at a random point: mid-body, right after the body, or mid-stream."""
    point = rng.choice(["mid_body", "after_body", "mid_stream"])
    body = json.dumps(s.chat_body(rng, stream=point == "mid_stream")).encode()
    if point == "mid_body":
        _raw(s, _head(len(body)), body[: len(body) // 2]).close()
    elif point == "after_body":
        sock = _raw(s, _head(len(body)), body)
        time.sleep(rng.uniform(0.0, 1.0))
        sock.close()
    else:
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", content=body, timeout=CLIENT_SECONDS,
                          headers={"content-type": "application/json"}) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i >= rng.randint(1, 6):
                    break
    return f"hung_up_{point}"


def cross_origin(s: Soak, rng: random.Random) -> str:
    """A web page of another site (no-preflight text/plain, or JSON) or a rebinding Host: must be refused."""
    body = json.dumps(s.chat_body(rng))
    kind = rng.choice(["text_plain", "json", "host"])
    headers = {"content-type": "text/plain" if kind == "text_plain" else "application/json"}
    headers.update({"host": "evil.test"} if kind == "host" else {"origin": "http://evil.test"})
    return str(httpx.post(f"{s.url}/v1/chat/completions", content=body, headers=headers,
                          timeout=CLIENT_SECONDS).status_code)


# scenario → (function, weight, outcome class); "valid" must answer, "bad" must be a 4xx, "refused" must be 403
SCENARIOS: dict[str, tuple[Callable[[Soak, random.Random], str], int, str]] = {
    "call": (call, 6, "valid"), "call_stream": (call_stream, 6, "valid"), "structured": (structured, 3, "valid"),
    "slow_body": (slow_body, 2, "valid"), "malformed": (malformed, 3, "bad"), "oversized": (oversized, 2, "bad"),
    "stalled_body": (stalled_body, 1, "bad"), "disconnect": (disconnect, 3, "hangup"),
    "cross_origin": (cross_origin, 3, "refused")}


def _client(s: Soak, k: int, until: float) -> None:
    rng = random.Random(s.seed * 1000 + k)
    names = list(SCENARIOS)
    weights = [SCENARIOS[n][1] for n in names]
    first = True
    while time.monotonic() < until:
        # client k opens with scenario k: with as many clients as scenarios, every one runs at least once
        name = names[k % len(names)] if first else rng.choices(names, weights)[0]
        first = False
        t0 = time.perf_counter()
        try:
            outcome = SCENARIOS[name][0](s, rng)
        except (httpx.HTTPError, OSError) as e:
            outcome = f"client_error_{type(e).__name__}"
        s.record(name, outcome, time.perf_counter() - t0)


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _sample_rss(pid: int, start: float, until: float, out: list[tuple[float, float]], stop: threading.Event) -> None:
    while not stop.is_set() and time.monotonic() < until:
        rss = _rss_mb(pid)
        if rss is not None:
            out.append((round(time.monotonic() - start, 1), round(rss, 1)))
        stop.wait(RSS_SAMPLE_SECONDS)


def _final_state(url: str) -> dict[str, Any]:
    """The server after the clients stopped: still answering, queue empty, every slot free (waiting a little for
    workers of hung-up clients to notice)."""
    deadline = time.monotonic() + 30
    while True:
        health = httpx.get(f"{url}/health", timeout=30).json()
        slots = httpx.get(f"{url}/slots", timeout=30).json()
        busy = [x["id"] for x in slots.get("slots", []) if x["busy"]] if "slots" in slots else \
            ([0] if slots.get("busy") else [])
        if (not busy and not health["queue"]["used"]) or time.monotonic() > deadline:
            return {"health": health, "slots_busy": busy, "queue_used": health["queue"]["used"]}
        time.sleep(0.5)


def summarize(rows: list[dict[str, Any]], rss: list[tuple[float, float]], final: dict[str, Any],
              seconds: float) -> dict[str, Any]:
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        table[r["scenario"]][r["outcome"]] += 1
    valid_lat = sorted(r["latency"] for r in rows if SCENARIOS[r["scenario"]][2] == "valid" and r["outcome"] == "ok")
    kinds = {name: spec[2] for name, spec in SCENARIOS.items()}

    def count(kind: str, ok: Callable[[str], bool]) -> tuple[int, int]:
        sel = [r for r in rows if kinds[r["scenario"]] == kind]
        return sum(ok(r["outcome"]) for r in sel), len(sel)

    warm = [m for t, m in rss if t >= WARMUP_SHARE * seconds]
    growth = round(max(warm) - warm[0], 1) if warm else None
    refused_seen = sum(final["health"].get("refused", {}).values())
    checks = {
        "valid_5xx": count("valid", lambda o: o.startswith("5") or o.startswith("stream_error"))[0],
        "valid_ok": count("valid", lambda o: o == "ok"),
        "bad_4xx": count("bad", lambda o: o.startswith("4")),
        "cross_origin_403": count("refused", lambda o: o == "403"),
        "refused_by_server": refused_seen,
        "slots_free_at_end": not final["slots_busy"], "queue_empty_at_end": final["queue_used"] == 0,
        "rss_growth_after_warmup_mb": growth, "rss_target_mb": TARGET_RSS_GROWTH_MB}
    checks["pass"] = (checks["valid_5xx"] == 0 and checks["bad_4xx"][0] == checks["bad_4xx"][1]
                      and checks["cross_origin_403"][0] == checks["cross_origin_403"][1]
                      and checks["slots_free_at_end"] and checks["queue_empty_at_end"]
                      and growth is not None and growth <= TARGET_RSS_GROWTH_MB)
    return {"requests": len(rows), "by_scenario": {k: dict(v) for k, v in sorted(table.items())},
            "valid_latency_p50_s": round(statistics.median(valid_lat), 3) if valid_lat else None,
            "valid_latency_p95_s": round(valid_lat[round(0.95 * (len(valid_lat) - 1))], 3) if valid_lat else None,
            "rss_mb": rss, "final": final, "checks": checks}


def bench_soak(model: str = "demo", minutes: float = 5.0, clients: int = 16, parallel: int = 4, seed: int = 0,
               json_out: str | None = None, plot: str | None = None, logs: str | None = None) -> dict[str, Any]:
    """Serve `model` with `toolace serve --parallel N` on a free loopback port, run `clients` client threads for
    `minutes`, and report (and write) what happened."""
    if not 0 < minutes <= MAX_SOAK_MINUTES:
        raise InputError(f"--minutes must be in (0, {MAX_SOAK_MINUTES:g}], got {minutes}")
    if not 1 <= clients <= MAX_SOAK_CLIENTS:
        raise InputError(f"--clients must be in [1, {MAX_SOAK_CLIENTS}], got {clients}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir = Path(logs or "/tmp") / "toolace-bench-soak"
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "toolace"), "serve", "--model", model, "--port", str(port),
           "--parallel", str(parallel), "--n-ctx", "2048"]
    soak = Soak(url, seed)
    rss: list[tuple[float, float]] = []
    with server_process(cmd, f"{url}/health", log_dir / "toolace-serve.log") as proc:
        start = time.monotonic()
        until = start + 60 * minutes
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, start, until, rss, stop), daemon=True)
        sampler.start()
        threads = [threading.Thread(target=_client, args=(soak, k, until)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        final = _final_state(url)
    report = {"model": model, "minutes": minutes, "clients": clients, "parallel": parallel, "seed": seed,
              **summarize(soak.rows, rss, final, 60 * minutes)}
    if json_out:
        save_json(report, json_out)
    if plot:
        plot_rss(report, plot)
    return report


def plot_rss(report: dict[str, Any], path: str) -> None:
    fig, ax = subplots(figsize=(7, 3.5))
    ax.plot([t for t, _ in report["rss_mb"]], [m for _, m in report["rss_mb"]])
    ax.axvline(WARMUP_SHARE * 60 * report["minutes"], linestyle="--", color="grey", label="end of warm-up")
    ax.set(xlabel="seconds", ylabel="server RSS (MB)",
           title=f"toolace serve soak: {report['clients']} clients, {report['requests']} requests")
    ax.legend()
    save_png(fig, path)


def summary(report: dict[str, Any]) -> str:
    c = report["checks"]
    lines = [f"soak: {report['minutes']} min, {report['clients']} clients, {report['requests']} requests "
             f"(model {report['model']}, --parallel {report['parallel']})"]
    for name, outcomes in report["by_scenario"].items():
        lines.append(f"  {name:<14}" + "  ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    lines += [f"valid requests: {c['valid_ok'][0]}/{c['valid_ok'][1]} ok, {c['valid_5xx']} 5xx; latency p50 "
              f"{report['valid_latency_p50_s']} s, p95 {report['valid_latency_p95_s']} s",
              f"malformed: {c['bad_4xx'][0]}/{c['bad_4xx'][1]} answered 4xx; cross-origin: "
              f"{c['cross_origin_403'][0]}/{c['cross_origin_403'][1]} refused "
              f"(server counted {c['refused_by_server']})",
              f"end: slots free {c['slots_free_at_end']}, queue empty {c['queue_empty_at_end']}; RSS growth after "
              f"warm-up {c['rss_growth_after_warmup_mb']} MB (target <= {c['rss_target_mb']:g})",
              "PASS" if c["pass"] else "FAIL"]
    return "\n".join(lines)
