"""The constrained field types the messages share, and the size limits on what they hold."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta

MAX_METADATA_BYTES = 64 * 1024
"""Largest metadata document, in bytes of its JSON encoding (as stored)."""
MAX_VALUE_BYTES = 256 * 1024
"""Largest project-memory value, in bytes of its JSON encoding (as stored)."""
MAX_NESTING = 100
"""Deepest nesting of lists and maps in a metadata document or memory value: deeper ones
could be stored but not read back within Python's recursion limit."""
MAX_CONTENT = 256 * 1024
"""Longest message, interaction or session-memory content, in characters."""
MAX_BATCH = 500
"""Most messages or context events in one call."""

MAX_DIMS = 4096
"""Most dimensions of an embedding vector."""
Embedding = Annotated[list[float], Meta(min_length=1, max_length=MAX_DIMS)] | Annotated[
    bytes, Meta(min_length=4, max_length=4 * MAX_DIMS)
]
"""An embedding vector: a list of floats, or the same as packed little-endian float32
(4 bytes a dimension). Stored as float32; NaN, infinities and the zero vector are Invalid."""

ToolId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]*$")]
ShortText = Annotated[str, Meta(max_length=256)]
PathText = Annotated[str, Meta(min_length=1, max_length=4096)]
SessionId = Annotated[str, Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
Pid = int  # range depends on the OS, checked by the daemon
Limit = Annotated[int, Meta(ge=1, le=1000)]
Content = Annotated[str, Meta(max_length=MAX_CONTENT)]
Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
ProjectId = Annotated[str, Meta(pattern=r"^prj_[0-9a-f]{12}$")]
MemoryKey = Annotated[str, Meta(min_length=1, max_length=256)]
TaskId = Annotated[str, Meta(pattern=r"^task_[0-9a-f]{16}$")]
Cursor = Annotated[str, Meta(max_length=256)]
ResumeKey = Annotated[str, Meta(min_length=1, max_length=256)]
"""A tool's own name for a session that outlives its process (an MCP server's instance id)."""
Tag = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^\w[\w.:/@+-]*$")]
Title = Annotated[str, Meta(max_length=1024)]
MAX_TAGS = 32
"""Most tags on one session."""
Metadata = dict[str, Any]
SessionStatus = Literal["live", "ended", "all"]
ArchivedFilter = Literal["exclude", "include", "only"]
EndReason = Literal["ended", "reaped", "expired"]
