"""Headless Chromium from the distribution (/usr/bin/chromium, `make chromium`) driven by Playwright; no browser
build is ever downloaded. Tests that need it skip, saying why, when it is missing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
EXPECTED_REFUSAL = "Failed to load resource: the server responded with a status of 4"  # a 4xx the test provokes
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing: `make chromium` installs it (apt-get install chromium)")


@contextmanager
def browser_page(width: int = 1300, height: int = 900) -> Iterator[Any]:
    """A page of a fresh headless Chromium; page errors and console errors fail the test at the end."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and not
                    msg.text.startswith(EXPECTED_REFUSAL) else None)
            page.set_default_timeout(10_000)
            yield page
        finally:
            browser.close()
    assert not errors, f"errors in the page: {errors}"


def screenshot(page: Any, home: Path, name: str) -> Path:
    """A full-page screenshot under <data dir>/screenshots/."""
    path = home / "screenshots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path
