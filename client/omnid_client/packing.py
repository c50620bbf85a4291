"""Fitting a context pack into a token budget: the one assembly both the daemon and a
client with its own token counter run, so the same candidates and the same counter always
give the same pack, and the pack's Markdown never counts more than the budget.

The default counter, ``estimate_tokens``, is ``ceil(UTF-8 bytes / 4)``: about right for
English text and code with common BPE tokenizers, deterministic and dependency-free. A
caller needing an exact count passes its own ``counter`` (any ``str -> int``) to
``Client.pack_context``: the daemon then sends every candidate within the caps and the
client assembles the pack with that counter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .protocol import ContextPack, PackItem, PackSection

Counter = Callable[[str], int]
DEFAULT_COUNTER = "utf8_bytes/4"


def estimate_tokens(text: str) -> int:
    """``ceil(len(text.encode("utf-8")) / 4)``: the daemon's token estimate."""
    return (len(text.encode("utf-8")) + 3) // 4


def _line(item: PackItem) -> str:
    return f"- {item.text}\n"


def render(sections: Sequence[PackSection]) -> str:
    """The Markdown of the sections that hold items: each a ``## heading`` and its items
    as a list, sections separated by a blank line. Messages read oldest first."""
    blocks = []
    for section in sections:
        if section.items:
            items = reversed(section.items) if section.name == "messages" else section.items
            blocks.append(f"## {section.heading}\n" + "".join(_line(i) for i in items))
    return "\n".join(blocks)


def _count(counter: Counter, text: str) -> int:
    """Tokens of ``text``; the empty text counts 0 whatever the counter says."""
    return counter(text) if text else 0


def assemble(
    candidates: Sequence[PackSection],
    budget: int,
    counter: Counter = estimate_tokens,
    *,
    counter_name: str = DEFAULT_COUNTER,
    base: ContextPack | None = None,
    unlimited: bool = False,
) -> ContextPack:
    """Choose items from ``candidates`` (each section's items in priority order) to fit
    ``budget`` tokens (with ``unlimited``, take every candidate): the first section whole if it fits, then one item
    of each other section in turn, a section closing at its first item that does not fit.
    Each item costs its line, and a section's first item also the heading and the blank
    line before it; if the Markdown as a whole still counts more than the budget (a counter
    that is not additive), the items added last are dropped until it fits. ``base`` gives
    the identity fields (session, project, title...)."""
    limit = float("inf") if unlimited else budget
    chosen: list[list[PackItem]] = [[] for _ in candidates]
    order: list[int] = []  # section index of each item added, in the order added
    used = 0

    def cost(index: int, item: PackItem) -> int:
        extra = 0
        if not chosen[index]:
            extra = _count(counter, f"## {candidates[index].heading}\n") + (_count(counter, "\n") if order else 0)
        return _count(counter, _line(item)) + extra

    def add(index: int, item: PackItem) -> bool:
        nonlocal used
        c = cost(index, item)
        if used + c > limit:
            return False
        used += c
        chosen[index].append(PackItem(item.ref, item.text, _count(counter, _line(item)), item.at, item.score))
        order.append(index)
        return True

    for i, section in enumerate(candidates):
        if section.name == "session":
            for item in section.items:
                if not add(i, item):
                    break
    rest = [i for i, s in enumerate(candidates) if s.name != "session"]
    position = dict.fromkeys(rest, 0)
    while rest:
        still = []
        for i in rest:
            items = candidates[i].items
            if position[i] < len(items) and add(i, items[position[i]]):
                position[i] += 1
                still.append(i)
        rest = still

    def sections() -> list[PackSection]:
        return [
            PackSection(c.name, c.heading, chosen[i], c.available, c.available - len(chosen[i]))
            for i, c in enumerate(candidates)
        ]

    markdown = render(sections())
    tokens = _count(counter, markdown)
    while tokens > limit and order:
        chosen[order.pop()].pop()
        markdown = render(sections())
        tokens = _count(counter, markdown)
    return ContextPack(
        base.session_id if base else None,
        base.project_id if base else None,
        budget,
        tokens,
        counter_name,
        markdown,
        sections(),
        base.title if base else None,
        base.goal if base else None,
        base.summary if base else None,
    )


def repack(candidates: ContextPack, budget: int, counter: Counter, counter_name: str = "custom") -> ContextPack:
    """A pack of ``budget`` tokens by ``counter`` from a daemon's candidates
    (``PackContext(candidates=True)``)."""
    return assemble(candidates.sections, budget, counter, counter_name=counter_name, base=candidates)


__all__ = ["DEFAULT_COUNTER", "Counter", "assemble", "estimate_tokens", "render", "repack"]
