"""Hostile and broken checkpoints: each is refused with a ModelFileError naming the fault, and nothing is written."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.checkpoints import (
    MINI_CONFIG,
    mini_checkpoint,
    mini_shapes,
    mini_tensors,
    reshard,
    write_safetensors,
)
from toolace.convert.checkpoint import open_checkpoint
from toolace.convert.convert import convert
from toolace.errors import ModelFileError


def _refused(src: Path, out: Path, match: str) -> None:
    with pytest.raises(ModelFileError, match=match):
        convert(src, out, "f32")
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d / "model.gguf"


def test_missing_config(tmp_path: Path, out: Path) -> None:
    ckpt = mini_checkpoint(tmp_path / "m")
    (ckpt / "config.json").unlink()
    _refused(ckpt, out, r"config.json is missing")


def test_config_not_json(tmp_path: Path, out: Path) -> None:
    ckpt = mini_checkpoint(tmp_path / "m")
    (ckpt / "config.json").write_bytes(b"{not json")
    _refused(ckpt, out, r"config.json: not valid JSON")


def test_unsupported_architecture_is_named(tmp_path: Path, out: Path) -> None:
    ckpt = mini_checkpoint(tmp_path / "m", config={**MINI_CONFIG, "architectures": ["GPT2LMHeadModel"]})
    _refused(ckpt, out, r"architecture GPT2LMHeadModel is not supported \(supported: LlamaForCausalLM\)")


def test_unsupported_rope_scaling(tmp_path: Path, out: Path) -> None:
    cfg = {**MINI_CONFIG, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    _refused(mini_checkpoint(tmp_path / "m", config=cfg), out, r"RoPE scaling type 'yarn' is not supported")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "consolidated.00.pth", "model.pt", "model.ckpt"])
def test_pickle_only_refused(tmp_path: Path, out: Path, name: str) -> None:
    ckpt = tmp_path / "m"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(MINI_CONFIG))
    (ckpt / name).write_bytes(b"\x80\x04K\x01.")  # a pickle: never opened
    _refused(ckpt, out, rf"only pickle checkpoints \({name}\) found; pickles can run code")


def test_no_weights_at_all(tmp_path: Path, out: Path) -> None:
    ckpt = tmp_path / "m"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(MINI_CONFIG))
    _refused(ckpt, out, r"no \*.safetensors files found")


@pytest.mark.parametrize(("blob", "match"), [
    (b"", r"file is 0 bytes, shorter than 8"),
    (struct.pack("<Q", 2**40), r"header length 1099511627776 is over"),
    (struct.pack("<Q", 1000) + b"{}", r"header length 1000 runs past the end"),
    (struct.pack("<Q", 9) + b"not json!", r"malformed safetensors header: not JSON"),
    (struct.pack("<Q", 2) + b"[]", r"malformed safetensors header: not a JSON object"),
    (struct.pack("<Q", 2) + b"\xff\xfe", r"malformed safetensors header: not JSON"),
])
def test_malformed_header(tmp_path: Path, out: Path, blob: bytes, match: str) -> None:
    ckpt = mini_checkpoint(tmp_path / "m")
    (ckpt / "model.safetensors").write_bytes(blob)
    _refused(ckpt, out, match)


def _with_metadata(ckpt: Path, metadata: str) -> Path:
    """Rewrite the checkpoint's safetensors header with `metadata` (raw JSON text, which json.dumps could not write
    at these depths) as its __metadata__ value, the tensor entries unchanged."""
    blob = (ckpt / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    text = f'{{"__metadata__": {metadata}, {blob[9:8 + n].decode()}'  # blob[8] is the header's opening brace
    write_safetensors(ckpt / "model.safetensors", mini_tensors(), raw_header=text.encode())
    return ckpt


DEEP, DIGITS = 100_000, 5_000  # past the JSON parser's recursion limit; past Python's 4,300-digit int limit
# Headers that break the JSON parser itself, each paired with a near miss that must still open.
PARSER_LIMITS = [
    ("[" * DEEP + "]" * DEEP, r"model.safetensors: malformed safetensors header: JSON nests too deeply"),
    ("[" * 50 + "]" * 50, None),  # near miss: nested, but like real metadata
    ("1" * DIGITS, r"model.safetensors: malformed safetensors header: not JSON \(Exceeds the limit \(4300 digits\)"),
    ("1" * 4_000, None),  # near miss: long, within the limit
]


@pytest.mark.parametrize(("metadata", "match"), PARSER_LIMITS, ids=["deep", "deep-near-miss", "digits",
                                                                    "digits-near-miss"])
def test_header_past_the_json_parser_limits(tmp_path: Path, out: Path, metadata: str, match: str | None) -> None:
    ckpt = _with_metadata(mini_checkpoint(tmp_path / "m"), metadata)
    if match:
        _refused(ckpt, out, match)
    else:
        assert set(open_checkpoint(ckpt).tensors) == set(mini_shapes())


@pytest.mark.parametrize(("digits", "match"), [
    (DIGITS, r"config.json: not valid JSON: Exceeds the limit \(4300 digits\)"),
    (4_000, None),  # near miss
])
def test_config_number_past_the_digit_limit(tmp_path: Path, out: Path, digits: int, match: str | None) -> None:
    ckpt = mini_checkpoint(tmp_path / "m")
    (ckpt / "config.json").write_text(json.dumps(MINI_CONFIG)[:-1] + ', "note": ' + "7" * digits + "}")
    if match:
        _refused(ckpt, out, match)
    else:
        assert open_checkpoint(ckpt).config["note"] % 10 == 7


@pytest.mark.parametrize(("patch", "match"), [
    ({"dtype": "F32", "shape": [8], "data_offsets": [0, 10**12]}, r"data_offsets end 1000000000000 is beyond"),
    ({"dtype": "F32", "shape": [8], "data_offsets": [64, 32]}, r"data_offsets \[64, 32\] out of order"),
    ({"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}, r"span 16 bytes but shape \(8,\) in F32 needs 32"),
    ({"dtype": "F32", "shape": [-8], "data_offsets": [0, 32]}, r"shape \[-8\] is not a list"),
    ({"dtype": "F32", "shape": [1, 1, 1, 1, 8], "data_offsets": [0, 32]}, r"at most 4 non-negative"),
    ({"shape": [8], "data_offsets": [0, 32]}, r"dtype missing"),
    ({"dtype": "F32", "shape": [8]}, r"data_offsets None is not \[begin, end\]"),
    ("nope", r"entry is not an object"),
])
def test_bad_header_entries(tmp_path: Path, out: Path, patch: object, match: str) -> None:
    ckpt = mini_checkpoint(tmp_path / "m")
    write_safetensors(ckpt / "model.safetensors", mini_tensors(), header_patch={"model.norm.weight": patch})
    _refused(ckpt, out, match)


@pytest.mark.parametrize("dtype", ["I64", "F64", "F8_E4M3", "U8", "BOOL"])
def test_bad_dtype(tmp_path: Path, out: Path, dtype: str) -> None:
    tensors = mini_tensors()
    tensors["model.norm.weight"] = (dtype, (8,), bytes(8 * 8))
    ckpt = mini_checkpoint(tmp_path / "m", tensors=tensors)
    _refused(ckpt, out, rf"tensor model.norm.weight: dtype {dtype} is not supported \(only BF16, F16, F32\)")


def test_overlapping_tensors(tmp_path: Path, out: Path) -> None:
    ckpt = mini_checkpoint(tmp_path / "m")
    patch = {"model.norm.weight": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}
    write_safetensors(ckpt / "model.safetensors", mini_tensors(), header_patch=patch)
    _refused(ckpt, out, r"overlap")


def test_missing_tensor(tmp_path: Path, out: Path) -> None:
    tensors = mini_tensors()
    del tensors["model.layers.0.mlp.up_proj.weight"]
    _refused(mini_checkpoint(tmp_path / "m", tensors=tensors), out,
             r"tensor model.layers.0.mlp.up_proj.weight is missing")


def test_extra_tensor(tmp_path: Path, out: Path) -> None:
    tensors = mini_tensors()
    tensors["model.layers.1.mlp.up_proj.weight"] = ("F32", (16, 8), bytes(16 * 8 * 4))
    _refused(mini_checkpoint(tmp_path / "m", tensors=tensors), out,
             r"unexpected tensor model.layers.1.mlp.up_proj.weight \(not part of a Llama model with 1 layers\)")


def test_shape_mismatch(tmp_path: Path, out: Path) -> None:
    tensors = mini_tensors()
    tensors["model.layers.0.self_attn.k_proj.weight"] = ("F32", (8, 8), bytes(8 * 8 * 4))
    _refused(mini_checkpoint(tmp_path / "m", tensors=tensors), out,
             r"tensor model.layers.0.self_attn.k_proj.weight has shape \(8, 8\), config.json implies \(4, 8\)")


def test_bad_config_values(tmp_path: Path, out: Path) -> None:
    _refused(mini_checkpoint(tmp_path / "a", config={**MINI_CONFIG, "hidden_size": -8}), out,
             r"hidden_size = -8 is not a positive integer")
    _refused(mini_checkpoint(tmp_path / "b", config={**MINI_CONFIG, "num_key_value_heads": 3}), out,
             r"do not form a grouped-query attention layout")


def _sharded(tmp_path: Path, weight_map_patch: dict[str, str]) -> Path:
    ckpt = mini_checkpoint(tmp_path / "m")
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    weight_map = {n: "model-00001-of-00001.safetensors" for n in mini_shapes()} | weight_map_patch
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return ckpt


@pytest.mark.parametrize(("rel", "match"), [
    ("../x.safetensors", r"file name '../x.safetensors' points outside the checkpoint folder"),
    ("sub/../../x.safetensors", r"points outside the checkpoint folder"),
    ("/etc/passwd", r"file name '/etc/passwd' points outside the checkpoint folder"),
    ("missing.safetensors", r"shard 'missing.safetensors' is missing"),
    ("config.json", r"shard 'config.json' is not a .safetensors file"),
])
def test_index_paths_confined(tmp_path: Path, out: Path, rel: str, match: str) -> None:
    _refused(_sharded(tmp_path, {"model.norm.weight": rel}), out, match)


def test_index_lists_absent_tensor(tmp_path: Path, out: Path) -> None:
    ckpt = _sharded(tmp_path, {"model.ghost.weight": "model-00001-of-00001.safetensors"})
    _refused(ckpt, out, r"tensor model.ghost.weight is listed but not in model-00001-of-00001.safetensors")


def test_shard_holds_unlisted_tensor(tmp_path: Path, out: Path) -> None:
    ckpt = mini_checkpoint(tmp_path / "m")
    weight_map = {n: "model.safetensors" for n in mini_shapes() if n != "model.norm.weight"}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _refused(ckpt, out, r"tensor model.norm.weight is not listed for this file in model.safetensors.index.json")


def test_resharded_tiny_llama_converts_identically(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """A sharded checkpoint with an index converts to the same bytes as the single-file one."""
    sharded = reshard(tiny_llama_dir, tmp_path / "s" / tiny_llama_dir.name, n_shards=3)  # same name, same metadata
    assert len(open_checkpoint(sharded).tensors) == len(open_checkpoint(tiny_llama_dir).tensors)
    a = convert(tiny_llama_dir, tmp_path / "a.gguf", "bf16")
    b = convert(sharded, tmp_path / "b.gguf", "bf16")
    assert a.read_bytes() == b.read_bytes()


def test_read_rows_is_exact(tmp_path: Path) -> None:
    tensors = mini_tensors("F16")
    ckpt = open_checkpoint(mini_checkpoint(tmp_path / "m", tensors=tensors))
    dtype, shape, raw = tensors["model.layers.0.mlp.down_proj.weight"]
    full = np.frombuffer(raw, dtype="<f2").reshape(shape)
    np.testing.assert_array_equal(ckpt.read_rows("model.layers.0.mlp.down_proj.weight", 2, 5), full[2:5])


def _mini_tokenizer(root: Path, **patch: object) -> Path:
    vocab = {t: i for i, t in enumerate(["a", "b", "c", "d", "e", "ab", "cd", "abcd", "Ġ", "Ġa", "x", "y", "z"])}
    tok = {"version": "1.0", "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "post_processor": None, "decoder": {"type": "ByteLevel"},
           "added_tokens": [{"id": 13, "content": "<|end|>", "special": True}],
           "model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"], "c d", ["ab", "cd"], ["Ġ", "a"]]}}
    tok.update(patch)
    (root / "tokenizer.json").write_text(json.dumps(tok))
    (root / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>", "chat_template": "{{ x }}"}))
    return root


def test_mini_checkpoint_with_gpt2_tokenizer_converts(tmp_path: Path) -> None:
    from toolace.convert.gguf_check import check_gguf

    ckpt = _mini_tokenizer(mini_checkpoint(tmp_path / "m"))
    out = convert(ckpt, tmp_path / "m.gguf", "f16")
    kv = check_gguf(out).kv
    assert kv["tokenizer.ggml.pre"] == "gpt2" and kv["tokenizer.ggml.tokens"].values[13:] == ["<|end|>", "[PAD14]",
                                                                                              "[PAD15]"]
    assert kv["tokenizer.ggml.token_type"].values[13:] == [3, 4, 4]  # control, then user-defined padding rows
    assert kv["tokenizer.ggml.merges"].values == ["a b", "c d", "ab cd", "Ġ a"]
    assert kv["tokenizer.ggml.eos_token_id"] == kv["tokenizer.ggml.eot_token_id"] == 13
    assert kv["tokenizer.ggml.add_bos_token"] is False and kv["tokenizer.chat_template"] == "{{ x }}"


@pytest.mark.parametrize(("patch", "match"), [
    ({"pre_tokenizer": {"type": "Whitespace"}}, r"pre-tokenizer \(Whitespace\) is not one llama.cpp implements"),
    ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}},
     r"pre-tokenizer \(ByteLevel\) is not one"),
    ({"normalizer": {"type": "NFC"}}, r"has a normalizer"),
    ({"model": {"type": "WordPiece", "vocab": {}}}, r"tokenizer model 'WordPiece' is not supported"),
    ({"added_tokens": [{"id": 99, "content": "<x>", "special": True}]},
     r"token '<x>' has id 99, outside the model's vocab_size 16"),
    ({"added_tokens": [{"id": 14, "content": "\ud800", "special": True}]}, r"not valid Unicode \(lone surrogate\)"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]}}, r"merge 'a b c' is not a pair"),
])
def test_tokenizer_refusals(tmp_path: Path, out: Path, patch: dict, match: str) -> None:
    _refused(_mini_tokenizer(mini_checkpoint(tmp_path / "m"), **patch), out, match)


def test_tokenizer_files_missing_or_wrong(tmp_path: Path, out: Path) -> None:
    ckpt = mini_checkpoint(tmp_path / "m")
    (ckpt / "tokenizer.model").write_bytes(b"\x0a\x00")
    _refused(ckpt, out, r"tokenizer.json is missing \(only a SentencePiece tokenizer.model")
    _mini_tokenizer(ckpt)
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    _refused(ckpt, out, r"eos_token '<\|nope\|>' is not in the vocabulary")


def test_f16_overflow_refused(tmp_path: Path, out: Path) -> None:
    tensors = mini_tensors()
    tensors["model.layers.0.mlp.up_proj.weight"] = ("F32", (16, 8), np.full(128, 1e5, "<f4").tobytes())
    ckpt = _mini_tokenizer(mini_checkpoint(tmp_path / "m", tensors=tensors))
    from toolace.errors import InputError

    with pytest.raises(InputError, match=r"value 100000 overflows F16; convert with --outtype bf16 or f32"):
        convert(ckpt, out, "f16")
    assert not out.exists()
    convert(ckpt, out, "bf16")
