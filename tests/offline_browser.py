"""A page in Debian's Chromium with the network blocked, for tests that read pages as people do.

Every request but ``file:`` and ``data:`` is refused and recorded; console errors and
page errors are recorded. A test asserts on what it sees, then that both lists are empty.
Skips when Chromium or Playwright is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
_ARGS = ["--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update"]


@dataclass
class OfflinePage:
    """The page, the requests it was refused and the errors it logged."""

    page: Any
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def offline_page(path: Path) -> Iterator[OfflinePage]:
    """``path`` opened in headless Chromium with every non-local request blocked."""
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=_ARGS)
        try:
            context = browser.new_context()
            seen = OfflinePage(page=None)

            def only_local(route: Any) -> None:
                url = route.request.url
                if url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    seen.blocked.append(url)
                    route.abort()

            context.route("**/*", only_local)
            page = context.new_page()
            page.on(
                "console",
                lambda message: seen.errors.append(message.text) if message.type == "error" else None,
            )
            page.on("pageerror", lambda error: seen.errors.append(str(error)))
            page.goto(path.as_uri())
            seen.page = page
            yield seen
        finally:
            browser.close()
