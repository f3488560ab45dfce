"""The grammar for the example tools: tables of must-accept and must-reject call strings (each rejection with a
near miss that must pass), for every tool_choice mode, checked by llguidance and llama.cpp's GBNF parser."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES
from toolace.grammars.check import check_text
from toolace.grammars.compile import compile_grammar
from toolace.grammars.schema import load_tools

WEATHER = load_tools(EXAMPLES / "weather.json")
TRAVEL = load_tools(EXAMPLES / "bfcl_travel.json")

ACCEPT = [
    (WEATHER, "[get_weather(location='Paris')]"),
    (WEATHER, '[get_weather(location="Paris", unit="celsius")]'),
    (WEATHER, "[get_weather(location='Paris',unit='fahrenheit'), get_weather(location='Rome')]"),
    (WEATHER, r"[get_weather(location='St. John\'s')]"),
    (TRAVEL, "[hotel_booking(hotel_name='Ritz', location='Paris', check_in_date='2025-06-01', nights=30)]"),
    (TRAVEL, "[Currency Converter(amount=12.5, from='EUR', to='USD')]"),
    (TRAVEL, "[flight.book(departure_location='SFO', destination_location='JFK', date='2025-01-02', "
             "direct_flight=True)]"),
]
# (tools, rejected text, near miss that must be accepted)
REJECT = [
    (WEATHER, "[get_weather(unit='celsius')]", "[get_weather(location='x', unit='celsius')]"),  # missing required
    (WEATHER, "[get_weather(location='x', unit='kelvin')]", "[get_weather(location='x', unit='celsius')]"),  # enum
    (WEATHER, "[get_weather(location=5)]", "[get_weather(location='5')]"),  # wrong type
    (WEATHER, "[get_weather(location='x', city='y')]", "[get_weather(location='x')]"),  # unknown parameter
    (WEATHER, "[get_forecast(location='x')]", "[get_weather(location='x')]"),  # unknown function
    (WEATHER, "[get_weather(unit='celsius', location='x')]", "[get_weather(location='x', unit='celsius')]"),  # order
    (WEATHER, "[get_weather(location='x', location='y')]", "[get_weather(location='x')]"),  # twice
    (WEATHER, "[get_weather(location='a\nb')]", "[get_weather(location='a\\nb')]"),  # raw newline
    (WEATHER, "[get_weather(location='x')] trailing", "[get_weather(location='x')]"),  # text after calls
    (WEATHER, "[]", "[get_weather(location='x')]"),  # empty call list
    (TRAVEL, "[hotel_booking(hotel_name='R', location='P', check_in_date='d', nights=31)]",
     "[hotel_booking(hotel_name='R', location='P', check_in_date='d', nights=29)]"),  # maximum
    (TRAVEL, "[hotel_booking(hotel_name='R', location='P', check_in_date='d', nights=0)]",
     "[hotel_booking(hotel_name='R', location='P', check_in_date='d', nights=1)]"),  # minimum
    (TRAVEL, "[Currency Converter(amount='12', from='EUR', to='USD')]",
     "[Currency Converter(amount=12, from='EUR', to='USD')]"),  # string for float
    (TRAVEL, "[flight.book(departure_location='a', destination_location='b', date='c', direct_flight=true)]",
     "[flight.book(departure_location='a', destination_location='b', date='c', direct_flight=True)]"),  # Python bool
]


@pytest.mark.parametrize(("tools", "text"), ACCEPT)
def test_accepts(tools: list, text: str) -> None:
    verdict = check_text(compile_grammar(tools, "auto").gbnf, text)
    assert verdict.ok, verdict.where(text)


@pytest.mark.parametrize(("tools", "bad", "near"), REJECT)
def test_rejects_with_near_miss(tools: list, bad: str, near: str) -> None:
    gbnf = compile_grammar(tools, "required").gbnf
    assert not check_text(gbnf, bad).ok
    assert check_text(gbnf, near).ok, check_text(gbnf, near).where(near)


def test_tool_choice_modes() -> None:
    call, text = "[get_weather(location='x')]", "It is sunny."
    auto, required, none = (compile_grammar(WEATHER, m).gbnf for m in ("auto", "required", "none"))
    assert check_text(auto, call).ok and check_text(auto, text).ok
    assert check_text(required, call).ok and not check_text(required, text).ok
    assert check_text(none, text).ok and not check_text(none, call).ok
    assert not check_text(auto, " [get_weather(location='x')]").ok  # whitespace cannot hide an unchecked call
    named = compile_grammar(TRAVEL, "Currency Converter").gbnf
    assert check_text(named, "[Currency Converter(amount=1, from='a', to='b')]").ok
    assert not check_text(named, "[flight.book(departure_location='a', destination_location='b', date='c')]").ok
    single = compile_grammar(WEATHER, "required", parallel=False).gbnf
    assert check_text(single, call).ok and not check_text(single, call[:-1] + ", " + call[1:]).ok


LLAMA_PARSE = """
import sys, llama_cpp
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_default_params()
params.vocab_only = True
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), params)
vocab = llama_cpp.llama_model_get_vocab(model)
smpl = llama_cpp.llama_sampler_init_grammar(vocab, sys.stdin.read().encode(), b"root")
print("OK" if smpl else "NULL")
"""


@pytest.mark.parametrize("mode", ["auto", "required", "none", "get_weather"])
def test_gbnf_loads_in_llama_cpp_parser(mode: str, smollm2_gguf) -> None:
    """llama.cpp's own GBNF parser takes the grammar (in a subprocess: a parser crash must fail, not kill, the run)."""
    gbnf = compile_grammar(WEATHER + TRAVEL, mode).gbnf
    proc = subprocess.run([sys.executable, "-c", LLAMA_PARSE, str(smollm2_gguf)], input=gbnf, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-2000:]


def test_annotated_grammar_lists_post_checks() -> None:
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {
        "n": {"type": "number", "multipleOf": 0.5}}, "required": ["n"]}}]
    text = compile_grammar(tools).annotated()
    assert "# post-checked after decoding: f: /properties/n: multipleOf" in text


def test_repeated_free_form_dict_key_parses_as_python_does() -> None:
    """The grammar cannot keep a free-form dict's keys unique, so the parser reads a repeated key as Python does
    (the last value wins) rather than refusing text the decoder was allowed to produce (BFCL simple_python_337)."""
    from toolace.grammars.parser import parse_calls
    from toolace.grammars.schema import normalise_tools

    tools = normalise_tools([{"name": "f", "parameters": {"type": "object", "properties": {
        "d": {"type": "object", "additionalProperties": {"type": "integer"}}}, "required": ["d"]}}])
    text = "[f(d={'a': 1, 'b': 2, 'a': 3})]"
    assert check_text(compile_grammar(tools, "required").gbnf, text).ok
    assert parse_calls(text, tools)[0].arguments == {"d": ast.literal_eval("{'a': 1, 'b': 2, 'a': 3}")}
