#!/usr/bin/env python3
"""Start `herald serve --demo`, open the page in Debian's headless Chromium, save a screenshot.

    .venv/bin/python scripts/demo_screenshot.py docs/demo.png

The picture of the demo page in the README and the docs comes from this script.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seconds", type=float, default=12.0, help="how long the page runs")
    args = parser.parse_args()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--demo", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_ready(url + "readyz")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS
            )
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            time.sleep(args.seconds)
            page.screenshot(path=str(args.output))
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"wrote {args.output}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"Herald did not become ready at {url}")


if __name__ == "__main__":
    main()
