"""The real browser of the page tests: Debian's Chromium, driven through Playwright.

A module that tests pages sets ``pytestmark = MARKS`` (the ``browser`` mark, and a skip
naming the package when Chromium is missing) and imports the ``browser`` fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest

CHROMIUM: Final = Path("/usr/bin/chromium")

MARKS: Final = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install -y chromium)"
    ),
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium for the test, closed after it."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()
