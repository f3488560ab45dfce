"""The CLI's contract: exit codes, exact one-line errors, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import EXAMPLES
from toolace.cli import main
from toolace.runtime.chunks import PREFILL_CHUNK

WEATHER = str(EXAMPLES / "weather.json")


@pytest.mark.parametrize(("content", "message"), [
    ("{", "not valid JSON"),
    ("[]", "tools list is empty"),
    ('[{"description": "no name"}]', "tool #0: no 'name'"),
    ('[{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "quaternion"}}}}]',
     "unknown type 'quaternion'"),
    ('[{"name": "f"}, {"name": "f"}]', "duplicate tool name 'f'"),
    ('[{"name": "f(x"}]', "contains '('"),
])
def test_bad_tools_file_exit_2_one_line(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "tools.json"
    bad.write_text(content)
    for args in (["call", "hi", "--tools", str(bad)], ["grammar", "--tools", str(bad)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        assert message in res.output and res.output.startswith("Error: ")
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_missing_tools_file() -> None:
    res = CliRunner().invoke(main, ["grammar", "--tools", "/nonexistent/tools.json"])
    assert res.exit_code == 2 and "tools file '/nonexistent/tools.json': cannot read" in res.output


def test_grammar_check_exit_codes() -> None:
    ok = CliRunner().invoke(main, ["grammar", "--tools", WEATHER, "--check", "[get_weather(location='Paris')]"])
    assert ok.exit_code == 0
    assert ok.output == '[{"name": "get_weather", "arguments": {"location": "Paris"}}]\n'
    bad = CliRunner().invoke(main, ["grammar", "--tools", WEATHER, "--check", "[get_weather(city='Paris')]"])
    assert bad.exit_code == 1
    assert bad.output == ("not in the language: stops matching at character 13 (after '[get_weather('): "
                          "'c' is not allowed there\n")
    unknown = CliRunner().invoke(main, ["grammar", "--tools", WEATHER, "--tool-choice", "nope"])
    assert unknown.exit_code == 2 and "unknown tool 'nope'" in unknown.output


def test_grammar_prints_gbnf() -> None:
    res = CliRunner().invoke(main, ["grammar", "--tools", WEATHER, "--tool-choice", "required"])
    assert res.exit_code == 0
    assert res.output.splitlines()[0] == "# tool_choice: required; parallel calls: yes"
    assert 'root ::= "[" call (sep call)* "]"' in res.output


def test_bench_convert_reports_time_throughput_and_memory(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "convert.json"
    res = CliRunner().invoke(main, ["bench", "convert", str(tiny_llama_dir), "--quant", "Q8_0", "--json", str(out),
                                    "--workdir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [line.split()[0] for line in lines] == ["checkpoint", "convert", "cp", "quantize", "imports"]
    import json

    report = json.loads(out.read_text())
    # the tiny checkpoint's largest tensor is its 128,256-row embedding; the budget is that plus 512 MB
    assert report["largest_tensor_bytes"] == 128256 * 256 * 2 and report["within_budget"]
    assert 0 < report["import_only_rss_bytes"] < report["convert_peak_rss_bytes"] < report["budget_bytes"]
    assert report["convert_seconds"] > 0 and report["quantize_seconds"] > 0 and report["cp_fsync_seconds"] > 0
    assert report["output_bytes"] > report["quant_bytes"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convert.json"]  # temporary outputs removed


@pytest.mark.parametrize(("args", "message"), [
    (["--outtype", "q8_0"], "--outtype must be one of f32, f16, bf16 (the quantize step takes --quant), got 'q8_0'"),
    (["--quant", "Q9_9"], "Q9_9"),
    (["--quant", "IQ2_XS"], "IQ2_XS needs an importance matrix"),
])
def test_bench_convert_bad_flags_exit_2(tiny_llama_dir: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(main, ["bench", "convert", str(tiny_llama_dir), *args])
    assert res.exit_code == 2 and res.output.startswith("Error: ") and message in res.output, res.output


@pytest.mark.slow  # the whole runtime benchmark, once (~30 s): make test-slow
def test_bench_runs_every_figure_and_writes_json_and_png(smollm2_gguf: Path, bfcl_dir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    res = CliRunner().invoke(main, ["bench", "--model", str(smollm2_gguf), "--data", str(bfcl_dir), "--runs", "1",
                                    "--max-tokens", "8", "--json", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    import json

    report = json.loads(out.read_text())
    for engine in ("llguidance", "llama"):
        assert report["grammar_ms_per_token"][engine]["n"] >= 1 and report["decode_tok_per_s"][engine]["median"] > 0
    assert report["decode_tok_per_s"]["raw_llama_cpp"]["median"] > 0 and report["runtime_over_raw"] > 0
    assert report["grammar_ms_per_token"]["llama_cpp_python_default"]["grammar"]["tokens"] >= 1
    assert report["e2e_call"]["ratio"] > 0 and report["ttft"]["tool_prompt_tokens"] >= 2000
    warm = report["e2e_call"]["warm"]  # the tool list cached: the question and its chunk evaluated, no more
    question = report["prompt_tokens"] - warm["tools_prefix_tokens"]
    assert 0 < warm["evaluated_prompt_tokens"] <= question + PREFILL_CHUNK - 1
    assert warm["evaluated_prompt_tokens"] < report["prompt_tokens"] and warm["ratio"] > 0
    assert report["ttft"]["warm_over_cold"] < 1 and report["peak_rss_mb"] > 0
    sp = report["speculation"]  # a decode carries one token or more; prose measured both ways
    assert sp["ratio"] > 0 and sp["tokens_per_decode"] >= 1 and sp["decodes"] <= sp["tokens"]
    assert sp["prose"]["plain_seconds"] > 0 and sp["prose"]["spec_seconds"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.output.splitlines()[0].startswith(f"model {smollm2_gguf}")


def test_call_normalises_each_tool_once_and_compiles_one_grammar(smollm2_gguf: Path, tmp_path: Path) -> None:
    """One `toolace call` does the tool work once (counted by the grammars package itself, not mocked). A tool set
    no earlier test built, so the content-hash cache cannot hide the work."""
    import json

    from toolace.grammars.schema import WORK

    tools = json.loads(Path(WEATHER).read_text())
    tools[0]["function"]["description"] += f" (unique to {tmp_path.name})"
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(tools))
    before = dict(WORK)
    res = CliRunner().invoke(main, ["call", "What's the weather in Paris?", "--tools", str(path), "--model",
                                    str(smollm2_gguf), "--tool-choice", "required", "--max-tokens", "48", "--json"])
    assert res.exit_code == 0, res.output
    done = {k: WORK[k] - before.get(k, 0) for k in ("normalise_tool", "compile_grammar")}
    assert done == {"normalise_tool": len(tools), "compile_grammar": 1}
    assert json.loads(res.output)["valid"] is True
