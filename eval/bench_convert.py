"""`toolace bench convert SRC`: conversion and quantization time, throughput against copying the same bytes, and
peak memory against the budget "largest tensor + 512 MB" (docs/design.md, "Conversion": memory follows the
largest tensor, not the model).

Each measured step runs in its own child process, which reports its own peak RSS: a parent's figure would mix in
whatever the parent had loaded. The checkpoint is read once first so that the copy and the conversion both start
from a warm page cache."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from toolace.convert.checkpoint import open_checkpoint
from toolace.convert.convert import FLOAT_TYPES, resolve_source
from toolace.convert.quantize import quant_type
from toolace.errors import InputError, ToolaceError
from toolace.limits import CONVERT_MEMORY_HEADROOM_BYTES
from toolace.paths import atomic_output

from .child import measured

MB = 2**20
COPY_CHUNK_BYTES = 8 * MB  # copy/read chunk: large enough that syscalls don't show in the copy baseline

def _child(module: str, fn: str, *args: str) -> dict[str, Any]:
    """toolace.convert.<module>.<fn>(*args) in a fresh interpreter: its time and its own peak RSS."""
    try:
        return measured(f"convert.{module}", fn, *args)
    except ToolaceError as e:
        raise ToolaceError(f"bench convert: {e}") from None


def _copy_synced(files: list[Path], dest: Path) -> float:
    """Seconds to copy `files` into `dest` and fsync them: the converter fsyncs its output before the rename."""
    start = time.perf_counter()
    for f in files:
        target = dest / f.name
        with f.open("rb") as src, target.open("wb") as out:
            shutil.copyfileobj(src, out, COPY_CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
    seconds = time.perf_counter() - start
    for f in files:
        (dest / f.name).unlink()
    return seconds


def _warm(files: list[Path]) -> None:
    for f in files:
        with f.open("rb") as src:
            while src.read(COPY_CHUNK_BYTES):
                pass


def bench_convert(src: str, outtype: str = "f16", quant: str = "Q4_K_M", json_out: str | None = None,
                  workdir: str | None = None) -> dict[str, Any]:
    """Convert `src` to `outtype`, quantize that to `quant`, copy the checkpoint's bytes; report time, MB/s and
    peak RSS of each. Outputs go to a temporary folder under `workdir` (default: the system's) and are removed."""
    if outtype.lower() not in FLOAT_TYPES:
        raise InputError(f"bench convert: --outtype must be one of {', '.join(FLOAT_TYPES)} (the quantize step "
                         f"takes --quant), got {outtype!r}")
    outtype = outtype.lower()
    qt = quant_type(quant)
    quant = qt.name
    if qt.needs_imatrix:
        raise InputError(f"bench convert: {quant} needs an importance matrix; pick a type that does not")
    root, _ = resolve_source(src)
    ckpt = open_checkpoint(root)
    files = sorted({ref.file for ref in ckpt.tensors.values()})
    size = sum(f.stat().st_size for f in files)
    largest = max(ref.nbytes for ref in ckpt.tensors.values())
    with tempfile.TemporaryDirectory(prefix="toolace-bench-convert-", dir=workdir) as tmp:
        out, qout = Path(tmp) / f"model.{outtype}.gguf", Path(tmp) / f"model.{quant}.gguf"
        _warm(files)
        cp_seconds = _copy_synced(files, Path(tmp))
        conv = _child("convert", "convert", str(root), str(out), outtype)
        out_bytes = out.stat().st_size
        quantized = _child("quantize", "quantize", str(out), str(qout), quant)
        quant_bytes = qout.stat().st_size
    imports = _child("convert", "")  # the interpreter, numpy and gguf alone: the floor under the peak
    budget = largest + CONVERT_MEMORY_HEADROOM_BYTES
    report = {
        "source": str(root), "checkpoint_bytes": size, "largest_tensor_bytes": largest,
        "outtype": outtype, "output_bytes": out_bytes, "quant": quant, "quant_bytes": quant_bytes,
        "convert_seconds": round(conv["seconds"], 3), "convert_mb_per_s": round(size / MB / conv["seconds"], 1),
        "cp_fsync_seconds": round(cp_seconds, 3), "cp_fsync_mb_per_s": round(size / MB / cp_seconds, 1),
        "convert_vs_cp": round(conv["seconds"] / cp_seconds, 2),
        "convert_peak_rss_bytes": int(conv["peak_rss_bytes"]), "budget_bytes": budget,
        "within_budget": conv["peak_rss_bytes"] <= budget,
        "quantize_seconds": round(quantized["seconds"], 3),
        "quantize_mb_per_s": round(out_bytes / MB / quantized["seconds"], 1),
        "quantize_peak_rss_bytes": int(quantized["peak_rss_bytes"]),
        "import_only_rss_bytes": int(imports["peak_rss_bytes"]),
        "cpu_count": os.cpu_count(), "machine_load_1min": round(os.getloadavg()[0], 2),
    }
    if json_out:
        with atomic_output(Path(json_out)) as t:
            t.write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(r: dict[str, Any]) -> str:
    """The report as a few aligned lines."""
    return "\n".join([
        f"checkpoint        {r['checkpoint_bytes'] / MB:,.0f} MB "
        f"(largest tensor {r['largest_tensor_bytes'] / MB:,.0f} MB)",
        f"convert → {r['outtype']:<7} {r['convert_seconds']:.2f} s  {r['convert_mb_per_s']:,.0f} MB/s  "
        f"peak RSS {r['convert_peak_rss_bytes'] / MB:,.0f} MB (budget {r['budget_bytes'] / MB:,.0f} MB, "
        f"{'within' if r['within_budget'] else 'OVER'})",
        f"cp + fsync        {r['cp_fsync_seconds']:.2f} s  {r['cp_fsync_mb_per_s']:,.0f} MB/s  "
        f"(convert takes {r['convert_vs_cp']}× as long)",
        f"quantize → {r['quant']:<6} {r['quantize_seconds']:.2f} s  {r['quantize_mb_per_s']:,.0f} MB/s  "
        f"peak RSS {r['quantize_peak_rss_bytes'] / MB:,.0f} MB",
        f"imports alone     peak RSS {r['import_only_rss_bytes'] / MB:,.0f} MB",
    ])
