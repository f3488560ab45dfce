"""The GGUF pre-check on hostile files: each fault is one ModelFileError naming it, found fast, before any
allocation sized by the file's own claims."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import gguf
import pytest

from tests.helpers.converted import converted
from tests.helpers.gguf_bytes import (
    ARRAY,
    I32,
    STRING,
    U8,
    U32,
    U64,
    gguf_file,
    gstr,
    kv,
    tensor_info,
    valid_gguf,
)
from toolace.convert.gguf_check import check_gguf
from toolace.convert.info import info
from toolace.errors import ModelFileError


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "m.gguf"
    p.write_bytes(data)
    return p


def _refused(tmp_path: Path, data: bytes, match: str) -> None:
    p = _write(tmp_path, data)
    with pytest.raises(ModelFileError, match=match):
        check_gguf(p)


def test_valid_small_file_passes(tmp_path: Path) -> None:
    h = check_gguf(_write(tmp_path, valid_gguf()))
    assert h.kv["general.architecture"] == "llama"
    assert h.kv["tokenizer.ggml.tokens"].values == ["a", "b", "ü"]
    assert [(t.name, t.dims, t.nbytes) for t in h.tensors] == [("w", (8,), 32)]
    gguf.GGUFReader(tmp_path / "m.gguf")  # and gguf's own reader agrees it is well formed


def test_truncated(tmp_path: Path) -> None:
    _refused(tmp_path, b"GGUF\x03\x00", r"m.gguf: truncated: 6 bytes is shorter than a GGUF header")
    full = valid_gguf()
    _refused(tmp_path, full[:110], r"truncated: .* needs \d+ bytes at offset \d+")
    _refused(tmp_path, full[:-8], r"tensor w: data at offset 0 \+ 32 bytes runs past the end of the file")


def test_empty_file(tmp_path: Path) -> None:
    _refused(tmp_path, b"", r"truncated: 0 bytes")


def test_wrong_magic(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([], [], magic=b"GGML"), r"not a GGUF file \(magic b'GGML', expected b'GGUF'\)")
    _refused(tmp_path, b"PK\x03\x04" + bytes(40), r"not a GGUF file")


@pytest.mark.parametrize("version", [0, 1, 4, 2**31])
def test_bad_version(tmp_path: Path, version: int) -> None:
    _refused(tmp_path, gguf_file([], [], version=version), rf"unsupported GGUF version {version} \(supported: 2, 3\)")


def test_big_endian_named(tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    _refused(tmp_path, data, r"big-endian GGUF files are not supported")


def test_absurd_counts(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([], [], n_tensors=2**63), r"tensor count 9223372036854775808 is absurd")
    _refused(tmp_path, gguf_file([], [], n_kv=10**6 - 1), r"metadata count 999999 is absurd")
    _refused(tmp_path, gguf_file([], [], n_kv=2**64 - 1), r"metadata count \d+ is absurd")


def test_huge_array_in_tiny_file_rejected_at_once(tmp_path: Path) -> None:
    arr = gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, 5_000_000)
    data = gguf_file([arr], [])
    assert len(data) < 100
    _refused(tmp_path, data, r"tokenizer.ggml.tokens: array of 5000000 elements cannot fit in the \d+ bytes left")
    arr = gstr("x") + struct.pack("<IIQ", ARRAY, U64, 2**62)
    _refused(tmp_path, gguf_file([arr], []), r"x: array of 4611686018427387904 elements cannot fit")


def test_huge_string_lengths(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([struct.pack("<Q", 2**63)], [], bytes(64)),
             r"metadata key #0: string length 9223372036854775808 is larger than the \d+ bytes left")
    bad = gstr("k") + struct.pack("<IQ", STRING, 10**9)
    _refused(tmp_path, gguf_file([bad], []), r"k: string length 1000000000 is larger than")
    inside = gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, 2) + gstr("a") + \
        struct.pack("<Q", 2**40) + b"b"
    _refused(tmp_path, gguf_file([inside], []), r"tokenizer.ggml.tokens\[1\]: string length 1099511627776 is larger")


def test_unknown_and_nested_types(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([gstr("k") + struct.pack("<I", 13) + bytes(8)], []), r"k: unknown value type 13")
    nested = gstr("k") + struct.pack("<IIQ", ARRAY, ARRAY, 1) + struct.pack("<IQ", U8, 0)
    _refused(tmp_path, gguf_file([nested], []), r"k: arrays of arrays are not supported")
    _refused(tmp_path, gguf_file([gstr("k") + struct.pack("<IIQ", ARRAY, 99, 0)], []), r"unknown array item type 99")


def test_non_utf8_strings(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([kv(b"general.\xff", U32, 1)], []), r"metadata key #0: string is not valid UTF-8")
    _refused(tmp_path, gguf_file([kv("general.name", STRING, b"ab\xc3")], []), r"general.name: string is not valid")
    tokens = [b"a"] * 2000 + [b"\xe2\x82"] + [b"\xac"]  # a split euro sign: each half alone is invalid
    _refused(tmp_path, gguf_file([kv("tokenizer.ggml.tokens", ARRAY, tokens, STRING)], []),
             r"tokenizer.ggml.tokens: contains a string that is not valid UTF-8")
    _refused(tmp_path, gguf_file([], [tensor_info(b"w\xff", [8])], bytes(32)), r"tensor #0 name: string is not valid")


def test_duplicates(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([kv("a", U32, 1), kv("a", U32, 2)], []), r"metadata key a appears twice")
    t = [tensor_info("w", [8]), tensor_info("w", [8], offset=32)]
    _refused(tmp_path, gguf_file([], t, bytes(64)), r"tensor w appears twice")


@pytest.mark.parametrize("dims", [[1, 1, 1, 1, 8], [], list(range(1, 100))])
def test_dims_out_of_range(tmp_path: Path, dims: list[int]) -> None:
    _refused(tmp_path, gguf_file([], [tensor_info("w", dims)], bytes(64)),
             rf"tensor w has {len(dims)} dimensions \(GGML_MAX_DIMS is 4\)")


def test_element_count_overflow(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([], [tensor_info("w", [2**32, 2**32])]), r"overflows a 64-bit element count")
    _refused(tmp_path, gguf_file([], [tensor_info("w", [2**63 + 1])]), r"overflows a 64-bit element count")


def test_offsets_past_end(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([], [tensor_info("w", [8], offset=2**40)], bytes(32)),
             r"tensor w: data at offset 1099511627776 \+ 32 bytes runs past the end of the file")
    _refused(tmp_path, gguf_file([], [tensor_info("w", [8], offset=2**64 - 32)], bytes(32)), r"overflows")


def test_alignment(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([], [tensor_info("w", [8], offset=4)], bytes(64)),
             r"tensor w: data offset 4 is not aligned to 32")
    _refused(tmp_path, gguf_file([kv("general.alignment", U32, 24)], []), r"general.alignment 24 is not a power of two")


def test_tensor_types(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([], [tensor_info("w", [8], ttype=77)], bytes(32)),
             r"tensor w has unknown ggml type 77")
    q8 = int(gguf.GGMLQuantizationType.Q8_0)
    _refused(tmp_path, gguf_file([], [tensor_info("w", [30], ttype=q8)], bytes(64)),
             r"row length 30 is not a multiple of its type's block size 32")


def test_long_tensor_name(tmp_path: Path) -> None:
    _refused(tmp_path, gguf_file([], [tensor_info("w" * 64, [8])], bytes(32)), r"longer than 63 bytes")


def test_special_token_ids_below_vocab(tmp_path: Path) -> None:
    base = [kv("tokenizer.ggml.tokens", ARRAY, ["a", "b", "c"], STRING)]
    _refused(tmp_path, gguf_file(base + [kv("tokenizer.ggml.eos_token_id", U32, 3)], []),
             r"tokenizer.ggml.eos_token_id 3 is not below the vocabulary size 3")
    _refused(tmp_path, gguf_file(base + [kv("tokenizer.ggml.padding_token_id", U32, 2**31)], []),
             r"padding_token_id 2147483648 is not below")
    _refused(tmp_path, gguf_file(base + [kv("tokenizer.ggml.token_type", ARRAY, [1, 1], I32)], []),
             r"tokenizer.ggml.token_type has 2 entries for 3 tokens")
    _refused(tmp_path, gguf_file([kv("tokenizer.ggml.tokens", ARRAY, [1, 2], U32)], []),
             r"tokenizer.ggml.tokens is not an array of strings")
    check_gguf(_write(tmp_path, gguf_file(base + [kv("tokenizer.ggml.eos_token_id", U32, 2)], [])))


def test_real_file_checked_fast_even_when_huge(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                               tiny_llama_dir: Path) -> None:
    """The Llama-3 vocabulary header (400 k strings) of a 4 GiB file: checked from the header alone (the bytes the
    check reads are those of the header-only copy, not a byte more)."""
    src = converted(tmp_path_factory, tiny_llama_dir, "f16")
    data_start = check_gguf(src).data_start
    big = tmp_path / "big.gguf"
    with src.open("rb") as f, big.open("wb") as g:
        shutil.copyfileobj(f, g, data_start)  # only the header is copied; the tensor data is a sparse hole
        g.truncate(4 * 2**30)
    assert check_gguf(big).parsed_bytes == check_gguf(src).parsed_bytes <= data_start
    summary = info(big)
    assert summary["file_size"] == 4 * 2**30 and summary["vocab_size"] == 128256


def _sparse_copy(src: Path, dst: Path, size: int) -> Path:
    """The first `size` bytes of `src` as far as its header goes; beyond it a sparse hole (tensor data is never
    read by the pre-check, so a multi-MB copy is not needed)."""
    header = check_gguf(src).data_start
    with src.open("rb") as f, dst.open("wb") as g:
        g.write(f.read(min(size, header)))
        g.truncate(size)
    return dst


# Cut points into the real SmolLM2 GGUF (None: its data section's end, minus one byte) and the pre-check's verdict.
TRUNCATIONS: list[tuple[int | None, str]] = [
    (16, r"truncated: 16 bytes is shorter than a GGUF header \(24\)"),
    (1000, r"tensor count 272 is absurd for a 1000-byte file"),
    (200_000, r"tokenizer.ggml.tokens: array of 49152 elements cannot fit in the \d+ bytes left in the file"),
    (1_785_664, r"tensor token_embd.weight: data at offset 0 \+ 30081024 bytes runs past the end of the file"),
    (None, r"tensor [\w.]+: data at offset \d+ \+ \d+ bytes runs past the end of the file"),
]


@pytest.mark.parametrize("entry", ["ToolACE.load", "Model"])
def test_hostile_gguf_refused_before_llama_cpp_parses_it(tmp_path: Path, smollm2_gguf: Path, entry: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A truncated copy of a real model, through both public entry points: the pre-check's ModelFileError, and
    llama.cpp's loader is never called (it is replaced by a tripwire). The full file, the near miss, loads."""
    import llama_cpp

    from toolace.api import ToolACE
    from toolace.runtime.model import Model

    def load(path: Path) -> object:
        return ToolACE.load(str(path), n_ctx=256, kv_cache=False) if entry == "ToolACE.load" \
            else Model(path, n_ctx=256)

    real_llama = llama_cpp.Llama

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("llama.cpp was handed a file the pre-check should have refused")

    monkeypatch.setattr(llama_cpp, "Llama", tripwire)
    full = smollm2_gguf.stat().st_size
    for cut, message in TRUNCATIONS:
        size = full - 1 if cut is None else cut
        path = _sparse_copy(smollm2_gguf, tmp_path / f"cut-{size}.gguf", size)
        with pytest.raises(ModelFileError, match=rf"^cut-{size}.gguf: {message}"):
            load(path)
    monkeypatch.setattr(llama_cpp, "Llama", real_llama)
    loaded = load(smollm2_gguf)
    model = loaded.model if isinstance(loaded, ToolACE) else loaded
    assert isinstance(model, Model) and model.n_vocab == 49152
