"""The playground in Debian's Chromium (headless, through Playwright, which downloads no browser of its own),
trusting a stack's CA as a user's browser does once they imported it: for tests/integration/test_playground.py
and scripts/playground_picture.py (the README's picture)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

VIEWPORT = {"width": 1100, "height": 760}


def trusting_home(home: Path, ca_file: Path) -> Path:
    """`home`, with an NSS database (where Chromium looks for certificate authorities) that trusts `ca_file`."""
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True)
    certutil = shutil.which("certutil")
    assert certutil, "certutil is missing: `make install` installs libnss3-tools"
    subprocess.run([certutil, "-N", "-d", f"sql:{database}", "--empty-password"], check=True)
    trust = [certutil, "-A", "-d", f"sql:{database}", "-n", "LLM Ops CA", "-t", "C,,", "-i", str(ca_file)]
    subprocess.run(trust, check=True)
    return home


@contextlib.contextmanager
def playground(base_url: str, home: Path) -> Iterator[Page]:
    """The playground at `base_url`, open in a browser whose home is `home`."""
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: `make install` installs Debian's chromium package"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, env=os.environ | {"HOME": str(home)})
        try:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.goto(f"{base_url}/")
            yield page
        finally:
            browser.close()


def enter_key(page: Page, key: str) -> None:
    page.fill("#api-key", key)
    page.press("#api-key", "Tab")  # the key is taken when the field is left


def ask(page: Page, prompt: str, max_tokens: int, temperature: float = 0) -> None:
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", prompt)
    page.click("#send")
