"""A low-level MCP server (the SDK's `Server`) that lists its tools in pages of three, with names MCP allows and
Python does not (`.`, `-`, a leading digit), and answers with structured content only (no text block).
`python tests/helpers/mcp_paged_server.py`."""

from __future__ import annotations

import anyio
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.types import CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams, Tool

PAGE = 3
NAMES = ["echo", "ns.echo", "3d-print", "a-b", "tool_5", "tool_6", "tool_7"]
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
TOOLS = [Tool(name=n, description=f"Echo the text ({n}).", input_schema=SCHEMA) for n in NAMES]


async def list_tools(ctx: ServerRequestContext, params: PaginatedRequestParams | None) -> ListToolsResult:
    start = 0 if params is None or params.cursor is None else int(params.cursor)
    end = start + PAGE
    return ListToolsResult(tools=TOOLS[start:end], next_cursor=str(end) if end < len(TOOLS) else None)


async def call_tool(ctx: ServerRequestContext, params: CallToolRequestParams) -> CallToolResult:
    args = params.arguments or {}
    return CallToolResult(content=[], structured_content={"tool": params.name, "echo": args.get("text")})


server = Server("paged", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
