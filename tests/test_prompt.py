"""The ToolACE system prompt, byte for byte, and chat-template rendering in the sandbox."""

from __future__ import annotations

import pytest

from toolace.errors import InputError, TemplateError
from toolace.grammars.schema import normalise_tools
from toolace.limits import MAX_LITERAL_DEPTH, MAX_TEMPLATE_LOOP_STEPS, MAX_TEMPLATE_SECONDS
from toolace.runtime.prompt import LLAMA3_TEMPLATE, ChatTemplate, Segment, system_prompt, tool_messages

GOLDEN = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. "
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the function can be used, point it out. If the given question lacks the parameters required by "
    "the function, also point it out.\n"
    "You should only return the function call in tools call sections.\n"
    "\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of [func_name1(params_name1="
    "params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n"
    "Here is a list of functions in JSON format that you can invoke.\n"
    "[{'name': 'get_weather', 'description': 'Get the current weather in a city.', 'parameters': {'type': 'object', "
    "'properties': {'location': {'type': 'string', 'description': 'City name, e.g. Paris'}, 'unit': {'type': "
    "'string', 'enum': ['celsius', 'fahrenheit'], 'description': 'Temperature unit'}}, 'required': ['location']}}]"
    "\n\n"
)


def test_system_prompt_golden(weather_tools: list[dict]) -> None:
    assert system_prompt(normalise_tools(weather_tools)).encode() == GOLDEN.encode()


def test_bfcl_dialect_kept_verbatim_in_prompt() -> None:
    tools = normalise_tools([{"name": "a.b", "description": "d", "parameters": {"type": "dict", "properties": {
        "x": {"type": "float"}}, "required": []}}])
    assert "{'name': 'a.b', 'description': 'd', 'parameters': {'type': 'dict', 'properties': {'x': {'type': " \
           "'float'}}, 'required': []}}" in system_prompt(tools)


def test_llama3_rendering_splits_template_from_content(weather_tools: list[dict]) -> None:
    ct = ChatTemplate(LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>")
    segs = ct.render(tool_messages("hi <|eot_id|> there", normalise_tools(weather_tools)))
    assert segs[0] == Segment("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n", True)
    assert segs[1] == Segment(GOLDEN, False)
    assert segs[3] == Segment("hi <|eot_id|> there", False)
    assert segs[-1] == Segment("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", True)
    assert "".join(s.text for s in segs).count("<|eot_id|>") == 3


def test_trimming_template_still_splits() -> None:
    ct = ChatTemplate("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}</s>{% endfor %}")
    segs = ct.render([{"role": "user", "content": "  padded  "}], add_generation_prompt=False)
    assert segs == [Segment("<user>", True), Segment("padded", False), Segment("</s>", True)]


@pytest.mark.parametrize(("source", "message"), [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loop steps"),
    ("{{ raise_exception('no tools here') }}", "chat template raised: no tools here"),
    ("{{ ''.__class__.__mro__ }}", "failed to render"),
    ("{% for x in messages %}", "does not compile"),
    ("{% for i in range(99999) %}{{ 'x' * 100 }}{% endfor %}", "output exceeds"),
])
def test_hostile_templates_are_stopped(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


DEEP = 100_000  # nesting levels: past Python's recursion limit in jinja's parser
NS_DOUBLING = "{% set ns = namespace(s='x') %}{% for i in range(N) %}{% set ns.s = ns.s + ns.s %}{% endfor %}" \
    "{{ ns.s | length }}"
# Template arithmetic (`*`, `**`, `+`) and nesting: (hostile template, the TemplateError it gets), paired with a
# near miss that still renders (template, output). Jinja's `**` is left-associative, so `3 ** 10**8` would be
# (3**10)**8, a small number: the exponents are written whole.
ARITHMETIC = [
    (("{{ 3 ** 100000000 }}", r"a power with an exponent of 100000000 is over the 4096-bit limit"),
     ("{{ 2 ** 10 }}", "1024")),
    (("{{ 3 ** (10 ** 8) }}", r"a power with an exponent of 100000000 is over the 4096-bit limit"),
     ("{{ ((2 ** 64) ** 64) | string | length }}", "1234")),  # 64 x log2(2**64) = 4096 bits: at the limit
    (("{{ (2 ** 4000) * (2 ** 4000) }}", r"a product over the 4096-bit limit"),
     ("{{ (2 ** 40) * (2 ** 40) }}", str(2**80))),
    (("{{ messages[0]['content'] * 100000000 }}", r"repeating a str of 2 100000000 times is over the 4194304-item"),
     ("{{ '-' * 40 }}", "-" * 40)),
    (("{{ 'x' * 10 ** 10 }}", r"repeating a str of 1 10000000000 times"),  # compile-time folding would allocate it
     ("{{ 3 * 'ab' }}", "ababab")),
    (("{{ ([0] * 100000000) | length }}", r"repeating a list of 1 100000000 times"),
     ("{{ (messages * 3) | length }}", "3")),
    ((NS_DOUBLING.replace("N", "40"), r"joining 4194304 and 4194304 items is over the 4194304-item limit"),
     (NS_DOUBLING.replace("N", "10"), "1024")),
    (("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
      r"^chat template failed to render: it nests too deeply \(RecursionError\)$"),
     ("{% macro f(n) %}{% if n %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}", "54321")),
    (("{{ " + "(" * DEEP + "1" + ")" * DEEP + " }}",
      r"^chat template does not compile: it nests too deeply \(RecursionError\)$"),
     ("{{ " + "(" * 20 + "1" + ")" * 20 + " }}", "1")),
]


@pytest.mark.parametrize(("hostile", "near_miss"), ARITHMETIC, ids=[h[0][:40] for h, _ in ARITHMETIC])
def test_template_arithmetic_and_nesting_are_budgeted(hostile: tuple[str, str], near_miss: tuple[str, str]) -> None:
    messages = [{"role": "user", "content": "hi"}]
    source, refusal = hostile
    with pytest.raises(TemplateError, match=refusal):
        ChatTemplate(source).render(messages)
    source, rendered = near_miss
    assert "".join(s.text for s in ChatTemplate(source).render(messages)) == rendered


def test_near_miss_template_renders() -> None:
    ct = ChatTemplate("{% for i in range(3) %}{{ i }}{% endfor %}{{ messages[0]['content'] }}")
    assert "".join(s.text for s in ct.render([{"role": "user", "content": "hi"}])) == "012hi"


def test_expensive_template_stopped_by_wall_clock() -> None:
    """Few loop steps (far under MAX_TEMPLATE_LOOP_STEPS), small output, but each step sorts a 40k-element list
    built from the message at render time (a constant would be folded at compile time): only the wall-clock bound
    can stop it, and it does so within a step or so of MAX_TEMPLATE_SECONDS."""
    source = "{% for i in range(10000) %}{{ (messages[0]['content'] * 20000) | list | sort | length }}{% endfor %}"
    template = ChatTemplate(source)
    with pytest.raises(TemplateError, match=rf"^chat template ran longer than {MAX_TEMPLATE_SECONDS} s$"):
        template.render([{"role": "user", "content": "hi"}])
    # Work done, not time: far under the loop-step cap, so the wall-clock bound is what stopped it
    assert template.env.steps < MAX_TEMPLATE_LOOP_STEPS // 10
    # near miss: the same kind of per-step work, a tenth of it, a few steps: renders (well inside the bound even on
    # a loaded machine; render() also renders once with marked-up content, which makes each sort longer)
    cheap = ChatTemplate(source.replace("range(10000)", "range(3)").replace("20000", "2000"))
    assert "".join(s.text for s in cheap.render([{"role": "user", "content": "hi"}])) == "400040004000"


@pytest.mark.parametrize(("source", "operation"), [
    ("{{ messages.append(1) }}", "'append' of 'list'"),
    ("{% set x = messages.pop() %}", "'pop' of 'list'"),
    ("{{ messages.clear() }}", "'clear' of 'list'"),
    ("{{ messages[0].update({'role': 'system'}) }}", "'update' of 'dict'"),
    ("{% set x = messages[0].pop('content') %}", "'pop' of 'dict'"),
    ("{{ messages[0].setdefault('x', 1) }}", "'setdefault' of 'dict'"),
])
def test_sandbox_refuses_mutating_the_messages(source: str, operation: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError, match=rf"^chat template failed to render: SecurityError: access to attribute "
                                            rf"{operation} object is unsafe\.$"):
        ChatTemplate(source).render(messages)
    assert messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("source", "rendered"), [
    ("{{ (messages + [1]) | length }}", "2"),  # a new list, not the caller's
    ("{% set x = messages | list %}{{ x | length }}", "1"),
    ("{{ messages[0].get('role') }}", "user"),
    ("{{ messages[0].items() | list | length }}", "2"),
    ("{{ messages | map(attribute='role') | join(',') }}", "user"),
])
def test_sandbox_near_misses_read_the_messages(source: str, rendered: str) -> None:
    assert "".join(s.text for s in ChatTemplate(source).render([{"role": "user", "content": "hi"}])) == rendered


@pytest.mark.parametrize(("arguments", "message"), [
    ('{"n": ' + "1" * 5000 + "}", "arguments are not JSON"),  # past Python's 4,300-digit limit: a ValueError
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "arguments nest too deep"),  # a RecursionError
    ('{"a": ' + "[" * (MAX_LITERAL_DEPTH + 1) + "]" * (MAX_LITERAL_DEPTH + 1) + "}", "nest deeper than"),
    ('{"n": 1', "arguments are not JSON"),
])
def test_hostile_call_arguments_in_history_are_input_errors(arguments: str, message: str) -> None:
    """An assistant turn's tool_calls arguments come from the client: each bad kind is one InputError (a 400),
    never another exception; the near miss (4,000 digits, MAX_LITERAL_DEPTH levels, as the call parser reads)
    renders."""
    from toolace.runtime.history import to_template_messages

    def turn(args: str) -> list[dict]:
        return [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]}]

    with pytest.raises(InputError, match=message):
        to_template_messages(turn(arguments), "tool")
    deep = "[" * MAX_LITERAL_DEPTH + "]" * MAX_LITERAL_DEPTH
    near = to_template_messages(turn('{"n": ' + "1" * 4000 + ', "a": ' + deep + "}"), "tool")
    assert near[-1]["content"] == f"[f(n={'1' * 4000}, a={deep})]"
