"""A real browser for the report tests: Debian's chromium driven by playwright (PyPI), pages served from a local
HTTP server over the results directory (as a user would publish it), every console message and every request
recorded."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = next((p for p in (os.environ.get("PERFKIT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).exists()), None)


def need_browser():
    """Skip, saying how to get one, where this machine has no chromium or no playwright."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (as root: apt-get install chromium; scripts/setup.sh does)")


@dataclass
class Visit:
    title: str
    console_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    text: str = ""
    html: str = ""
    links: list[str] = field(default_factory=list)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@contextmanager
def serve(root: Path):
    """An HTTP server on loopback over ``root``; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def browser():
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def visit(b, url: str, origin: str, *, wait_ms: int = 600) -> Visit:
    """Open ``url`` in a fresh page; what it said, asked for and showed."""
    page = b.new_page()
    v = Visit("")
    page.on("console", lambda m: v.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: v.console_errors.append(str(e)))
    page.on("request", lambda r: v.foreign_requests.append(r.url) if not r.url.startswith((origin, "data:")) else None)
    page.on("requestfailed", lambda r: v.failed_requests.append(r.url))
    page.goto(url, wait_until="load")
    page.wait_for_timeout(wait_ms)
    v.title = page.title()
    v.text = page.inner_text("body")
    v.html = page.content()
    v.links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
    page.close()
    return v
