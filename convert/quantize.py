"""Quantize a float GGUF with llama.cpp's own quantizer (`llama_model_quantize`), atomically.

The type table below is data: every file type llama.cpp's `llama-quantize` offers, spelled as it spells them. The
very-low-bit types that llama.cpp refuses to make without an importance matrix are marked and refused up front with
a clear message instead of after minutes of work. llama.cpp runs in a worker thread so the main thread keeps
receiving signals: Ctrl-C removes the partial output immediately."""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolace.errors import InputError, ModelFileError, OutputError
from toolace.limits import MAX_GGUF_STRING_BYTES, MAX_GGUF_TENSORS, QUANTIZE_POLL_SECONDS
from toolace.paths import atomic_output, output_error

from .gguf_check import check_gguf
from .imatrix_file import check_imatrix_fits


@dataclass(frozen=True)
class QuantType:
    name: str
    ftype: int  # llama_ftype
    needs_imatrix: bool
    description: str


# name, llama_ftype, needs an importance matrix, what llama-quantize says about it (sizes for an 8B Llama)
_TABLE = [
    ("F32", 0, False, "32-bit float, no quantization"),
    ("F16", 1, False, "16-bit float"),
    ("BF16", 32, False, "bfloat16"),
    ("Q8_0", 7, False, "8.5 bpw, nearly lossless"),
    ("Q6_K", 18, False, "6.6 bpw, very low loss"),
    ("Q5_K_M", 17, False, "5.7 bpw, low loss"),
    ("Q5_K_S", 16, False, "5.5 bpw, low loss"),
    ("Q5_1", 9, False, "6.0 bpw, legacy"),
    ("Q5_0", 8, False, "5.5 bpw, legacy"),
    ("Q4_K_M", 15, False, "4.9 bpw, the usual balance of size and quality"),
    ("Q4_K_S", 14, False, "4.6 bpw"),
    ("Q4_1", 3, False, "5.0 bpw, legacy"),
    ("Q4_0", 2, False, "4.5 bpw, legacy"),
    ("IQ4_NL", 25, False, "4.5 bpw, non-linear"),
    ("IQ4_XS", 30, False, "4.25 bpw, non-linear"),
    ("Q3_K_L", 13, False, "4.3 bpw"),
    ("Q3_K_M", 12, False, "3.9 bpw"),
    ("Q3_K_S", 11, False, "3.5 bpw"),
    ("IQ3_M", 27, False, "3.7 bpw"),
    ("IQ3_S", 26, False, "3.4 bpw"),
    ("IQ3_XS", 22, False, "3.3 bpw"),
    ("IQ3_XXS", 23, False, "3.1 bpw"),
    ("Q2_K", 10, False, "3.0 bpw, high loss"),
    ("Q2_K_S", 21, True, "2.9 bpw, high loss"),
    ("IQ2_M", 29, True, "2.7 bpw"),
    ("IQ2_S", 28, True, "2.5 bpw"),
    ("IQ2_XS", 20, True, "2.3 bpw"),
    ("IQ2_XXS", 19, True, "2.1 bpw"),
    ("IQ1_M", 31, True, "1.75 bpw, extreme loss"),
    ("IQ1_S", 24, True, "1.6 bpw, extreme loss"),
    ("TQ2_0", 37, False, "2.06 bpw ternary, for ternary-trained models only"),
    ("TQ1_0", 36, False, "1.69 bpw ternary, for ternary-trained models only"),
    ("MXFP4_MOE", 38, False, "MXFP4 for MoE expert tensors, Q8_0 elsewhere"),
    ("Q1_0", 40, False, "1.1 bpw binary, for binary-trained models only"),
    ("COPY", -1, False, "copy tensors unchanged (only metadata rewritten)"),
]
QUANT_TYPES: dict[str, QuantType] = {row[0]: QuantType(*row) for row in _TABLE}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # llama-quantize accepts these too


def quant_type(name: str) -> QuantType:
    """The QuantType for a llama.cpp type name (case-insensitive, llama-quantize's aliases accepted)."""
    key = name.upper() if isinstance(name, str) else ""
    key = ALIASES.get(key, key)
    if key not in QUANT_TYPES:
        raise InputError(f"unknown quantization type {name!r}; choose one of {', '.join(QUANT_TYPES)}")
    return QUANT_TYPES[key]


def read_imatrix(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Per-tensor importance (mean squared activation per input column) from an imatrix file: llama.cpp's GGUF
    format (`<tensor>.in_sum2` / `<tensor>.counts`) or its legacy `.dat` format."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: imatrix file not found")
    with p.open("rb") as f:
        magic = f.read(4)
    return _read_imatrix_gguf(p) if magic == b"GGUF" else _read_imatrix_dat(p)


def _read_imatrix_gguf(p: Path) -> dict[str, np.ndarray]:
    import gguf

    check_gguf(p)  # bounds every length before gguf's reader trusts them
    reader = gguf.GGUFReader(p)
    tensors = {t.name: t for t in reader.tensors}
    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        counts = tensors.get(base + ".counts")
        if counts is None:
            raise ModelFileError(f"{p.name}: imatrix entry {base} has sums but no counts")
        sums = np.asarray(t.data, dtype=np.float32).reshape(-1, int(t.shape[0]))
        n = np.asarray(counts.data, dtype=np.float32).reshape(-1, 1)
        if n.shape[0] != sums.shape[0]:
            raise ModelFileError(f"{p.name}: imatrix entry {base}: {n.shape[0]} counts for {sums.shape[0]} matrices")
        safe = np.where(n > 0, n, 1.0)
        out[base] = np.where(n > 0, sums / safe, 1.0).astype(np.float32).ravel()
    if not out:
        raise ModelFileError(f"{p.name}: no imatrix entries (*.in_sum2 tensors) found")
    return out


def _read_imatrix_dat(p: Path) -> dict[str, np.ndarray]:
    data = p.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ModelFileError(f"{p.name}: imatrix file truncated at byte {pos}")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if not 0 < n_entries <= MAX_GGUF_TENSORS:
        raise ModelFileError(f"{p.name}: not an imatrix file (entry count {n_entries})")
    out: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        (name_len,) = take("<i")
        if not 0 < name_len <= min(MAX_GGUF_STRING_BYTES, len(data) - pos):
            raise ModelFileError(f"{p.name}: imatrix entry name length {name_len} is impossible")
        name = data[pos:pos + name_len].decode("utf-8", "replace")
        pos += name_len
        ncall, nval = take("<ii")
        if not 0 < nval <= (len(data) - pos) // 4:
            raise ModelFileError(f"{p.name}: imatrix entry {name}: {nval} values do not fit in the file")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out[name] = values / ncall if ncall > 0 else values  # stored as sums over `ncall` chunks
    return out


_backend_ready = False
_lock = threading.Lock()  # llama.cpp's log callback is process-global; one quantization at a time


def _run_llama_quantize(src: Path, dst: Path, qt: QuantType, imatrix: dict[str, np.ndarray] | None,
                        overrides: dict[str, int] | None = None, allow_requantize: bool = False) -> None:
    import llama_cpp
    from llama_cpp import _logger

    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True
    params = llama_cpp.llama_model_quantize_default_params()
    if qt.name == "COPY":
        params.only_copy = True
    else:
        params.ftype = qt.ftype
    params.allow_requantize = allow_requantize
    for field_name, ggml_type in (overrides or {}).items():
        setattr(params, field_name, ggml_type)
    keep: list[object] = []  # ctypes buffers that must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # zeroed last entry terminates
        for i, (name, values) in enumerate(imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        keep.append(entries)
        params.imatrix = entries

    errors: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level in (3, 4):  # WARN/ERROR in current ggml (ERROR/DEBUG in older ones): kept for the message
            errors.extend(line.strip() for line in text.decode("utf-8", "replace").splitlines())

    result: list[int] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)))
        except BaseException as e:  # surfaced in the main thread
            failure.append(e)

    with _lock:
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        try:
            worker = threading.Thread(target=work, name="llama-quantize", daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(QUANTIZE_POLL_SECONDS)
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    if failure:
        raise ModelFileError(f"llama.cpp quantization failed: {failure[0]}")
    if not result or result[0] != 0:
        detail = " ".join(e for e in errors if e and set(e) != {"="})[-600:] or "no error message"
        if "iostream error" in detail:  # llama.cpp's writer failed: the output's storage, not the input
            raise OutputError(f"cannot write the quantized file (disk full or file too large?): {detail}")
        raise ModelFileError(f"llama.cpp could not quantize {src.name} to {qt.name}: {detail}")


def tensor_type(name: str) -> int:
    """A ggml tensor type id from its name (Q8_0, Q6_K, F16, ...), for the per-tensor overrides."""
    import gguf

    key = name.upper() if isinstance(name, str) else ""
    if key not in gguf.GGMLQuantizationType.__members__:
        raise InputError(f"unknown tensor type {name!r}; use a ggml type name such as Q8_0, Q6_K or F16")
    return int(gguf.GGMLQuantizationType[key])


def quantize(infile: str | os.PathLike[str], outfile: str | os.PathLike[str], type: str = "Q4_K_M",
             imatrix: str | os.PathLike[str] | None = None, output_tensor_type: str | None = None,
             token_embedding_type: str | None = None, allow_requantize: bool = False) -> Path:
    """Quantize GGUF `infile` to `outfile` as llama.cpp type `type`, optionally guided by an importance matrix.
    A file whose tensors are already quantized is refused by llama.cpp unless `allow_requantize` (quality then
    compounds both roundings).

    `output_tensor_type` / `token_embedding_type` pin output.weight / token_embd.weight to one ggml type, as
    llama-quantize's flags of the same names do."""
    qt = quant_type(type)
    src, dst = Path(infile), Path(outfile)
    if qt.needs_imatrix and imatrix is None:
        raise InputError(f"{qt.name} needs an importance matrix (--imatrix FILE): llama.cpp refuses to make it "
                         "without one, the quality loss would be severe")
    overrides = {}
    if output_tensor_type is not None:
        overrides["output_tensor_type"] = tensor_type(output_tensor_type)
    if token_embedding_type is not None:
        overrides["token_embedding_type"] = tensor_type(token_embedding_type)
    header = check_gguf(src)
    if dst.exists() and dst.resolve() == src.resolve():
        raise InputError(f"{dst}: output would overwrite the input")
    weights = read_imatrix(imatrix) if imatrix is not None else None
    if weights is not None:
        check_imatrix_fits(header, weights, str(imatrix))
    with atomic_output(dst) as tmp:
        try:
            _run_llama_quantize(src, tmp, qt, weights, overrides, allow_requantize)
        except OutputError as e:
            raise output_error(dst, str(e)) from None
        check_gguf(tmp)  # what llama.cpp wrote must itself pass before it is published
    return dst
