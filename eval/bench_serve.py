"""`toolace bench serve`: concurrent clients through real HTTP servers, the same BFCL requests to each
(docs/parallel.md).

Columns, each at 1, 2, 4 and 8 clients: toolace `--parallel N` (N = clients), toolace `--parallel 1`, llama-server
built from the same llama.cpp source with `-np N` and the same call grammar (`make llama-server`), and vLLM with the
toolace export when its URL is given. Per level: aggregate completion tok/s, requests/s, p50/p95 latency, p50 time to
first token, validity. Also this machine's batching ceiling: one llama_decode of N tokens against N of one."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from toolace.api import ToolACE
from toolace.errors import InputError, ToolaceError
from toolace.grammars.parser import Call, CallParseError, parse_calls
from toolace.grammars.toolset import ToolSet
from toolace.limits import DEFAULT_BATCHING
from toolace.serve.vllm.meta import GUARD_CLOCK_ENV, NOTES_ENV, read_guard_time

from .bench import save_json
from .bench_batching import LEVELS, batching_ceiling, step_shapes
from .bench_serve_report import (
    FAST_COLUMN,
    GUARD_LEVELS,
    VLLM_GUARDED_COLUMN,
    VLLM_UNGUARDED_COLUMN,
    guard_cost,
    plot_report,
    targets,
)
from .bfcl import Question, default_data_dir, load_questions

BENCH_CATEGORIES = ("simple_python", "multiple", "parallel")
REQUESTS_PER_CLIENT = 3  # each client sends this many requests per level: enough for a p95 at 8 clients (24)
VLLM_COLUMN = "vLLM (toolace export)"
# Three requests at 1 client (~40 tokens, ~3 s) moved tok/s by +-20% between two runs, and even whole runs of the
# same server drifted by 15% on this shared 2-core machine. So both servers run at once (an idle vLLM uses no CPU)
# and take turns burst by burst: `clients` concurrent requests to one, then the same to the other, in alternating
# order, GUARD_BURSTS times per level after WARMUP_REQUESTS unmeasured ones; a drift slows both alike.
GUARD_BURSTS = 24  # 12 (~15 s a server at 1 client) left the 1-client figure within the noise of the target
WARMUP_REQUESTS = 2
START_SECONDS = 300  # a server must answer /v1/models (or /health) within this
REQUEST_SECONDS = 600  # one request, queueing included


@dataclass(frozen=True)
class Job:
    """One benchmark request, in each server's form."""

    question: Question
    toolset: ToolSet
    prompt: list[int]  # toolace's rendered prompt, for llama-server's raw /completion


def _jobs(ta: ToolACE, data: str | None, count: int) -> list[Job]:
    folder = data or default_data_dir()
    if folder is None:
        raise InputError("bench serve needs BFCL data: pass --data DIR or set TOOLACE_BFCL_DIR")
    per_cat = -(-count // len(BENCH_CATEGORIES))
    questions: list[Question] = []
    for cat in BENCH_CATEGORIES:
        questions += list(load_questions(folder, (cat,)))[:per_cat]
    jobs = []
    for q in questions[:count]:
        toolset = ta.toolset(q.functions, "required")
        jobs.append(Job(q, toolset, ta.prompt_tokens(q.messages, toolset.tools)))
    return jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(command: list[str], ready_url: str, log: Path,
                   env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess in its own session, stopped (and its children) however the block ends."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if proc.poll() is not None:
                raise ToolaceError(f"{command[0]} exited with {proc.returncode} while starting (log: {log})")
            try:
                if httpx.get(ready_url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ToolaceError(f"{command[0]} did not start within {START_SECONDS} s (log: {log})")
            time.sleep(0.5)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()  # already gone


def _sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: ") and line[6:].strip() != "[DONE]":
            yield json.loads(line[6:])


def _chat_request(url: str, model: str, job: Job, max_tokens: int) -> tuple[float | None, int, list[Call] | None]:
    """One streamed chat completion with tools: (time to first token, completion tokens, calls or None)."""
    tools = [{"type": "function", "function": fn} for fn in job.question.functions]
    body = {"model": model, "messages": job.question.messages, "tools": tools, "tool_choice": "required",
            "temperature": 0, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start, ttft, tokens = time.perf_counter(), None, 0
    calls: dict[int, dict[str, str]] = {}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=REQUEST_SECONDS) as r:
        r.raise_for_status()
        for chunk in _sse(r):
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                for tc in (choice.get("delta") or {}).get("tool_calls") or []:
                    ttft = ttft or time.perf_counter() - start
                    c = calls.setdefault(tc.get("index", 0), {"name": "", "arguments": ""})
                    c["name"] += (tc.get("function") or {}).get("name") or ""
                    c["arguments"] += (tc.get("function") or {}).get("arguments") or ""
    try:
        parsed = [Call(c["name"], json.loads(c["arguments"] or "{}")) for _, c in sorted(calls.items())]
    except json.JSONDecodeError:
        return ttft, tokens, None
    return ttft, tokens, parsed or None


def _completion_request(url: str, job: Job, max_tokens: int) -> tuple[float | None, int, list[Call] | None]:
    """llama-server's own /completion: toolace's prompt tokens, decoded under the same call grammar."""
    body = {"prompt": job.prompt, "n_predict": max_tokens, "temperature": 0, "grammar": job.toolset.grammar.gbnf,
            "stream": True, "cache_prompt": True}
    start, ttft, tokens, text = time.perf_counter(), None, 0, ""
    with httpx.stream("POST", f"{url}/completion", json=body, timeout=REQUEST_SECONDS) as r:
        r.raise_for_status()
        for chunk in _sse(r):
            if chunk.get("content"):
                ttft = ttft or time.perf_counter() - start
                text += chunk["content"]
            if chunk.get("stop"):
                tokens = int(chunk.get("tokens_predicted") or 0)
    try:
        return ttft, tokens, parse_calls(text, job.toolset.tools)
    except CallParseError:
        return ttft, tokens, None


def _level(send: Callable[[Job], tuple[float | None, int, list[Call] | None]], jobs: list[Job],
           clients: int, per_client: int = REQUESTS_PER_CLIENT) -> dict[str, Any]:
    """`clients` threads, each sending `per_client` requests one after another."""
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    work = [jobs[i % len(jobs)] for i in range(clients * per_client)]

    def client(k: int) -> None:
        for job in work[k::clients]:
            t0 = time.perf_counter()
            ttft, tokens, calls = send(job)
            row = {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens,
                   "valid": calls is not None and not job.toolset.errors(calls)}
            with lock:
                rows.append(row)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(r["latency"] for r in rows)
    ttfts = [r["ttft"] for r in rows if r["ttft"] is not None]
    return {"clients": clients, "requests": len(rows), "wall_s": round(wall, 3),
            "completion_tokens": sum(r["tokens"] for r in rows),
            "tok_per_s": round(sum(r["tokens"] for r in rows) / wall, 2), "req_per_s": round(len(rows) / wall, 3),
            "latency_p50_s": round(statistics.median(lat), 3),
            "latency_p95_s": round(lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))], 3),
            "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
            "validity": sum(r["valid"] for r in rows) / len(rows)}


def _toolace_column(model: str, n_ctx: int, jobs: list[Job], max_tokens: int, fixed: int | None,
                    logs: Path, batching: str = DEFAULT_BATCHING) -> list[dict[str, Any]]:
    """`toolace serve --parallel N` per level (N = clients), or one server with `--parallel fixed`."""
    out = []
    for clients in LEVELS:
        port = free_port()
        cmd = [str(Path(sys.executable).parent / "toolace"), "serve", "--model", model, "--n-ctx", str(n_ctx),
               "--port", str(port), "--parallel", str(fixed or clients), "--batching", batching]
        url = f"http://127.0.0.1:{port}/v1"
        # A fresh TOOLACE_HOME per server: no tool prompt saved to the disk cache by an earlier column is found.
        home = {"TOOLACE_HOME": str(logs / f"home-{fixed or clients}-{port}")}
        with server_process(cmd, f"{url}/models", logs / f"toolace-p{fixed or clients}.log", home):
            out.append(_level(lambda j, u=url: _chat_request(u, "bench", j, max_tokens), jobs, clients))
    return out


def _llama_server_column(binary: str, gguf: Path, n_ctx: int, threads: int, jobs: list[Job], max_tokens: int,
                         logs: Path) -> list[dict[str, Any]]:
    out = []
    for clients in LEVELS:
        port = free_port()
        cmd = [binary, "-m", str(gguf), "-c", str(n_ctx * clients), "-np", str(clients), "-t", str(threads),
               "-tb", str(threads),
               "--host", "127.0.0.1", "--port", str(port)]  # llama-server's own defaults otherwise
        url = f"http://127.0.0.1:{port}"
        with server_process(cmd, f"{url}/health", logs / f"llama-server-np{clients}.log"):
            out.append(_level(lambda j, u=url: _completion_request(u, j, max_tokens), jobs, clients))
    return out


def _vllm_serve(export: str, port: int, extra: str) -> list[str]:
    """The command that starts a `toolace export vllm` folder's server on 127.0.0.1:`port`."""
    return [str(Path(export) / "serve.sh"), "--host", "127.0.0.1", "--port", str(port), *extra.split()]


def _vllm_model(url: str, jobs: list[Job], max_tokens: int) -> str:
    """The served model's id, after WARMUP_REQUESTS unmeasured requests (vLLM's first ones are slower)."""
    model = httpx.get(f"{url}/models", timeout=30).json()["data"][0]["id"]
    for job in jobs[:WARMUP_REQUESTS]:
        _chat_request(url, model, job, max_tokens)
    return model


def _vllm_column(url: str | None, export: str | None, extra: str, jobs: list[Job], max_tokens: int,
                 logs: Path) -> list[dict[str, Any]]:
    """vLLM at `url`, or started from a `toolace export vllm` folder (its serve.sh) for this column only."""
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1"
        with server_process(_vllm_serve(export or "", port, extra), f"{url}/models", logs / "vllm.log"):
            return _vllm_column(url, None, extra, jobs, max_tokens, logs)
    model = _vllm_model(url, jobs, max_tokens)
    return [_level(lambda j: _chat_request(url, model, j, max_tokens), jobs, clients) for clients in LEVELS]


def _guard_pair(export: str, extra: str, jobs: list[Job], max_tokens: int,
                logs: Path) -> dict[str, list[dict[str, Any]]]:
    """The export with and without the guard, both running, taking turns (GUARD_BURSTS); a merged row per level."""
    urls = {}
    with contextlib.ExitStack() as stack:
        notes = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="toolace-bench-notes-")))
        for name, guard in ((VLLM_GUARDED_COLUMN, True), (VLLM_UNGUARDED_COLUMN, False)):
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}/v1"
            folder = notes / ("on" if guard else "off")  # the guarded server's notes hold the guard's own time
            folder.mkdir()
            stack.enter_context(server_process(_vllm_serve(export, port, extra), f"{urls[name]}/models",
                                               logs / f"vllm-pair-{int(guard)}.log",
                                               {"TOOLACE_VLLM_GUARD": "on" if guard else "off",
                                                NOTES_ENV: str(folder), GUARD_CLOCK_ENV: "1"}))
        models = {name: _vllm_model(url, jobs, max_tokens) for name, url in urls.items()}
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for clients in GUARD_LEVELS:
            bursts: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
            before = {name: _itl(url) for name, url in urls.items()}
            clock = read_guard_time(notes / "on")
            for k in range(GUARD_BURSTS):
                some = [jobs[(k * clients + i) % len(jobs)] for i in range(clients)]
                for name in (list(urls) if k % 2 == 0 else list(urls)[::-1]):
                    bursts[name].append(_level(functools.partial(_chat_request, urls[name], models[name],
                                                                 max_tokens=max_tokens), some, clients, 1))
            after = read_guard_time(notes / "on")
            spent = after["seconds"] - clock["seconds"]
            for name, url in urls.items():
                (s0, n0), (s1, n1) = before[name], _itl(url)
                row = {**_merged(bursts[name]), "burst_tok_per_s": [b["tok_per_s"] for b in bursts[name]],
                       "engine_ms_per_token": round(1000 * (s1 - s0) / (n1 - n0), 2) if n1 > n0 else None}
                if name == VLLM_GUARDED_COLUMN:  # how much sooner the same bursts would have ended without its code
                    row["guard_seconds"] = round(spent, 3)
                    row["guard_clock"] = {k: round(after[k] - clock[k], 3) for k in after}  # steps, rows, setup
                    row["guard_code_slowdown"] = round(spent / (row["wall_s"] - spent), 4) if spent > 0 else None
                out[name].append(row)
    return out


def _itl(url: str) -> tuple[float, float]:
    """vLLM's own inter-token latency so far (sum in seconds, count), from its Prometheus /metrics: the time
    between a request's tokens inside the engine, free of the client's and HTTP's share."""
    found = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(url.removesuffix("/v1") + "/metrics", timeout=30).text.splitlines():
        for key in found:
            if line.startswith(f"vllm:inter_token_latency_seconds_{key}"):
                found[key] += float(line.rsplit(" ", 1)[1])
    return found["sum"], found["count"]


def _merged(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for several runs of a level (bursts): totals for throughput, medians of the runs' latencies."""
    out = dict(rows[0])
    for key in ("requests", "completion_tokens"):
        out[key] = sum(r[key] for r in rows)
    out["wall_s"] = round(sum(r["wall_s"] for r in rows), 3)
    out["tok_per_s"] = round(out["completion_tokens"] / out["wall_s"], 2)
    out["req_per_s"] = round(out["requests"] / out["wall_s"], 3)
    for key in ("latency_p50_s", "latency_p95_s", "ttft_p50_s"):
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["validity"] = sum(r["validity"] * r["requests"] for r in rows) / out["requests"]
    return out


def bench_serve(model: str = "demo", data: str | None = None, n_ctx: int = 2048, max_tokens: int = 128,
                llama_server: str | None = None, vllm_url: str | None = None, vllm_export: str | None = None,
                vllm_args: str = "", json_out: str | None = None, logs: str | None = None,
                plot: str | None = None, vllm_only: bool = False) -> dict[str, Any]:
    """Run every column at 1, 2, 4 and 8 clients; return (and write) the report, with the issue's targets checked
    (bench_serve_report.targets) and, if asked, a PNG. With `vllm_export`, also the same server without the budget
    guard at GUARD_LEVELS (the guard's cost); `vllm_only`: the vLLM columns alone."""
    ta = ToolACE.load(model, n_ctx=n_ctx, kv_cache=False)
    jobs = _jobs(ta, data, max(LEVELS) * REQUESTS_PER_CLIENT)
    log_dir = Path(logs or os.environ.get("TMPDIR", "/tmp")) / "toolace-bench-serve"
    log_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": model, "model_file": str(ta.model.path), "n_ctx_per_slot": n_ctx,
                              "max_tokens": max_tokens, "levels": list(LEVELS), "cores": os.cpu_count(),
                              "ceiling": batching_ceiling(ta), "step_shapes": step_shapes(ta), "columns": {}}
    threads = ta.model.n_threads
    model = str(ta.model.path)  # a path: the servers run with their own (empty) TOOLACE_HOME
    del ta  # the servers below load their own copies
    cols = report["columns"]
    if not vllm_only:
        cols["toolace --parallel N"] = _toolace_column(model, n_ctx, jobs, max_tokens, None, log_dir)
        cols["toolace --parallel 1"] = _toolace_column(model, n_ctx, jobs, max_tokens, 1, log_dir)
        cols[FAST_COLUMN] = _toolace_column(model, n_ctx, jobs, max_tokens, None, log_dir, "fast")
    if llama_server and not vllm_only:
        cols["llama-server -np N"] = _llama_server_column(llama_server, Path(report["model_file"]), n_ctx, threads,
                                                          jobs, max_tokens, log_dir)
    if vllm_url or vllm_export:
        cols[VLLM_COLUMN] = _vllm_column(vllm_url.rstrip("/") if vllm_url else None, vllm_export, vllm_args, jobs,
                                         max_tokens, log_dir)
    if vllm_export and not vllm_url:
        cols.update(_guard_pair(vllm_export, vllm_args, jobs, max_tokens, log_dir))
    report["targets"] = {**targets(report), **guard_cost(report)}
    if json_out:
        save_json(report, json_out)
    if plot:
        plot_report(report, plot)
    return report
