"""Conversion correctness on the tiny Llama-3.1 fixture: llama.cpp's logits and tokenization of the converted GGUF
against transformers on the same checkpoint, the metadata written, info, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers.converted import converted
from toolace.cli_convert import convert_cmd, info_cmd
from toolace.convert.info import info
from toolace.convert.llama import llama_params, rope_freqs
from toolace.errors import InputError

TEXT = ("The quick brown fox 🦊 jumps over 12345 lazy dogs; 你好世界! def f(x): return x**2\n") * 12
TOKENIZE = [
    "Hello world", " leading space", "trailing space ", "  two  spaces\n\n\nnewlines\t\ttabs",
    "Ünïcödé façade, naïve café — résumé", "Привет, мир! Как дела?", "日本語のテキストと中文混合", "한국어 문장입니다.",
    "مرحبا بالعالم", "हिन्दी पाठ", "emoji 🙂🦊👩‍👩‍👧‍👦🇫🇷 and ZWJ", "numbers 1 12 123 1234 12345 3.14159 -42 1e-10",
    "def f(x):\n    return [i**2 for i in range(x)]  # comment\n", "if (a != b && c <= d) { x->y(); }",
    "[get_weather(city='Tokyo', unit=\"celsius\")]", "I'm sure they'll've DONE it's THE'S", "\u00a0nbsp\u2009thin",
    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", "<html><body class=\"x\">&amp;</body></html>",
]


@pytest.fixture(scope="module")
def hf_model(tiny_llama_dir: Path):  # noqa: ANN201 - a transformers model
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_llama_dir: Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def reference(hf_model, hf_tokenizer) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    import torch

    ids = hf_tokenizer(TEXT).input_ids
    with torch.no_grad():
        return ids, hf_model(torch.tensor([ids])).logits[0].numpy()


def _llama_logits(path: Path, ids: list[int], f32_cache: bool) -> np.ndarray:
    import llama_cpp

    kv = llama_cpp.GGML_TYPE_F32 if f32_cache else llama_cpp.GGML_TYPE_F16
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, logits_all=True, verbose=False, type_k=kv, type_v=kv,
                          n_threads=1, n_threads_batch=1)  # see tests/test_quantize.py::_greedy
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


@pytest.mark.parametrize(("outtype", "f32_cache", "rel_tol"), [
    ("f32", True, 1e-5),  # everything in F32: only summation order differs
    ("f32", False, 1e-3),  # llama.cpp's default F16 KV cache: the acceptance bound
    ("f16", False, 2e-3),  # F16 weights and activations: eps 2^-11, accumulated over 2 layers
    ("bf16", False, 2e-2),  # BF16 activations: eps 2^-8
])
def test_logits_match_transformers(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path,
                                   reference: tuple[list[int], np.ndarray], outtype: str, f32_cache: bool,
                                   rel_tol: float) -> None:
    ids, ref = reference
    assert len(ids) > 300  # long enough for Llama-3.1's RoPE scaling to matter (see the next test)
    got = _llama_logits(converted(tmp_path_factory, tiny_llama_dir, outtype), ids, f32_cache)
    scale = float(np.abs(ref).max())
    diff = float(np.abs(got - ref).max())
    print(f"{outtype} (KV {'F32' if f32_cache else 'F16'}): max |diff| {diff:.3g}, logit scale {scale:.3g}, "
          f"relative {diff / scale:.3g}")
    assert diff <= rel_tol * scale


def test_rope_scaling_is_what_the_check_sees(tiny_llama_dir: Path, reference: tuple[list[int], np.ndarray]) -> None:
    """Without Llama-3.1's RoPE scaling the logits move by > 5x the acceptance bound (and ~800x the F32 bound the
    converted F32 file meets), so the parity check above really checks the rope_freqs tensor."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ids, ref = reference
    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, config=cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        unscaled = plain(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(unscaled - ref).max() > 5 * 1e-3 * np.abs(ref).max()


def test_tokenization_matches_hf(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path,
                                 hf_tokenizer) -> None:  # noqa: ANN001
    import llama_cpp

    llm = llama_cpp.Llama(str(converted(tmp_path_factory, tiny_llama_dir, "bf16")), n_ctx=64, vocab_only=True,
                          verbose=False)
    try:
        for text in TOKENIZE:
            want = hf_tokenizer(text, add_special_tokens=False).input_ids
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == want, text
            assert llm.detokenize(want, special=True).decode() == text, text
        # BOS comes from the GGUF's add_bos_token, as from HF's post-processor
        assert llm.tokenize(b"hi", add_bos=True) == hf_tokenizer("hi").input_ids
    finally:
        llm.close()


def test_metadata_and_tensors(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> None:
    path = converted(tmp_path_factory, tiny_llama_dir, "f16")
    reader = gguf.GGUFReader(path)  # gguf's own reader accepts the file
    # name parts that gguf's heuristics may or may not find in the folder name (tiny-llama-<hash>)
    name_parts = {"general.basename", "general.finetune", "general.version", "general.organization"}
    keys = set(reader.fields) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"} - name_parts
    assert keys == {
        "general.architecture", "general.type", "general.name", "general.size_label", "general.license",
        "general.base_model.count", "general.base_model.0.name", "general.base_model.0.organization",
        "general.base_model.0.repo_url", "general.tags", "general.languages", "general.sampling.top_p",
        "general.sampling.temp", "general.file_type", "general.quantization_version",
        "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
        "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count",
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id", "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token", "tokenizer.chat_template",
    }
    f = reader.fields
    assert f["general.license"].contents() == "apache-2.0"
    assert f["general.base_model.0.repo_url"].contents() == "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct"
    assert f["tokenizer.ggml.pre"].contents() == "llama-bpe"
    assert [f[f"tokenizer.ggml.{k}_token_id"].contents() for k in ("bos", "eos", "eot", "eom")] == \
        [128000, 128009, 128009, 128008]
    assert f["llama.rope.freq_base"].contents() == 500000.0 and f["llama.context_length"].contents() == 131072
    field = f["tokenizer.ggml.token_type"]
    types = np.concatenate([field.parts[i] for i in field.data])  # .contents() is slow for 128k items
    assert set(types[:128000]) == {gguf.TokenType.NORMAL} and set(types[128000:]) == {gguf.TokenType.CONTROL}
    assert len(f["tokenizer.ggml.merges"].data) == 280147
    config = json.loads((tiny_llama_dir / "tokenizer_config.json").read_text())
    assert f["tokenizer.chat_template"].contents() == config["chat_template"]

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 9 + 4
    for name, t in tensors.items():
        want = gguf.GGMLQuantizationType.F32 if len(t.shape) == 1 or name == "rope_freqs.weight" \
            else gguf.GGMLQuantizationType.F16
        assert t.tensor_type == want, name
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    freqs = np.asarray(tensors["rope_freqs.weight"].data)
    np.testing.assert_array_equal(freqs, rope_freqs(llama_params(cfg)))
    assert freqs[0] == 1.0 and freqs[-1] == 8.0 and ((freqs > 1) & (freqs < 8)).any()  # all three bands present


def test_info_and_cli(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> None:
    path = converted(tmp_path_factory, tiny_llama_dir, "f16")
    summary = info(path)
    assert {k: summary[k] for k in ("architecture", "file_type", "context_length", "tokenizer_model",
                                    "tokenizer_pre", "vocab_size", "chat_template", "tensor_count")} == {
        "architecture": "llama", "file_type": "F16", "context_length": 131072, "tokenizer_model": "gpt2",
        "tokenizer_pre": "llama-bpe", "vocab_size": 128256, "chat_template": True, "tensor_count": 22}
    assert summary["parameter_count"] == 2 * 128256 * 256 + 2 * (256 * 256 * 2 + 128 * 256 * 2 + 3 * 256 * 512
                                                                 + 2 * 256) + 256 + 32
    runner = CliRunner()
    result = runner.invoke(info_cmd, [str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == json.loads(json.dumps(summary))
    assert "tokenizer_pre: llama-bpe" in runner.invoke(info_cmd, [str(path)]).output

    out = tmp_path / "cli.gguf"
    result = runner.invoke(convert_cmd, [str(tiny_llama_dir), "-o", str(out), "--outtype", "BF16"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out) and info(out)["file_type"] == "BF16"
    result = runner.invoke(convert_cmd, [str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.gguf")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: '{tmp_path / 'nowhere'}' is not a hub repo id (owner/name of letters, digits, '-', '_', '.') "
        "nor an existing local folder"]
    result = runner.invoke(info_cmd, [str(tiny_llama_dir / "config.json")])
    assert result.exit_code == 2 and "config.json: not a GGUF file" in result.output


def test_outtype_checks(tmp_path: Path, tiny_llama_dir: Path) -> None:
    with pytest.raises(InputError, match=r"unknown quantization type 'f8'"):
        from toolace.convert.convert import convert

        convert(tiny_llama_dir, tmp_path / "x.gguf", "f8")
    with pytest.raises(InputError, match=r"IQ2_XXS needs an importance matrix: convert to f16/bf16"):
        convert(tiny_llama_dir, tmp_path / "x.gguf", "IQ2_XXS")
    with pytest.raises(InputError, match=r"--revision applies to hub repo ids"):
        convert(tiny_llama_dir, tmp_path / "x.gguf", "f16", revision="main")
    assert list(tmp_path.iterdir()) == []
