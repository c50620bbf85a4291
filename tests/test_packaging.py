"""The two distributions as a user installs them: ``pip wheel`` builds omnid and omnid-client
from a copy of this checkout, a fresh virtualenv installs both wheels and runs the README's
client example against the daemon it starts, and each uninstall leaves the other working
or tells ``pip check`` why not. The wheels are built once for the whole run (the ``wheels``
fixture in conftest.py, which tests/client shares)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tests.helpers import PIP_TIMEOUT, ROOT


def run(*argv: str | Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=PIP_TIMEOUT, env=env, stdin=subprocess.DEVNULL
    )
    if check:
        assert r.returncode == 0, f"{' '.join(map(str, argv))} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def metadata(wheel: Path) -> tuple[list[str], str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        return names, z.read(meta).decode()


def test_the_wheels_carry_their_own_packages_licence_and_metadata(wheels):
    names, meta = metadata(wheels["omnid"])
    assert not [n for n in names if n.startswith("omnid_client/")], "omnid must depend on omnid-client, not bundle it"
    assert "Requires-Dist: omnid-client==0.1.0" in meta.splitlines()
    assert "Requires-Dist: tomli>=1.1; python_version < \"3.11\"" in meta.splitlines()
    client_names, client_meta = metadata(wheels["omnid_client"])
    assert "omnid_client/py.typed" in client_names and "omnid_client/protocol/__init__.py" in client_names
    for files, text in ((names, meta), (client_names, client_meta)):
        assert "License-Expression: MIT" in text
        assert any(n.endswith("dist-info/licenses/LICENSE") for n in files)
        assert re.search(r"^Keywords: \S", text, re.M) and "Classifier: Typing :: Typed" in text
        assert "Requires-Python: >=3.10" in text
        assert "Description-Content-Type: text/markdown" in text


def readme_client_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it from a tool", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_both_wheels_install_into_a_fresh_venv_and_uninstall_without_breaking_the_other(wheels, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)  # this pip installs into it: no ensurepip
    py = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", py, "--disable-pip-version-check")
    # The dependencies come from pip's cache or index; the two omnid packages only from these wheels.
    run(*pip, "install", "--quiet", "--no-compile", wheels["omnid_client"], wheels["omnid"])
    run(*pip, "check")
    home = Path(tempfile.mkdtemp(prefix="omnid-w-", dir="/tmp"))
    env = {**os.environ, "OMNID_HOME": str(home), "PYTHONPATH": ""}
    env.pop("OMNID_SOCKET", None)
    example = tmp_path / "example.py"
    example.write_text(readme_client_example())
    try:
        # The example's first client fails open after 0.5 s: a daemon's first start in a fresh
        # venv (nothing byte-compiled yet) can take longer, so it runs before the example.
        assert "omnid started (pid" in run(venv / "bin" / "omnid", "serve", "--detach", env=env).stdout
        ran = run(py, example, env=env)
        assert re.fullmatch(r"created [0-9a-f-]{36}\n", ran.stdout), ran.stdout + ran.stderr
        status = run(venv / "bin" / "omnid", "status", "--json", env=env)
        assert '"running": true' in status.stdout
        assert str(venv) in run(py, "-c", "import omnid, omnid_client; print(omnid.__file__, omnid_client.__file__)",
                                env=env).stdout.split()[1]
    finally:
        run(venv / "bin" / "omnid", "stop", env=env, check=False)
        shutil.rmtree(home, ignore_errors=True)

    run(*pip, "uninstall", "--yes", "omnid")
    still = "from omnid_client import Client; print(Client(fail_open=True, autostart=False).status())"
    assert run(py, "-c", still).stdout == "None\n"  # imports, and fails open: no daemon, no omnid to start one
    run(*pip, "check")

    run(*pip, "install", "--quiet", "--no-compile", "--no-deps", wheels["omnid"])
    run(*pip, "uninstall", "--yes", "omnid-client")
    broken = run(*pip, "check", check=False)
    assert broken.returncode != 0 and "omnid-client" in broken.stdout, "pip check must see the missing client"
