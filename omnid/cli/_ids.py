"""Ids shortened on the command line: any unique prefix of at least six characters stands
for the whole session, task or project id, as in git and docker."""

from __future__ import annotations

import re
from typing import Any

import click

from omnid_client import Client, NotFound, OmnidError, Unavailable, Unsupported

MIN_PREFIX = 6
CANDIDATES = 10
"""Most candidates an ambiguous prefix lists."""

_FULL = {
    "session": re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
    "task": re.compile(r"^task_[0-9a-f]{16}$"),
    "project": re.compile(r"^prj_[0-9a-f]{12}$"),
}
_STEM = {"session": "", "task": "task_", "project": "prj_"}
_HEX = re.compile(r"^[0-9a-f]+$")
_BODY = {"session": re.compile(r"^[0-9a-f-]+$"), "task": _HEX, "project": _HEX}

PARAMETERS = {
    "session_id": "session", "session_ids": "session", "sessions": "session", "into": "session",
    "task_id": "task", "project_id": "project", "project_ids": "project", "projects": "project",
    "ref": "checkpoint",
}
"""Command parameters (by their Python name) that take ids, and of which kind."""


class AmbiguousId(OmnidError):
    """A prefix that starts more than one id; ``details["candidates"]`` lists them."""

    code = "ambiguous"


class Resolver:
    """Resolves a command's id parameters through one connection, opened only if a prefix needs it."""

    def __init__(self) -> None:
        self.client: Client | None = None

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()

    def params(self, kwargs: dict[str, Any]) -> None:
        for name, kind in PARAMETERS.items():
            value = kwargs.get(name)
            if isinstance(value, str):
                kwargs[name] = self.one(kind, value, name)
            elif isinstance(value, (tuple, list)):
                kwargs[name] = type(value)(self.one(kind, v, name) for v in value)

    def one(self, kind: str, value: str, field: str) -> str:
        if kind == "checkpoint":  # [checkpoint/]SESSION/NAME: the SESSION part
            stem, sep, rest = value.partition("checkpoint/") if value.startswith("checkpoint/") else ("", "", value)
            session, slash, name = rest.partition("/")
            return stem + sep + self.one("session", session, field) + slash + name if slash else value
        if _FULL[kind].match(value):
            return value
        body = value.lower()
        body = body[len(_STEM[kind]):] if body.startswith(_STEM[kind]) else body
        if not _BODY[kind].match(body):
            return value  # not an id at all: the daemon says what one looks like
        if len(body) < MIN_PREFIX:
            raise click.UsageError(
                f"{value!r} is too short to stand for a {kind} id: give at least {MIN_PREFIX} characters of it"
                f"{' (after ' + _STEM[kind] + ')' if _STEM[kind] else ''}, or the whole id"
            )
        try:
            if self.client is None:  # never starts a daemon: a shortened id means nothing without one to ask
                self.client = Client(autostart=False, client_name="omnid-cli")
            found = self.client.resolve_ids(kind, _STEM[kind] + body, limit=CANDIDATES)  # type: ignore[arg-type]
        except Unavailable as e:
            raise Unavailable(f"{e}; a shortened id needs the daemon running (or give the whole id)") from None
        except Unsupported as e:
            raise Unsupported(
                f"the running daemon is older and cannot look up shortened ids: give the whole id, or `omnid stop` "
                f"so the upgraded one starts ({e})", e.details,
            ) from None
        if not found.ids:
            raise NotFound(f"no {kind} id starts with {value}", {"field": field, "prefix": value})
        if len(found.ids) > 1:
            listed = ", ".join(found.ids) + (", …" if found.more else "")
            count = f"{len(found.ids)}{'+' if found.more else ''}"
            raise AmbiguousId(
                f"{value} is ambiguous: {count} {kind} ids start with it ({listed}); give more characters",
                {"field": field, "prefix": value, "candidates": found.ids},
            )
        return found.ids[0]
