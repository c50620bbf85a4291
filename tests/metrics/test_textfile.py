"""The ``metrics_textfile`` for node_exporter against a real daemon: replaced atomically and
never seen half-written, not rewritten while nothing changes, and its path checked when the
config is read."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import DaemonProcess, omnid_error, run_omnid, wait_for

PERIOD = 0.05
"""Seconds between the daemon's looks at the textfile (OMNID_METRICS_TEXTFILE_PERIOD), instead of 15."""
LAST_FAMILY = "omnid_wal_bytes"
"""The family the writer puts last: a file without it was cut short."""


@pytest.fixture
def textfile(home, monkeypatch) -> Path:
    collector = home / "textfile_collector"
    collector.mkdir()
    path = collector / "omnid.prom"
    (home / "config.toml").write_text(f'metrics_textfile = "{path}"\n')
    monkeypatch.setenv("OMNID_METRICS_TEXTFILE_PERIOD", str(PERIOD))
    return path


@pytest.fixture
def textfile_daemon(textfile, home):
    d = DaemonProcess(home).start()
    yield d
    assert d.stop() == 0, d.log_text()
    assert "Traceback" not in d.log_text()


def complete(text: str) -> bool:
    names = {f.name for f in text_string_to_metric_families(text)}
    return LAST_FAMILY in names and text.endswith("\n")


def test_the_textfile_is_replaced_whole_while_a_reader_keeps_reading_it(textfile_daemon, textfile, spawn_owner):
    wait_for(textfile.exists, what="the first textfile")
    first = open(textfile, "rb")  # held open throughout, as a slow reader would
    first_text = first.read()
    seen: set[str] = set()
    latest = [""]
    reads = [0]
    stop = threading.Event()

    def read_loop() -> None:
        while not stop.is_set():
            with open(textfile, "rb") as f:  # what node_exporter does: open by name, read to the end
                latest[0] = f.read().decode()
            seen.add(latest[0])
            reads[0] += 1

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        with textfile_daemon.client() as client:
            owner = spawn_owner()
            for i in range(1, 41):
                client.get_or_create(f"tool-{i % 4}", pid=owner.pid)
                line = f'omnid_requests_total{{method="session.get_or_create"}} {i}\n'
                wait_for(lambda line=line: line in latest[0], what=f"call {i} in the textfile")
    finally:
        stop.set()
        reader.join()
    with first:
        assert os.fstat(first.fileno()).st_nlink == 0, "the first file was replaced by a rename, not rewritten"
        first.seek(0)
        assert first.read() == first_text and complete(first_text.decode())
    assert len(seen) >= 40 and reads[0] > len(seen)
    bad = [text for text in seen if not complete(text)]
    assert not bad, f"{len(bad)} of {len(seen)} distinct reads saw a partial file, e.g. {bad[0][-200:]!r}"
    assert os.stat(textfile).st_mode & 0o777 == 0o644, "node_exporter runs as another user"
    # A rewrite may be under way (the reuses' activity bump commits a second later); a temporary
    # file left behind would never go.
    wait_for(lambda: sorted(p.name for p in textfile.parent.iterdir()) == ["omnid.prom"],
             what="no temporary file left behind")


def test_an_idle_daemon_does_not_rewrite_the_textfile(textfile_daemon, textfile):
    wait_for(textfile.exists, what="the first textfile")
    with textfile_daemon.client() as client:
        client.get_or_create("idle-test")
        wait_for(lambda: 'tool="idle-test"' in textfile.read_text(), what="the call in the textfile")
        # The activity bump of the reuse lands within a second and changes the commit counts:
        # wait until the file has stood still for 10 periods before watching it.
        last = [os.stat(textfile).st_mtime_ns, time.monotonic()]

        def settled() -> bool:
            mtime = os.stat(textfile).st_mtime_ns
            if mtime != last[0]:
                last[:] = [mtime, time.monotonic()]
            return time.monotonic() - last[1] > 10 * PERIOD

        wait_for(settled, timeout=20, what="the textfile to settle")
        before = os.stat(textfile)
        time.sleep(20 * PERIOD)  # twenty periods with nothing to count
        after = os.stat(textfile)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        # It was still looking all along: the next change is written.
        client.get_or_create("idle-test-2")
        wait_for(lambda: 'tool="idle-test-2"' in textfile.read_text(), what="the next change in the textfile")


def test_a_textfile_setting_added_while_running_starts_the_writes(home, monkeypatch):
    monkeypatch.setenv("OMNID_METRICS_TEXTFILE_PERIOD", str(PERIOD))
    d = DaemonProcess(home).start()
    try:
        path = home / "later.prom"
        (home / "config.toml").write_text(f'metrics_textfile = "{path}"\n')
        wait_for(path.exists, timeout=20, what="the textfile once the config names it")
        assert complete(path.read_text())
    finally:
        assert d.stop() == 0, d.log_text()


def check_error(home: Path, value: str) -> str:
    (home / "config.toml").write_text(f'metrics_textfile = "{value}"\n')
    return omnid_error("config", "check")


def test_the_textfile_path_is_checked_when_the_config_is_read(home):
    assert "relative path" in check_error(home, "omnid.prom")
    assert "must end in .prom" in check_error(home, str(home / "omnid.txt"))
    err = check_error(home, str(home / "missing" / "omnid.prom"))
    assert f"{home / 'missing'} cannot be used: No such file or directory; create it" in err
    (home / "target.prom").write_text("")
    (home / "planted.prom").symlink_to(home / "target.prom")
    assert "is a symlink" in check_error(home, str(home / "planted.prom"))
    (home / "linked").symlink_to(home)
    assert "not a directory" in check_error(home, str(home / "linked" / "omnid.prom"))
    (home / "theirs").mkdir()
    os.chown(home / "theirs", 65534, 65534)
    assert "belongs to uid 65534" in check_error(home, str(home / "theirs" / "omnid.prom"))
    (home / "config.toml").write_text(f'metrics_textfile = "{home / "good.prom"}"\n')
    assert run_omnid("config", "check").returncode == 0


def test_a_textfile_that_cannot_be_written_is_reported_and_the_daemon_goes_on(home, monkeypatch):
    monkeypatch.setenv("OMNID_METRICS_TEXTFILE_PERIOD", str(PERIOD))
    collector = home / "collector"
    collector.mkdir()
    (home / "config.toml").write_text(f'metrics_textfile = "{collector / "omnid.prom"}"\n')
    d = DaemonProcess(home).start()
    try:
        wait_for((collector / "omnid.prom").exists, what="the first textfile")
        os.unlink(collector / "omnid.prom")
        os.symlink("/etc/passwd", collector / "omnid.prom")  # planted after the config was read
        with d.client() as client:
            client.get_or_create("planted")
            wait_for(lambda: "cannot write the metrics textfile" in d.log_text(), what="the refusal in the log")
            assert client.status().pid == d.pid
        assert os.readlink(collector / "omnid.prom") == "/etc/passwd"
    finally:
        assert d.stop() == 0, d.log_text()
    assert d.log_text().count("cannot write the metrics textfile") == 1, "once per distinct failure"

