"""A report site as a reader's browser shows it: every page opened from disk in headless Chromium (Playwright).

:func:`check_pages` opens each ``*.html`` of a site with ``file://`` and returns what a reader would trip over: a
page that does not load, a console error or uncaught exception, a request that fails (a missing image, script or
stylesheet), an image that did not decode, a local link to a file that does not exist. ``screenshot`` saves the
landing page as PNG (the README's picture). Nothing is fetched from the network: Chromium starts with its
background networking off, and any http(s) request a page makes is itself a problem reported.

Playwright is an optional extra (``pip install -e '.[browser]'``) and drives a Chromium already on the machine
(Debian's ``chromium``; ``CHROMIUM`` names another): Playwright's own browser download is not used, since it
needs a network that hospital machines often lack.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from improve_lib.core.errors import StudyInputError

# Chromium's own connections (updates, sync, field trials) fail on a closed network, many at a time
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic")
# the viewport of every page, and the screenshot: the landing page's first screen (question, verdict, forest plot)
SCREENSHOT = {"width": 1200, "height": 1500}
_BROKEN_IMAGES = "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
_LOCAL_LINKS = ("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
                ".filter(h => h.startsWith('file:'))")


def chromium_path() -> str | None:
    """The Chromium to drive: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on the PATH; None if none."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _launch(playwright):
    path = chromium_path()
    if path is None:
        raise StudyInputError("no Chromium found: install Debian's chromium (apt-get install chromium) or set CHROMIUM "
                              "to a Chromium executable")
    return playwright.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS))


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise StudyInputError("checking a site in a browser needs Playwright: pip install -e '.[browser]'") from None
    return sync_playwright()


def check_pages(site_dir: str | Path, screenshot: str | Path | None = None) -> list[str]:
    """Open every page of the site in ``site_dir`` in headless Chromium; one line per problem (empty: all good).
    With ``screenshot``, the first screen of the landing page ``index.html`` is saved there as PNG (:data:`SCREENSHOT`)."""
    root = Path(site_dir).resolve()
    pages = sorted(root.rglob("*.html"))
    if not (root / "index.html").is_file():
        raise StudyInputError(f"{root} has no index.html: not a report site (python -m improve_lib report PATH)")
    problems: list[str] = []
    with _sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport=SCREENSHOT)
            where = {"page": ""}
            page.on("console", lambda m: problems.append(f"{where['page']}: console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"{where['page']}: uncaught {e}"))
            page.on("requestfailed", lambda r: problems.append(f"{where['page']}: failed to load {r.url} ({r.failure})"))
            page.on("request", lambda r: problems.append(f"{where['page']}: network request {r.url}")
                    if r.url.startswith(("http:", "https:")) else None)
            for path in pages:
                where["page"] = rel = path.relative_to(root).as_posix()
                response = page.goto(path.as_uri(), wait_until="load")
                if response is not None and not response.ok:
                    problems.append(f"{rel}: did not load ({response.status})")
                problems += [f"{rel}: image did not load: {src}" for src in page.evaluate(_BROKEN_IMAGES)]
                for href in page.evaluate(_LOCAL_LINKS):
                    target = Path(unquote(urlparse(href).path))
                    if not target.is_file():
                        problems.append(f"{rel}: link to a missing file {href}")
            if screenshot is not None:
                page.goto((root / "index.html").as_uri(), wait_until="load")
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return problems
