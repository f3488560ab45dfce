"""A real MCP server over stdio, written with the official SDK, for the agent tests. Started as a subprocess by the
code under test: `python tests/helpers/mcp_server.py [--hang] [--name NAME]`.

Tools: `get-weather` (a hyphen in its name), `lookup_order` (returns isError for unknown orders), `add` (structured
content), `slow` (sleeps), `huge` (a result of N bytes), `crash` (the server dies mid-call), `pid` (its process id).
--hang: never answers initialize (reads nothing, sleeps), for the start-timeout test."""

from __future__ import annotations

import os
import sys
import time
from typing import Literal

from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent

mcp = MCPServer("toolace-test")


@mcp.tool(name="get-weather")
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Current weather for a city.

    Args:
        city: The city name, e.g. Paris.
        unit: Temperature unit.
    """
    degrees = 22 if unit == "celsius" else 72
    return f"Sunny, {degrees} degrees {unit} in {city}"


@mcp.tool()
def lookup_order(order_id: str) -> CallToolResult:
    """Look up an order by its id."""
    if order_id != "A1":
        return CallToolResult(content=[TextContent(type="text", text=f"no order {order_id!r}")], is_error=True)
    return CallToolResult(content=[TextContent(type="text", text="order A1: shipped")])


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
async def slow(seconds: float) -> str:
    """Wait `seconds`, then answer."""
    import anyio

    await anyio.sleep(seconds)
    return "done"


@mcp.tool()
def huge(n_bytes: int) -> str:
    """A result of n_bytes characters."""
    return "x" * n_bytes


@mcp.tool()
def crash() -> str:
    """Kill this server in the middle of the call."""
    os._exit(3)


@mcp.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


if __name__ == "__main__":
    if "--hang" in sys.argv:
        time.sleep(3600)
    mcp.run()
