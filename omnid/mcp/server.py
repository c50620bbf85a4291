"""The stdio MCP server on the official SDK's low-level ``Server``: tools and resources from
``tools``, every failure a tool error result (``isError``) carrying omnid's typed code."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import anyio
import mcp_types as types
import msgspec
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from omnid_client import AsyncClient, OmnidError
from omnid_client.protocol.explain import invalid

from .. import __version__
from ..offline.agent import agent_pid
from . import tools

log = logging.getLogger("omnid.mcp")


def error_result(code: str, message: str, details: dict[str, Any] | None = None) -> types.CallToolResult:
    error = {"code": code, "message": message, **({"details": details} if details else {})}
    return types.CallToolResult(
        content=[types.TextContent(text=f"omnid error {code}: {message}")],
        structured_content={"error": error},
        is_error=True,
    )


def build(agent: tools.Agent) -> Server[Any]:
    listed = [
        types.Tool(name=name, description=description, input_schema=tools.input_schema(args))
        for name, (args, description, _) in tools.TOOLS.items()
    ]

    def note_client(ctx: Any) -> None:
        """Name the agent in a new session's metadata, from the MCP handshake."""
        params = getattr(ctx.session, "client_params", None)
        info = getattr(params, "client_info", None)
        if info is not None and "mcp_client" not in agent.metadata:
            agent.metadata["mcp_client"] = str(info.name)[:256]
            agent.tool_version = str(info.version)[:256] or None

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listed)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        entry = tools.TOOLS.get(params.name)
        if entry is None:
            return error_result("not_found", f"no tool {params.name!r}; tools: {', '.join(tools.TOOLS)}")
        args_type, _, handler = entry
        try:
            args = tools.decode_args(args_type, params.arguments)
        except msgspec.ValidationError as e:
            bad = invalid(e, args_type, tool=params.name)
            return error_result(bad.code, str(bad), bad.details)
        note_client(ctx)
        try:
            result = await handler(agent, args)
            if isinstance(result, tools.TextResult):
                return types.CallToolResult(
                    content=[types.TextContent(text=result.text)], structured_content=tools.to_json(result.structured)
                )
            value = tools.to_json(result)
        except OmnidError as e:
            return error_result(getattr(e, "code", type(e).__name__.lower()), str(e), getattr(e, "details", None))
        except Exception as e:  # never take the agent's server down
            log.exception("tool %s failed", params.name)
            return error_result("internal", f"{type(e).__name__}: {e}")
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(value, indent=2, ensure_ascii=False))],
            structured_content=value if isinstance(value, dict) else {"result": value},
        )

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(uri=uri, name=name, description=description, mime_type="application/json")
                for uri, (name, description, _, _) in tools.RESOURCES.items()
            ]
        )

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        entry = tools.RESOURCES.get(str(params.uri))
        if entry is None:
            raise MCPError(types.INVALID_PARAMS, f"no resource {params.uri}; resources: {', '.join(tools.RESOURCES)}")
        _, _, handler, args_type = entry
        note_client(ctx)
        try:
            value = tools.to_json(await handler(agent, args_type()))
        except OmnidError as e:
            code = getattr(e, "code", type(e).__name__.lower())
            raise MCPError(
                types.INTERNAL_ERROR, f"omnid error {code}: {e}", {"code": code, "message": str(e)}
            ) from None
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=str(params.uri), mime_type="application/json", text=json.dumps(value, indent=2)
                )
            ]
        )

    return Server(
        "omnid",
        version=__version__,
        instructions="omnid keeps this agent's session: its context, project memories, messages and notes. "
        "Call current_session to learn the session and project; "
        "record files, searches and decisions with append_context.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


def serve(tool_id: str = "agent", pid: int | None = None) -> None:
    """Serve until the agent closes stdin (it exited, or is done with us). The session stays
    the agent's: it ends when the agent's process does, not when this server stops."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="omnid mcp: %(message)s")

    async def main() -> None:
        client = AsyncClient(client_name="omnid-mcp", timeout=10.0)
        server = build(tools.Agent(client, tool_id, pid if pid is not None else agent_pid()))
        try:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        finally:
            await client.close()

    anyio.run(main)
