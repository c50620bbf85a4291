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
Metadata = dict[str, Any]
SessionStatus = Literal["live", "ended", "all"]
EndReason = Literal["ended", "reaped", "expired"]
