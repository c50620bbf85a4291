"""The hot commands' click-free path (omnid/cli/fast.py): it must not import click, and must
answer exactly as the click commands do; anything it does not parse goes to click."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from omnid.cli import main

PROBE = (
    "import atexit, sys\n"
    "HEAVY = ('click', 'omnid.cli.group', 'omnid.daemon')\n"
    "atexit.register(lambda: print('LOADED', *sorted(m for m in HEAVY if m in sys.modules), file=sys.stderr))\n"
    "sys.argv = ['omnid', *sys.argv[1:]]\n"
    "from omnid.cli import run\n"
    "run()\n"
)


def fast(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """``omnid ARGS`` through the entry point in a child, reporting which heavy modules it loaded."""
    return subprocess.run([sys.executable, "-c", PROBE, *args], input=stdin, capture_output=True, text=True, timeout=60)


def loaded(r: subprocess.CompletedProcess) -> list[str]:
    return r.stderr.splitlines()[-1].split()[1:]


def clicked(*args: str) -> subprocess.CompletedProcess:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False, prog_name="omnid")
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def test_hot_commands_answer_as_click_does_without_loading_it(daemon, spawn_owner, tmp_path):
    owner = spawn_owner().pid
    for args in (
        ["session", "start", "--tool", "t", "--pid", str(owner)],
        ["session", "start", "--tool=t", f"--pid={owner}", "--meta", "a=b"],
    ):
        r, c = fast(*args), clicked(*args)
        assert (r.returncode, r.stdout) == (c.returncode, c.stdout) and loaded(r) == []
    r = fast("session", "start", "--tool", "t", "--pid", str(owner), "--json")
    assert json.loads(r.stdout)["status"] == "existing" and loaded(r) == []

    r, c = fast("status"), clicked("status")
    assert r.returncode == c.returncode == 0 and loaded(r) == []
    keys = lambda out: [line.split(":")[0] for line in out.splitlines()]  # noqa: E731
    assert keys(r.stdout) == keys(c.stdout)
    r, c = fast("status", "--json"), clicked("status", "--json")
    assert json.loads(r.stdout).keys() == json.loads(c.stdout).keys() and loaded(r) == []

    sid = fast("session", "start", "--tool", "t", "--pid", str(owner)).stdout.strip()
    for args in (["shell", "cd", sid, str(tmp_path)], ["shell", "end", sid]):
        r = fast(*args)
        assert (r.returncode, r.stdout, loaded(r)) == (0, "", [])
    r = fast("hook", stdin="{}")
    assert (r.returncode, r.stdout, loaded(r)) == (0, "", [])


def test_without_a_daemon_status_answers_as_click_does(home):
    r, c = fast("status"), clicked("status")
    assert (r.returncode, r.stdout) == (c.returncode, c.stdout) == (3, c.stdout) and loaded(r) == []


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--help"],
        ["status", "--bogus"],
        ["session", "start"],
        ["session", "start", "--tool"],
        ["session", "start", "--tool", "t", "--pid", "x1"],
        ["session", "start", "--tool", "t", "--meta", "novalue"],
        ["shell", "start", "tcsh"],
        ["shell", "cd", "only-one-argument"],
        ["hook", "--pid", "nope"],
    ],
    ids=lambda a: " ".join(a),
)
def test_anything_else_goes_to_click(home, args):
    r, c = fast(*args), clicked(*args)
    assert r.returncode == c.returncode != 0 or "--help" in args
    assert r.stdout == c.stdout and c.stderr.strip() in r.stderr
    assert "click" in loaded(r)
