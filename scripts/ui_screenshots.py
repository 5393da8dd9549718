#!/usr/bin/env python3
"""Screenshots of the live registry page for the docs: runs nmos-ref (a registry and its demo Node) on loopback
ports, registers a second Node that never heartbeats (so it shows as about to expire), and saves PNGs of the page
from headless Chromium (Selenium; Debian's chromium and chromium-driver).

usage: scripts/ui_screenshots.py [FOLDER]   (default docs/; writes ui-demo.png and ui-demo-receivers.png)
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,700"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 (not up yet, or an element redrawn)
            pass
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.1)


def quiet_node(base: str) -> None:
    """A Node registered once and never again: the page shades it as its expiry nears."""
    node_id = str(uuid.uuid4())
    data = {"id": node_id, "version": "1700000000:0", "label": "edge encoder (no heartbeat)", "description": "",
            "tags": {}, "href": "http://127.0.0.1:9/", "hostname": "encoder-7", "caps": {}, "services": [],
            "clocks": [], "interfaces": [], "api": {"versions": ["v1.3"], "endpoints": [
                {"host": "127.0.0.1", "port": 9, "protocol": "http", "authorization": False}]}}
    request = urllib.request.Request(f"{base}/x-nmos/registration/v1.3/resource", method="POST",
                                     data=json.dumps({"type": "node", "data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()


def connect(node: str) -> str:
    """The demo Node's video Receiver subscribed to its video Sender (IS-04 Node API target, as the README shows);
    the Receiver's id."""
    def get(path: str) -> list[dict]:  # type: ignore[type-arg]
        return json.loads(urllib.request.urlopen(f"{node}/x-nmos/node/v1.3/{path}", timeout=5).read())

    def video(items: list[dict]) -> dict:  # type: ignore[type-arg]
        return next(item for item in items if "video" in item["label"].lower())

    receiver = video(get("receivers"))
    request = urllib.request.Request(f"{node}/x-nmos/node/v1.3/receivers/{receiver['id']}/target", method="PUT",
                                     data=json.dumps(video(get("senders"))).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()
    return str(receiver["id"])


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs")
    registry, node = free_port(), free_port()
    base = f"http://127.0.0.1:{registry}"
    process = subprocess.Popen(
        [sys.executable, "-m", "nmos_ref", "--listen", f"tcp:{registry}:interface=127.0.0.1",
         "--node-listen", f"tcp:{node}:interface=127.0.0.1", "--registry", base, "--dns-sd", "off",
         "--log-level", "warn"], cwd=ROOT)
    profile = tempfile.mkdtemp(prefix="nmos-ref-chromium-")
    browser = None
    try:
        wait(lambda: urllib.request.urlopen(f"{base}/x-nmos/query/v1.3/nodes", timeout=1).read() != b"[]")
        quiet_node(base)
        receiver = connect(f"http://127.0.0.1:{node}")
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for flag in [*FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(
            executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver"))
        browser.get(f"{base}/ui/")
        wait(lambda: browser.find_element(By.CSS_SELECTOR, "tr.expiring") is not None)
        browser.save_screenshot(str(folder / "ui-demo.png"))
        browser.find_element(By.ID, "tab-receivers").click()
        row = f'#tbody tr[data-id="{receiver}"] td'
        wait(lambda: browser.find_element(By.CSS_SELECTOR, row).click() or True)
        time.sleep(0.3)
        browser.save_screenshot(str(folder / "ui-demo-receivers.png"))
        print(f"saved {folder / 'ui-demo.png'} and {folder / 'ui-demo-receivers.png'}")
    finally:
        if browser is not None:
            browser.quit()
        process.terminate()
        process.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
