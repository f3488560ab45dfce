"""Fuzzing the schema compiler and the call parser: any input gives a result or one ToolaceError, never another
exception and never a hang. `make stress` (TOOLACE_STRESS=1) runs >= 10,000 inputs each."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolace.errors import SchemaError
from toolace.grammars.check import check_text, to_llguidance
from toolace.grammars.compile import compile_grammar
from toolace.grammars.parser import CallParseError, StreamParser, parse_calls
from toolace.grammars.schema import normalise_tools

N = 10_000 if os.environ.get("TOOLACE_STRESS") else 300
# make test replays a fixed sequence (a red CI run must be reproducible); make stress explores fresh inputs.
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                derandomize=not os.environ.get("TOOLACE_STRESS"))

KEYS = ["type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
        "minimum", "maximum", "minLength", "maxLength", "pattern", "format", "minItems", "maxItems",
        "additionalProperties", "prefixItems", "nullable", "description", "name", "parameters"]
TYPES = ["string", "integer", "number", "boolean", "null", "array", "object", "dict", "float", "tuple", "any",
         "String", "HashMap", "long", "bogus", ""]
leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.sampled_from(TYPES),
                 st.sampled_from(["#/$defs/a", "#", "^[a-z]+$", "(?=x)", "[", "date", "uuid"]),
                 st.text(max_size=8))
json_values = st.recursive(leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), kids, max_size=5)),
    max_leaves=25)
tool_like = st.fixed_dictionaries({"name": st.sampled_from(["f", "g.h", "My Tool", "", "a(b"]),
                                   "parameters": st.fixed_dictionaries(
                                       {"type": st.sampled_from(["object", "dict", "string"]),
                                        "properties": st.dictionaries(st.sampled_from(["a", "b", "class", "x y"]),
                                                                      json_values, max_size=3)},
                                       optional={"required": st.lists(st.sampled_from(["a", "b", "z"])),
                                                 "$defs": st.dictionaries(st.just("a"), json_values, max_size=1)})})


@FUZZ
@given(st.one_of(json_values, st.lists(tool_like, min_size=1, max_size=3)))
def test_fuzz_schema_compiler(tools: Any) -> None:
    try:
        compiled = compile_grammar(tools, "auto")
    except SchemaError:
        return
    to_llguidance(compiled.gbnf)  # what compiles must load (fail closed otherwise)


TOOLS = normalise_tools([{"name": "get weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "opts": {}}}}, {"name": "a.b", "parameters": {}}])
PIECES = list("[](){}=,'\" \\:.-0123456789eE") + ["True", "False", "None", "get weather", "a.b", "city", "days",
                                                    "opts"]
call_text = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@FUZZ
@given(st.one_of(st.text(max_size=80), call_text))
def test_fuzz_call_parser(text: str) -> None:
    try:
        calls = parse_calls(text, TOOLS)
    except CallParseError:
        calls = None
    stream = StreamParser(TOOLS)
    for i in range(0, len(text), 3):
        stream.feed(text[i:i + 3])  # never raises on partial or broken input
    if calls is not None:
        json.dumps([c.as_dict() for c in calls])  # parsed arguments are always JSON


def test_deeply_nested_literal_is_an_error_not_a_crash() -> None:
    text = "[a.b(" + "[" * 5000 + "]" * 5000 + ")]"
    try:
        parse_calls(text, TOOLS)
    except CallParseError as e:
        assert "nests deeper" in str(e) or "unknown parameter" in str(e)


CRASH_PROBE = """
import sys, llama_cpp
from toolace.runtime.model import Model
from toolace.runtime.constraints import LlamaGrammarConstraint
from toolace.errors import ToolaceError
m = Model(sys.argv[1], n_ctx=256)
try:
    LlamaGrammarConstraint(m, sys.stdin.read())
    print("LOADED")
except ToolaceError as e:
    print("ERROR", type(e).__name__)
for bad in (-1, m.n_vocab, 2**31 - 1):
    for op in (lambda t: m.token_text(t), lambda t: m.eval([t])):
        try:
            op(bad)
            print("NO-ERROR", bad)
        except ToolaceError:
            pass
print("DONE")
"""


def test_bad_grammars_and_token_ids_never_crash_llama_cpp(smollm2_gguf) -> None:
    """In a subprocess, so a segfault fails this test instead of killing the suite."""
    for gbnf in ('root ::= root "a" | "b"', 'root ::= "unterminated', "root ::= undefined-rule", ""):
        proc = subprocess.run([sys.executable, "-c", CRASH_PROBE, str(smollm2_gguf)], input=gbnf, text=True,
                              capture_output=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert proc.returncode == 0, (gbnf, proc.returncode, proc.stderr[-1500:])
        assert "ERROR" in proc.stdout.split("\n")[0] or "LOADED" in proc.stdout, proc.stdout
        assert "NO-ERROR" not in proc.stdout and proc.stdout.strip().endswith("DONE")


def test_check_text_on_hostile_text_is_bounded() -> None:
    gbnf = compile_grammar(TOOLS, "required").gbnf
    assert not check_text(gbnf, "[" * 100_000).ok


SEED_GGUF = None


def _seed_gguf() -> bytes:
    global SEED_GGUF
    if SEED_GGUF is None:
        from tests.helpers.gguf_bytes import valid_gguf

        SEED_GGUF = valid_gguf()
    return SEED_GGUF


@FUZZ
@given(st.data())
def test_fuzz_gguf_precheck(data: st.DataObject) -> None:
    """Byte flips, splices and truncations of a valid GGUF: the pre-check passes it or raises ModelFileError."""
    from toolace.convert.gguf_check import check_gguf
    from toolace.errors import ModelFileError

    raw = bytearray(_seed_gguf())
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert"]), label="kind")
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)), label="pos")
        if kind == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and raw:
            raw[pos:pos + 8] = data.draw(st.binary(min_size=8, max_size=8))
        elif kind == "truncate":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(max_size=16))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.gguf"
        path.write_bytes(bytes(raw))
        with contextlib.suppress(ModelFileError):
            check_gguf(path)


def test_empty_string_array_regression(tmp_path: Path) -> None:
    """Found by the fuzzer: an empty token list crashed the pre-check with ValueError instead of a clear verdict."""
    from tests.helpers.gguf_bytes import ARRAY, STRING, gguf_file, kv, tensor_info
    from toolace.convert.gguf_check import check_gguf
    from toolace.errors import ModelFileError

    path = tmp_path / "empty-vocab.gguf"
    path.write_bytes(gguf_file([kv("general.architecture", STRING, "llama"), kv("tokenizer.ggml.tokens", ARRAY, [],
                                                                              STRING)], [tensor_info("w", [8])],
                               data=bytes(32)))
    with contextlib.suppress(ModelFileError):
        check_gguf(path)
