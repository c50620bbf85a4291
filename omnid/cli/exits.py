"""The exit statuses every ``omnid`` command keeps to, with the one table ``omnid --help``
and the README show."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_ALREADY_RUNNING = 4
EXIT_INTERRUPTED = 130

EXIT_CODES = (
    (EXIT_OK, "success (doctor: every check passed, warnings allowed)"),
    (EXIT_ERROR, "an error, said on stderr (or as {\"error\": ...} with --json); a refusal; a failed doctor check"),
    (EXIT_USAGE, "a usage error: an unknown command or option, a malformed value"),
    (EXIT_NOT_RUNNING, "the daemon is not running (commands that never start it); service status: not installed"),
    (EXIT_ALREADY_RUNNING, "serve: a daemon already serves this OMNID_HOME (its pid is in the message)"),
    (EXIT_INTERRUPTED, "interrupted by Ctrl-C (SIGINT)"),
)


def epilog() -> str:
    """The exit status table as ``omnid --help`` ends (click keeps the lines marked \\b as they are)."""
    rows = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)
    return f"\b\nExit status:\n{rows}"
