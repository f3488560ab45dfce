"""`toolace imatrix`: importance matrices measured inside llama.cpp on function-calling transcripts, for real GGUF
files (the demo SmolLM2 and the tiny Llama-3.1 fixture), checked against each file's own tensors and taken by
`toolace quantize --type IQ2_XS`, which refuses that type without one. One or two transcripts each keep it quick."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolace.cli import main
from toolace.convert.gguf_check import check_gguf
from toolace.convert.imatrix_file import ImatrixEntry, imatrix_format, write_imatrix_gguf
from toolace.convert.quantize import quantize, read_imatrix
from toolace.errors import InputError
from toolace.eval.imatrix import TOOL_RESULT, calibration_set, check_limit, transcript_messages

pytestmark = pytest.mark.slow  # two calibrations, two IQ2_XS quantizations (~1.5 min): `make test-slow`

# Pins the two vocabulary-sized tensors to a cheap type: the quantizer's work, and the test's time, go to the
# layers the imatrix is for.
PINS = {"output_tensor_type": "Q8_0", "token_embedding_type": "Q8_0"}


def _run(*args: str) -> tuple[int, list[str]]:
    res = CliRunner().invoke(main, ["imatrix", *args])
    return res.exit_code, res.output.strip().splitlines()


def _matmul_weights(model: Path) -> dict[str, int]:
    """{name: input columns} of the model's repeating-layer weight matrices, read from the GGUF header."""
    return {t.name: int(t.dims[0]) for t in check_gguf(model).tensors
            if t.name.startswith("blk.") and len(t.dims) >= 2}


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, tiny_llama_gguf: Path,
             bfcl_dir: Path) -> dict[str, tuple[Path, Path]]:
    """{label: (model, imatrix file)}: the demo in the GGUF layout, the tiny Llama in the legacy .dat one."""
    d = tmp_path_factory.mktemp("imatrix")
    out = {}
    for label, model, name, limit in (("demo", smollm2_gguf, "demo.imatrix.gguf", "1"),
                                    ("tiny", tiny_llama_gguf, "tiny.dat", "2")):
        code, lines = _run(str(model), "-o", str(d / name), "--data", str(bfcl_dir), "--limit", limit)
        assert code == 0 and lines == [str(d / name)], lines
        out[label] = (model, d / name)
    assert sorted(p.name for p in d.iterdir()) == ["demo.imatrix.gguf", "tiny.dat"]  # no temp file left
    return out


@pytest.mark.parametrize("label", ["demo", "tiny"])
def test_entries_match_the_models_matmul_weights(measured: dict[str, tuple[Path, Path]], label: str) -> None:
    model, path = measured[label]
    weights = read_imatrix(path)
    expected = _matmul_weights(model)
    assert sorted(weights) == sorted(expected) and len(expected) in (2 * 7, 30 * 7)
    for name, values in weights.items():
        assert values.shape == (expected[name],), name
        assert np.isfinite(values).all() and (values >= 0).all() and values.max() > 0, name


def test_iq2_xs_refused_without_the_imatrix_and_made_with_it(measured: dict[str, tuple[Path, Path]],
                                                             tmp_path: Path) -> None:
    for label, (model, path) in measured.items():
        requant = label == "demo"  # the demo ships as Q4_1
        with pytest.raises(InputError, match=r"IQ2_XS needs an importance matrix \(--imatrix FILE\)"):
            quantize(model, tmp_path / f"{label}.gguf", "IQ2_XS", allow_requantize=requant, **PINS)
        out = quantize(model, tmp_path / f"{label}.gguf", "IQ2_XS", imatrix=path, allow_requantize=requant, **PINS)
        assert check_gguf(out).kv["general.file_type"] == 20  # LLAMA_FTYPE_MOSTLY_IQ2_XS


def test_an_imatrix_for_another_model_is_refused(measured: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    (_, demo_imx), (tiny, tiny_imx) = measured["demo"], measured["tiny"]
    demo_w = read_imatrix(demo_imx)
    tiny_cols = _matmul_weights(tiny)
    same_names = tmp_path / "same-names.gguf"  # the demo's statistics under the tiny model's names: sizes differ
    write_imatrix_gguf(same_names, {n: ImatrixEntry(demo_w[n], 1) for n in tiny_cols})
    subset = tmp_path / "subset.gguf"  # near miss: the tiny model's own entries, some left out, is fine
    tiny_w = read_imatrix(tiny_imx)
    write_imatrix_gguf(subset, {n: ImatrixEntry(v, 1) for n, v in list(tiny_w.items())[:3]})
    cases = [
        (demo_imx, r"imatrix entries name no tensor of .*, e.g. blk\.10\.attn_k\.weight \(made for another model\?\)"),
        (same_names, r"imatrix entry blk\.0\.attn_k\.weight has 576 values but the tensor of .* has \d+ input columns"),
        (subset, None),
        (tiny_imx, None),
    ]
    for n, (imx, error) in enumerate(cases):
        out = tmp_path / f"out{n}.gguf"
        if error is None:
            assert quantize(tiny, out, "Q4_0", imatrix=imx, **PINS) == out
            continue
        with pytest.raises(InputError, match=error):
            quantize(tiny, out, "Q4_0", imatrix=imx, **PINS)
        assert not out.exists()
        res = CliRunner().invoke(main, ["quantize", str(tiny), str(out), "--type", "Q4_0", "--imatrix", str(imx)])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and not out.exists(), res.output


@pytest.mark.parametrize(("limit", "ok"), [(0, False), (-1, False), (100_001, False), (True, False), (1, True),
                                           (100_000, True)])
def test_limit(limit: int, ok: bool) -> None:
    if ok:
        assert check_limit(limit) == limit
    else:
        with pytest.raises(InputError, match=r"--limit must be a whole number of transcripts from 1 to 100000"):
            check_limit(limit)


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path: Path, tiny_llama_gguf: Path, bfcl_dir: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("these are not weights\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out" / "imatrix.gguf"
    cases = [
        ([str(not_gguf), "--data", str(bfcl_dir), "--limit", "1"], r"model\.gguf.*(GGUF|magic)"),
        ([str(tiny_llama_gguf), "--data", str(empty), "--limit", "1"], r"no BFCL_v4_simple_python\.json in .*empty"),
        ([str(tiny_llama_gguf), "--data", str(tmp_path / "absent"), "--limit", "1"], r"does not exist"),
        ([str(tiny_llama_gguf), "--data", str(bfcl_dir), "--limit", "0"], r"--limit must be a whole number"),
        ([str(tmp_path / "no-such.gguf"), "--data", str(bfcl_dir), "--limit", "1"], r"no model .*no-such\.gguf"),
    ]
    for args, message in cases:
        code, lines = _run(*args[:1], "-o", str(out), *args[1:])
        assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), (args, lines)
        assert re.search(message, lines[0]), (message, lines[0])
        assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_transcripts_are_calls_and_results_in_order(bfcl_dir: Path) -> None:
    picked = calibration_set(bfcl_dir, 5)
    assert len(picked) == 5 and len({q.category for q, _ in picked}) >= 4  # round-robin over the categories
    q, calls = picked[0]
    msgs = transcript_messages(q, calls)
    assert msgs[: len(q.messages)] == q.messages
    assert [m["role"] for m in msgs[len(q.messages):]] == ["assistant"] + ["tool"] * len(calls)
    assert [tc["function"]["name"] for tc in msgs[len(q.messages)]["tool_calls"]] == [c["name"] for c in calls]
    assert msgs[-1]["content"] == json.dumps(TOOL_RESULT)
    assert imatrix_format("x.DAT") == "dat" and imatrix_format("x.gguf") == imatrix_format("x") == "gguf"
