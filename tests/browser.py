"""A real headless Chromium for page tests: Debian's package driven by playwright.

Tests that need a browser take the ``browser`` fixture from :func:`launch`; where Chromium or playwright
cannot be found or started, they are skipped with a loud reason naming what is missing (CI installs both:
.ci/run installs Debian's chromium, the ``test`` extra installs playwright).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    path = os.environ.get("JOURNEYS_CHROMIUM") or "/usr/bin/chromium"
    return path if Path(path).exists() else shutil.which("chromium")


async def launch(what: str) -> AsyncIterator[Any]:
    """Yield a launched browser; skip (``WHAT TESTS NOT RUN: why``) when there is none to launch."""
    executable = chromium_path()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip(f"{what} TESTS NOT RUN: the playwright package is missing (pip install -e '.[test]')")
    if executable is None:
        pytest.skip(f"{what} TESTS NOT RUN: no Chromium at /usr/bin/chromium (apt-get install chromium)")
    playwright = await async_playwright().start()
    try:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    except Exception as exc:
        await playwright.stop()
        pytest.skip(f"{what} TESTS NOT RUN: Chromium at {executable} did not start: {exc}")
    yield launched
    await launched.close()
    await playwright.stop()
