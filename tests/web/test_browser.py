"""The live registry page (/ui/) and the HTML API views in a real browser: headless Chromium driven through Selenium,
against a registry run as its own process on a loopback port. Skipped when Chromium, chromedriver or Selenium is
missing (.ci/run installs them).

`NMOS_REF_SCREENSHOTS=<folder>` saves screenshots of the page there (docs/ui*.png were made so)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import nmos_ref
from tests.support.cases import SkipTest, UnitTest
from tests.support.samples import device, flow, node, receiver, sender, source
from tests.support.pki import make_pki, pairs
from tests.support.tokens import SERVER, Issuer

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = ("selenium is not installed" if webdriver is None else "chromium is not installed" if CHROMIUM is None
           else "chromedriver is not installed" if CHROMEDRIVER is None else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,800"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RegistryProcess:
    """`nmos-ref registry` in a process of its own on a loopback port; with `pki` (tests.support.pki.make_pki), over
    HTTPS at https://localhost:<port>."""

    def __init__(self, *flags: str, pki: dict[str, str] | None = None, folder: Path | None = None) -> None:
        self.port = free_port()
        self.context = None
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        self.base = f"http://127.0.0.1:{self.port}"
        if pki is not None and folder is not None:
            config = folder / "registry.json"
            config.write_text(json.dumps({"tls_certificates": pairs(pki)}))
            flags = (*flags, "--config", str(config))
            listen = f"ssl:{self.port}:interface=127.0.0.1"
            self.base = f"https://localhost:{self.port}"
            self.context = ssl.create_default_context(cafile=pki["ca"])
        env = {**os.environ, "PYTHONPATH": str(Path(nmos_ref.__file__).parent.parent)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nmos_ref", "registry", "--listen", listen, "--dns-sd", "off",
             "--log-level", "warn", *flags],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(self.base + "/x-nmos/", timeout=1, context=self.context).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the registry did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # (this process only, by its own handle)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    token = ""  # a bearer token for every call, with --auth

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.context) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def register(self, kind: str, data: dict[str, Any], version: str = "v1.3") -> dict[str, Any]:
        status, body = self.call("POST", f"/x-nmos/registration/{version}/resource", {"type": kind, "data": data})
        assert status in (200, 201), body
        return data


@pytest.mark.sockets
class BrowserTests(UnitTest):
    """The page and the API views in headless Chromium."""

    flags: tuple[str, ...] = ()
    https = False  # the registry over HTTPS (a CA made for the test; the browser told to accept it)

    def setUp(self) -> None:
        if MISSING:
            raise SkipTest(f"no browser to test with: {MISSING}")
        if self.https:
            folder = Path(tempfile.mkdtemp(prefix="nmos-ref-pki-"))
            self.addCleanup(shutil.rmtree, folder, True)
            self.registry = RegistryProcess(*self.flags, pki=make_pki(folder), folder=folder)
        else:
            self.registry = RegistryProcess(*self.flags)
        self.addCleanup(self.registry.stop)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profile = tempfile.mkdtemp(prefix="nmos-ref-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        for flag in [*FLAGS, f"--user-data-dir={profile}", *(["--ignore-certificate-errors"] if self.https else [])]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
        self.browser = webdriver.Chrome(options=options, service=service)
        self.addCleanup(self.browser.quit)

    def until(self, condition: Callable[[], Any], timeout: float = 5.0, what: str = "") -> float:
        """Seconds until `condition()` is true (checked every 5 ms)."""
        start = time.monotonic()
        while True:
            try:
                if condition():
                    return time.monotonic() - start
            except WebDriverException:
                pass
            if time.monotonic() - start > timeout:
                raise AssertionError(f"not within {timeout} s: {what}")
            time.sleep(0.005)

    def retry(self, action: Callable[[], Any], what: str = "") -> Any:
        """`action()`'s result, tried again while the page redraws what it touches (a stale element)."""
        result: list[Any] = []
        self.until(lambda: result.append(action()) or True, what=what)
        return result[-1]

    def click(self, css: str, within: str | None = None) -> None:
        def act() -> None:
            scope = self.browser.find_element(By.ID, within) if within else self.browser
            scope.find_element(By.CSS_SELECTOR, css).click()
        self.retry(act, f"click {css}")

    def text(self, element_id: str) -> str:
        return self.retry(lambda: self.browser.find_element(By.ID, element_id).text, element_id)

    def console_errors(self) -> list[dict[str, Any]]:
        return [entry for entry in self.browser.get_log("browser") if entry["level"] == "SEVERE"]

    def open_page(self) -> None:
        self.browser.get(self.registry.base + "/ui/")
        self.until(lambda: self.browser.find_element(By.ID, "status").text == "live", what="the page subscribes")

    def rows(self) -> list[str]:
        return self.retry(lambda: [row.get_attribute("data-id")
                                   for row in self.browser.find_elements(By.CSS_SELECTOR, "#tbody tr")])

    def count(self, kind: str) -> str:
        return self.text(f"count-{kind}")

    def screenshot(self, name: str) -> None:
        folder = os.environ.get("NMOS_REF_SCREENSHOTS")
        if folder:
            self.browser.save_screenshot(str(Path(folder) / name))


class PageTests(BrowserTests):
    def test_a_node_appears_live_and_goes_on_delete(self) -> None:
        self.open_page()
        assert self.rows() == [] and self.count("nodes") == "0"
        start = time.monotonic()
        added = self.registry.register("node", node(label="camera node"))
        shown = self.until(lambda: added["id"] in self.rows(), what="the new Node shown")
        took = time.monotonic() - start
        print(f"\na Node registered after the page opened was shown {took * 1000:.0f} ms after its POST was sent "
              f"({shown * 1000:.0f} ms after its 201)")
        assert took < 1.0
        assert self.count("nodes") == "1"
        status, _ = self.registry.call("DELETE", f"/x-nmos/registration/v1.3/resource/nodes/{added['id']}")
        assert status == 204
        gone = self.until(lambda: added["id"] not in self.rows(), what="the deleted Node gone")
        print(f"and gone {gone * 1000:.0f} ms after its DELETE was answered")
        assert gone < 1.0 and self.count("nodes") == "0"
        assert self.console_errors() == []

    def test_counts_details_and_subscriptions(self) -> None:
        registry = self.registry
        the_node = registry.register("node", node(label="studio node"))
        the_device = registry.register("device", device(the_node["id"], label="router"))
        the_source = registry.register("source", source(the_device["id"], label="camera 1"))
        the_flow = registry.register("flow", flow(the_source["id"], the_device["id"], label="camera 1 video"))
        the_sender = registry.register("sender", sender(the_device["id"], the_flow["id"], label="camera 1 out"))
        the_receiver = registry.register("receiver", receiver(
            the_device["id"], label="monitor in", subscription={"sender_id": the_sender["id"], "active": True}))
        registry.register("receiver", receiver(the_device["id"], label="spare in"))
        self.open_page()
        counts = {kind: self.count(kind) for kind in ("nodes", "devices", "sources", "flows", "senders", "receivers")}
        assert counts == {"nodes": "1", "devices": "1", "sources": "1", "flows": "1", "senders": "1",
                          "receivers": "2"}
        # each Node's last heartbeat, from the Registration API's health GET
        self.until(lambda: " s ago" in self.text("tbody"), what="the Node's heartbeat age")
        self.click("#tab-receivers")
        row = f'#tbody tr[data-id="{the_receiver["id"]}"]'
        assert "camera 1 out" in self.retry(lambda: self.browser.find_element(By.CSS_SELECTOR, row).text)
        self.click(row + " td")  # its details
        shown = json.loads(self.text("detail-json"))
        assert shown["id"] == the_receiver["id"] and shown["subscription"]["sender_id"] == the_sender["id"]
        self.click(f'a[data-id="{the_sender["id"]}"]', within="relations")  # to the Sender it is subscribed to
        shown = json.loads(self.text("detail-json"))
        assert shown["id"] == the_sender["id"]
        assert "receivers subscribed: monitor in" in self.text("relations")
        self.click(f'a[data-id="{the_device["id"]}"]', within="relations")  # up to its Device: children shown
        relations = self.text("relations")
        assert "camera 1" in relations and "monitor in" in relations and "studio node" in relations
        self.screenshot("ui-detail.png")
        api = self.browser.find_element(By.ID, "detail-api").get_attribute("href")
        assert api == f"{registry.base}/x-nmos/query/v1.3/devices/{the_device['id']}"
        assert self.console_errors() == []

    def test_filter(self) -> None:
        alpha = self.registry.register("node", node(label="alpha"))
        beta = self.registry.register("node", node(label="beta"))
        self.open_page()
        assert sorted(self.rows()) == sorted([alpha["id"], beta["id"]])

        def filter_by(text: str) -> None:
            box = self.browser.find_element(By.ID, "filter")
            box.clear()
            box.send_keys(text)
            self.browser.find_element(By.ID, "apply").click()

        filter_by("label=alpha")
        self.until(lambda: self.rows() == [alpha["id"]], what="only alpha")
        gamma = self.registry.register("node", node(label="gamma"))
        also_alpha = self.registry.register("node", node(label="alpha"))
        self.until(lambda: sorted(self.rows()) == sorted([alpha["id"], also_alpha["id"]]), what="the new alpha")
        filter_by("rql=or(eq(label,string:beta),eq(label,string:gamma))")
        self.until(lambda: sorted(self.rows()) == sorted([beta["id"], gamma["id"]]), what="beta and gamma")
        filter_by("")
        self.until(lambda: len(self.rows()) == 4, what="all four again")
        assert self.console_errors() == []


class OldVersionTests(BrowserTests):
    """A registry serving v1.0 only: the page subscribes with what v1.0 knows (no secure, no authorization)."""

    flags = ("--api-versions", "v1.0")

    def test_the_page_at_v1_0(self) -> None:
        self.open_page()
        added = self.registry.register("node", node("v1.0", label="old node"), "v1.0")
        self.until(lambda: added["id"] in self.rows(), what="the v1.0 Node shown")
        self.until(lambda: " s ago" in self.text("tbody"), what="its heartbeat age, from the v1.0 health GET")
        assert self.console_errors() == []


class ExpiryTests(BrowserTests):
    flags = ("--expiry", "4")

    def test_a_node_about_to_expire_shows_then_goes(self) -> None:
        self.open_page()
        quiet = self.registry.register("node", node(label="quiet node"))
        self.until(lambda: quiet["id"] in self.rows(), what="the Node shown")
        row = f'#tbody tr[data-id="{quiet["id"]}"]'
        self.until(lambda: "expiring" in self.browser.find_element(By.CSS_SELECTOR, row).get_attribute("class"),
                   timeout=6, what="the Node marked as about to expire")
        self.until(lambda: quiet["id"] not in self.rows(), timeout=10, what="the expired Node gone")
        # (a health GET sent as the Node expired may find it gone: the one error the browser may log here)
        errors = [entry for entry in self.console_errors()
                  if "/health/nodes/" not in entry["message"] or "404" not in entry["message"]]
        assert errors == []


class _IssuerDocuments(BaseHTTPRequestHandler):
    """An authorization server's RFC 8414 metadata and JWK Set, for the registry's key fetcher."""

    issuer: Issuer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        base = self.issuer.url
        documents = {"/.well-known/oauth-authorization-server": {"issuer": base, "jwks_uri": base + "/jwks",
                                                                 "token_endpoint": base + "/token"},
                     "/jwks": self.issuer.jwks()}
        body = json.dumps(documents.get(self.path)).encode()
        self.send_response(200 if self.path in documents else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class AuthTests(BrowserTests):
    """With --auth: the page asks for a token, then uses it on its fetches and (as ?access_token=) its sockets."""

    def setUp(self) -> None:
        if MISSING:
            raise SkipTest(f"no browser to test with: {MISSING}")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _IssuerDocuments)
        self.issuer = Issuer(f"http://127.0.0.1:{server.server_address[1]}")
        _IssuerDocuments.issuer = self.issuer
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.flags = ("--auth", "--auth-issuers", self.issuer.url, "--auth-fqdn", SERVER)
        super().setUp()

    def test_the_page_asks_for_a_token_and_uses_it(self) -> None:
        now = time.time()
        token = self.issuer.token(exp=now + 600, iat=now - 10)
        self.browser.get(self.registry.base + "/ui/")
        self.until(lambda: self.browser.find_element(By.ID, "token-form").is_displayed(), what="the token form")
        assert self.text("status") == "no token"
        self.browser.find_element(By.ID, "token").send_keys(token)
        self.browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        self.until(lambda: self.text("status") == "live", what="subscribed with the token")
        self.registry.token = token
        added = self.registry.register("node", node(label="with a token"))
        took = self.until(lambda: added["id"] in self.rows(), what="the Node shown")
        print(f"\nwith --auth, a Node was shown {took * 1000:.0f} ms after its 201")
        assert self.console_errors() == []


class HttpsTests(BrowserTests):
    https = True

    def test_the_page_over_https(self) -> None:
        self.open_page()
        assert self.browser.current_url.startswith("https://localhost:")
        added = self.registry.register("node", node(label="over TLS"))
        took = self.until(lambda: added["id"] in self.rows(), what="the Node shown")
        print(f"\nover HTTPS (wss), a Node was shown {took * 1000:.0f} ms after its 201")
        assert self.console_errors() == []


class ApiViewTests(BrowserTests):
    def test_links_lead_where_they_say(self) -> None:
        the_node = self.registry.register("node", node(label="<b>bold</b> node"))
        the_device = self.registry.register("device", device(the_node["id"]))
        browser = self.browser
        browser.get(self.registry.base + "/")
        steps = [('"x-nmos/"', "/x-nmos/"), ('"query/"', "/x-nmos/query/"), ('"v1.3/"', "/x-nmos/query/v1.3/"),
                 ('"devices/"', "/x-nmos/query/v1.3/devices/"),
                 (json.dumps(the_device["id"]), f"/x-nmos/query/v1.3/devices/{the_device['id']}"),
                 (json.dumps(the_node["id"]), f"/x-nmos/query/v1.3/nodes/{the_node['id']}")]
        for text, path in steps:
            browser.find_element(By.LINK_TEXT, text).click()
            self.until(lambda path=path: browser.current_url == self.registry.base + path, what=path)
            assert browser.find_element(By.TAG_NAME, "h1").text == "200 OK"
        shown = json.loads(browser.find_element(By.ID, "json").text)
        assert shown["label"] == "<b>bold</b> node"  # as text, not markup
        assert browser.find_elements(By.CSS_SELECTOR, "#json b") == []
        self.screenshot("api-node.png")
        browser.get(self.registry.base + "/")
        browser.find_element(By.LINK_TEXT, "Live registry page").click()
        self.until(lambda: browser.find_element(By.ID, "status").text == "live", what="the page from /")
        browser.get(self.registry.base + "/x-nmos/query/v1.3/nodes?paging.limit=1")
        browser.find_element(By.CSS_SELECTOR, 'a[rel="first"]').click()
        self.until(lambda: "paging.since=0:0" in browser.current_url, what="the first page")
        browser.get(self.registry.base + "/x-nmos/query/v1.3/nodes/nope")
        assert browser.find_element(By.TAG_NAME, "h1").text == "404 Not Found"
        assert json.loads(browser.find_element(By.ID, "json").text)["code"] == 404
