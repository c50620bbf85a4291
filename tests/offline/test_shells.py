"""``omnid init``: the hook code run by real bash, zsh and fish, driven through a pipe and,
for what only a terminal shows (the tty, a killed terminal), under tmux."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from omnid.cli._text import duration
from tests.helpers import omnid_ok, wait_for

INIT = f"{sys.executable} -m omnid init"
SHELLS = {
    "bash": (["bash", "--norc", "--noprofile", "-i"], f'eval "$({INIT} bash)"', "$$"),
    "zsh": (["zsh", "-f", "-i"], f'eval "$({INIT} zsh)"', "$$"),
    "fish": (["fish", "--no-config", "-i"], f"{INIT} fish | source", "$fish_pid"),
}


def need(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (.ci/run installs zsh with apt-get where it can)")


def values(out: str, name: str) -> list[str]:
    return re.findall(rf"^{name}=(\S*)$", out, re.MULTILINE)


@pytest.mark.parametrize("shell", list(SHELLS))
def test_an_interactive_shell_gets_one_session_that_follows_its_directory(shell, daemon, client, tmp_path):
    need(shell)
    argv, init, pid = SHELLS[shell]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    script = "\n".join(
        [
            init,
            f"echo SID=$OMNID_SESSION_ID; echo PID={pid}",
            init,  # sourcing the rc file again changes nothing
            "echo SID=$OMNID_SESSION_ID",
            f"cd {a}", f"cd {b}", f"cd {b}", "cd .",
            "sh -c 'echo CHILD=$OMNID_SESSION_ID'",
            "exit",
        ]
    )
    r = subprocess.run(argv, input=script + "\n", capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    sids, child = values(r.stdout, "SID"), values(r.stdout, "CHILD")
    assert len(sids) == 2 and sids[0] == sids[1] == child[0] and uuid.UUID(sids[0]), r.stdout
    session = client.get(sids[0])
    owner = int(values(r.stdout, "PID")[0])
    assert (session.tool_id, session.session_type, session.owner_pid) == (shell, "shell", owner)
    assert session.metadata["shell"] == shell and session.metadata["user"] and session.metadata["host"]
    assert session.end_reason == "ended" and session.workspace == str(tmp_path)
    files = {f.path: f.accesses for f in client.get_context(session.session_id).files}
    assert files == {str(tmp_path): 1, str(a): 1, str(b): 1}
    [rows] = [line.split() for line in omnid_ok("sessions", "list", "--type", "shell").splitlines()[1:]]
    assert rows[0] == session.session_id and duration(session.ended_at - session.started_at) in rows


def test_bash_keeps_an_exit_trap_of_its_own(daemon, client, tmp_path):
    script = f"trap 'echo BYE=user' EXIT\n{SHELLS['bash'][1]}\necho SID=$OMNID_SESSION_ID\nexit\n"
    r = subprocess.run(SHELLS["bash"][0], input=script, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert values(r.stdout, "BYE") == ["user"]
    assert client.get(values(r.stdout, "SID")[0]).end_reason == "ended"


def test_without_a_daemon_the_shell_starts_quietly(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNID_HOME", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")  # no daemon can start here
    script = f"{SHELLS['bash'][1]}\necho SID=${{OMNID_SESSION_ID-unset}}\ncd /\nexit\n"
    r = subprocess.run(SHELLS["bash"][0], input=script, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and values(r.stdout, "SID") == ["unset"]
    assert "omnid:" not in r.stderr and "Traceback" not in r.stderr  # (stderr echoes the commands)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_under_a_terminal_the_session_knows_its_tty_and_is_reaped_when_killed(shell, daemon, client, tmux, tmp_path):
    need(shell)
    argv, init, _ = SHELLS[shell]
    term = tmux([a for a in argv if a != "-i"])
    term.type(init)
    term.type("echo SID=$OMNID_SESSION_ID TTY=$(tty)")
    sid, tty = wait_for(
        lambda: re.search(r"^SID=(\S+) TTY=(\S+)$", term.screen(), re.MULTILINE), what="the session id"
    ).groups()
    session = client.get(sid)
    assert session.metadata["tty"] == tty and session.live
    term.type(f"cd {tmp_path.parent}")
    wait_for(lambda: str(tmp_path.parent) in {f.path for f in client.get_context(sid).files}, what="the new directory")
    os.kill(session.owner_pid, signal.SIGKILL)  # the terminal dies with its shell: no exit hook runs
    wait_for(lambda: client.get(sid).end_reason == "reaped", what="the killed shell's session to be reaped")
