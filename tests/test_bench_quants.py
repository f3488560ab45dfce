"""`toolace bench quants`: the per-quant table from one unquantized source. The type list and bad input are tables
(each rejection with a near miss that passes); the held-aside transcripts are asserted disjoint from the calibration
ones; a real run on the tiny Llama-3.1 fixture (converted to F32 by the project's converter, quantized by
llama.cpp, a function-calling and a generic imatrix measured inside llama.cpp) checks the report's figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolace.cli import main
from toolace.errors import InputError
from toolace.eval.bench_quants import QuantSpec, parse_types, split_transcripts
from toolace.eval.generic_text import generic_chunks

ACCEPT = [
    ("Q4_K_M", [QuantSpec("Q4_K_M", None)]),
    ("q4_k_m+fc", [QuantSpec("Q4_K_M", "fc")]),  # case-insensitive, as quantize's --type
    ("Q4_K_M,Q4_K_M+fc,Q4_K_M+generic", [QuantSpec("Q4_K_M", None), QuantSpec("Q4_K_M", "fc"),
                                        QuantSpec("Q4_K_M", "generic")]),
    ("IQ2_XS+generic", [QuantSpec("IQ2_XS", "generic")]),
    (" Q8_0 , Q2_K ", [QuantSpec("Q8_0", None), QuantSpec("Q2_K", None)]),
]
# (rejected, what the error names, its near miss that passes)
REJECT = [
    ("IQ2_XS", "needs an importance matrix", "IQ2_XS+fc"),
    ("Q4_K_M+wiki", "after '+' comes an imatrix kind", "Q4_K_M+generic"),
    ("Q4_K_M+", "after '+' comes an imatrix kind", "Q4_K_M"),
    ("Q4_K_X", "Q4_K_X", "Q4_K_M"),
    ("Q8_0,q8_0", "twice", "Q8_0,Q8_0+fc"),
    (" , ", "names no quant type", "Q8_0"),
]


@pytest.mark.parametrize("types,expected", ACCEPT)
def test_types_accepted(types: str, expected: list[QuantSpec]) -> None:
    assert parse_types(types) == expected


@pytest.mark.parametrize("types,message,near_miss", REJECT)
def test_types_rejected_with_a_near_miss(types: str, message: str, near_miss: str) -> None:
    with pytest.raises(InputError, match=message.replace("+", r"\+")):
        parse_types(types)
    assert parse_types(near_miss)


def test_held_aside_transcripts_are_disjoint_from_calibration(bfcl_dir: Path) -> None:
    calib, held = split_transcripts(str(bfcl_dir), 200, 40)
    assert len(calib) == 200 and len(held) == 40
    assert not {q.id for q, _ in calib} & {q.id for q, _ in held}
    assert {q.category for q, _ in held} == {q.category for q, _ in calib}  # every call category on both sides
    with pytest.raises(InputError, match="overlap"):
        split_transcripts(str(bfcl_dir), 1_000, 400)  # the ~1,100 call questions cannot give both


def test_generic_chunks_hold_exactly_the_tokens_asked_for() -> None:
    tokenize = lambda s: [len(w) for w in s.split()]  # noqa: E731 - any tokenizer: one token per word
    chunks = generic_chunks(tokenize, 1, 1_000, 64)
    assert sum(map(len, chunks)) == 1_000 and all(c[0] == 1 and len(c) <= 64 for c in chunks)
    with pytest.raises(InputError, match="fewer than"):
        generic_chunks(tokenize, 1, 10**9, 64)


def _bench(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["bench", "quants", *args])
    return res.exit_code, res.output


BAD = [  # (arguments after SRC, what the error names)
    (["--limit", "0"], "--limit must be a whole number of at least 1"),
    (["--held-aside", "0"], "--held-aside must be a whole number of at least 1"),
    (["--calibration", "0"], "--limit must be a whole number of transcripts from 1"),
    (["--types", "IQ2_XS"], "needs an importance matrix"),
    (["--max-tokens", "0"], "--max-tokens must be between 1"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_flags_one_error_nothing_written(tmp_path: Path, tiny_llama_dir: Path, bfcl_dir: Path,
                                            args: list[str], message: str) -> None:
    out = tmp_path / "q.json"
    code, text = _bench(str(tiny_llama_dir), "--data", str(bfcl_dir), "--json", str(out), "--workdir",
                        str(tmp_path), *args)
    assert code == 2 and message in text and text.startswith("Error:"), text
    assert sorted(tmp_path.iterdir()) == []


def test_bad_sources_one_error_nothing_written(tmp_path: Path, smollm2_gguf: Path, bfcl_dir: Path) -> None:
    empty_data = tmp_path / "no-bfcl"
    empty_data.mkdir()
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a model")
    generic = tmp_path / "empty.txt"
    generic.write_text("\n\n")
    work = tmp_path / "work"
    work.mkdir()
    cases = [  # (source, extra flags, what the error names)
        (str(smollm2_gguf), [], "is Q4_1: the reference must be unquantized"),
        (str(not_gguf), [], "model.gguf"),
        (str(smollm2_gguf), ["--data", str(empty_data)], "no-bfcl"),
        (str(smollm2_gguf), ["--generic-text", str(generic)], "holds no text"),
    ]
    for src, flags, message in cases:
        data = [] if "--data" in flags else ["--data", str(bfcl_dir)]
        code, text = _bench(src, *data, "--json", str(tmp_path / "q.json"), "--workdir", str(work), *flags)
        assert code == 2 and message in text, (src, flags, text)
        assert not (tmp_path / "q.json").exists() and sorted(work.iterdir()) == []


@pytest.mark.slow  # converts, measures two imatrices, makes three quants and measures each (~1.5 min)
def test_a_real_run_on_the_tiny_llama(tmp_path: Path, tiny_llama_dir: Path, bfcl_dir: Path) -> None:
    out, png = tmp_path / "q.json", tmp_path / "q.png"
    code, text = _bench(str(tiny_llama_dir), "--types", "Q8_0,Q4_K_M+generic,IQ2_XS+fc", "--data", str(bfcl_dir),
                        "--limit", "1", "--held-aside", "3", "--calibration", "3", "--max-tokens", "24",
                        "--json", str(out), "--plot", str(png), "--workdir", str(tmp_path))
    assert code == 0, text
    table = [line for line in text.splitlines() if line.startswith("|")]  # progress lines go to stderr
    assert len(table) == 2 + 4 and table[2].startswith("| F32 (reference) |")
    r = json.loads(out.read_text())
    rows = {q["label"]: q for q in r["quants"]}
    assert list(rows) == ["F32 (reference)", "Q8_0", "Q4_K_M+generic", "IQ2_XS+fc"]
    assert not set(r["held_aside"]["ids"]) & {r["calibration"]["first"]}
    cal = r["calibration"]
    assert cal["fc"]["tokens"] == cal["generic"]["tokens"] > 0  # the generic imatrix saw as many tokens
    assert rows["F32 (reference)"]["kl_mean"] == 0 and rows["F32 (reference)"]["call_agreement"] == 1
    sizes = [rows[k]["file_bytes"] for k in rows]
    assert sizes == sorted(sizes, reverse=True)  # F32 > Q8_0 > Q4_K_M > IQ2_XS
    assert 0 < rows["Q8_0"]["kl_mean"] < rows["Q4_K_M+generic"]["kl_mean"] < rows["IQ2_XS+fc"]["kl_mean"]
    assert "IQ2_XS" in rows["IQ2_XS+fc"]["tensor_types"] and "Q8_0" in rows["Q8_0"]["tensor_types"]
    for q in r["quants"]:
        assert q["positions"] if "positions" in q else q["label"].endswith("(reference)")
        assert q["decode_tokens_per_s"] > 0 and q["peak_rss_bytes"] > 0 and q["questions"] == 5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json", "q.png"]  # the work folder is gone
