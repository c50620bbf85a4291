"""``omnid mcp``: a stdio MCP server (the optional ``mcp`` extra) that gives the agent which
started it one omnid session; the daemon and the thin client never import this package."""
