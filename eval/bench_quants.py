"""`toolace bench quants SRC`: which quant keeps the function calling, by evidence (docs/quantize.md, "Choosing").

From one unquantized source (a checkpoint converted to F32 by the project's converter, or a float GGUF) it makes
each llama.cpp type asked for, with no importance matrix, with the function-calling one (`+fc`: `toolace imatrix`'s
transcripts) or with a generic-text one of the same token count (`+generic`), and measures each against the
reference: KL divergence (mean, p99) and top-1 agreement on held-aside call transcripts (from the ends of the BFCL
files, disjoint from the calibration ones, asserted), call agreement, accuracy flips and validity on BFCL questions,
file size and bits per weight, decode tokens/s and peak RSS (each in a child process of its own)."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolace.api import ToolACE
from toolace.convert.convert import convert, resolve_source
from toolace.convert.info import info
from toolace.convert.quantize import quant_type, quantize
from toolace.errors import InputError
from toolace.limits import IMATRIX_DEFAULT_LIMIT

from . import quant_quality as quality
from .bench import save_json, save_png, subplots
from .bfcl import default_data_dir
from .child import measured
from .defaults import (
    DEFAULT_CATEGORIES,
    EVAL_MAX_TOKENS,
    QUANTS_DEFAULT_HELD_ASIDE,
    QUANTS_DEFAULT_QUESTIONS,
    QUANTS_DEFAULT_TYPES,
)
from .evaluate import call_transcripts, check_max_tokens, choice_for, run_question, select_questions, summarize
from .generic_text import generic_chunks
from .generic_text import generic_text as read_generic_text
from .imatrix import DATASET_NAME, calibration_set, check_limit, load_for_imatrix, measure_to, token_transcripts

IMATRIX_KINDS = {"fc": "function-calling transcripts (toolace imatrix)",
                 "generic": "generic text, the same number of tokens (eval/generic_text.py)"}
FLOAT_FILE_TYPES = {"F32", "F16", "BF16"}  # a reference must be one of these: KL is measured against it
SPEED_TOKENS = 64  # tokens decoded for the tokens/s column
GENERIC_CHUNK_TOKENS = 512  # llama.cpp's imatrix chunk size: the generic text is measured in chunks of this


@dataclass(frozen=True)
class QuantSpec:
    type: str
    imatrix: str | None  # None, "fc" or "generic"

    @property
    def label(self) -> str:
        return f"{self.type}+{self.imatrix}" if self.imatrix else self.type


def parse_types(types: str | list[str] | tuple[str, ...]) -> list[QuantSpec]:
    """`TYPE` or `TYPE+fc` / `TYPE+generic`, comma-separated or a list; each checked, none twice."""
    items = [t.strip() for t in (types.split(",") if isinstance(types, str) else types) if t.strip()]
    if not items:
        raise InputError("--types names no quant type")
    out: list[QuantSpec] = []
    for item in items:
        name, plus, kind = item.partition("+")
        qt = quant_type(name)
        if plus and kind not in IMATRIX_KINDS:
            raise InputError(f"--types {item}: after '+' comes an imatrix kind, {' or '.join(IMATRIX_KINDS)}")
        if qt.needs_imatrix and not kind:
            raise InputError(f"--types {item}: {qt.name} needs an importance matrix; write {qt.name}+fc or "
                             f"{qt.name}+generic")
        spec = QuantSpec(qt.name, kind or None)
        if spec in out:
            raise InputError(f"--types names {spec.label} twice")
        out.append(spec)
    return out


def _check_count(value: int, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{flag} must be a whole number of at least 1, got {value!r}")
    return value


def reference_gguf(src: str, work: Path) -> Path:
    """The reference: a float GGUF as given, or the checkpoint `src` converted to F32 by the project's converter."""
    p = Path(src)
    if p.is_file():
        file_type = info(p)["file_type"]
        if file_type not in FLOAT_FILE_TYPES:
            raise InputError(f"{src} is {file_type}: the reference must be unquantized (a checkpoint folder or an "
                             f"F32/F16/BF16 GGUF), or every KL would be measured against a quant")
        return p
    root, _ = resolve_source(src)
    return convert(root, work / "reference-f32.gguf", outtype="f32")


def split_transcripts(data: str, calibration: int, held_aside: int) -> tuple[list[Any], list[Any]]:
    """Calibration transcripts from the starts of the BFCL files, held-aside ones from their ends; disjoint."""
    calib = calibration_set(data, calibration)
    questions = select_questions(data, DEFAULT_CATEGORIES, None)
    held = call_transcripts(questions, held_aside, from_end=True)
    overlap = sorted({q.id for q, _ in calib} & {q.id for q, _ in held})
    if overlap:
        raise InputError(f"calibration and held-aside transcripts overlap ({len(overlap)} questions, e.g. "
                         f"{overlap[0]}): lower --calibration or --held-aside, or give more data")
    return calib, held


def make_imatrices(ref: Path, calib: list[Any], kinds: set[str], work: Path, generic_text: str | None,
                   log: Any) -> dict[str, Any]:
    """The function-calling imatrix and, when asked for, a generic-text one of the same token count."""
    out: dict[str, Any] = {}
    if not kinds:
        return out
    m = load_for_imatrix(str(ref))
    fc = work / "fc.imatrix.gguf"
    t0 = time.perf_counter()
    tokens = measure_to(m, token_transcripts(m, calib), fc, DATASET_NAME)
    out["fc"] = {"path": fc, "tokens": tokens, "transcripts": len(calib), "seconds": time.perf_counter() - t0}
    log(f"imatrix fc: {tokens} tokens from {len(calib)} transcripts")
    if "generic" in kinds:
        tokenize = m.tokenize
        chunks = generic_chunks(lambda s: tokenize(s, special=False), m.bos_id, tokens, GENERIC_CHUNK_TOKENS,
                                generic_text)
        gen = work / "generic.imatrix.gguf"
        t0 = time.perf_counter()
        got = measure_to(m, chunks, gen, "generic-text:" + (generic_text or "python-stdlib-docstrings"))
        out["generic"] = {"path": gen, "tokens": got, "chunks": len(chunks), "seconds": time.perf_counter() - t0}
        log(f"imatrix generic: {got} tokens in {len(chunks)} chunks")
    del m
    gc.collect()
    return out


def _measure(path: Path, held: list[Any], ref: dict[str, Any] | None, questions: list[Any],
             max_tokens: int) -> dict[str, Any]:
    """One model's log-prob rows (reference) or its figures against the reference's."""
    ta = ToolACE.load(str(path), kv_cache=False)
    try:
        tokens = quality.transcripts(ta, held)
        rows = [run_question(ta, q, choice_for(q, "category"), max_tokens, False) for q in questions]
        if ref is None:
            return {"transcripts": tokens, "logprobs": [quality.next_token_logprobs(ta, t) for t in tokens],
                    "rows": rows}
        quality.check_same_tokens(ref["transcripts"], tokens, "the reference", path.name)
        kls, top1 = [], []
        for t, ref_lp in zip(tokens, ref["logprobs"], strict=True):
            kl, same = quality.kl_rows(ref_lp, quality.next_token_logprobs(ta, t))
            kls.append(kl)
            top1.append(same)
        s = summarize(rows)
        return {**quality.token_figures(kls, top1), **quality.call_figures(ref["rows"], rows),
                "validity": s["validity"], "cut_by_max_tokens": s["cut_by_max_tokens"]}
    finally:
        del ta
        gc.collect()


def _file_figures(path: Path, n_params: int) -> dict[str, Any]:
    meta = info(path)
    speed = measured("eval.decode_speed", "decode_speed", str(path), str(SPEED_TOKENS))
    return {"file": path.name, "file_bytes": meta["file_size"], "bits_per_weight": meta["file_size"] * 8 / n_params,
            "tensor_types": meta["tensor_types"], "decode_tokens_per_s": speed["decode_tokens_per_s"],
            "peak_rss_bytes": int(speed["peak_rss_bytes"])}


def bench_quants(src: str, types: str | list[str] | tuple[str, ...] = QUANTS_DEFAULT_TYPES, data: str | None = None,
                 limit: int = QUANTS_DEFAULT_QUESTIONS, held_aside: int = QUANTS_DEFAULT_HELD_ASIDE,
                 calibration: int = IMATRIX_DEFAULT_LIMIT, generic_text: str | None = None,
                 max_tokens: int = EVAL_MAX_TOKENS, json_out: str | None = None, plot: str | None = None,
                 workdir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Make each quant of `src` in `types` and measure it against the unquantized reference (module docstring).
    `limit`: BFCL questions per category for the call columns (each up to `max_tokens`); `held_aside` and
    `calibration`: transcripts."""
    specs = parse_types(types)
    _check_count(limit, "--limit")
    _check_count(held_aside, "--held-aside")
    check_limit(calibration)
    check_max_tokens(max_tokens)

    def log(msg: str) -> None:
        if progress:
            print(f"bench quants: {msg}", file=sys.stderr, flush=True)

    folder = str(data) if data is not None else default_data_dir()
    calib, held = split_transcripts(folder, calibration, held_aside)  # bad data fails before any model work
    questions = select_questions(folder, DEFAULT_CATEGORIES, limit, from_end=True)
    if generic_text is not None and any(s.imatrix == "generic" for s in specs):
        next(read_generic_text(generic_text))  # an unreadable or empty file fails before any model work
    with tempfile.TemporaryDirectory(prefix="toolace-bench-quants-", dir=workdir) as tmp:
        work = Path(tmp)
        ref_path = reference_gguf(src, work)
        ref_info = info(ref_path)
        n_params = ref_info["parameter_count"]
        imatrices = make_imatrices(ref_path, calib, {s.imatrix for s in specs if s.imatrix}, work, generic_text,
                                   log)
        ref = _measure(ref_path, held, None, questions, max_tokens)
        rows = [{"label": f"{ref_info['file_type']} (reference)", "type": ref_info["file_type"], "imatrix": None,
                 **_file_figures(ref_path, n_params), "kl_mean": 0.0, "kl_p99": 0.0, "top1_agreement": 1.0,
                 **quality.call_figures(ref["rows"], ref["rows"]), "validity": summarize(ref["rows"])["validity"]}]
        log(f"reference {ref_path.name}: {len(ref['logprobs'])} transcripts, {len(questions)} questions")
        for spec in specs:
            out = work / f"model.{spec.label}.gguf"
            t0 = time.perf_counter()
            imx = imatrices[spec.imatrix]["path"] if spec.imatrix else None
            quantize(ref_path, out, spec.type, imatrix=imx)
            row = {"label": spec.label, "type": spec.type, "imatrix": spec.imatrix,
                   "quantize_seconds": time.perf_counter() - t0, **_file_figures(out, n_params),
                   **_measure(out, held, ref, questions, max_tokens)}
            rows.append(row)
            log(f"{spec.label}: KL {row['kl_mean']:.4f}, calls {row['call_agreement']:.0%}")
            out.unlink()
    report = {"source": str(src), "reference": ref_info["file_type"], "parameters": n_params,
              "data": folder, "calibration": {"transcripts": len(calib), "first": calib[0][0].id,
                                              **{k: {x: v[x] for x in v if x != "path"} for k, v in imatrices.items()}},
              "held_aside": {"transcripts": len(held), "ids": [q.id for q, _ in held],
                             "disjoint_from_calibration": True},
              "questions": len(questions), "max_tokens": max_tokens, "speed_tokens": SPEED_TOKENS,
              "imatrix_kinds": IMATRIX_KINDS, "cpu_count": os.cpu_count(),
              "machine_load_1min": round(os.getloadavg()[0], 2), "quants": rows}
    if json_out:
        save_json(report, json_out)
    if plot:
        plot_quants(report, plot)
    return report


def plot_quants(report: dict[str, Any], out: str) -> None:
    """Size against mean KL (log scale), one labelled point per quant; colour by imatrix kind."""
    fig, ax = subplots(figsize=(8, 5))
    colours = {None: "tab:blue", "fc": "tab:green", "generic": "tab:orange"}
    for r in report["quants"][1:]:
        ax.scatter(r["file_bytes"] / 1e6, max(r["kl_mean"], 1e-6), color=colours[r["imatrix"]])
        ax.annotate(r["label"], (r["file_bytes"] / 1e6, max(r["kl_mean"], 1e-6)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    for kind, colour in colours.items():
        ax.scatter([], [], color=colour, label=f"imatrix: {kind or 'none'}")
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL vs reference on held-aside call transcripts (nats)")
    ax.set_title(f"{Path(report['source']).name}: size vs KL per quant")
    ax.legend(fontsize=8)
    save_png(fig, out)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def summary(report: dict[str, Any]) -> str:
    """The table as Markdown (the README's), one row per quant."""
    head = ("| quant | size MB | bpw | KL mean | KL p99 | top-1 | calls = ref | flips | valid | tok/s | RSS MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in report["quants"]:
        lines.append(f"| {r['label']} | {r['file_bytes'] / 1e6:,.1f} | {r['bits_per_weight']:.2f} | "
                     f"{r['kl_mean']:.4f} | {r['kl_p99']:.3f} | {_pct(r['top1_agreement'])} | "
                     f"{_pct(r['call_agreement'])} | {r['flips']} | {_pct(r['validity'])} | "
                     f"{r['decode_tokens_per_s']:.0f} | {r['peak_rss_bytes'] / 2**20:,.0f} |")
    return "\n".join(lines)

