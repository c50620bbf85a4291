"""The ``omnid`` command's entry point, which sends hot commands around click.

``run`` hands the hot commands to ``fast`` without importing click, and everything else to
the click group ``main`` (in ``group``, loaded on use)."""

from __future__ import annotations

import os
import sys
from typing import Any


def run() -> None:
    from .fast import dispatch

    try:
        status = dispatch(sys.argv[1:])
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)  # exits.EXIT_INTERRUPTED, as the click group's commands
    except BrokenPipeError:
        # The reader went away (`omnid status | head -1`): exit 1 without a traceback, as
        # click does for the other commands, and let nothing flush into the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    if status is not None:
        sys.exit(status)
    from .group import main

    # The same variable whatever the program is called (python -m omnid, a wrapper script):
    # what `omnid completion SHELL` prints sets it.
    main(complete_var="_OMNID_COMPLETE")


def __getattr__(name: str) -> Any:
    if name == "main":
        from .group import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
