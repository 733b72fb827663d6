"""promtool (Debian's ``prometheus`` package, installed by scripts/install-system-deps.sh) for the metrics tests."""

from __future__ import annotations

import shutil

import pytest


def promtool() -> str:
    """The promtool binary; skips (saying how to get it) only where it is not installed."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is missing: `bash scripts/install-system-deps.sh` installs Debian's prometheus package")
    return found
