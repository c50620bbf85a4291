"""The .gitignore matcher workspace tracking uses: the pattern features the README lists."""

from __future__ import annotations

import os

import pytest

from omnid.jobs.gitignore import GitIgnore

RULES = """
# a comment, then a blank line

*.log
!keep.log
build/
/only-at-root.txt
docs/*.tmp
**/cache/**
a/**/z.bin
\\#literal
name?.txt
[abc].dat
[!x]y.dat
"""


@pytest.mark.parametrize(
    ("rel", "is_dir", "ignored"),
    [
        ("x.log", False, True),
        ("deep/er/x.log", False, True),
        ("keep.log", False, False),  # negated: the last matching pattern wins
        ("build", True, True),
        ("src/build", True, True),
        ("build", False, False),  # a trailing / matches directories only
        ("only-at-root.txt", False, True),
        ("sub/only-at-root.txt", False, False),  # anchored by the leading /
        ("docs/a.tmp", False, True),
        ("docs/sub/a.tmp", False, False),  # * never crosses a /
        ("other/docs/a.tmp", False, False),  # an inner / anchors too
        ("x/cache/y/z", False, True),
        ("a/z.bin", False, True),
        ("a/b/c/z.bin", False, True),
        ("#literal", False, True),
        ("name1.txt", False, True),
        ("name12.txt", False, False),
        ("b.dat", False, True),
        ("d.dat", False, False),
        ("zy.dat", False, True),
        ("xy.dat", False, False),
        ("src/main.py", False, False),
    ],
)
def test_patterns(rel: str, is_dir: bool, ignored: bool) -> None:
    assert GitIgnore.parse(RULES).ignored(rel, is_dir) is ignored


def test_a_gitignore_that_is_a_link_or_a_fifo_is_not_read(tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("*.py\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / ".gitignore").symlink_to(elsewhere)
    assert GitIgnore.read(str(root)).rules == []
    (root / ".gitignore").unlink()
    os.mkfifo(root / ".gitignore")  # opened without blocking, then refused: not a regular file
    assert GitIgnore.read(str(root)).rules == []
    (root / ".gitignore").unlink()
    (root / ".gitignore").write_text("*.py\n")
    assert GitIgnore.read(str(root)).ignored("a.py", False)
