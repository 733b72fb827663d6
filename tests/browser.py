"""A real headless browser for the tests that check pages: Debian's Chromium, as the README's tier promises."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """The browser binary; a missing one fails the test (scripts/install-system-deps.sh installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is missing: scripts/install-system-deps.sh installs Debian's chromium")
    return path


def render(url: str, screenshot: Path | None = None, timeout: float = 60.0) -> str:
    """Load ``url`` in headless Chromium; returns the DOM after scripts ran, and saves a screenshot if asked."""
    with tempfile.TemporaryDirectory() as profile:
        args = [chromium(), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=timeout, check=True)
        if screenshot is not None:
            subprocess.run(
                [*args, "--window-size=1200,2000", f"--screenshot={screenshot}", url],
                capture_output=True,
                timeout=timeout,
                check=True,
            )
    return dom.stdout
