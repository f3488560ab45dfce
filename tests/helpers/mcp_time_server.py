"""A stdio MCP server with mcp-server-time's two tools (names, descriptions and parameters as that PyPI package,
2026.10.19, declares them, with 'UTC' as its local timezone), written with the official SDK, whose every call fails
as that server fails a timezone it does not know: the situation of issue #27's Tokyo chat, where the demo model,
after the tool's error result, repeated one sentence until max_tokens. `python tests/helpers/mcp_time_server.py`."""

from __future__ import annotations

from typing import Annotated

from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import Field

mcp = MCPServer("mcp-time")
LOCAL = "UTC"


def _error(timezone: str) -> CallToolResult:
    text = f"Invalid timezone: 'No time zone found with key {timezone}'"
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


@mcp.tool(name="get_current_time", description="Get current time in a specific timezone")
def get_current_time(timezone: Annotated[str, Field(
        description=f"IANA timezone name (e.g., 'America/New_York', 'Europe/London'). Use '{LOCAL}' as local "
                    "timezone if no timezone provided by the user.")]) -> CallToolResult:
    return _error(timezone)


@mcp.tool(name="convert_time", description="Convert time between timezones")
def convert_time(
        source_timezone: Annotated[str, Field(
            description=f"Source IANA timezone name (e.g., 'America/New_York', 'Europe/London'). Use '{LOCAL}' as "
                        "local timezone if no source timezone provided by the user.")],
        time: Annotated[str, Field(description="Time to convert in 24-hour format (HH:MM)")],
        target_timezone: Annotated[str, Field(
            description=f"Target IANA timezone name (e.g., 'Asia/Tokyo', 'America/San_Francisco'). Use '{LOCAL}' as "
                        "local timezone if no target timezone provided by the user.")]) -> CallToolResult:
    return _error(source_timezone)


if __name__ == "__main__":
    mcp.run()
