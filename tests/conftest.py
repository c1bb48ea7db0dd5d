"""Shared fixtures: an isolated STABLESERVE_HOME per test session (demo pipelines built once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def stableserve_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh data directory for the whole session, exported as STABLESERVE_HOME."""
    home = tmp_path_factory.mktemp("stableserve-home")
    old = os.environ.get("STABLESERVE_HOME")
    os.environ["STABLESERVE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("STABLESERVE_HOME", None)
    else:
        os.environ["STABLESERVE_HOME"] = old
