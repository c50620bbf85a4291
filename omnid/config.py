"""The daemon's settings: a TOML file in the user's config dir (``$OMNID_HOME/config.toml``
under OMNID_HOME), read at start and again whenever it changes."""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, Literal

import msgspec
import platformdirs

from omnid_client.protocol import Settings
from omnid_client.protocol.explain import explain

from .safefile import UnsafePath, check_existing, check_file, directory_problem, os_message

log = logging.getLogger("omnid.config")

CONFIG_NAME = "config.toml"
State = Literal["default", "loaded", "invalid"]


class ConfigError(Exception):
    """The config file cannot be used; the message names the file and what is wrong."""


def config_path() -> Path:
    home = os.environ.get("OMNID_HOME")
    if home:
        return Path(home).absolute() / CONFIG_NAME
    return platformdirs.user_config_path("omnid", appauthor=False) / CONFIG_NAME


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading a TOML config needs Python 3.11 or the tomli package") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None


def parse(text: str) -> Settings:
    """Settings from the text of a config file; ConfigError naming the key that is wrong."""
    data = _toml_loads(text)
    known = Settings.__struct_fields__
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} (known keys: {', '.join(known)})")
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as e:
        raise ConfigError(explain(e, Settings)[0]) from None
    if settings.metrics_textfile is not None:
        check_textfile(settings.metrics_textfile)
    if settings.embedding_model is not None:
        check_model_dir(settings.embedding_model)
    return settings


def check_model_dir(text: str) -> None:
    """ConfigError unless ``text`` is an absolute path to a directory (not a link to one):
    what is inside is checked when the model is loaded. Never follows a link."""
    path = Path(text)
    what = f"embedding_model {text!r}"
    if not path.is_absolute():
        raise ConfigError(f"{what} is a relative path; name the model2vec model directory from /")
    problem = directory_problem(path)
    if problem is not None:
        raise ConfigError(f"{what} {problem}")


def check_textfile(text: str) -> None:
    """ConfigError unless ``text`` can be the daemon's metrics textfile: an absolute ``*.prom``
    path in an existing directory of this user (not a link), with no symlink, other file
    kind or other user's file in its place. Never follows a link."""
    path = Path(text)
    what = f"metrics_textfile {text!r}"
    if not path.is_absolute():
        raise ConfigError(f"{what} is a relative path; name it from / (node_exporter's textfile directory)")
    if path.suffix != ".prom":
        raise ConfigError(f"{what} must end in .prom: node_exporter's textfile collector reads only *.prom files")
    try:
        st = os.lstat(path.parent)
    except OSError as e:
        raise ConfigError(f"{what}: its directory {path.parent} cannot be used: {os_message(e)}; create it") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what}: {path.parent} is not a directory (a link is not followed: name the directory)")
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"{what}: the directory {path.parent} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); "
            "use a directory of your own (and point node_exporter's --collector.textfile.directory at it)"
        )
    try:
        check_existing(path, owned=True)
    except UnsafePath as e:
        raise ConfigError(f"{what}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{what}: {os_message(e)}") from None


def read(path: Path) -> Settings | None:
    """The settings in ``path``; None if there is no such file; ConfigError if it is unusable."""
    try:
        # Not blocking: a FIFO or device there must not stall the daemon's event loop.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        try:
            check_file(os.fstat(fd), path, owned=False)  # a link to a config kept elsewhere is fine
            raw = f.read(1 << 20)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {os_message(e)}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None
    try:
        return parse(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


class Config:
    """The settings in force, and what became of the last attempt to read the file."""

    def __init__(self, path: Path):
        self.path = path
        self.settings = Settings()
        self.state: State = "default"
        self.error: str | None = None
        self.loaded_at: float | None = None
        self._stamp: tuple | None = ()

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def changed_on_disk(self) -> bool:
        return self._file_stamp() != self._stamp

    def load(self) -> bool:
        """Read the file again; True if the settings in force changed. An invalid file
        keeps the settings in force and records why in ``error``."""
        self._stamp = self._file_stamp()
        try:
            settings = read(self.path)
        except ConfigError as e:
            if self.error != str(e):
                log.error("ignoring the config file, keeping the settings in force: %s", e)
            self.state, self.error = "invalid", str(e)
            return False
        previous = self.settings
        self.settings = settings if settings is not None else Settings()
        self.state = "loaded" if settings is not None else "default"
        self.error = None
        self.loaded_at = time.time()
        changed = self.settings != previous
        if changed:
            log.info("settings from %s: %s", self.path if settings is not None else "defaults", describe(self.settings))
        return changed


def describe(s: Settings) -> str:
    return ", ".join(f"{name}={getattr(s, name)!r}" for name in s.__struct_fields__)
