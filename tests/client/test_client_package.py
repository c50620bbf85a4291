"""The thin client installs and works on its own: no daemon code, no daemon dependencies."""

from __future__ import annotations

import subprocess
import sys
import zipfile

BLOCKED_IMPORT = r"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"omnid", "psutil", "click", "platformdirs", "watchfiles"}:
            raise ImportError(f"the client must not import {name}")
        return None

sys.meta_path.insert(0, Block())
import omnid_client, omnid_client.aio, omnid_client.client, omnid_client.paths, omnid_client.protocol
from omnid_client import AsyncClient, Client

client = Client(sys.argv[1], autostart=False, fail_open=True, timeout=0.5)
assert client.get_or_create("tool") is None
assert client.find("tool") is None
print("ok")
"""


def test_client_imports_and_fails_open_without_any_daemon_package(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_client_builds_as_its_own_package_depending_only_on_msgspec(wheels):
    wheel = wheels["omnid_client"]  # pip wheel of ./client on its own
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"omnid_client"}
    assert {"omnid_client/protocol/__init__.py", "omnid_client/protocol/wire.py", "omnid_client/py.typed"} <= set(names)
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert [r.split(">")[0].split("=")[0].strip() for r in requires] == ["msgspec"]
