"""``omnid completion SHELL`` loaded into real bash, fish and zsh: command names, and session
ids and tool names asked of a running daemon (none offered, and none started, without one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import omnid_daemons, run_omnid


@pytest.fixture(autouse=True)
def _no_stray_daemons(no_stray_daemons) -> None:
    """For every test here."""


@pytest.fixture
def shell_env(home, tmp_path) -> dict[str, str]:
    """The environment of a shell whose PATH finds ``omnid`` (this checkout, this interpreter)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "omnid"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m omnid "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}


def script(shell: str, tmp_path: Path) -> Path:
    r = run_omnid("completion", shell)
    assert r.returncode == 0, r.stderr
    path = tmp_path / f"omnid.{shell}"
    path.write_text(r.stdout)
    return path


def bash_complete(words: list[str], env: dict[str, str], source: Path) -> list[str]:
    """What bash offers for the last of ``words``: the function ``complete -p`` registered,
    called as bash calls it (command, word, previous word)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {source}; spec=$(complete -p omnid) || exit 9; fn=${{spec#*-F }}; fn=${{fn%% *}}; "
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        f"$fn omnid '{words[-1]}' '{words[-2]}'; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    r = subprocess.run(["bash", "-c", program], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line]


def fish_complete(line: str, env: dict[str, str], source: Path) -> list[str]:
    r = subprocess.run(
        ["fish", "--no-config", "-c", f"source {source}; complete -C '{line}'"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return [entry.split("\t")[0] for entry in r.stdout.splitlines()]


def test_bash_completes_commands_session_ids_and_tools(home, shell_env, tmp_path, daemon, client):
    source = script("bash", tmp_path)
    assert bash_complete(["omnid", "sess"], shell_env, source) == ["session", "sessions"]
    assert "--json" in bash_complete(["omnid", "stats", "--"], shell_env, source)
    got = client.get_or_create("completion-tool", pid=os.getpid())
    sid = got.session.session_id
    assert bash_complete(["omnid", "sessions", "show", sid[:4]], shell_env, source) == [sid]
    assert bash_complete(["omnid", "session", "find", "--tool", "completion-t"], shell_env, source) == [
        "completion-tool"
    ]


def test_completion_offers_no_ids_and_starts_no_daemon_when_none_runs(home, shell_env, tmp_path):
    source = script("bash", tmp_path)
    started = time.monotonic()
    assert bash_complete(["omnid", "sessions", "show", ""], shell_env, source) == []
    assert time.monotonic() - started < 10  # (generous: a loaded machine; the point is no autostart wait)
    assert bash_complete(["omnid", "stat"], shell_env, source) == ["stats", "status"]
    assert not omnid_daemons(home)
    assert not (home / "omnid.db").exists()


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_commands_and_session_ids(home, shell_env, tmp_path, daemon, client):
    source = script("fish", tmp_path)
    assert fish_complete("omnid sess", shell_env, source) == ["session", "sessions"]
    sid = client.get_or_create("fish-tool", pid=os.getpid()).session.session_id
    assert fish_complete("omnid sessions show ", shell_env, source) == [sid]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_loads_the_script_and_its_protocol_completes(home, shell_env, tmp_path, daemon, client):
    """zsh completes only inside its line editor: the script is checked to load and register,
    and the exchange it runs (the same environment variables) to answer."""
    source = script("zsh", tmp_path)
    r = subprocess.run(
        ["zsh", "-f", "-c", f"autoload -U compinit; compinit -u -D; source {source}; print -r -- $_comps[omnid]"],
        env=shell_env, capture_output=True, text=True, timeout=30,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "_omnid_completion"), r.stderr
    sid = client.get_or_create("zsh-tool", pid=os.getpid()).session.session_id
    answer = subprocess.run(
        ["omnid"], env={**shell_env, "_OMNID_COMPLETE": "zsh_complete", "COMP_WORDS": "omnid sessions show ",
                        "COMP_CWORD": "3"},
        capture_output=True, text=True, timeout=30,
    )
    assert answer.stdout.splitlines()[:2] == ["plain", sid], answer.stdout
