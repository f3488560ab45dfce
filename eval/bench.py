"""`toolace bench`: the runtime's numbers, each with its spread over repeated runs, ratios from the same run.

Grammar cost per token (median, p99) for each engine against unconstrained decoding and llama-cpp-python's default
`grammar=` path; end-to-end latency of one BFCL call constrained (with fast-forward) ÷ unconstrained, and with
speculation too (acceptance rate, tokens per decode, and its cost on prose; docs/speculative.md); TTFT cold / warm /
disk-warm with a ~2k-token tool list; prompt and decode speed; load time; peak RSS."""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolace.errors import GenerationError
from toolace.limits import DEFAULT_N_CTX
from toolace.paths import atomic_output
from toolace.runtime.constraints import ENGINES, make_constraint
from toolace.runtime.generate import GenerationStats, generate
from toolace.runtime.model import Model, usable_cores
from toolace.runtime.refs import resolve_model
from toolace.runtime.sampling import SamplingParams

TTFT_TOOL_TOKENS = 2000  # the tool list size the warm-TTFT target is stated for
# Prose for speculation's cost where nothing is copied: an answer that repeats nothing from its prompt.
PROSE_MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a map."}]
GREEDY = SamplingParams()


def _spread(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    arr = np.asarray(xs, dtype=np.float64)
    return {"median": float(np.median(arr)), "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean()),
            "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size)}


def _bfcl_case(data: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if data is not None and (data / "BFCL_v4_simple_python.json").is_file():
        first = json.loads((data / "BFCL_v4_simple_python.json").read_text().splitlines()[0])
        return first["question"][0], first["function"]
    tools = json.loads((Path(__file__).resolve().parent.parent / "examples" / "weather.json").read_text())
    return [{"role": "user", "content": "What's the weather like in Paris in celsius?"}], tools


def _big_toolset(ta: Any, data: Path | None, target: int) -> list[dict[str, Any]]:
    """Distinct BFCL functions until the tool prompt reaches `target` tokens."""
    from toolace.eval.bfcl import load_questions

    tools: list[dict[str, Any]] = []
    seen: set[str] = set()
    if data is None:
        return _bfcl_case(None)[1]
    for q in load_questions(data, ("multiple", "parallel_multiple")):
        for fn in q.functions:
            if fn["name"] not in seen:
                seen.add(fn["name"])
                tools.append(fn)
        if len(ta.prompt_tokens([{"role": "user", "content": "hi"}], ta.toolset(tools).tools)) >= target:
            break
    return tools


def _decode(model: Model, prompt: list[int], gbnf: str | None, engine: str, max_tokens: int,
            fast_forward: bool, speculative: bool = False, warm: int = 0) -> GenerationStats:
    """One greedy generation. `warm`: the KV cache holds the prompt's first `warm` tokens before the clock starts
    (the tool list cached by an earlier call with other messages), else it starts empty."""
    if warm:
        model.prefill(prompt[:warm])
    else:
        model.reset()
    st = GenerationStats()
    constraint = make_constraint(engine, model, gbnf) if gbnf else None
    for _ in generate(model, prompt, constraint=constraint, sampling=GREEDY, max_tokens=max_tokens,
                      fast_forward=fast_forward, stats=st, speculative=speculative):
        pass
    return st


def _raw_decode(model: Model, prompt: list[int], n: int) -> float:
    """Decode tok/s of a plain llama.cpp loop on the same context (llama_decode + llama.cpp's greedy sampler, as in
    llama.cpp's simple example): the reference for the runtime's own overhead."""
    import llama_cpp

    model.reset()
    ctx = model.ctx
    for i in range(0, len(prompt), model.llm.n_batch):
        part = (llama_cpp.llama_token * len(prompt[i:i + model.llm.n_batch]))(*prompt[i:i + model.llm.n_batch])
        # `part` must outlive llama_decode: the batch only points into it
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(part, len(part))) != 0:
            raise GenerationError("llama_decode failed on the prompt")
    smpl = llama_cpp.llama_sampler_init_greedy()
    tok = (llama_cpp.llama_token * 1)()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            tok[0] = llama_cpp.llama_sampler_sample(smpl, ctx, -1)
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tok, 1)) != 0:
                raise GenerationError("llama_decode failed while decoding")
        seconds = time.perf_counter() - t0
    finally:
        llama_cpp.llama_sampler_free(smpl)
        model.reset()  # the KV cache now holds tokens the model object never saw: drop them
    return n / seconds


def _baseline_grammar_path(model: Model, prompt: list[int], gbnf: str, max_tokens: int) -> dict[str, Any]:
    """llama-cpp-python's high-level path with `grammar=`, against the same path without it (per-token means)."""
    from llama_cpp import LlamaGrammar

    out = {}
    for name, grammar in (("free", None), ("grammar", LlamaGrammar.from_string(gbnf, verbose=False))):
        model.reset()
        t0 = time.perf_counter()
        res = model.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, grammar=grammar)
        dt = time.perf_counter() - t0
        n = max(1, res["usage"]["completion_tokens"])
        out[name] = {"seconds": dt, "tokens": n, "ms_per_token": dt * 1000 / n}
    model.reset()
    out["grammar_cost_ms_per_token"] = out["grammar"]["ms_per_token"] - out["free"]["ms_per_token"]
    return out


def bench(model: str = "demo", data: str | None = None, json_out: str | None = None, plot: str | None = None,
          runs: int = 3, max_tokens: int = 48, n_ctx: int = DEFAULT_N_CTX,
          threads: int | None = None) -> dict[str, Any]:
    """Run the runtime benchmark; parameters equal `toolace bench` flags. Returns (and optionally writes) JSON."""
    from toolace.api import ToolACE

    data_dir = Path(data) if data else None
    path = resolve_model(model)
    t0 = time.perf_counter()
    ta = ToolACE.load(str(path), n_ctx=n_ctx, kv_cache=False, n_threads=threads)
    load_s = time.perf_counter() - t0
    m = ta.model
    messages, tools = _bfcl_case(data_dir)
    toolset = ta.toolset(tools, "required")
    gbnf = toolset.grammar.gbnf
    prompt = ta.prompt_tokens(messages, toolset.tools)
    m.lltokenizer()  # built once per model; not part of any per-call figure

    report: dict[str, Any] = {"model": str(path), "n_vocab": m.n_vocab, "n_gpu_layers": m.n_gpu_layers,
                              "threads": m.n_threads, "usable_cores": usable_cores(),
                              "load_seconds": load_s, "runs": runs, "prompt_tokens": len(prompt)}
    free, raw = [], []
    for _ in range(runs):  # interleaved, so both loops see the same machine
        free.append(_decode(m, prompt, None, "llguidance", max_tokens, False))
        raw.append(_raw_decode(m, prompt, max_tokens))
    report["prompt_tok_per_s"] = _spread([s.prompt_tokens / s.prefill_seconds for s in free])
    report["decode_tok_per_s"] = {"free": _spread([s.completion_tokens / s.decode_seconds for s in free])}
    report["decode_tok_per_s"]["raw_llama_cpp"] = _spread(raw)
    report["runtime_over_raw"] = report["decode_tok_per_s"]["free"]["median"] / statistics.median(raw)
    report["grammar_ms_per_token"] = {}
    for engine in ENGINES:
        stats = [_decode(m, prompt, gbnf, engine, max_tokens, False) for _ in range(runs)]
        report["grammar_ms_per_token"][engine] = _spread([x for s in stats for x in s.step_grammar_ms])
        report.setdefault("rejection_rate", {})[engine] = sum(s.rejections for s in stats) / max(
            1, sum(s.completion_tokens for s in stats))
        report["decode_tok_per_s"][engine] = _spread([s.completion_tokens / s.decode_seconds for s in stats])
        report.setdefault("outputs", {})[engine] = [s.completion_tokens for s in stats]
    report["grammar_ms_per_token"]["llama_cpp_python_default"] = _baseline_grammar_path(m, prompt, gbnf, max_tokens)

    other = ta.prompt_tokens([{"role": "user", "content": "hi"}], toolset.tools)
    tools_prefix = next(i for i, (a, b) in enumerate(zip([*prompt, -1], [*other, -2], strict=False)) if a != b)
    report["e2e_call"], report["speculation"] = _e2e(ta, prompt, gbnf, max_tokens, runs, tools_prefix)
    report["ttft"] = _ttft(path, data_dir, n_ctx, runs)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if json_out:
        with atomic_output(json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    if plot:
        _plot(report, plot)
    return report


def _e2e(ta: Any, prompt: list[int], gbnf: str, max_tokens: int, runs: int,
         tools_prefix: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One BFCL call end to end (same prompt, greedy): unconstrained, constrained with fast-forward, and with
    speculation too, interleaved so the three see the same machine; time with the prompt's prefill and decode
    alone (the prefill is the same work for all three). Cold (empty cache) and warm (the tool list, the prompt's
    first `tools_prefix` tokens, cached as by an earlier call: only the question and the chunk it starts in are
    evaluated). Then prose (nothing to copy) with speculation ÷ without."""
    m = ta.model
    cold = _e2e_runs(m, prompt, gbnf, max_tokens, runs, 0)
    warm = _e2e_runs(m, prompt, gbnf, max_tokens, runs, tools_prefix)
    free, ff, spec = cold
    e2e = {**_ratios(free, ff), "free_tokens": free[0].completion_tokens, "ff_tokens": ff[0].completion_tokens,
           "forced_share": ff[0].forced_tokens / max(1, ff[0].completion_tokens),
           "warm": {**_ratios(warm[0], warm[1]), "tools_prefix_tokens": tools_prefix,
                    "evaluated_prompt_tokens": len(prompt) - warm[0][0].reused_tokens,
                    "spec_ratio": _total(warm[2]) / _total(warm[0])}}
    prose_prompt = ta.prompt_tokens(PROSE_MESSAGES, None)
    plain_prose, spec_prose = [], []
    for _ in range(runs):
        plain_prose.append(_decode(m, prose_prompt, None, "llguidance", 4 * max_tokens, False))
        spec_prose.append(_decode(m, prose_prompt, None, "llguidance", 4 * max_tokens, False, speculative=True))
    t_plain, t_prose, d_free = _decode_s(plain_prose), _decode_s(spec_prose), _decode_s(free)
    s0, p0 = spec[0], spec_prose[0]
    return e2e, {"ran": s0.speculative, "constrained_ff_spec_seconds": _total(spec),
                 "ratio": _total(spec) / _total(free),
                 "decode_ratio": _decode_s(spec) / d_free, "tokens": s0.completion_tokens,
                 "decodes": s0.decodes, "tokens_per_decode": s0.completion_tokens / max(1, s0.decodes),
                 "drafted": s0.drafted_tokens, "accepted": s0.accepted_drafts,
                 "acceptance_rate": s0.accepted_drafts / max(1, s0.drafted_tokens),
                 "prose": {"tokens": p0.completion_tokens, "plain_seconds": t_plain, "spec_seconds": t_prose,
                           "slowdown": t_prose / t_plain - 1, "drafted": p0.drafted_tokens,
                           "accepted": p0.accepted_drafts}}


def _e2e_runs(m: Model, prompt: list[int], gbnf: str, max_tokens: int, runs: int,
              warm: int) -> tuple[list[GenerationStats], ...]:
    """`runs` each of free, constrained + fast-forward, and + speculation, interleaved."""
    free, ff, spec = [], [], []
    for _ in range(runs):
        free.append(_decode(m, prompt, None, "llguidance", max_tokens, False, warm=warm))
        ff.append(_decode(m, prompt, gbnf, "llguidance", max_tokens, True, warm=warm))
        spec.append(_decode(m, prompt, gbnf, "llguidance", max_tokens, True, speculative=True, warm=warm))
    return free, ff, spec


def _total(stats: list[GenerationStats]) -> float:
    return statistics.median(s.prefill_seconds + s.decode_seconds for s in stats)


def _decode_s(stats: list[GenerationStats]) -> float:
    return statistics.median(s.decode_seconds for s in stats)


def _ratios(free: list[GenerationStats], ff: list[GenerationStats]) -> dict[str, float]:
    t_free, d_free = _total(free), _decode_s(free)
    return {"free_seconds": t_free, "constrained_ff_seconds": _total(ff), "ratio": _total(ff) / t_free,
            "decode_ratio": _decode_s(ff) / d_free, "prefill_share": 1 - d_free / t_free}


def _ttft(path: Path, data: Path | None, n_ctx: int, runs: int) -> dict[str, Any]:
    """Cold (nothing cached), warm (same process, prefix in the KV cache), disk-warm (new process state loaded
    from the disk cache) time to first token with a ~2k-token tool list."""
    from toolace.api import ToolACE
    from toolace.runtime.cache import PromptCache

    with tempfile.TemporaryDirectory() as tmp:
        ta = ToolACE.load(str(path), n_ctx=n_ctx, kv_cache=False)
        ta.cache = PromptCache(ta.model, Path(tmp))
        tools = _big_toolset(ta, data, TTFT_TOOL_TOKENS)
        ta.model.lltokenizer()
        qs = [f"Question {i}: which function fits best?" for i in range(runs + 1)]
        # auto mode: one token is enough to time the first token (a call mode needs room for a whole call)
        cold = ta.chat([{"role": "user", "content": qs[0]}], tools, "auto", max_tokens=1).stats
        warm = [ta.chat([{"role": "user", "content": q}], tools, "auto", max_tokens=1).stats for q in qs[1:]]
        disk = []
        for q in qs[1:]:
            fresh = ToolACE.load(str(path), n_ctx=n_ctx, kv_cache=False)
            fresh.cache = PromptCache(fresh.model, Path(tmp))
            fresh.model.lltokenizer()
            disk.append(fresh.chat([{"role": "user", "content": q}], tools, "auto", max_tokens=1).stats)
        c = cold.first_token_seconds
        w = statistics.median(s.first_token_seconds for s in warm)
        d = statistics.median(s.first_token_seconds for s in disk)
        return {"tool_prompt_tokens": cold.prompt_tokens, "cold_seconds": c, "warm": _spread(
            [s.first_token_seconds for s in warm]), "disk_warm": _spread([s.first_token_seconds for s in disk]),
            "warm_over_cold": w / c, "disk_warm_over_cold": d / c}


def subplots(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure and its axes on the file-only Agg backend (no display on a server or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, figsize=figsize)


def _plot(report: dict[str, Any], out: str) -> None:
    g = report["grammar_ms_per_token"]
    names = ["llguidance", "llama", "llama-cpp-python grammar="]
    vals = [g["llguidance"]["median"], g["llama"]["median"], g["llama_cpp_python_default"]["grammar_cost_ms_per_token"]]
    fig, axes = subplots(1, 2, figsize=(10, 4))
    axes[0].bar(names, vals, color=["#2a7", "#27a", "#a52"])
    axes[0].set_ylabel("grammar cost, ms per token (median)")
    axes[0].set_yscale("log")
    axes[0].set_title(f"grammar cost, vocab {report['n_vocab']}")
    t = report["ttft"]
    axes[1].bar(["cold", "warm", "disk-warm"], [t["cold_seconds"], t["warm"]["median"], t["disk_warm"]["median"]])
    axes[1].set_ylabel("time to first token, s")
    axes[1].set_title(f"TTFT, {t['tool_prompt_tokens']}-token tool prompt")
    save_png(fig, out)


def save_json(report: dict[str, Any], out: str) -> None:
    """A benchmark report written whole (atomically) as indented JSON."""
    with atomic_output(Path(out)) as tmp:
        tmp.write_text(json.dumps(report, indent=2))


def save_png(fig: Any, out: str) -> None:
    """A matplotlib figure written whole (atomically) as a PNG, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_output(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def summary(report: dict[str, Any]) -> str:
    """The headline figures as a few readable lines."""
    g = report["grammar_ms_per_token"]
    base = g["llama_cpp_python_default"]["grammar_cost_ms_per_token"]
    e2e, t, sp = report["e2e_call"], report["ttft"], report["speculation"]
    lines = [f"model {report['model']} (vocab {report['n_vocab']}, gpu layers {report['n_gpu_layers']}, "
             f"{report['threads']} of {report['usable_cores']} cores)"]
    for engine in ENGINES:
        lines.append(f"grammar cost {engine:>10}: median {g[engine]['median']:.4f} ms/token, "
                     f"p99 {g[engine]['p99']:.4f} ms/token")
    lines += [f"grammar cost llama-cpp-python grammar=: {base:.3f} ms/token (mean)",
              f"decode free {report['decode_tok_per_s']['free']['median']:.1f} tok/s, "
              f"prompt {report['prompt_tok_per_s']['median']:.1f} tok/s; raw llama.cpp loop "
              f"{report['decode_tok_per_s']['raw_llama_cpp']['median']:.1f} tok/s (ours / raw "
              f"{report['runtime_over_raw']:.3f})",
              f"e2e BFCL call constrained+ff / free: {e2e['ratio']:.3f}, decode alone {e2e['decode_ratio']:.3f} "
              f"(forced share {e2e['forced_share']:.0%}; prefill {e2e['prefill_share']:.0%} of the free call)",
              f"e2e warm (tool list cached, {e2e['warm']['evaluated_prompt_tokens']} prompt tokens evaluated): "
              f"constrained+ff / free {e2e['warm']['ratio']:.3f}"
              + (f", +speculation {e2e['warm']['spec_ratio']:.3f}" if sp["ran"] else "")
              + f" (prefill {e2e['warm']['prefill_share']:.0%} of the free call)",
              f"e2e BFCL call constrained+ff+speculation / free: {sp['ratio']:.3f}, decode alone "
              f"{sp['decode_ratio']:.3f} (acceptance {sp['acceptance_rate']:.0%}, {sp['tokens_per_decode']:.2f} "
              f"tokens per decode); prose with speculation {sp['prose']['slowdown']:+.1%}" if sp["ran"] else
              "speculation: off in this build (batched rows differ from one-token decodes; docs/speculative.md)",
              f"TTFT {t['tool_prompt_tokens']}-token tools: cold {t['cold_seconds']:.3f} s, "
              f"warm/cold {t['warm_over_cold']:.3f}, disk-warm/cold {t['disk_warm_over_cold']:.3f}",
              f"peak RSS {report['peak_rss_mb']:.0f} MB, load {report['load_seconds']:.2f} s"]
    return "\n".join(lines)
