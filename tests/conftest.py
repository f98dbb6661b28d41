"""Shared fixtures. Tests that need real data skip only when $CHAINRULE_DATA is unset (CI sets it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$CHAINRULE_DATA, the folder holding mnist/, spamassassin/ and sms-spam/."""
    root = os.environ.get("CHAINRULE_DATA")
    if not root:
        pytest.skip("CHAINRULE_DATA is not set")
    return Path(root)


@pytest.fixture(scope="session")
def mnist_dir(data_root: Path) -> Path:
    """$CHAINRULE_DATA/mnist, the four gzipped IDX files."""
    return data_root / "mnist"
