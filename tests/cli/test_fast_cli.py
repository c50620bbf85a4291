"""The hot commands' click-free path (omnid/cli/fast.py): it must not import click, and must
answer exactly as the click commands do; anything it does not parse goes to click."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from omnid.cli import fast as fast_path, main
from tests.helpers import NOBODY, as_user

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


def test_a_refused_status_answers_as_click_does(home):
    """A socket directory another uid owns is a refusal, not "not running": exit 1 with the
    reason (or a JSON error object), from the fast path exactly as from click."""
    run = home / "run"
    run.mkdir(mode=0o700)
    os.chown(run, NOBODY, NOBODY)
    for args in (["status"], ["status", "--json"]):
        r, c = fast(*args), clicked(*args)
        assert (r.returncode, r.stdout, loaded(r)) == (1, c.stdout, []) == (c.returncode, c.stdout, [])
        assert c.stderr in r.stderr and f"uid {NOBODY}" in r.stdout + r.stderr, (r, c)
    assert json.loads(r.stdout)["error"]["code"] == "permission"


def test_a_stranger_refused_by_the_daemon_gets_the_same_answer_from_both(daemon, home):
    """Another uid reaching our daemon is refused by its peer-credential check: the fast
    path's status, text and --json, is click's, byte for byte."""
    os.chmod(home, 0o711)
    for path, perms in ((daemon.socket.parent, 0o711), (daemon.socket, 0o777)):
        os.chmod(path, perms)  # nothing but the daemon itself stands in the stranger's way

    def both() -> dict:
        out = {}
        for args in (["status"], ["status", "--json"]):
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = fast_path.dispatch(args)
            c = CliRunner().invoke(main, args, prog_name="omnid")
            out[" ".join(args)] = [[code, stdout.getvalue(), stderr.getvalue()], [c.exit_code, c.stdout, c.stderr]]
        return out

    out = as_user(both)["ok"]
    (fast_text, click_text), (fast_json, click_json) = out["status"], out["status --json"]
    assert fast_text == click_text and fast_text[0] == 1 and "permission denied" in fast_text[2], out
    assert fast_json == click_json and json.loads(fast_json[1])["error"]["code"] == "permission", out


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
    # (Help text wraps at 78 columns in a child without a terminal, 80 in click's runner.)
    assert r.stdout.split() == c.stdout.split() and c.stderr.strip() in r.stderr
    assert "click" in loaded(r)


@pytest.mark.parametrize("args", [["status"], ["sessions", "list"]])
def test_a_reader_that_went_away_ends_the_command_quietly_with_status_1(daemon, args):
    """`omnid status | head -1`: the fast path answers a closed pipe as click does."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "omnid", *args], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    finally:
        os.close(write_end)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
