"""``omnid service`` and the unit files: what install writes (for this interpreter, in a
temp HOME/XDG_CONFIG_HOME, never the real ~/.config), that it is idempotent, that a
missing or failing service manager is reported, that the shipped and rendered units pass
``systemd-analyze verify``, the LaunchAgent plist, and that a client asks an installed
service manager to start the daemon and falls back to starting one itself."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from omnid.offline.service import PLACEHOLDER_PYTHON, render_launchd, render_systemd
from omnid_client import Client
from omnid_client.paths import LAUNCHD_LABEL
from tests.helpers import ROOT, wait_for


@pytest.fixture
def user_home(tmp_path, monkeypatch) -> Path:
    """A throwaway HOME and XDG_CONFIG_HOME for this test and its children."""
    home_dir = tmp_path / "user"
    (home_dir / ".config").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home_dir / ".config"))
    return home_dir


@pytest.fixture
def empty_path(tmp_path) -> str:
    """A PATH on which no service manager command exists."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return str(empty)


def omnid(*args: str, path: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    run_env = dict(os.environ if env is None else env)
    if path is not None:
        run_env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "omnid", *args], env=run_env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )


def unit_dir(user_home: Path) -> Path:
    return user_home / ".config" / "systemd" / "user"


# --- the unit files ---------------------------------------------------------------------


def test_shipped_files_are_what_install_writes_for_the_placeholder_interpreter():
    for name, text in render_systemd(PLACEHOLDER_PYTHON, {}).items():
        assert (ROOT / "systemd" / name).read_text() == text, (
            f"systemd/{name} is stale; regenerate it with "
            f"omnid.offline.service.render_systemd({PLACEHOLDER_PYTHON!r}, {{}})"
        )
    shipped = ROOT / "launchd" / f"{LAUNCHD_LABEL}.plist"
    assert shipped.read_bytes() == render_launchd(PLACEHOLDER_PYTHON, {}, Path("/Users/USERNAME"))


def verify(runtime_dir: Path, *units: Path) -> None:
    r = subprocess.run(
        ["systemd-analyze", "verify", "--user", *map(str, units)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)},  # --user needs one to resolve %t
        capture_output=True, text=True, timeout=120,
    )
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if "omnid" in line]
    assert r.returncode == 0 and not complaints, f"systemd-analyze verify failed:\n{r.stdout}{r.stderr}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_shipped_and_rendered_units_pass_systemd_analyze_verify(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    verify(runtime, ROOT / "systemd" / "omnid.socket", ROOT / "systemd" / "omnid.service")

    rendered = tmp_path / "units"
    rendered.mkdir()
    awkward = Path("/tmp/om n%d $HOME")  # a space, a specifier and a variable, all to be escaped
    for name, text in render_systemd(sys.executable, {"OMNID_HOME": str(awkward)}).items():
        (rendered / name).write_text(text)
    verify(runtime, rendered / "omnid.socket", rendered / "omnid.service")
    assert 'Environment="OMNID_HOME=/tmp/om n%%d $HOME"' in (rendered / "omnid.service").read_text()
    assert "ListenStream=/tmp/om n%%d $HOME/run/omnid.sock" in (rendered / "omnid.socket").read_text()

    (rendered / "omnid.service").write_text(
        render_systemd(sys.executable, {})["omnid.service"].replace("Type=notify", "Type=notify\nWatchdogSecs=1")
    )
    with pytest.raises(AssertionError, match="WatchdogSecs"):  # the check itself can fail
        verify(runtime, rendered / "omnid.socket", rendered / "omnid.service")


def test_units_name_this_interpreter_and_carry_omnid_home_only_when_set(home, user_home):
    without = {k: v for k, v in os.environ.items() if k not in ("OMNID_HOME", "OMNID_SOCKET")}
    shown = omnid("service", "show", "--manager", "systemd", env=without)
    assert shown.returncode == 0, shown.stderr
    assert f"ExecStart={sys.executable} -m omnid serve" in shown.stdout
    assert "ListenStream=%t/omnid/omnid.sock" in shown.stdout
    assert "Type=notify" in shown.stdout and "WatchdogSec=" in shown.stdout and "Restart=on-failure" in shown.stdout
    assert "OMNID_HOME" not in shown.stdout and "Environment=" not in shown.stdout

    shown = omnid("service", "show", "--manager", "systemd")
    assert f"Environment=OMNID_HOME={home}" in shown.stdout
    assert f"ListenStream={home}/run/omnid.sock" in shown.stdout


# --- install / uninstall / status ---------------------------------------------------------


def test_install_is_idempotent_and_says_plainly_that_systemctl_is_missing(home, user_home, empty_path):
    first = omnid("service", "install", path=empty_path)
    assert first.returncode == 1
    assert "systemctl not found on PATH" in first.stdout + first.stderr
    assert "omnid is not running as a service" in first.stderr
    units = unit_dir(user_home)
    service_file, socket_file = units / "omnid.service", units / "omnid.socket"
    assert f"ExecStart={sys.executable} -m omnid serve" in service_file.read_text()
    assert f"Environment=OMNID_HOME={home}" in service_file.read_text()
    assert f"ListenStream={home}/run/omnid.sock" in socket_file.read_text()
    written = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (service_file, socket_file)}

    again = omnid("service", "install", "--no-start", "--json", path=empty_path)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert [f["state"] for f in report["files"]] == ["unchanged", "unchanged"]
    assert written == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in written}, "an unchanged file was rewritten"

    service_file.write_text(service_file.read_text().replace("RestartSec=2", "RestartSec=9"))
    st = omnid("service", "status", "--json", path=empty_path)
    assert st.returncode == 0
    assert json.loads(st.stdout)["up_to_date"] is False
    fixed = json.loads(omnid("service", "install", "--no-start", "--json", path=empty_path).stdout)
    assert {f["path"]: f["state"] for f in fixed["files"]}[str(service_file)] == "updated"
    assert "RestartSec=2" in service_file.read_text()

    st = omnid("service", "status", path=empty_path)
    assert st.returncode == 0 and "installed" in st.stdout and "differs" not in st.stdout

    gone = omnid("service", "uninstall", path=empty_path)
    assert gone.returncode == 0, gone.stderr
    assert not service_file.exists() and not socket_file.exists()
    gone = omnid("service", "uninstall", path=empty_path)
    assert gone.returncode == 0 and "was not installed" in gone.stdout
    assert omnid("service", "status", path=empty_path).returncode == 3


def _user_manager_unreachable() -> str | None:
    """Why ``systemctl --user`` cannot work here, or None if it might."""
    if shutil.which("systemctl") is None:
        return None
    probe = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, text=True, timeout=30)
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if probe.returncode != 0 and lines and "bus" in lines[-1].lower() else None


@pytest.mark.skipif(_user_manager_unreachable() is None, reason="needs systemctl without a user manager to talk to")
def test_install_reports_what_the_real_systemctl_said(home, user_home):
    why = _user_manager_unreachable()
    failed = omnid("service", "install")
    assert failed.returncode == 1
    assert "systemctl --user daemon-reload" in failed.stderr and why in failed.stderr
    assert (unit_dir(user_home) / "omnid.service").exists(), "the files are written even so"

    quiet = omnid("service", "install", "--no-start")
    assert quiet.returncode == 0
    assert why in quiet.stdout


def test_launch_agent_plist_names_this_interpreter_and_its_logs(home, user_home, empty_path):
    r = omnid("service", "install", "--manager", "launchd", "--no-start", path=empty_path)
    assert r.returncode == 0, r.stderr
    plist_path = user_home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    with open(plist_path, "rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == LAUNCHD_LABEL
    assert plist["ProgramArguments"] == [sys.executable, "-m", "omnid", "serve", "--log-file", str(home / "omnid.log")]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardErrorPath"] == plist["StandardOutPath"] == str(home / "omnid.launchd.log")
    assert plist["EnvironmentVariables"] == {"OMNID_HOME": str(home)}

    started = omnid("service", "install", "--manager", "launchd", path=empty_path)
    assert started.returncode == 1 and "launchctl not found on PATH" in started.stdout + started.stderr

    plain = plistlib.loads(render_launchd("/opt/py/bin/python3", {}, Path("/Users/ann")))
    assert plain["ProgramArguments"][:4] == ["/opt/py/bin/python3", "-m", "omnid", "serve"]
    assert plain["StandardErrorPath"] == "/Users/ann/Library/Application Support/omnid/omnid.launchd.log"
    assert "EnvironmentVariables" not in plain

    assert omnid("service", "uninstall", "--manager", "launchd", path=empty_path).returncode == 0
    assert not plist_path.exists()


# --- clients and the service manager ---------------------------------------------------------


def _daemons_of(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "serve" in cmdline and any("omnid" in part for part in cmdline):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("OMNID_HOME") == str(home) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
    return found


@pytest.fixture
def stop_daemons(home):
    """Stop the daemons a test's clients started (detached), and fail if one does not stop."""
    yield
    for proc in _daemons_of(home):
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            proc.wait(10)
    assert not _daemons_of(home)


def install_units(empty_path: str) -> None:
    r = omnid("service", "install", "--no-start", path=empty_path)
    assert r.returncode == 0, r.stderr


def fake_systemctl(tmp_path: Path, monkeypatch, script: str) -> Path:
    """A ``systemctl`` first on PATH that records its arguments, then runs ``script``."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    record = tmp_path / "systemctl.args"
    tool = bin_dir / "systemctl"
    tool.write_text(f'#!/bin/sh\necho "$@" >> {record}\n{script}\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_a_client_falls_back_to_starting_the_daemon_when_the_service_manager_cannot(
    home, user_home, empty_path, caplog, stop_daemons
):
    install_units(empty_path)
    caplog.set_level(logging.INFO, logger="omnid_client")

    with Client(start_timeout=15) as client:
        st = client.status()

    assert st.managed_by is None and st.socket == str(home / "run" / "omnid.sock")
    start = "systemctl --user start omnid.socket omnid.service"
    asked = [r.getMessage() for r in caplog.records if start in r.getMessage()]
    assert asked and "starting omnid directly" in asked[0], caplog.text


def test_a_client_asks_the_service_manager_to_start_the_daemon(
    home, user_home, empty_path, tmp_path, monkeypatch, stop_daemons
):
    install_units(empty_path)
    # Stands in for the user manager: records the request and starts the daemon as the unit would.
    record = fake_systemctl(
        tmp_path, monkeypatch, f'exec {sys.executable} -m omnid serve --detach --log-file {home}/omnid.log'
    )

    with Client(start_timeout=15) as client:
        st = client.status()

    assert record.read_text().split("\n")[0] == "--user start omnid.socket omnid.service"
    assert st.socket == str(home / "run" / "omnid.sock")


def test_a_unit_installed_for_another_omnid_home_is_not_asked(home, user_home, tmp_path, monkeypatch, stop_daemons):
    units = unit_dir(user_home)
    units.mkdir(parents=True)
    for name, text in render_systemd(sys.executable, {"OMNID_HOME": str(tmp_path / "elsewhere")}).items():
        (units / name).write_text(text)
    record = fake_systemctl(tmp_path, monkeypatch, "exit 1")

    with Client(start_timeout=15) as client:
        assert client.status().pid

    assert not record.exists(), "systemctl was asked to start a unit that serves another OMNID_HOME"
    wait_for(lambda: len(_daemons_of(home)) == 1, what="exactly one daemon")
