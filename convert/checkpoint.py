"""A local Hugging Face checkpoint folder: config.json plus safetensors files, read lazily and checked hard.

Tensors are never loaded whole or memory-mapped: `read_rows` does positional reads of the rows asked for, so peak
memory during conversion is one chunk, and a conversion's RSS does not grow with the file-backed pages of a mapping.
Every header field is checked against the file before it is used (size, JSON shape, dtype, shape, offsets), and an
index may only name files inside the checkpoint folder."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolace.errors import ModelFileError
from toolace.limits import (
    GGML_MAX_DIMS,
    MAX_CHECKPOINT_JSON_BYTES,
    MAX_CHECKPOINT_SHARDS,
    MAX_CHECKPOINT_TENSORS,
    MAX_SAFETENSORS_HEADER_BYTES,
)
from toolace.paths import read_json_file

# Source dtypes a converter can read without torch; BF16 travels as raw uint16 bit patterns (numpy has no bfloat16).
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "BF16": (np.dtype("<u2"), 2),
    "F16": (np.dtype("<f2"), 2),
    "F32": (np.dtype("<f4"), 4),
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: a file, an absolute byte offset, its dtype and shape."""

    name: str
    file: Path
    offset: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]


def read_json(path: Path, limit: int = MAX_CHECKPOINT_JSON_BYTES) -> Any:
    """Parse a JSON file, refusing one larger than `limit` bytes or not valid UTF-8 JSON."""
    return read_json_file(path, limit, ModelFileError, path.name)


def _safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse and check one safetensors file's header; return its tensors keyed by name."""
    name = path.name
    file_size = path.stat().st_size
    if file_size < 8:
        raise ModelFileError(f"{name}: malformed safetensors header: file is {file_size} bytes, shorter than 8")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_SAFETENSORS_HEADER_BYTES:
            raise ModelFileError(f"{name}: malformed safetensors header: header length {header_len} is over "
                                 f"{MAX_SAFETENSORS_HEADER_BYTES} bytes")
        if 8 + header_len > file_size:
            raise ModelFileError(f"{name}: malformed safetensors header: header length {header_len} runs past the "
                                 f"end of the {file_size}-byte file")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # bad UTF-8, bad JSON, or an integer over Python's digit limit (a 5,000-digit offset)
        raise ModelFileError(f"{name}: malformed safetensors header: not JSON ({e})") from None
    except RecursionError:
        raise ModelFileError(f"{name}: malformed safetensors header: JSON nests too deeply") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{name}: malformed safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_CHECKPOINT_TENSORS:
        raise ModelFileError(f"{name}: {len(header)} tensors is over the limit of {MAX_CHECKPOINT_TENSORS}")
    data_start = 8 + header_len
    data_len = file_size - data_start
    tensors: dict[str, TensorRef] = {}
    spans: list[tuple[int, int, str]] = []
    for tname, entry in header.items():
        tensors[tname] = ref = _tensor_entry(name, tname, entry, data_start, data_len)
        spans.append((ref.offset, ref.offset + ref.nbytes, tname))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise ModelFileError(f"{name}: malformed safetensors header: tensors {a} and {b} overlap")
    return tensors


def _tensor_entry(fname: str, tname: str, entry: Any, data_start: int, data_len: int) -> TensorRef:
    where = f"{fname}: tensor {tname}"
    if not isinstance(entry, dict):
        raise ModelFileError(f"{where}: malformed safetensors header: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise ModelFileError(f"{where}: malformed safetensors header: dtype missing")
    if dtype not in DTYPES:
        raise ModelFileError(f"{where}: dtype {dtype} is not supported (only BF16, F16, F32)")
    if (not isinstance(shape, list) or len(shape) > GGML_MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ModelFileError(f"{where}: malformed safetensors header: shape {shape!r} is not a list of at most "
                             f"{GGML_MAX_DIMS} non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise ModelFileError(f"{where}: malformed safetensors header: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise ModelFileError(f"{where}: malformed safetensors header: data_offsets [{begin}, {end}] out of order")
    if end > data_len:
        raise ModelFileError(f"{where}: data_offsets end {end} is beyond the file's {data_len} data bytes")
    ref = TensorRef(tname, Path(), data_start + begin, dtype, tuple(shape))
    if end - begin != ref.nbytes:
        raise ModelFileError(f"{where}: data_offsets span {end - begin} bytes but shape {tuple(shape)} in {dtype} "
                             f"needs {ref.nbytes}")
    return ref


def _confined(root: Path, rel: Any, what: str) -> Path:
    """`root / rel`, refusing absolute paths and `..` parts. The check is on the name, not the link target: a hub
    snapshot's files are symlinks into the cache's blob store, which is outside the snapshot folder by design."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ModelFileError(f"{what}: file name {rel!r} is not a plain file name")
    pure = Path(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise ModelFileError(f"{what}: file name {rel!r} points outside the checkpoint folder")
    return root / pure


class Checkpoint:
    """An opened checkpoint folder: its config and every tensor's location, all checked."""

    def __init__(self, root: Path, config: dict[str, Any], tensors: dict[str, TensorRef]) -> None:
        self.root = root
        self.config = config
        self.tensors = tensors

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of tensor `name` (first axis), as its raw dtype (BF16 as uint16 bits)."""
        ref = self.tensors[name]
        dtype, itemsize = DTYPES[ref.dtype]
        rows = ref.shape[0] if ref.shape else 1
        if not 0 <= start <= stop <= rows:
            raise ValueError(f"rows [{start}, {stop}) outside {name}'s {rows}")
        row_elems = math.prod(ref.shape[1:]) if ref.shape else 1
        out = np.empty(((stop - start) * row_elems,), dtype=dtype)
        view = memoryview(out).cast("B")
        pos = ref.offset + start * row_elems * itemsize
        with ref.file.open("rb", buffering=0) as f:
            fd = f.fileno()
            done = 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], pos + done)
                if n <= 0:
                    raise ModelFileError(f"{ref.file.name}: tensor {name} ends early (file changed while reading?)")
                done += n
        shape = (stop - start, *ref.shape[1:]) if ref.shape else ()
        return out.reshape(shape)


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a local checkpoint folder: config.json, then a shard index or the folder's *.safetensors files."""
    root = Path(path)
    if not root.is_dir():
        raise ModelFileError(f"{root}: not a checkpoint folder")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise ModelFileError(f"{root}: config.json is missing; not a Hugging Face checkpoint folder")
    config = read_json(cfg_path)
    if not isinstance(config, dict):
        raise ModelFileError("config.json: not a JSON object")

    index_path = root / INDEX_NAME
    if index_path.is_file():
        files, weight_map = _read_index(root, index_path)
    else:
        files = sorted(p for p in root.glob("*.safetensors") if p.is_file())
        weight_map = None
    if not files:
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelFileError(f"{root}: only pickle checkpoints ({', '.join(pickles[:3])}) found; pickles can run "
                                 "code when loaded and are refused, convert from safetensors")
        raise ModelFileError(f"{root}: no *.safetensors files found")
    if len(files) > MAX_CHECKPOINT_SHARDS:
        raise ModelFileError(f"{root}: {len(files)} safetensors files is over the limit of {MAX_CHECKPOINT_SHARDS}")

    tensors: dict[str, TensorRef] = {}
    for file in files:
        for tname, ref in _safetensors_header(file).items():
            if tname in tensors:
                raise ModelFileError(f"{file.name}: tensor {tname} also appears in {tensors[tname].file.name}")
            if weight_map is not None and weight_map.get(tname) != file:
                raise ModelFileError(f"{file.name}: tensor {tname} is not listed for this file in {INDEX_NAME}")
            tensors[tname] = TensorRef(tname, file, ref.offset, ref.dtype, ref.shape)
            if len(tensors) > MAX_CHECKPOINT_TENSORS:
                raise ModelFileError(f"{root}: more than {MAX_CHECKPOINT_TENSORS} tensors")
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise ModelFileError(f"{INDEX_NAME}: tensor {absent[0]} is listed but not in {weight_map[absent[0]].name}")
    return Checkpoint(root, config, tensors)


def _read_index(root: Path, index_path: Path) -> tuple[list[Path], dict[str, Path]]:
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFileError(f"{INDEX_NAME}: no weight_map object")
    if len(weight_map) > MAX_CHECKPOINT_TENSORS:
        raise ModelFileError(f"{INDEX_NAME}: {len(weight_map)} entries is over the limit of {MAX_CHECKPOINT_TENSORS}")
    resolved: dict[str, Path] = {}
    by_name: dict[str, Path] = {}
    for tname, rel in weight_map.items():
        if rel not in by_name:
            if len(by_name) >= MAX_CHECKPOINT_SHARDS:
                raise ModelFileError(f"{INDEX_NAME}: more than {MAX_CHECKPOINT_SHARDS} shard files")
            by_name[rel] = _confined(root, rel, INDEX_NAME)
            if not by_name[rel].suffix == ".safetensors":
                raise ModelFileError(f"{INDEX_NAME}: shard {rel!r} is not a .safetensors file")
            if not by_name[rel].is_file():
                raise ModelFileError(f"{INDEX_NAME}: shard {rel!r} is missing")
        resolved[tname] = by_name[rel]
    return sorted(set(by_name.values())), resolved
