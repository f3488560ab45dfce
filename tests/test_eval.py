"""`toolace eval` end to end on SmolLM2: a few BFCL questions per category, the JSON report, the click command,
and `--compare` of a model with itself. Kept small: every question is a real generation on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolace.errors import InputError
from toolace.eval.cli import eval_cmd
from toolace.eval.evaluate import compare, evaluate

CATEGORY_KEYS = {"n", "correct", "accuracy", "tool_choice", "call_outputs", "valid", "validity", "cut_by_max_tokens",
                 "latency_mean_s", "latency_median_s"}
QUESTION_KEYS = {"id", "category", "tool_choice", "correct", "reason", "calls", "raw", "valid", "errors",
                 "finish_reason", "latency_s", "completion_tokens"}


def test_evaluate_smollm2(smollm2_gguf: Path, bfcl_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    report = evaluate(str(smollm2_gguf), data=str(bfcl_dir), categories="simple_python,parallel,irrelevance",
                      limit=1, json_out=str(out), max_tokens=96, progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))  # the file is the returned report
    assert not list(tmp_path.glob(".*.part"))  # the atomic write left no temporary behind
    assert {"model", "data", "tool_choice", "tool_choice_note", "max_tokens", "categories", "overall",
            "questions"} <= report.keys()
    assert list(report["categories"]) == ["simple_python", "parallel", "irrelevance"]
    for name, s in report["categories"].items():
        assert s.keys() >= CATEGORY_KEYS and s["n"] == 1, name
        assert 0.0 <= s["accuracy"] <= 1.0
        assert s["tool_choice"] == (["auto"] if name == "irrelevance" else ["required"])
    for row in report["questions"]:
        assert row.keys() >= QUESTION_KEYS
        if row["tool_choice"] == "required" and row["finish_reason"] != "length":
            # The guarantee under test: in call mode every finished output is a parsed, schema-valid call list.
            assert row["valid"] and row["calls"], row
        if row["finish_reason"] == "length":
            assert not row["valid"]  # cut outputs are reported apart, never as valid
    for name in ("simple_python", "parallel"):
        s = report["categories"][name]
        assert s["validity"] in (1.0, None)
        assert s["valid"] + s["cut_by_max_tokens"] == s["n"]
    assert report["overall"]["n"] == 3


def test_eval_command_prints_table(smollm2_gguf: Path, bfcl_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(eval_cmd, ["--model", str(smollm2_gguf), "--data", str(bfcl_dir), "--categories",
                                           "simple_python", "--limit", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "category" in result.output and "simple_python" in result.output and "overall" in result.output
    assert json.loads(out.read_text())["categories"]["simple_python"]["n"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--categories", "simple_cobol"], "no BFCL_v4_simple_cobol.json in"),
    (["--categories", "../simple_python"], "is not a BFCL category name"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--max-tokens", "-5"], "--max-tokens must be between"),
])
def test_eval_command_bad_input(bfcl_dir: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(eval_cmd, ["--data", str(bfcl_dir), *args])
    assert result.exit_code == InputError.exit_code
    assert message in result.output and "Traceback" not in result.output


def test_compare_model_with_itself(smollm2_gguf: Path, bfcl_dir: Path) -> None:
    report = compare(str(smollm2_gguf), str(smollm2_gguf), data=str(bfcl_dir), categories="simple_python",
                     limit=1, max_tokens=64, transcripts=1, progress=False)
    assert report["call_agreement_overall"] == 1.0 and report["questions"] == 1
    token = report["token"]
    assert token["transcripts"] == 1 and token["positions"] > 5
    assert abs(token["kl_mean"]) < 1e-6 and token["top1_agreement"] == 1.0


def test_eval_any_category_file_in_the_layout(smollm2_gguf: Path, bfcl_dir: Path, tmp_path: Path) -> None:
    """A BFCL v4 file of a category the project never shipped (live_simple) is scored from the same layout."""
    data = tmp_path / "bfcl"
    (data / "possible_answer").mkdir(parents=True)
    rows = (bfcl_dir / "BFCL_v4_simple_python.json").read_text().splitlines()[:2]
    answers = (bfcl_dir / "possible_answer" / "BFCL_v4_simple_python.json").read_text().splitlines()[:2]
    rename = lambda line: line.replace('"simple_python_', '"live_simple_')  # noqa: E731
    (data / "BFCL_v4_live_simple.json").write_text("\n".join(map(rename, rows)) + "\n")
    (data / "possible_answer" / "BFCL_v4_live_simple.json").write_text("\n".join(map(rename, answers)) + "\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(eval_cmd, ["--model", str(smollm2_gguf), "--data", str(data), "--categories",
                                           "live_simple", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    cat = report["categories"]["live_simple"]
    assert cat["n"] == 2 and cat["tool_choice"] == ["required"]
    assert all(q["id"].startswith("live_simple_") for q in report["questions"])


def test_eval_without_data_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLACE_BFCL_DIR", raising=False)
    monkeypatch.setenv("TOOLACE_HOME", str(tmp_path))
    result = CliRunner().invoke(eval_cmd, ["--categories", "simple_python"])
    assert result.exit_code == InputError.exit_code
    assert "no BFCL data folder given" in result.output and "bfcl-eval" in result.output
