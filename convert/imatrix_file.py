"""llama.cpp's importance-matrix files, written, and checked against the model they are meant for.

Two layouts, both read by `toolace quantize --imatrix` (convert/quantize.py `read_imatrix`) and by llama.cpp's own
`llama-quantize`:
- GGUF (what `llama-imatrix` writes by default since mid-2025): `general.type = imatrix`, and per weight tensor W
  `W.in_sum2` (F32, [columns, matrices]: the sum of squared input activations per input column) and `W.counts`
  (F32, [1, matrices]: the number of token rows summed);
- legacy `.dat`: entry count, then per entry name, ncall, nval and the mean squared activations times ncall, then
  the chunk count (llama.cpp also appends the dataset name; its readers treat that tail as optional)."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolace.errors import InputError

from .gguf_check import GGUFHeader

IMATRIX_FORMATS = ("gguf", "dat")
SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"  # llama.cpp's tensor name suffixes in the GGUF layout


@dataclass(frozen=True)
class ImatrixEntry:
    """One weight tensor's statistics: per-column sums of squared inputs and the token rows they were summed over."""

    sums: np.ndarray  # float64 or float32, one value per input column (ne0 of the weight)
    count: int


def imatrix_format(path: str | os.PathLike[str]) -> str:
    """'dat' for a path ending in .dat (llama.cpp's legacy layout), else 'gguf' (its current one)."""
    return "dat" if Path(path).suffix.lower() == ".dat" else "gguf"


def write_imatrix_gguf(path: str | os.PathLike[str], entries: Mapping[str, ImatrixEntry],
                       datasets: Sequence[str] = (), chunk_size: int = 0) -> Path:
    """llama.cpp's GGUF imatrix layout (names sorted, as llama-imatrix writes them)."""
    import gguf

    n_chunks = max((e.count for e in entries.values()), default=0) // chunk_size if chunk_size > 0 else 1
    writer = gguf.GGUFWriter(path, arch="imatrix")
    writer.add_type("imatrix")
    writer.add_uint32("imatrix.chunk_count", max(n_chunks, 1))
    writer.add_uint32("imatrix.chunk_size", chunk_size)
    writer.add_array("imatrix.datasets", list(datasets) or ["unnamed"])
    for name in sorted(entries):
        e = entries[name]
        writer.add_tensor(name + SUM_SUFFIX, np.asarray(e.sums, dtype=np.float32).reshape(1, -1))
        writer.add_tensor(name + COUNT_SUFFIX, np.array([[float(e.count)]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def write_imatrix_dat(path: str | os.PathLike[str], entries: Mapping[str, ImatrixEntry],
                      datasets: Sequence[str] = ()) -> Path:
    """The legacy binary layout; each entry is stored as its mean (ncall 1), as llama.cpp stores one chunk."""
    out = bytearray(struct.pack("<i", len(entries)))
    for name in sorted(entries):
        e = entries[name]
        raw = name.encode()
        mean = np.asarray(e.sums, dtype=np.float64) / max(e.count, 1)
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", 1, mean.size)
        out += mean.astype("<f4").tobytes()
    dataset = (datasets[-1] if datasets else "").encode()
    out += struct.pack("<i", 1) + struct.pack("<i", len(dataset)) + dataset
    Path(path).write_bytes(bytes(out))
    return Path(path)


def write_imatrix(path: str | os.PathLike[str], entries: Mapping[str, ImatrixEntry], fmt: str = "gguf",
                  datasets: Sequence[str] = (), chunk_size: int = 0) -> Path:
    """Write in layout `fmt` (IMATRIX_FORMATS; imatrix_format(name) picks it from the file name the user gave)."""
    if fmt not in IMATRIX_FORMATS:
        raise InputError(f"unknown imatrix format {fmt!r}; choose one of {', '.join(IMATRIX_FORMATS)}")
    if fmt == "dat":
        return write_imatrix_dat(path, entries, datasets)
    return write_imatrix_gguf(path, entries, datasets, chunk_size)


def check_imatrix_fits(header: GGUFHeader, weights: Mapping[str, np.ndarray], label: str) -> None:
    """Every imatrix entry must name a tensor of the model, with one value per input column of each of its matrices:
    an imatrix made for another model is refused here, in one line, not half-applied by llama.cpp."""
    dims = {t.name: t.dims for t in header.tensors}
    if not set(weights) & set(dims):
        raise InputError(f"{label}: no imatrix entry matches a tensor of {header.path.name} (made for another model?)")
    unknown = sorted(set(weights) - set(dims))
    if unknown:
        raise InputError(f"{label}: {len(unknown)} imatrix entries name no tensor of {header.path.name}, e.g. "
                         f"{unknown[0]} (made for another model?)")
    for name, values in weights.items():
        shape = dims[name]
        expected = int(shape[0]) * int(np.prod(shape[2:], dtype=np.int64)) if shape else 0
        if values.size != expected:
            raise InputError(f"{label}: imatrix entry {name} has {values.size} values but the tensor of "
                             f"{header.path.name} has {expected} input columns (made for another model?)")
