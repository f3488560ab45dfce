"""A GGUF pre-check, run before llama.cpp (or gguf's reader) ever sees a file.

llama.cpp's GGUF parser has had heap overflows on crafted files, and gguf-py's reader allocates whatever a header
claims. This parser trusts nothing: every count and length is bounded by the bytes actually left in the file before
anything is allocated for it, so a 100-byte file claiming 5 million array elements is rejected at once. Only the
header is read (through a read-only map), never tensor data, so the cost does not grow with the file size.
Faults raise one ModelFileError naming the file, the field, and the problem."""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from toolace.errors import ModelFileError
from toolace.limits import (
    GGML_MAX_DIMS,
    GGUF_CHECK_READ_BYTES,
    MAX_GGUF_KV,
    MAX_GGUF_STRING_BYTES,
    MAX_GGUF_TENSORS,
    MAX_KEPT_ARRAY,
)

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
GGML_MAX_NAME = 64  # bytes in a tensor name including the terminating NUL (ggml.h)
INT64_MAX = 2**63 - 1

# GGUF value types: struct format of fixed-size ones, minimal encoded size of each (strings: the 8-byte length).
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_MIN_SIZE = {t: struct.calcsize(f) for t, f in _FIXED.items()} | {_STRING: 8, _ARRAY: 12}
_TYPE_SIZES = {int(t): sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()}  # ggml type -> (block, bytes/block)


@dataclass(frozen=True)
class GGUFArray:
    """An array value: its item type and length; `values` only when it has at most MAX_KEPT_ARRAY items."""

    item_type: int
    count: int
    values: list[Any] | None = None


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    dims: tuple[int, ...]  # ggml order: ne0 (contiguous) first
    type: int
    offset: int  # from the start of the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


@dataclass
class GGUFHeader:
    path: Path
    version: int
    file_size: int
    alignment: int
    data_start: int
    kv: dict[str, Any] = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)
    parsed_bytes: int = 0  # how far the check read: the header only, whatever the file size


class _Cursor:
    def __init__(self, buf: Any, size: int, name: str, limit: int = GGUF_CHECK_READ_BYTES) -> None:
        self.buf, self.size, self.name, self.pos = buf, size, name, 0
        self.read_limit = limit
        self.limit = min(size, limit)

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.name}: {what}")

    def left(self) -> int:
        return self.limit - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            if self.pos + n > self.size:
                raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, the file has "
                                f"{self.size - self.pos} left")
            raise self.fail(f"header is larger than the {self.read_limit}-byte limit")

    def fixed(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.fixed("<Q", what)
        if n > MAX_GGUF_STRING_BYTES or n > self.left():
            raise self.fail(f"{what}: string length {n} is larger than the {self.left()} bytes left in the file")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what}: string is not valid UTF-8") from None

    def string_array(self, count: int, keep: bool, what: str) -> list[str] | None:
        """Walk `count` strings. UTF-8 is checked in one pass over the whole array with every 8-byte length prefix
        overwritten by newlines (ASCII, so no sequence can run from one string into the next): decoding 400 k
        tokens one by one would be most of the check's time."""
        unpack, limit, pos, start = _U64.unpack_from, self.limit, self.pos, self.pos
        prefixes = []
        mark = prefixes.append
        buf = self.buf
        try:  # no bound check per string: an overlong length makes the next unpack fail, or shows in `pos` after
            for _ in range(count):
                mark(pos)
                pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError):  # a length so large that the next offset is no C index
            pos = limit + 1
        if pos > limit:  # slow path, errors only: find the first string that does not fit
            for i, at in enumerate(prefixes):
                self.pos = at
                self.need(8, f"{what}[{i}]")
                (n,) = unpack(buf, at)
                if n > limit - at - 8:
                    raise self.fail(f"{what}[{i}]: string length {n} is larger than the {limit - at - 8} bytes "
                                    "left in the file")
        if pos > limit:  # the walk stopped at a prefix that itself did not fit
            self.pos = limit
            self.need(8, f"{what}[{len(prefixes)}]")
        region = np.frombuffer(self.buf, dtype=np.uint8, count=pos - start, offset=start).copy()
        at = np.asarray(prefixes, dtype=np.int64) - start
        region[(at[:, None] + np.arange(8)).ravel()] = 0x0A
        self.pos = pos
        try:
            region.tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what}: contains a string that is not valid UTF-8") from None
        if not keep:
            return None
        if not prefixes:  # an empty array (the zip below pairs each start with the next one)
            return []
        return [self.buf[a + 8:b].decode("utf-8") for a, b in zip(prefixes, [*prefixes[1:], pos], strict=True)]


def _value(cur: _Cursor, vtype: int, what: str) -> Any:
    if vtype in _FIXED:
        return cur.fixed(_FIXED[vtype], what)
    if vtype == _STRING:
        return cur.string(what)
    if vtype != _ARRAY:
        raise cur.fail(f"{what}: unknown value type {vtype}")
    item_type = cur.fixed("<I", what)
    count = cur.fixed("<Q", what)
    if item_type == _ARRAY:
        raise cur.fail(f"{what}: arrays of arrays are not supported")
    if item_type not in _MIN_SIZE:
        raise cur.fail(f"{what}: unknown array item type {item_type}")
    if count > cur.left() // _MIN_SIZE[item_type]:
        raise cur.fail(f"{what}: array of {count} elements cannot fit in the {cur.left()} bytes left in the file")
    keep = count <= MAX_KEPT_ARRAY
    if item_type == _STRING:
        return GGUFArray(item_type, count, cur.string_array(count, keep, what))
    fmt = _FIXED[item_type]
    size = struct.calcsize(fmt)
    values = list(struct.unpack_from(f"<{count}{fmt[1]}", cur.buf, cur.pos)) if keep else None
    cur.pos += count * size
    return GGUFArray(item_type, count, values)


def check_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and check a GGUF file's header; return it, or raise ModelFileError naming the fault."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            if size < 24:
                raise ModelFileError(f"{p.name}: truncated: {size} bytes is shorter than a GGUF header (24)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(mm, size, p)
    except OSError as e:
        raise ModelFileError(f"{p.name}: cannot read: {e.strerror}") from None


def check_gguf_prefix(buf: bytes, size: int, name: str) -> GGUFHeader:
    """Check the header of a `size`-byte GGUF file from its first bytes `buf` alone (a hub file's header read with
    one Range request, before deciding to download it); the tensors' data is checked against `size`."""
    if size < 24 or len(buf) < 24:
        raise ModelFileError(f"{name}: truncated: shorter than a GGUF header (24 bytes)")
    return _parse(buf, size, Path(name), limit=min(len(buf), GGUF_CHECK_READ_BYTES))


def _parse(buf: Any, size: int, p: Path, limit: int = GGUF_CHECK_READ_BYTES) -> GGUFHeader:
    cur = _Cursor(buf, size, p.name, limit)
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    cur.pos = 4
    version = cur.fixed("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
            raise cur.fail("big-endian GGUF files are not supported")
        raise cur.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.fixed("<Q", "tensor count")
    n_kv = cur.fixed("<Q", "metadata count")
    if n_tensors > MAX_GGUF_TENSORS or n_tensors * 24 > cur.left():
        raise cur.fail(f"tensor count {n_tensors} is absurd for a {size}-byte file")
    if n_kv > MAX_GGUF_KV or n_kv * 12 > cur.left():
        raise cur.fail(f"metadata count {n_kv} is absurd for a {size}-byte file")
    header = GGUFHeader(p, version, size, gguf.GGUF_DEFAULT_ALIGNMENT, 0)
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        if not key:
            raise cur.fail(f"metadata key #{i} is empty")
        if key in header.kv:
            raise cur.fail(f"metadata key {key} appears twice")
        vtype = cur.fixed("<I", key)
        header.kv[key] = _value(cur, vtype, key)
    _check_kv(cur, header)

    names: set[str] = set()
    for i in range(n_tensors):
        header.tensors.append(_tensor_info(cur, header.alignment, names, i))
    header.parsed_bytes = cur.pos
    header.data_start = -(-cur.pos // header.alignment) * header.alignment
    if not header.tensors:  # an empty data section may lack its padding: llama.cpp seeks past the end and reads 0
        header.data_start = min(header.data_start, size)
    data_len = size - header.data_start
    for t in header.tensors:
        if t.offset + t.nbytes > data_len:
            raise cur.fail(f"tensor {t.name}: data at offset {t.offset} + {t.nbytes} bytes runs past the end of the "
                           f"file (data section is {max(data_len, 0)} bytes)")
    return header


def _check_kv(cur: _Cursor, header: GGUFHeader) -> None:
    kv = header.kv
    if "general.alignment" in kv:
        align = kv["general.alignment"]
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise cur.fail(f"general.alignment {align!r} is not a power of two")
        header.alignment = align
    arch = kv.get("general.architecture")
    if arch is not None and not isinstance(arch, str):
        raise cur.fail("general.architecture is not a string")
    tokens = kv.get("tokenizer.ggml.tokens")
    if tokens is None:
        return
    if not isinstance(tokens, GGUFArray) or tokens.item_type != _STRING:
        raise cur.fail("tokenizer.ggml.tokens is not an array of strings")
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        other = kv.get(key)
        if other is not None and (not isinstance(other, GGUFArray) or other.count != tokens.count):
            found = other.count if isinstance(other, GGUFArray) else "not an array"
            raise cur.fail(f"{key} has {found} entries for {tokens.count} tokens")
    for key, value in kv.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise cur.fail(f"{key} is not an integer")
            # llama.cpp treats -1 (as int32 or its uint32 twin) as "no such token"
            if value not in (-1, 0xFFFFFFFF) and not 0 <= value < tokens.count:
                raise cur.fail(f"{key} {value} is not below the vocabulary size {tokens.count}")


def _tensor_info(cur: _Cursor, alignment: int, names: set[str], i: int) -> GGUFTensor:
    name = cur.string(f"tensor #{i} name")
    if not name or len(name.encode()) >= GGML_MAX_NAME:
        raise cur.fail(f"tensor #{i} name {name[:80]!r} is empty or longer than {GGML_MAX_NAME - 1} bytes")
    if name in names:
        raise cur.fail(f"tensor {name} appears twice")
    names.add(name)
    n_dims = cur.fixed("<I", f"tensor {name} dimensions")
    if not 1 <= n_dims <= GGML_MAX_DIMS:
        raise cur.fail(f"tensor {name} has {n_dims} dimensions (GGML_MAX_DIMS is {GGML_MAX_DIMS})")
    dims = tuple(cur.fixed("<Q", f"tensor {name} shape") for _ in range(n_dims))
    n = 1
    for d in dims:
        if d > INT64_MAX or (d and n > INT64_MAX // d):
            raise cur.fail(f"tensor {name} shape {dims} overflows a 64-bit element count")
        n *= d
    ttype = cur.fixed("<I", f"tensor {name} type")
    if ttype not in _TYPE_SIZES:
        raise cur.fail(f"tensor {name} has unknown ggml type {ttype}")
    block, type_size = _TYPE_SIZES[ttype]
    if dims[0] % block:
        raise cur.fail(f"tensor {name}: row length {dims[0]} is not a multiple of its type's block size {block}")
    nbytes = n // block * type_size
    offset = cur.fixed("<Q", f"tensor {name} offset")
    if offset % alignment:
        raise cur.fail(f"tensor {name}: data offset {offset} is not aligned to {alignment}")
    if offset > INT64_MAX or nbytes > INT64_MAX - offset:
        raise cur.fail(f"tensor {name}: data offset {offset} + {nbytes} bytes overflows")
    return GGUFTensor(name, dims, ttype, offset, nbytes)
