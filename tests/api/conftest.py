"""Fixtures for the content tests: a workspace and a live session in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnid_client import Session
from tests.helpers import start


@pytest.fixture
def ws(tmp_path) -> Path:
    """A plain workspace directory, in no version control."""
    path = tmp_path / "ws"
    path.mkdir()
    return path


@pytest.fixture
def session(client, ws) -> Session:
    return start(client, ws)
