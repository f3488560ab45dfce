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


LLAMA3_STYLE_TEMPLATE = ("{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + "
                         "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{%- endfor %}"
                         "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
                         "{%- endif %}")


def model_gguf(file_type: int = 15, fill: int = 0, n_values: int = 50_000,
               template: str | None = LLAMA3_STYLE_TEMPLATE, split: tuple[int, int] | None = None) -> bytes:
    """A well-formed GGUF whose header describes a small Llama (2 layers, width 8, 4 tokens, trained context 4096)
    and which carries one F32 tensor of `n_values` values filled with `fill` (so files of different quants differ
    in content, as they do on the hub). `split`: (part number, part count) for a split model's part, whose extra
    parts carry tensor data only, as gguf-split writes them."""
    kvs = [kv("general.architecture", STRING, "llama"), kv("general.file_type", U32, file_type)]
    if split is None or split[0] == 1:
        kvs += [kv("llama.block_count", U32, 2), kv("llama.embedding_length", U32, 8),
                kv("llama.attention.head_count", U32, 2), kv("llama.attention.head_count_kv", U32, 1),
                kv("llama.feed_forward_length", U32, 16), kv("llama.context_length", U32, 4096),
                kv("tokenizer.ggml.tokens", ARRAY, ["a", "b", "c", "d"], STRING)]
        if template is not None:
            kvs.append(kv("tokenizer.chat_template", STRING, template))
    if split is not None:
        kvs += [kv("split.no", U16, split[0] - 1), kv("split.count", U16, split[1])]
    name = f"w{split[0]}" if split else "w"
    data = struct.pack("<f", float(fill)) * n_values
    return gguf_file(kvs, [tensor_info(name, [n_values])], data=data + bytes(-len(data) % 32))
