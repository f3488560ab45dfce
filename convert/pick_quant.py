"""`toolace pull REPO --max-ram SIZE`: the best quant a repo offers that fits the memory (docs/quantize.md, "Which
quant"). Best means least loss: the order below follows the KL divergence each type keeps from the unquantized
model (llama.cpp's LLaMA-3-8B table and `toolace bench quants`, bench/results/quants_smollm2.json). Fits means the
runtime's own estimate (runtime/memory.py: weights + KV cache at the context + compute + tokenizer) is at most SIZE;
the model's shape comes from the GGUF header, read with one Range request of its first bytes before any download."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from toolace.errors import DownloadError, InputError, ToolaceError
from toolace.limits import GGUF_HEADER_PROBE_BYTES, HUB_PROBE_TIMEOUT_SECONDS

from ..runtime.memory import MemoryEstimate, estimate_memory, gib, model_shape
from .gguf_check import check_gguf_prefix
from .gguf_files import GGUFChoice, available_quants, choose_gguf

# Least loss first. Q8_0 leads: above it nothing measurable is kept (KL ~0.001 nats, the same calls) and the float
# types decode at half its speed or less (memory-bound), so they come right after it, for repos that offer no Q8_0.
# The ternary and 1-bit types last: they suit only models trained for them.
QUANT_PREFERENCE = ("Q8_0", "BF16", "F16", "F32", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
                    "IQ4_XS", "IQ4_NL", "Q4_1", "Q4_0", "MXFP4_MOE", "Q3_K_L", "Q3_K_M", "IQ3_M", "IQ3_S", "Q3_K_S",
                    "IQ3_XS", "IQ3_XXS", "Q2_K", "IQ2_M", "Q2_K_S", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S",
                    "TQ2_0", "TQ1_0", "Q1_0")
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Pick:
    choice: GGUFChoice
    estimate: MemoryEstimate
    why: str


def parse_size(text: str | int) -> int:
    """Bytes from `8GB`, `7.5G`, `6GiB`, `512M` or a plain number of bytes (decimal units unless `i`)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = SIZE_RE.match(str(text))
        if not m:
            raise InputError(f"--max-ram {text!r}: write a size such as 8GB, 7.5G or 6GiB")
        scale = (1024 if m[3] else 1000) ** "_KMGT".index((m[2] or "_").upper())
        value = int(float(m[1]) * scale)
    if value <= 0:
        raise InputError(f"--max-ram must be more than 0 bytes, got {text!r}")
    return value


def _probe_header(repo_id: str, commit: str, name: str, size: int, endpoint: str | None) -> bytes:
    """The first bytes of one hub file (one Range request): enough for a GGUF header."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    want = min(size, GGUF_HEADER_PROBE_BYTES)
    url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
    headers = {**build_hf_headers(), "Range": f"bytes=0-{want - 1}"}
    try:
        with get_session().stream("GET", url, headers=headers, follow_redirects=True,
                                  timeout=HUB_PROBE_TIMEOUT_SECONDS) as r:
            if r.status_code not in (200, 206):
                raise DownloadError(f"{repo_id}/{name}: the hub answered HTTP {r.status_code} to a header read")
            buf = bytearray()
            for chunk in r.iter_bytes():
                buf += chunk
                if len(buf) >= want:  # a server that ignores Range sends the whole file: stop at the header
                    break
            return bytes(buf[:want])
    except ToolaceError:
        raise
    except Exception as e:  # noqa: BLE001 - any transport failure is one download error
        raise DownloadError(f"{repo_id}/{name}: header read failed: {type(e).__name__}: {e}") from None


def pick_by_ram(repo_id: str, commit: str, files: dict[str, int], max_ram: int, n_ctx: int, kv_type: str,
                endpoint: str | None) -> Pick:
    """The first quant of QUANT_PREFERENCE the repo has whose estimate at `n_ctx` fits `max_ram`; `files` maps
    each file name to its size. One InputError naming the smallest need when none fits."""
    have = available_quants(list(files))
    offered = [q for q in QUANT_PREFERENCE if q in have]
    if not offered:
        raise InputError(f"{repo_id}: none of its GGUF quants ({', '.join(have) or 'none'})"
                         " is one toolace can rank; name one with REPO:QUANT")
    choices = [choose_gguf(repo_id, list(files), q) for q in offered]
    smallest = min(choices, key=lambda c: sum(files[f] for f in c.files))
    first = smallest.first
    header = check_gguf_prefix(_probe_header(repo_id, commit, first, files[first], endpoint), files[first], first)
    base = model_shape([header])
    best: Pick | None = None
    estimates = []
    for rank, c in enumerate(choices):
        # Tensor data: the files' bytes less the metadata header, which every quant of one model has alike.
        weights = sum(files[f] for f in c.files) - header.data_start
        shape = dataclasses.replace(base, weights=weights)
        est = estimate_memory(shape, n_ctx, kv_type)
        estimates.append((c, est))
        if best is None and est.total <= max_ram:
            better = offered[:rank]
            why = (f"{c.quant}: the least lossy quant {repo_id} offers that fits {gib(max_ram)} at {n_ctx} tokens "
                   f"({est.summary()})" + (f"; {', '.join(better)} would not fit" if better else ""))
            best = Pick(c, est, why)
    if best is None:
        c, est = min(estimates, key=lambda x: x[1].total)
        raise InputError(f"{repo_id}: no quant fits {gib(max_ram)} at {n_ctx} tokens; the smallest, {c.quant}, "
                         f"needs {est.summary()}. Raise --max-ram or lower --n-ctx")
    return best
