"""The tool loop on the real demo model (SmolLM2-135M): a Python function and a real stdio MCP server are called,
their results go back as tool messages, and the model answers or calls again; through the API and the CLI.
The 135M model's answers are poor, so the tests assert the loop's mechanics, not the answer's quality; the first
turn names the tool (tool_choice) so that a call is made deterministically. Then the fault table, approval, and
Ctrl-C/SIGTERM on a live `toolace run`, each followed by a look at the process table."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.helpers.procs import descendants, interruptible, with_marker
from tests.helpers.weather import CALLED, get_weather
from toolace.agent import MCPServers, ServerConfig, run
from toolace.agent.loop import DECLINED, TRUNCATED, _execute
from toolace.agent.tools import as_tools
from toolace.api import ToolACE
from toolace.cli import main

SERVER = str(Path(__file__).parent / "helpers" / "mcp_server.py")
QUESTION = "What's the weather like in Paris?"
OPTIONS = {"max_tokens": 48}


def explode(city: str) -> str:
    """Look up a city (this one always fails)."""
    raise RuntimeError(f"weather station for {city} is offline")


def sleepy(city: str) -> str:
    """Look up a city very slowly."""
    time.sleep(30)
    return "too late"


def flood(city: str) -> str:
    """Return ten megabytes of text."""
    return "x" * 10_000_000


@pytest.fixture(scope="module")
def ta(smollm2_gguf: Path) -> ToolACE:
    return ToolACE.load(str(smollm2_gguf), n_ctx=4096)


@pytest.fixture
def no_leaks() -> Any:
    before = descendants()
    yield
    assert descendants() - before == set()


def assert_fed_back(result: Any, step: int = 0) -> None:
    """The calls of `step` are answered by tool messages with the same ids, in call order, carrying the results;
    then the run either answered or went on to another step."""
    calls, results = result.steps[step].calls, result.steps[step].results
    assert [r["id"] for r in results] == [c["id"] for c in calls]
    i = next(n for n, m in enumerate(result.messages) if m.get("tool_calls") and
             m["tool_calls"][0]["id"] == calls[0]["id"])
    assert [tc["id"] for tc in result.messages[i]["tool_calls"]] == [c["id"] for c in calls]
    tool_msgs = result.messages[i + 1:i + 1 + len(calls)]
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in tool_msgs] == \
        [("tool", r["id"], r["content"]) for r in results]
    if result.finish_reason in ("answer", "length"):  # a text turn (cut by max_tokens: length) ended the run
        assert result.messages[-1] == {"role": "assistant", "content": result.answer} and result.answer
    else:
        assert result.finish_reason == "max_steps" and result.answer is None
        assert len(result.steps) == step + 2  # the results went back and the model called again


def test_python_function_loop(ta: ToolACE) -> None:
    CALLED.clear()
    result = run(ta, QUESTION, [get_weather], tool_choice="required", max_steps=2, **OPTIONS)
    first = result.steps[0]
    assert first.calls[0]["name"] == "get_weather" and CALLED
    assert first.results[0] == {"id": first.calls[0]["id"], "name": "get_weather", "is_error": False,
                                "content": f"It is sunny and 22 degrees in {CALLED[0]}.",
                                "seconds": first.results[0]["seconds"]}
    assert_fed_back(result)
    print(f"\npython loop: {result.finish_reason}, {len(result.steps)} step(s), answer {result.answer!r}")


def test_mcp_loop_through_the_api(ta: ToolACE, no_leaks: None) -> None:
    with MCPServers([ServerConfig("weather", sys.executable, (SERVER,))]) as servers:
        result = run(ta, QUESTION, [servers], tool_choice="get-weather", max_steps=2, **OPTIONS)
    call, res = result.steps[0].calls[0], result.steps[0].results[0]
    assert call["name"] == "get-weather" and isinstance(call["arguments"]["city"], str)
    assert res["content"] == f"Sunny, 22 degrees celsius in {call['arguments']['city']}" or \
        res["content"].startswith("Sunny, 72 degrees fahrenheit in ")
    assert not res["is_error"]
    assert_fed_back(result)


def mcp_config(tmp_path: Path, *extra: str) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"weather": {"command": sys.executable, "args": [SERVER, *extra]}}}))
    return path


def cli_args(smollm2_gguf: Path, *more: str) -> list[str]:
    return ["--model", str(smollm2_gguf), "--n-ctx", "4096", "--max-tokens", "48", "--max-steps", "2", *more]


def test_mcp_loop_through_the_cli_json(smollm2_gguf: Path, tmp_path: Path, no_leaks: None) -> None:
    res = CliRunner().invoke(main, ["run", QUESTION, "--mcp", str(mcp_config(tmp_path)), "--yes", "--json",
                                    "--tool-choice", "get-weather", *cli_args(smollm2_gguf)])
    out = json.loads(res.stdout)
    assert set(out) == {"answer", "steps", "finish_reason"}
    assert res.exit_code == (0 if out["finish_reason"] == "answer" else 1), res.output
    step = out["steps"][0]
    assert {"id", "name", "arguments"} <= set(step["calls"][0]) and step["calls"][0]["name"] == "get-weather"
    assert {"id", "name", "content", "is_error"} <= set(step["results"][0])
    assert step["results"][0]["id"] == step["calls"][0]["id"] and not step["results"][0]["is_error"]
    assert step["results"][0]["content"].startswith("Sunny, ")


FUNCTIONS = '''
from pathlib import Path
LOG = Path(__file__).with_name("calls.log")

def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    with LOG.open("a") as f:
        f.write(city + "\\n")
    return "sunny in " + city
'''


@pytest.mark.parametrize("answer", ["n", "y"])
def test_approval(smollm2_gguf: Path, tmp_path: Path, answer: str) -> None:
    """Without --yes each call waits for an answer: `n` skips it and the model is told; `y` runs it. The input
    then ends, so a further call meets end of input: the run stops there as refused."""
    functions = tmp_path / "tools.py"
    functions.write_text(FUNCTIONS)
    res = CliRunner().invoke(main, ["run", QUESTION, "--functions", str(functions), "--json",
                                    "--tool-choice", "get_weather", *cli_args(smollm2_gguf)], input=f"{answer}\n")
    assert "call get_weather(city=" in res.stderr and "run it?" in res.stderr
    out = json.loads(res.stdout)
    first = out["steps"][0]["results"][0]
    log = tmp_path / "calls.log"
    if answer == "n":
        assert (first["content"], first["is_error"]) == (DECLINED, True) and not log.exists()
    else:
        assert first["content"].startswith("sunny in ") and not first["is_error"] and log.exists()
    assert out["finish_reason"] in ("answer", "refused", "max_steps")
    assert res.exit_code == (0 if out["finish_reason"] == "answer" else 1)


# tool → what the model must be told (a fragment), for faults in Python tools
FAULTS = [
    (explode, "error: RuntimeError: weather station for"),
    (sleepy, "error: sleepy did not finish within 0.5 s; it was abandoned"),
    (flood, "[toolace: result cut to its first 2000 of 10000000 characters]"),
]


@pytest.mark.parametrize("tool, told", FAULTS, ids=[f.__name__ for f, _ in FAULTS])
def test_fault_is_a_result_and_the_loop_goes_on(ta: ToolACE, tool: Any, told: str) -> None:
    result = run(ta, QUESTION, [tool, get_weather], tool_choice=tool.__name__, max_steps=2, call_timeout=0.5,
                    max_result_chars=2000, parallel_tool_calls=False, **OPTIONS)
    res = result.steps[0].results[0]
    assert res["name"] == tool.__name__ and told in res["content"]
    assert res["is_error"] == (tool is not flood)
    if tool is flood:
        assert len(res["content"]) < 2100
    assert_fed_back(result)  # and the second turn happened: an answer or another step


def test_call_cut_short_by_max_tokens_is_not_run(ta: ToolACE) -> None:
    """The budget closed a value early (CallResult.truncated): the call is valid but not what the model meant."""
    saved: list[str] = []

    def save_note(text: str) -> str:
        """Save a note."""
        saved.append(text)
        return "saved"

    result = run(ta, "Write a long note about the history of Paris and save it.", [save_note],
                    tool_choice="save_note", max_steps=1, max_tokens=10)
    assert result.steps[0].calls[0]["name"] == "save_note"
    assert result.steps[0].results[0]["content"] == TRUNCATED and saved == []
    assert result.finish_reason == "max_steps" and result.messages[-1]["content"] == TRUNCATED


# Keywords the grammar only post-checks (a look-around pattern, a format without an exact grammar): each case that
# the greedy call (city="Paris") breaks is paired with a near miss it meets, which must still run.
POST_CHECKED = [
    ({"pattern": "^(?=.*[0-9])"}, "pattern"),  # must hold a digit: "Paris" has none
    ({"pattern": "^(?!.*[0-9])"}, None),  # near miss: must hold no digit
    ({"format": "ipv6"}, "format"),
    ({"format": "regex"}, None),  # near miss: "Paris" is a regular expression
]


@pytest.mark.parametrize(("keyword", "broken"), POST_CHECKED, ids=[str(k) for k, _ in POST_CHECKED])
def test_call_failing_a_post_check_is_never_run(ta: ToolACE, keyword: dict, broken: str | None) -> None:
    """A real Python function behind a schema whose constraint only jsonschema checks after decoding: a call that
    breaks it is not approved, not run; the model gets an error result naming the constraint, and the loop goes
    on. A call that meets it runs."""
    ran: list[str] = []
    shown: list[str] = []

    def lookup(city: str) -> str:
        ran.append(city)
        return f"sunny in {city}"

    spec = {"name": "get_weather", "description": "Get the current weather in a city.",
            "parameters": {"type": "object", "required": ["city"], "properties": {
                "city": {"type": "string", "description": "The city name, e.g. Paris.", **keyword}}}}
    result = run(ta, QUESTION, [(spec, lookup)], tool_choice="get_weather", max_steps=2,
                    approve=lambda call: shown.append(call["arguments"]["city"]) or True, **OPTIONS)
    call, res = result.steps[0].calls[0], result.steps[0].results[0]
    assert call["arguments"]["city"] == "Paris"  # the greedy call the table is built on
    if broken:
        assert ran == [] and shown == [] and res["is_error"]
        assert res["content"].startswith("error: this call breaks the tool's schema; it was not run: "
                                         "/arguments/city: 'Paris' ")
        assert res["content"].endswith(f"({broken})")
    else:
        assert ran[0] == shown[0] == "Paris" and res == {**res, "content": "sunny in Paris", "is_error": False}
    assert_fed_back(result)  # the result went back and the model had its next turn


def test_mcp_server_that_dies_mid_run(ta: ToolACE, no_leaks: None) -> None:
    with MCPServers([ServerConfig("weather", sys.executable, (SERVER,))]) as servers:
        result = run(ta, QUESTION, [servers], tool_choice="crash", max_steps=2, **OPTIONS)
    res = result.steps[0].results[0]
    assert res["name"] == "crash" and res["is_error"] and "MCP server 'weather'" in res["content"]
    assert_fed_back(result)
    for step in result.steps[1:]:  # whatever it called next on the dead server is an error result too
        assert all(r["is_error"] for r in step.results)


def test_calls_of_one_step_run_concurrently_and_come_back_in_call_order() -> None:
    """Two tools that can only finish together (a two-party barrier): run one after the other, both would fail."""
    barrier = threading.Barrier(2, timeout=20)

    def first(x: int) -> str:
        barrier.wait()
        return f"first {x}"

    def second(x: int) -> str:
        barrier.wait()
        return f"second {x}"

    tools = {t.name: t for t in as_tools([first, second])}
    calls = [{"id": "b", "name": "second", "arguments": {"x": 2}}, {"id": "a", "name": "first", "arguments": {"x": 1}}]
    outputs, stopped = _execute(calls, tools, None, None, 30.0)
    assert [o.content for o, _ in outputs] == ["second 2", "first 1"] and not stopped


def wait_for(stream: Any, text: str, limit: float = 240.0) -> str:
    """Read a pipe until `text` shows up (a prompt has no newline, so byte by byte); `limit` only bounds a hang."""
    seen = b""
    deadline = time.monotonic() + limit
    while text.encode() not in seen:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(stream.fileno(), 4096) if ready else b""
        if not chunk:
            pytest.fail(f"never saw {text!r}; got: {seen.decode(errors='replace')[-2000:]}")
        seen += chunk
    return seen.decode(errors="replace")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_cli_leaves_no_server_behind(smollm2_gguf: Path, tmp_path: Path, sig: int) -> None:
    """A live `toolace run` waiting at an approval prompt, interrupted: it exits, and its server is gone."""
    marker = f"--marker={uuid.uuid4()}"
    cmd = [str(Path(sys.executable).parent / "toolace"), "run", QUESTION, "--mcp", str(mcp_config(tmp_path, marker)),
           "--tool-choice", "get-weather", *cli_args(smollm2_gguf)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).parent.parent, preexec_fn=interruptible)
    try:
        wait_for(proc.stderr, "run it?")
        assert len(with_marker(marker)) == 1  # the server is up while the prompt waits
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert with_marker(marker) == set()


def test_chat_runs_functions_and_asks_for_tools_file_results(smollm2_gguf: Path, tmp_path: Path) -> None:
    """`toolace chat` with both kinds of source: a --functions tool runs (with --yes); a --tools tool has no code,
    so its result is what the user types. One step per question, then an empty line quits."""
    functions = tmp_path / "tools.py"
    functions.write_text(FUNCTIONS)
    weather = Path(__file__).parent.parent / "examples" / "weather.json"
    base = ["chat", "--model", str(smollm2_gguf), "--n-ctx", "4096", "--max-tokens", "48", "--max-steps", "1"]
    ran = CliRunner().invoke(main, [*base, "--functions", str(functions), "--yes", "--tool-choice", "required"],
                             input=f"{QUESTION}\n\n")
    assert ran.exit_code == 0, ran.output
    assert "call get_weather(city=" in ran.stdout and "result: sunny in " in ran.stdout
    assert (tmp_path / "calls.log").exists()
    typed = CliRunner().invoke(main, [*base, "--tools", str(weather), "--tool-choice", "required"],
                               input=f"{QUESTION}\nit is raining\n\n")
    assert typed.exit_code == 0, typed.output
    assert "result of get_weather(" in typed.stderr and "result: it is raining" in typed.stdout
