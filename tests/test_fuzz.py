"""Fuzzing the schema compiler and the call parser: any input gives a result or one ToolaceError, never another
exception and never a hang. `make stress` (TOOLACE_STRESS=1) runs >= 10,000 inputs each."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolace.errors import SchemaError
from toolace.grammars.check import check_text, to_llguidance
from toolace.grammars.compile import compile_grammar
from toolace.grammars.leftrec import check_llama_gbnf, left_recursive_rule
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
    check_llama_gbnf(compiled.gbnf)  # in both engines: never flagged as left-recursive


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
    # Into a parameter that takes any value, so the parser really descends (a.b has no parameter: it would stop at
    # "unknown parameter" before nesting). 5000 levels would overflow a recursive parser without the depth bound.
    for opening, closing in (("[", "]"), ("(", ",)"), ('{"k": ', "}")):
        deep = "[get weather(opts=" + opening * 5000 + "1" + closing * 5000 + ")]"
        with pytest.raises(CallParseError, match=r"^literal nests deeper than 64 \(at character \d+\)$"):
            parse_calls(deep, TOOLS)
        with pytest.raises(CallParseError, match=r"^literal nests deeper than 64 "):  # one past the bound
            parse_calls("[get weather(opts=" + opening * 65 + "1" + closing * 65 + ")]", TOOLS)
        # near miss: exactly at the bound parses, and the value is kept whole
        (call,) = parse_calls("[get weather(opts=" + opening * 64 + "1" + closing * 64 + ")]", TOOLS)
        value, depth = call.arguments["opts"], 0
        while value != 1:
            value, depth = value["k"] if isinstance(value, dict) else value[0], depth + 1
        assert depth == 64


# Grammars handed straight to LlamaGrammarConstraint (not from compile_grammar): (GBNF, the error it must raise).
# Malformed GBNF is refused by the llguidance conversion before llama.cpp sees it. llguidance takes left recursion
# (it is an Earley parser), so check_llama_gbnf refuses it before llama.cpp does: llama.cpp misses left recursion
# through a nullable rule and then allocates until the process dies.
LEFT_RECURSIVE = ("SchemaError: grammar is left-recursive: rule {!r} can reach itself without consuming input "
                  "(llama.cpp's grammar engine cannot run it)")
LLGUIDANCE_REJECTED = "SchemaError: grammar rejected by llguidance: Failed to convert the grammar from GBNF to Lark: "
BAD_GRAMMARS: list[tuple[str, str]] = [
    ('root ::= root "a" | "b"', LEFT_RECURSIVE.format("root")),  # direct
    ('root ::= a\na ::= b "x" | "y"\nb ::= a', LEFT_RECURSIVE.format("a")),  # indirect
    ('root ::= n root "a" | "b"\nn ::= "c"?', LEFT_RECURSIVE.format("root")),  # through a nullable rule
    ('root ::= "unterminated', LLGUIDANCE_REJECTED + "Unexpected end of input"),
    ("root ::= undefined-rule", LLGUIDANCE_REJECTED + "Rule 'undefined-rule' not found"),
    ("", LLGUIDANCE_REJECTED + "No 'root' rule found"),
]
# Near misses: one change away from a bad grammar above, and loaded.
GOOD_GRAMMARS = ['root ::= "a" root | "b"', 'root ::= a\na ::= "x" b | "y"\nb ::= a',
                 'root ::= n root "a" | "b"\nn ::= "c"', 'root ::= "terminated"',
                 "root ::= defined-rule\ndefined-rule ::= \"x\""]

# (GBNF, the rule reported as left-recursive), each followed by its near miss (None: not left-recursive); the table
# is data, in tests/data/left_recursion.json, grouped by how the recursion hides.
LEFT_RECURSION: list[tuple[str, str | None]] = [
    row for group in json.loads((Path(__file__).parent / "data" / "left_recursion.json").read_text())["groups"]
    for case in group["cases"]
    for row in ((case["gbnf"], case["left_recursive_rule"]), (case["near_miss"], None))
]
# Not GBNF that llama.cpp parses: refused as such (fail closed), never a RecursionError or a hang.
NOT_LLAMA_GBNF: list[tuple[str, str]] = [
    ('root ::= "a"\n| "b"', "expecting a rule name at character 13"),  # a continuation line at top level
    ('root = "a"', "expecting ::= at character 5"),
    ("root ::= a_b", "expecting newline or end at character 10"),  # llama.cpp's names have no underscore
    ('root ::= "abc', "unexpected end of input at character 9"),
    ('root ::= ""?', r"expecting preceding item to \*/\+/\?/\{ at character 11"),
    ("root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000, "parentheses nest deeper than 256"),
]


@pytest.mark.parametrize(("gbnf", "rule"), LEFT_RECURSION)
def test_left_recursion_found_before_llama_cpp(gbnf: str, rule: str | None) -> None:
    assert left_recursive_rule(gbnf) == rule
    to_llguidance(gbnf)  # llguidance takes every one of them: only this check stands before llama.cpp
    if rule is None:
        check_llama_gbnf(gbnf)
    else:
        with pytest.raises(SchemaError, match="^" + re.escape(LEFT_RECURSIVE.format(rule)[len("SchemaError: "):])):
            check_llama_gbnf(gbnf)


@pytest.mark.parametrize(("gbnf", "message"), NOT_LLAMA_GBNF)
def test_left_recursion_check_fails_closed(gbnf: str, message: str) -> None:
    with pytest.raises(SchemaError, match=f"^grammar is not GBNF llama.cpp can parse: {message}"):
        check_llama_gbnf(gbnf)


def test_left_recursion_check_is_linear() -> None:
    """20,000 rules chained through a nullable rule (0.5 MB): checked either way (a recursive or quadratic check
    would overflow the stack or take minutes; the suite's running time shows the latter, no clock is asserted)."""
    n = 20_000
    for tail, rule in (('root "x"', "root"), ('"x" root', None)):
        chain = 'root ::= r0\nn ::= "a"?\n' + "".join(f"r{i} ::= n r{i + 1}\n" for i in range(n)) + f"r{n} ::= {tail}"
        assert left_recursive_rule.__wrapped__(chain) == rule


CRASH_PROBE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a runaway allocation aborts here, not the machine
from toolace.runtime.model import Model
from toolace.runtime.constraints import LlamaGrammarConstraint
from toolace.errors import ToolaceError

def outcome(fn):
    try:
        fn()
        return "OK"
    except ToolaceError as e:
        return f"{type(e).__name__}: {e}"

def report(*row):
    print(json.dumps(row), flush=True)  # flushed: a crash still shows how far the probe got

m = Model(sys.argv[1], n_ctx=256)
report("n_vocab", m.n_vocab)
for gbnf in json.loads(sys.stdin.read()):
    report("grammar", gbnf, outcome(lambda: LlamaGrammarConstraint(m, gbnf)))
ops = {"token_text": lambda t: m.token_text(t), "token_text plain": lambda t: m.token_text(t, special=False),
       "detokenizer": lambda t: m.detokenizer().add(t), "eval": lambda t: (m.reset(), m.eval([t]))}
for t in (-1, m.n_vocab, 2**31 - 1, 0, m.n_vocab - 1):
    for name, op in ops.items():
        report("token", name, t, outcome(lambda: op(t)))
report("done")
"""


def test_bad_grammars_and_token_ids_never_crash_llama_cpp(smollm2_gguf: Path) -> None:
    """In a subprocess, so a segfault fails this test instead of killing the suite. Every bad grammar and token id
    is refused with its own error; the near misses load."""
    grammars = [g for g, _ in BAD_GRAMMARS] + GOOD_GRAMMARS
    proc = subprocess.run([sys.executable, "-c", CRASH_PROBE, str(smollm2_gguf)], input=json.dumps(grammars),
                          text=True, capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('["')]  # not gdb's lines
    assert proc.returncode == 0 and rows[-1] == ["done"], (proc.returncode, rows[-3:], proc.stderr[-1500:])
    (_, n_vocab), *rows = rows[:-1]
    verdicts = {row[1]: row[2] for row in rows if row[0] == "grammar"}
    for gbnf, error in BAD_GRAMMARS:
        assert verdicts[gbnf].startswith(error), (gbnf, verdicts[gbnf])
    for gbnf in GOOD_GRAMMARS:
        assert verdicts[gbnf] == "OK", (gbnf, verdicts[gbnf])
    tokens = {(op, t): verdict for kind, op, t, verdict in (r for r in rows if r[0] == "token")}
    assert len(tokens) == 5 * 4
    for (op, t), verdict in tokens.items():
        if 0 <= t < n_vocab:
            assert verdict == "OK", (op, t, verdict)
        else:
            assert verdict == f"GenerationError: token id {t} outside the vocabulary (0..{n_vocab - 1})", (op, t)


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
            header = check_gguf(path)
            assert header.parsed_bytes <= header.data_start <= len(raw)  # never reads past its header


def test_tensorless_file_without_padding_regression(tmp_path: Path) -> None:
    """Found by `make stress`: a GGUF with no tensors that ends right after its metadata (41 bytes, so the padded
    data section would start at 64) passed with its data section placed past the end of the file. Its empty data
    section now starts at the end of the file, as llama.cpp reads it; a tensor there is still refused."""
    from tests.helpers.gguf_bytes import STRING, gguf_file, kv, tensor_info
    from toolace.convert.gguf_check import check_gguf
    from toolace.errors import ModelFileError

    path = tmp_path / "f.gguf"
    found = b"GGUF\x03" + bytes(11) + b"\x01" + bytes(7) + b"\x04" + bytes(7) + b"\x14" + bytes(7) + b"g"
    for raw in (found, gguf_file([kv("general.architecture", STRING, "llama")], [], alignment=1)):
        assert len(raw) % 32  # unpadded
        path.write_bytes(raw)
        header = check_gguf(path)
        assert header.tensors == [] and header.parsed_bytes == header.data_start == len(raw)
    path.write_bytes(gguf_file([kv("general.architecture", STRING, "llama")], [tensor_info("w", [8])], alignment=1))
    with pytest.raises(ModelFileError, match="runs past the end of the file"):
        check_gguf(path)


def test_empty_string_array_regression(tmp_path: Path) -> None:
    """Found by the fuzzer: an empty token list crashed the pre-check with ValueError instead of a clear verdict.
    The verdict: an empty string array is well formed (it passes, as an empty array), and an id that would index
    into the empty vocabulary is refused."""
    from tests.helpers.gguf_bytes import ARRAY, STRING, U32, gguf_file, kv, tensor_info
    from toolace.convert.gguf_check import check_gguf
    from toolace.errors import ModelFileError

    def write(extra: list[bytes]) -> Path:
        path = tmp_path / "empty-vocab.gguf"
        path.write_bytes(gguf_file([kv("general.architecture", STRING, "llama"),
                                    kv("tokenizer.ggml.tokens", ARRAY, [], STRING)] + extra,
                                   [tensor_info("w", [8])], data=bytes(32)))
        return path

    tokens = check_gguf(write([])).kv["tokenizer.ggml.tokens"]
    assert (tokens.count, tokens.values) == (0, [])
    with pytest.raises(ModelFileError, match=r"empty-vocab.gguf: tokenizer.ggml.bos_token_id 0 is not below the "
                                             r"vocabulary size 0$"):
        check_gguf(write([kv("tokenizer.ggml.bos_token_id", U32, 0)]))
