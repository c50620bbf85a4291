"""Validation errors as sentences: the field a msgspec error names, and what that field
allows, read from the message type's own constraints (so a new field explains itself)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec import inspect as mi

from ..errors import Invalid, TooLarge
from .fields import Label, ProjectId, SessionId, Tag, TaskId, ToolId


def _pattern(t: Any) -> str:
    info = mi.type_info(t)
    assert isinstance(info, mi.StrType) and info.pattern is not None
    return info.pattern


_WORDS = {
    _pattern(SessionId): "a session id: a lowercase UUID such as 0b5e7c3a-6f0e-4c1e-9a59-7d3c2b1a0f9e",
    _pattern(TaskId): "a task id: task_ and 16 lowercase hex characters",
    _pattern(ProjectId): "a project id: prj_ and 12 lowercase hex characters",
    _pattern(ToolId): "letters, digits and . _ : @ / + -, starting with a letter or digit",
    _pattern(Label): "letters, digits and . _ : -, starting with a letter or digit",
    _pattern(Tag): "letters, digits, _ and . : / @ + -, starting with a letter, digit or _",
}
"""Hand-written wording for the patterns users meet most; others are quoted as regexes."""
_IDS = {p for p, words in _WORDS.items() if " id: " in words}

_AT = re.compile(r"^(?P<what>.*?) - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`(?: - at `\$(?P<path>[^`]*)`)?$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`(?: - at `\$(?P<path>[^`]*)`)?$")
_GOT = re.compile(r"got `(?P<got>[^`]+)`")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[([^\]]*)\]")
_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false", "null": "null",
          "None": "null", "object": "an object", "array": "a list"}


def explain(error: msgspec.ValidationError | str, root: Any, tag: object = None) -> tuple[str, dict[str, Any]]:
    """(sentence, details) for a ValidationError raised decoding ``root`` (for a tagged
    union, the member whose tag is ``tag``): the sentence names the field and what it
    allows; details hold ``field`` (the top-level field), ``path`` and ``allowed``."""
    text = str(error)
    info = mi.type_info(root)
    if isinstance(info, mi.UnionType):
        info = next((t for t in info.types if getattr(t, "tag", None) == tag), info)
    unknown = _UNKNOWN.match(text)
    if unknown:
        return _unknown_field(info, unknown["path"] or "", unknown["name"])
    missing, at = _MISSING.match(text), None
    if missing:
        path = f"{missing['path'] or ''}.{missing['name']}"
    else:
        at = _AT.match(text)
        if at is None:  # no field named (the whole document is wrong)
            return f"the request is malformed: {text}", {}
        path = at["path"]
    steps = [name or "[]" for name, _ in _STEP.findall(path)]
    shown = path.lstrip(".")
    if at is not None and at["key"]:  # a map's key is wrong, not a value
        steps.append("{key}")
        shown = f"{shown} keys"
    allowed = describe(_walk(info, steps))
    details: dict[str, Any] = {"field": steps[0] if steps and steps[0] not in ("[]", "{key}") else shown,
                               "path": path.lstrip(".")}
    if allowed:
        details["allowed"] = allowed
    if missing:
        return f"{shown} is required" + (f": it must be {allowed}" if allowed else ""), details
    got = _GOT.search(text)
    if not allowed:
        return f"{shown} is not valid ({text})", details
    sentence = f"{shown} must be {allowed}"
    if got:
        sentence += f", not {_KINDS.get(got['got'], got['got'])}"
    elif "Invalid enum value" in text:
        sentence += f", not {text.split('Invalid enum value ', 1)[1].split(' - at', 1)[0]}"
    return sentence, details


def invalid(error: msgspec.ValidationError, root: Any, **context: Any) -> Invalid:
    """The typed error for ``error`` raised decoding ``root``: its sentence and details from
    ``explain`` (and ``context``); TooLarge when a length bound was broken (a size limit)."""
    sentence, details = explain(error, root)
    kind = TooLarge if "length <=" in str(error) else Invalid
    return kind(sentence, {**details, **context})


def _unknown_field(info: Any, path: str, name: str) -> tuple[str, dict[str, Any]]:
    """A field the message does not have (where unknown fields are refused rather than ignored)."""
    steps = [step or "[]" for step, _ in _STEP.findall(path)]
    shown = f"{path}.{name}".lstrip(".")
    within = _walk(info, steps)
    known = [f.encode_name for f in within.fields] if isinstance(within, mi.StructType) else []
    sentence = f"there is no field {shown}" + (f": the fields are {', '.join(known)}" if known else "")
    return sentence, {"field": steps[0] if steps and steps[0] != "[]" else shown, "path": shown}


def _walk(info: Any, steps: list[str]) -> Any:
    for step in steps:
        info = _present(info)
        if step == "{key}":
            info = getattr(info, "key_type", None)
        elif step == "[]":
            info = getattr(info, "item_type", None) or getattr(info, "value_type", None)
        elif isinstance(info, (mi.StructType, mi.DataclassType, mi.TypedDictType)):
            info = next((f.type for f in info.fields if f.encode_name == step), None)
        else:
            return None
        if info is None:
            return None
    return _present(info)


def _present(info: Any) -> Any:
    """The type an optional field has when it is given (without the description or other
    JSON-schema metadata an ``Annotated`` type carries)."""
    if isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.UnionType):
        given = [t for t in info.types if not isinstance(t, mi.NoneType)]
        return _present(given[0]) if len(given) == 1 else mi.UnionType(types=tuple(given))
    return info


def _count(lo: int | None, hi: int | None, unit: str) -> str:
    if lo is not None and hi is not None:
        return f"{lo}-{hi} {unit}" if lo != hi else f"exactly {lo} {unit}"
    if hi is not None:
        return f"at most {hi} {unit}"
    return f"at least {lo} {unit}" if lo else ""


def _range(info: Any) -> str:
    lo = info.ge if info.ge is not None else info.gt
    hi = info.le if info.le is not None else info.lt
    lo_word = "from" if info.gt is None else "above"
    hi_word = "to" if info.lt is None else "below"
    if lo is not None and hi is not None:
        return f" {lo_word} {lo} {hi_word} {hi}"
    if lo is not None:
        return f" {'of at least' if info.gt is None else 'above'} {lo}"
    if hi is not None:
        return f" {'of at most' if info.lt is None else 'below'} {hi}"
    return ""


def describe(info: Any) -> str:
    """What a value of this type may be, as a phrase ("1-64 characters: letters, ...")."""
    if isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.StrType):
        length = _count(info.min_length, info.max_length, "characters")
        if info.pattern in _IDS:
            return _WORDS[info.pattern]
        if info.pattern in _WORDS:
            return f"{length or 'text'}: {_WORDS[info.pattern]}"
        text = f"text of {length}" if length else "text"
        return text + (f" matching {info.pattern}" if info.pattern else "")
    if isinstance(info, mi.BytesType):
        return _count(info.min_length, info.max_length, "bytes") or "bytes"
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.IntType):
        return "an integer" + _range(info)
    if isinstance(info, mi.FloatType):
        return "a number" + _range(info)
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in info.values)
    if isinstance(info, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        items = describe(_present(info.item_type))
        size = _count(info.min_length, info.max_length, "items")
        return f"a list{' of ' + size if size else ''}" + (f", each {items}" if items else "")
    if isinstance(info, mi.DictType):
        return "an object (a map of keys to values)"
    if isinstance(info, (mi.StructType, mi.DataclassType, mi.TypedDictType)):
        return "an object"
    if isinstance(info, mi.UnionType):
        tags = [t.tag for t in info.types if isinstance(t, mi.StructType) and t.tag is not None]
        if tags and len(tags) == len(info.types):
            field = info.types[0].tag_field  # type: ignore[attr-defined]
            return f"an object whose {field} is one of " + ", ".join(repr(t) for t in tags)
        return " or ".join(dict.fromkeys(filter(None, (describe(t) for t in info.types))))
    if isinstance(info, mi.NoneType):
        return "null"
    return ""
