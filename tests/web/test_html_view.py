"""web.html_view: the APIs browsed in a browser, and every other client's JSON left exactly as it was."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

import nmos_ref.web.responses as responses
from nmos_ref.config import Settings
from nmos_ref.web.html_view import prefers_html
from nmos_ref.wiring.registry import build_registry
from tests.support.cases import UnitTest, cases
from tests.support.samples import Answer, device, flow, node, receiver, sender, source, stub_call

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
BASE = "http://registry.example:8235"


class TestPrefersHtml(UnitTest):
    @cases("accept, expected", [
        (BROWSER, True),
        ("text/html", True),
        ("text/*", True),
        ("application/json;q=0.5, text/html", True),
        ("*/*", False),  # curl
        (None, False),  # the AMWA tool
        ("application/json", False),
        ("", False),
        ("text/html;q=0", False),
        ("text/html;q=0.5, application/json", False),
        ("text/html, application/json", False),  # a tie keeps the JSON
        ("text/html;q=oops, */*", False),
        ("TEXT/HTML", True),
    ])
    def test_accept(self, accept: str | None, expected: bool) -> None:
        assert prefers_html(accept.encode() if accept is not None else None) is expected


class Registry:
    """The registry's whole site in memory, holding one Node with a Device, Source, Flow, Sender and Receiver."""

    def __init__(self, label: str = "node") -> None:
        top = build_registry(Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off"), MemoryReactorClock(),
                             Clock())
        self.stub = StubTreq(top.site.resource)
        self.node = node(label=label)
        self.device = device(self.node["id"])
        self.source = source(self.device["id"])
        self.flow = flow(self.source["id"], self.device["id"])
        self.sender = sender(self.device["id"], self.flow["id"])
        self.receiver = receiver(self.device["id"], subscription={"sender_id": self.sender["id"], "active": True})
        for kind in ("node", "device", "source", "flow", "sender", "receiver"):
            answer = self.call("POST", "/x-nmos/registration/v1.3/resource",
                               json.dumps({"type": kind, "data": getattr(self, kind)}).encode())
            assert answer.code == 201, answer.body

    def call(self, method: str, path: str, data: bytes | None = None, accept: str | None = None) -> Answer:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        return stub_call(self.stub, method, BASE + path, data=data, headers=headers)


# GETs of every API answer, errors and paging included.
BROWSED = ["/", "/x-nmos/", "/x-nmos/query/", "/x-nmos/query/v1.3/", "/x-nmos/query/v1.3/nodes",
           "/x-nmos/query/v1.3/devices/", "/x-nmos/query/v1.3/receivers?label=receiver",
           "/x-nmos/query/v1.3/senders?paging.limit=1", "/x-nmos/query/v1.2/flows",
           "/x-nmos/query/v1.3/nodes/nope", "/x-nmos/query/v9.9/nodes", "/x-nmos/nothing",
           "/x-nmos/query/v1.3/nodes?rql=bad(", "/x-nmos/registration/v1.3/", "/x-nmos/registration/v1.3/resource/",
           "/x-nmos/query/v1.3/subscriptions"]


class TestJsonUnchanged(UnitTest):
    """Curl, the AMWA tool and any client that does not prefer HTML get the bytes they got before HTML views were
    added (the same requests answered with the view switched off), `Vary: Accept` on GETs aside."""

    def answers(self, registry: Registry, accept: str | None, path: str) -> Answer:
        return registry.call("GET", path, accept=accept)

    def test_same_bytes_with_and_without_html_views(self) -> None:
        registry = Registry()
        for accept in (None, "*/*", "application/json", "application/json, text/html;q=0.5"):
            for path in BROWSED:
                with_view = registry.call("GET", path, accept=accept)
                self.patch(responses, "_BROWSED", ())  # json_response as it was: Accept never read
                without = registry.call("GET", path, accept=accept)
                self.patch(responses, "_BROWSED", (b"GET", b"HEAD"))
                assert with_view.raw == without.raw, (accept, path)
                assert with_view.headers.pop("vary") == "Accept"
                assert {k: v for k, v in with_view.headers.items() if k != "date"} == \
                       {k: v for k, v in without.headers.items() if k != "date"}, (accept, path)
                assert with_view.headers["content-type"] == "application/json"

    def test_posts_never_look_at_accept(self) -> None:
        registry = Registry()
        answer = registry.call("POST", f"/x-nmos/registration/v1.3/health/nodes/{registry.node['id']}", b"",
                               accept=BROWSER)
        assert answer.headers["content-type"] == "application/json" and "vary" not in answer.headers


def page_json(page: str) -> Any:
    """The JSON a page shows, its links and escapes undone."""
    shown = re.search(r'<pre id="json">(.*)</pre>', page, re.S)
    assert shown is not None
    return json.loads(html.unescape(re.sub(r"<[^>]+>", "", shown.group(1))))


def links(page: str) -> dict[str, str]:
    """Each link's text (unescaped) → its target."""
    return {html.unescape(re.sub(r"<[^>]+>", "", text)): html.unescape(href)
            for href, text in re.findall(r'<a [^>]*href="([^"]*)"[^>]*>(.*?)</a>', page)}


class TestPages(UnitTest):
    def setUp(self) -> None:
        self.registry = Registry(label='<script>alert("x")</script>')

    def page(self, path: str, status: int = 200) -> tuple[Answer, str]:
        answer = self.registry.call("GET", path, accept=BROWSER)
        assert answer.code == status
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        assert answer.headers["vary"] == "Accept"
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        return answer, answer.raw.decode()

    @cases("path", BROWSED)
    def test_same_json_indented(self, path: str) -> None:
        json_answer = self.registry.call("GET", path)
        answer, page = self.page(path, json_answer.code)
        assert page_json(page) == json.loads(json_answer.raw)
        assert json.dumps(json.loads(json_answer.raw), indent=2, ensure_ascii=False) in \
               html.unescape(re.sub(r"<[^>]+>", "", page))

    def test_labels_render_as_text(self) -> None:
        _, page = self.page(f"/x-nmos/query/v1.3/nodes/{self.registry.node['id']}")
        assert "<script>" not in page and "&lt;script&gt;" in page
        assert page_json(page)["label"] == '<script>alert("x")</script>'

    def test_listing_entries_are_links(self) -> None:
        _, page = self.page("/x-nmos/query/v1.3")
        found = links(page)
        assert found['"nodes/"'] == "/x-nmos/query/v1.3/nodes/"
        assert found['"receivers/"'] == "/x-nmos/query/v1.3/receivers/"
        _, page = self.page("/")
        assert links(page)['"x-nmos/"'] == "/x-nmos/"

    def test_ids_link_to_their_resources(self) -> None:
        registry = self.registry
        _, page = self.page(f"/x-nmos/query/v1.3/receivers/{registry.receiver['id']}")
        found = links(page)
        assert found[json.dumps(registry.receiver["id"])] == f"/x-nmos/query/v1.3/receivers/{registry.receiver['id']}"
        assert found[json.dumps(registry.device["id"])] == f"/x-nmos/query/v1.3/devices/{registry.device['id']}"
        assert found[json.dumps(registry.sender["id"])] == f"/x-nmos/query/v1.3/senders/{registry.sender['id']}"
        _, page = self.page("/x-nmos/query/v1.3/flows")
        found = links(page)
        assert found[json.dumps(registry.source["id"])] == f"/x-nmos/query/v1.3/sources/{registry.source['id']}"
        _, page = self.page(f"/x-nmos/registration/v1.3/resource/senders/{registry.sender['id']}")
        found = links(page)
        assert found[json.dumps(registry.flow["id"])] == f"/x-nmos/registration/v1.3/resource/flows/{registry.flow['id']}"
        assert found[json.dumps(registry.sender["manifest_href"])] == registry.sender["manifest_href"]

    def test_paging_headers_and_links(self) -> None:
        answer, page = self.page("/x-nmos/query/v1.3/senders?paging.limit=1")
        assert "X-Paging-Limit" in page and "X-Paging-Since" in page
        found = links(page)
        assert found["next"].startswith(f"{BASE}/x-nmos/query/v1.3/senders?")
        assert "paging.limit=1" in found["first"]
        assert set(found) >= {"first", "prev", "next", "last"}

    def test_errors_are_pages_too(self) -> None:
        answer, page = self.page("/x-nmos/query/v1.3/nodes/nope", 404)
        assert "<h1 class=\"bad\">404 Not Found</h1>" in page
        assert page_json(page)["code"] == 404

    def test_head_matches_get(self) -> None:
        get = self.registry.call("GET", "/x-nmos/query/v1.3/nodes", accept=BROWSER)
        head = self.registry.call("HEAD", "/x-nmos/query/v1.3/nodes", accept=BROWSER)
        assert head.headers["content-type"] == get.headers["content-type"]


class TestNodeApiPages(UnitTest):
    """The Node API's pages: its own Node is at self/, the rest by collection."""

    def test_ids_link_within_the_node_api(self) -> None:
        from tests.api.test_node import NodeHarness

        harness = NodeHarness()
        json_answer = harness.call("/x-nmos/node/v1.3/senders")
        answer = harness.call("/x-nmos/node/v1.3/senders", headers={"Accept": BROWSER})
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        page = answer.raw.decode()
        assert page_json(page) == json_answer.body
        found = links(page)
        first = json_answer.body[0]
        assert found[json.dumps(first["id"])] == f"/x-nmos/node/v1.3/senders/{first['id']}"
        assert found[json.dumps(first["flow_id"])] == f"/x-nmos/node/v1.3/flows/{first['flow_id']}"
        assert found[json.dumps(first["manifest_href"])] == first["manifest_href"]
        device = harness.call(f"/x-nmos/node/v1.3/devices/{first['device_id']}", headers={"Accept": BROWSER})
        assert links(device.raw.decode())[json.dumps(harness.model.node_id)] == "/x-nmos/node/v1.3/self"


class TestEscaping(UnitTest):
    """Whatever a registered resource holds is shown as text: in the JSON, in link targets and in headers."""

    def test_hostile_values(self) -> None:
        from twisted.web.test.requesthelper import DummyRequest

        from nmos_ref.web.html_view import html_page

        request = DummyRequest([b""])
        request.path = b"/x-nmos/query/v1.3/nodes/<b>"
        request.responseHeaders.setRawHeaders(b"location", [b'/x"><script>alert(1)</script>'])
        value = {"id": '"><script>alert(1)</script>', "label": "<img src=x onerror=alert(1)>",
                 "href": 'http://x/"><script>alert(2)</script>', "manifest_href": "javascript:alert(3)",
                 "device_id": "</pre><script>alert(4)</script>"}
        page = html_page(request, 200, value).decode()
        assert "<script" not in page and "<img" not in page and "<b>" not in page
        assert 'href="javascript:' not in page
        assert page_json(page) == value
