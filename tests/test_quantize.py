"""Every llama.cpp quantization type, made from one F16 of the tiny Llama-3.1 fixture, loads and generates.

To keep this quick the two 128k-row tensors (token_embd, output: 98% of the tiny model's weights) are pinned to F16
(a copy, no quantization work) with llama-quantize's own override flags; every layer tensor gets the type under
test, so each type's quantizer and its llama.cpp kernels are exercised. Types llama.cpp will not make without an
importance matrix get one measured from the checkpoint's activations (tests/helpers/imatrix.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers.converted import converted
from tests.helpers.gguf_bytes import valid_gguf
from tests.helpers.imatrix import measure_imatrix, write_imatrix_dat, write_imatrix_gguf
from toolace.cli_convert import quantize_cmd
from toolace.convert.info import info
from toolace.convert.quantize import QUANT_TYPES, quantize, read_imatrix
from toolace.errors import InputError, ModelFileError

# On this model (GQA 2) llama.cpp picks IQ2_S for attn_k under these two, which then needs an imatrix too.
IMATRIX_ON_TINY = {"IQ3_XS", "IQ3_XXS"}


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    return converted(tmp_path_factory, tiny_llama_dir, "f16")


@pytest.fixture(scope="module")
def imatrices(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> dict[str, Path]:
    sums, n_tokens = measure_imatrix(tiny_llama_dir)
    d = tmp_path_factory.mktemp("imatrix")
    return {"gguf": write_imatrix_gguf(d / "imatrix.gguf", sums, n_tokens),
            "dat": write_imatrix_dat(d / "imatrix.dat", sums, n_tokens)}


def _greedy(path: Path, n: int = 3) -> list[int]:
    from llama_cpp import Llama

    # One thread, for batches too (llama-cpp-python's default there is every core): on a busy 2-core machine ggml's
    # spinning thread barrier made 2 threads up to 300x slower per token.
    llm = Llama(str(path), n_ctx=32, n_batch=32, logits_all=True, verbose=False, n_threads=1, n_threads_batch=1)
    try:
        tokens = llm.tokenize(b"Hello, world", add_bos=True)
        llm.eval(tokens)
        out = []
        for _ in range(n):
            logits = np.asarray(llm.scores[llm.n_tokens - 1])
            assert np.isfinite(logits).all()
            out.append(int(np.argmax(logits)))
            llm.eval(out[-1:])
        return out
    finally:
        llm.close()


@pytest.mark.slow  # every quant type made, loaded and run (~80 s): make test-slow
def test_every_quant_type_loads_and_generates(tmp_path: Path, tiny_f16: Path, imatrices: dict[str, Path]) -> None:
    made = {}
    for name, qt in QUANT_TYPES.items():
        imatrix = None
        if qt.needs_imatrix or name in IMATRIX_ON_TINY:
            imatrix = imatrices["dat" if name == "IQ2_XXS" else "gguf"]  # both file formats in use
        out = quantize(tiny_f16, tmp_path / f"{name}.gguf", name, imatrix=imatrix,
                       output_tensor_type="F16", token_embedding_type="F16")
        summary = info(out)
        expected = {"COPY": "F16"}.get(name, name)
        assert summary["file_type"] == expected, name
        assert summary["tensor_count"] == 22 and summary["vocab_size"] == 128256
        tokens = _greedy(out)
        assert len(tokens) == 3 and all(0 <= t < 128256 for t in tokens), name
        made[name] = summary["file_size"]
        out.unlink()  # keep the temp folder small
    assert len(made) == len(QUANT_TYPES)
    assert made["Q2_K"] < made["Q4_K_M"] < made["Q8_0"] < made["F16"] < made["F32"]


def test_imatrix_types_refused_without_one(tmp_path: Path, tiny_f16: Path) -> None:
    needing = sorted(n for n, qt in QUANT_TYPES.items() if qt.needs_imatrix)
    assert needing == ["IQ1_M", "IQ1_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "Q2_K_S"]
    for name in needing:
        with pytest.raises(InputError, match=rf"{name} needs an importance matrix \(--imatrix FILE\)"):
            quantize(tiny_f16, tmp_path / "x.gguf", name)
    assert not (tmp_path / "x.gguf").exists()


def test_llama_cpp_refusal_is_reported_and_leaves_nothing(tmp_path: Path, tiny_f16: Path) -> None:
    """IQ3_XXS on a GQA-2 model needs an imatrix by llama.cpp's own rule; its message comes through."""
    with pytest.raises(ModelFileError, match=r"could not quantize .* to IQ3_XXS: .*requires an importance matrix"):
        quantize(tiny_f16, tmp_path / "x.gguf", "IQ3_XXS")
    assert list(tmp_path.iterdir()) == []


def test_requantizing_needs_the_flag(tmp_path: Path, tiny_f16: Path) -> None:
    q8 = quantize(tiny_f16, tmp_path / "q8.gguf", "Q8_0")
    with pytest.raises(ModelFileError, match=r"could not quantize q8.gguf to Q4_0: .*requantiz"):
        quantize(q8, tmp_path / "q4.gguf", "Q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8.gguf"]
    res = CliRunner().invoke(quantize_cmd, [str(q8), str(tmp_path / "q4.gguf"), "--type", "Q4_0",
                                            "--allow-requantize"])
    assert res.exit_code == 0 and info(tmp_path / "q4.gguf")["file_type"] == "Q4_0", res.output


def test_imatrix_formats_agree(imatrices: dict[str, Path]) -> None:
    a, b = read_imatrix(imatrices["gguf"]), read_imatrix(imatrices["dat"])
    assert a.keys() == b.keys() and "blk.0.ffn_down.weight" in a and "output.weight" in a
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
    assert a["blk.0.ffn_down.weight"].shape == (512,)


def test_imatrix_for_another_model_refused(tmp_path: Path, tiny_f16: Path) -> None:
    from tests.helpers.imatrix import write_imatrix_gguf as write

    other = write(tmp_path / "other.gguf", {"blk.0.something_else.weight": np.ones(4, np.float32)}, 1)
    with pytest.raises(InputError, match=r"no imatrix entry matches a tensor of"):
        quantize(tiny_f16, tmp_path / "x.gguf", "IQ2_XXS", imatrix=other)
    (tmp_path / "bad.dat").write_bytes(b"\x05\x00\x00\x00\x03\x00")
    with pytest.raises(ModelFileError, match=r"imatrix file truncated"):
        read_imatrix(tmp_path / "bad.dat")


def test_bad_names_and_inputs(tmp_path: Path, tiny_f16: Path) -> None:
    with pytest.raises(InputError, match=r"unknown quantization type 'Q9_9'; choose one of F32, F16"):
        quantize(tiny_f16, tmp_path / "x.gguf", "Q9_9")
    with pytest.raises(InputError, match=r"unknown tensor type 'Q7'"):
        quantize(tiny_f16, tmp_path / "x.gguf", "Q8_0", output_tensor_type="Q7")
    hostile = tmp_path / "hostile.gguf"
    hostile.write_bytes(valid_gguf()[:-8])
    with pytest.raises(ModelFileError, match=r"hostile.gguf: tensor w: data .* runs past the end"):
        quantize(hostile, tmp_path / "x.gguf", "Q8_0")
    assert not (tmp_path / "x.gguf").exists()


def test_aliases_and_cli(tmp_path: Path, tiny_f16: Path) -> None:
    runner = CliRunner()
    pins = ["--output-tensor-type", "q8_0", "--token-embedding-type", "Q8_0"]
    result = runner.invoke(quantize_cmd, [str(tiny_f16), str(tmp_path / "a.gguf"), "--type", "q4_k", *pins])
    assert result.exit_code == 0, result.output
    assert info(tmp_path / "a.gguf")["file_type"] == "Q4_K_M"
    result = runner.invoke(quantize_cmd, [str(tiny_f16), str(tmp_path / "b.gguf"), "--type", "IQ1_S"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: IQ1_S needs an importance matrix (--imatrix FILE): llama.cpp refuses to make it without one, "
        "the quality loss would be severe"]
