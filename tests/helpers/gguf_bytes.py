"""Build GGUF bytes by hand, including impossible ones, for the pre-check's hostile-input tests."""

from __future__ import annotations

import struct
from typing import Any

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
        I64: "<q", F64: "<d"}


def gstr(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def value(vtype: int, v: Any, item_type: int | None = None) -> bytes:
    if vtype == STRING:
        return gstr(v)
    if vtype == ARRAY:
        assert item_type is not None
        return struct.pack("<IQ", item_type, len(v)) + b"".join(value(item_type, x) for x in v)
    return struct.pack(_FMT[vtype], v)


def kv(key: str | bytes, vtype: int, v: Any, item_type: int | None = None) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + value(vtype, v, item_type)


def tensor_info(name: str | bytes, dims: list[int], ttype: int = 0, offset: int = 0) -> bytes:
    return gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", ttype, offset)


def gguf_file(kvs: list[bytes], tensors: list[bytes], data: bytes = b"", version: int = 3,
              n_tensors: int | None = None, n_kv: int | None = None, magic: bytes = b"GGUF",
              alignment: int = 32) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + bytes(-len(body) % alignment) + data


def valid_gguf() -> bytes:
    """A small well-formed file: a 3-token vocabulary and one F32 tensor of 8 elements."""
    kvs = [kv("general.architecture", STRING, "llama"),
           kv("tokenizer.ggml.tokens", ARRAY, ["a", "b", "ü"], STRING),
           kv("tokenizer.ggml.token_type", ARRAY, [1, 1, 1], I32),
           kv("tokenizer.ggml.bos_token_id", U32, 0)]
    return gguf_file(kvs, [tensor_info("w", [8])], data=bytes(32))
