"""MCP servers as tools, against a real stdio server written with the SDK (tests/helpers/mcp_server.py), started
as a subprocess by the code under test. Config faults, listing and naming, result conversion, and the fault table
for servers (killed mid-run, never initializing, not startable), each followed by a look at the process table:
no server outlives the code that started it. No model here; the loop with a model is in test_agent_loop.py."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.helpers.procs import descendants, with_marker
from toolace.agent.loop import cut
from toolace.agent.mcp import MCPServers, ServerConfig, parse_config, read_config
from toolace.agent.tools import as_tools
from toolace.cli import main
from toolace.errors import InputError, ToolServerError
from toolace.grammars.check import check_text
from toolace.grammars.toolset import build_toolset

SERVER = str(Path(__file__).parent / "helpers" / "mcp_server.py")


def server(name: str = "test", *extra: str) -> ServerConfig:
    return ServerConfig(name, sys.executable, (SERVER, *extra))


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(text)
    return path


GOOD = {"mcpServers": {"weather": {"command": "python3", "args": ["server.py"], "env": {"K": "v"}, "cwd": "srv"}}}

# config text → the InputError it must raise (a fragment of the one line)
BAD_CONFIGS = [
    ("{not json", "not valid JSON"),
    ("[]", "expected an object with an 'mcpServers' object"),
    (json.dumps({"servers": {}}), "expected an object with an 'mcpServers' object"),
    (json.dumps({"mcpServers": {}}), "'mcpServers' is empty"),
    (json.dumps({"mcpServers": {"w": {"args": ["x"]}}}), "server 'w': missing 'command'"),
    (json.dumps({"mcpServers": {"w": {"command": ""}}}), "server 'w': missing 'command'"),
    (json.dumps({"mcpServers": {"w": {"command": "x", "argz": []}}}), "server 'w': unknown key(s) 'argz'"),
    (json.dumps({"mcpServers": {"w": {"command": "x"}}, "extra": 1}), "unknown top-level key(s) 'extra'"),
    (json.dumps({"mcpServers": {"w": {"command": "x", "args": "a b"}}}), "'args' must be a list of strings"),
    (json.dumps({"mcpServers": {"w": {"command": "x", "env": {"K": 1}}}}), "'env' must map names to strings"),
    (json.dumps({"mcpServers": {"w": {"command": "x", "type": "http"}}}), "only stdio servers are supported"),
    (json.dumps({"mcpServers": {"w": "python3"}}), "server 'w' must be an object"),
    (json.dumps({"mcpServers": {"a(b": {"command": "x"}}}), "contains '('"),
]


@pytest.mark.parametrize("text, message", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_config_is_one_clear_input_error(tmp_path: Path, text: str, message: str) -> None:
    path = config_file(tmp_path, text)
    with pytest.raises(InputError) as e:
        read_config(path)
    assert message in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_good_config_and_its_near_misses(tmp_path: Path) -> None:
    path = config_file(tmp_path, json.dumps(GOOD))
    (cfg,) = read_config(path)
    assert cfg == ServerConfig("weather", "python3", ("server.py",), {"K": "v"}, str(tmp_path.resolve() / "srv"))
    minimal = parse_config({"mcpServers": {"w": {"command": "x", "type": "stdio"}}})
    assert minimal == [ServerConfig("w", "x")]


@pytest.mark.parametrize("text, message", [BAD_CONFIGS[0], BAD_CONFIGS[4], BAD_CONFIGS[6]],
                         ids=["not json", "missing command", "unknown key"])
def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = config_file(tmp_path, text)
    res = CliRunner().invoke(main, ["run", "hi", "--mcp", str(path), "--yes"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output


@pytest.fixture
def no_leaks() -> Any:
    """Fails the test if it leaves any child process behind."""
    before = descendants()
    yield
    assert descendants() - before == set()


def by_name(servers: MCPServers) -> dict[str, Any]:
    return {t.name: t for t in servers.tools}


def test_tools_listed_called_and_converted(no_leaks: None) -> None:
    with MCPServers([server()]) as servers:
        tools = by_name(servers)
        assert set(tools) == {"get-weather", "lookup_order", "add", "slow", "huge", "crash", "pid"}
        spec = tools["get-weather"].spec["function"]
        assert spec["parameters"]["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
        assert tools["get-weather"].source == "mcp:test"
        weather = tools["get-weather"].execute({"city": "Paris"}, 10)
        assert (weather.content, weather.is_error) == ("Sunny, 22 degrees celsius in Paris", False)
        missing = tools["lookup_order"].execute({"order_id": "B2"}, 10)
        assert (missing.content, missing.is_error) == ("no order 'B2'", True)
        found = tools["lookup_order"].execute({"order_id": "A1"}, 10)
        assert (found.content, found.is_error) == ("order A1: shipped", False)
        assert tools["add"].execute({"a": 2, "b": 40}, 10).content == "42"
        bad = tools["add"].execute({"a": "x"}, 10)  # the server's own validation: an error result, no exception
        assert bad.is_error
        assert len(descendants()) >= 1  # the server runs as our child while the block is open


def test_name_clash_between_servers_becomes_server_dot_tool(no_leaks: None) -> None:
    with MCPServers([server("a"), server("b")]) as servers:
        names = set(by_name(servers))
        assert "a.get-weather" in names and "b.get-weather" in names and "get-weather" not in names
        assert by_name(servers)["b.add"].execute({"a": 1, "b": 1}, 10).content == "2"


def test_slow_call_past_its_limit_is_an_error_result_and_the_server_lives_on(no_leaks: None) -> None:
    with MCPServers([server()]) as servers:
        tools = by_name(servers)
        slow = tools["slow"].execute({"seconds": 30}, 0.5)
        assert slow.is_error and "did not answer 'slow' within 0.5 s" in slow.content
        assert tools["add"].execute({"a": 1, "b": 2}, 10).content == "3"


def test_ten_megabyte_result_arrives_and_is_cut_with_a_note(no_leaks: None) -> None:
    with MCPServers([server()]) as servers:
        out = by_name(servers)["huge"].execute({"n_bytes": 10_000_000}, 60)
    assert len(out.content) == 10_000_000 and not out.is_error
    fed = cut(out.content, 8000)
    assert fed.startswith("x" * 8000) and fed.endswith("[toolace: result cut to its first 8000 of 10000000 characters]")


def test_server_that_dies_mid_call(no_leaks: None) -> None:
    with MCPServers([server()]) as servers:
        tools = by_name(servers)
        died = tools["crash"].execute({}, 10)
        assert died.is_error and "MCP server 'test'" in died.content
        after = tools["add"].execute({"a": 1, "b": 2}, 10)
        assert after.is_error and "MCP server 'test'" in after.content


def test_server_killed_from_outside_mid_run(no_leaks: None) -> None:
    with MCPServers([server()]) as servers:
        tools = by_name(servers)
        pid = int(tools["pid"].execute({}, 10).content)
        assert pid in descendants()
        os.kill(pid, signal.SIGKILL)
        gone = tools["get-weather"].execute({"city": "Paris"}, 5)
        assert gone.is_error and "MCP server 'test'" in gone.content


def test_server_that_never_initializes_times_out_and_is_killed(no_leaks: None) -> None:
    marker = f"--marker={uuid.uuid4()}"
    with pytest.raises(ToolServerError, match=r"'hang' did not initialize and list its tools within 1 s"):
        MCPServers([server("hang", "--hang", marker)], start_timeout=1.0).start()
    assert with_marker(marker) == set()


def test_one_good_one_hanging_server_closes_both(no_leaks: None) -> None:
    marker = f"--marker={uuid.uuid4()}"
    with pytest.raises(ToolServerError, match="'hang'"):
        MCPServers([server("hang", "--hang", marker), server("good", marker)], start_timeout=3.0).start()
    assert with_marker(marker) == set()


def test_command_that_cannot_start(no_leaks: None) -> None:
    with pytest.raises(ToolServerError, match=r"'nope': cannot start '/nonexistent/server'"):
        MCPServers([ServerConfig("nope", "/nonexistent/server")], start_timeout=5.0).start()


def test_server_that_exits_at_once_names_its_stderr(no_leaks: None) -> None:
    cfg = ServerConfig("broken", sys.executable, ("-c", "import sys; sys.stderr.write('no config here'); sys.exit(4)"))
    with pytest.raises(ToolServerError, match="'broken'.*no config here"):
        MCPServers([cfg], start_timeout=10.0).start()


def test_ctrl_c_inside_the_block_closes_the_servers(no_leaks: None) -> None:
    marker = f"--marker={uuid.uuid4()}"
    with pytest.raises(KeyboardInterrupt), MCPServers([server("t", marker)]) as servers:
        assert len(with_marker(marker)) == 1 and servers.tools
        raise KeyboardInterrupt
    assert with_marker(marker) == set()
    servers.close()  # twice is fine


def test_paged_listing_verbatim_names_and_structured_results(no_leaks: None) -> None:
    paged = ServerConfig("paged", sys.executable, (str(Path(__file__).parent / "helpers" / "mcp_paged_server.py"),))
    with MCPServers([paged]) as servers:
        tools = by_name(servers)
        assert list(tools) == ["echo", "ns.echo", "3d-print", "a-b", "tool_5", "tool_6", "tool_7"]  # 3 pages
        gbnf = build_toolset([t.spec for t in servers.tools], "required").grammar.gbnf
        for name in ("ns.echo", "3d-print", "a-b"):  # the call language takes MCP's names as they are
            assert check_text(gbnf, f"[{name}(text='x')]").ok
        assert not check_text(gbnf, "[ns_echo(text='x')]").ok
        out = tools["3d-print"].execute({"text": "hi"}, 10)
        assert (json.loads(out.content), out.is_error) == ({"tool": "3d-print", "echo": "hi"}, False)


def test_servers_start_once_on_first_use_and_again_after_close(no_leaks: None) -> None:
    marker = f"--marker={uuid.uuid4()}"
    servers = MCPServers([server("t", marker)])
    assert servers.tools == [] and with_marker(marker) == set()  # nothing runs before first use
    try:
        first = as_tools([servers])
        assert "get-weather" in {t.name for t in first}
        again = as_tools([servers])
        assert [t.name for t in again] == [t.name for t in first] and len(with_marker(marker)) == 1
    finally:
        servers.close()
    assert with_marker(marker) == set()
    with servers:
        assert len(with_marker(marker)) == 1 and len(servers.tools) == len(first)
    assert with_marker(marker) == set()
