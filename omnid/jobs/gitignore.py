"""A small matcher for a project root's own ``.gitignore``, used by workspace tracking.

Supported: blank lines and ``#`` comments, ``!`` negation (the last matching pattern wins),
``\\`` escapes, ``*``, ``?``, ``[...]`` (``[!...]`` too), ``**`` (``**/x``, ``x/**``,
``a/**/b``), a trailing ``/`` (directories only) and anchoring to the root by a leading or
inner ``/``. Not read: ``.gitignore`` files below the root, ``.git/info/exclude`` and the
user's global excludes file. As in git, nothing below an ignored directory is seen (the
tracker never watches one), whatever later ``!`` patterns say.
"""

from __future__ import annotations

import os
import re
import stat

GITIGNORE = ".gitignore"
MAX_BYTES = 256 << 10
"""A larger .gitignore is read only this far (a sane one is a few KiB)."""
MAX_RULES = 5000

Rule = tuple["re.Pattern[str]", bool, bool]
"""(regex on the path relative to the root, negated, directories only)"""


def _glob(pattern: str) -> str:
    """The regex text of one glob, ``/`` never matched by ``*`` or ``?``."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_rule(line: str) -> Rule | None:
    """The rule of one line of a .gitignore; None for a blank line or a comment."""
    line = line.rstrip("\n").rstrip("\r")
    stripped = line.rstrip(" ")
    if stripped.endswith("\\"):  # an escaped trailing space stays
        stripped += " "
    line = stripped
    if not line or line.startswith("#"):
        return None
    negated = line.startswith("!")
    if negated:
        line = line[1:]
    elif line.startswith(("\\#", "\\!")):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    line = line.lstrip("/")
    body = _glob(line)
    regex = f"^{body}$" if anchored else f"^(?:.*/)?{body}$"
    try:
        return re.compile(regex, re.DOTALL), negated, dir_only
    except re.error:
        return None  # git ignores a pattern it cannot use, too


class GitIgnore:
    """The rules of one .gitignore; ``ignored(rel, is_dir)`` for a path relative to the root."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules

    @classmethod
    def parse(cls, text: str) -> GitIgnore:
        rules = [r for r in map(compile_rule, text.splitlines()[:MAX_RULES]) if r is not None]
        return cls(rules)

    @classmethod
    def read(cls, root: str) -> GitIgnore:
        """The rules of ``root/.gitignore``; none if it is missing, unreadable, a link or not a
        regular file (opened without following a link and without blocking on a FIFO)."""
        try:
            fd = os.open(
                os.path.join(root, GITIGNORE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except OSError:
            return cls([])
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return cls([])
            raw = os.read(fd, MAX_BYTES)
        except OSError:
            return cls([])
        finally:
            os.close(fd)
        return cls.parse(raw.decode("utf-8", "replace"))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        result = False
        for regex, negated, dir_only in self.rules:
            if dir_only and not is_dir:
                continue
            if regex.match(rel):
                result = not negated
        return result
