"""web.ui_page: the live registry page's files, served beside /x-nmos by the registry."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from nmos_ref.config import Settings
from nmos_ref.wiring.registry import build_registry
from tests.support.cases import UnitTest, cases
from tests.support.samples import Answer, stub_call


def registry_site(**settings: object) -> StubTreq:
    top = build_registry(Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off", **settings),
                         MemoryReactorClock(), Clock())
    return StubTreq(top.site.resource)


def get(stub: StubTreq, path: str, method: str = "GET") -> Answer:
    return stub_call(stub, method, "http://registry.example:8235" + path)


class TestUiPage(UnitTest):
    @cases("path, content_type", [("/ui/", "text/html; charset=utf-8"), ("/ui", "text/html; charset=utf-8"),
                                  ("/ui/index.html", "text/html; charset=utf-8"),
                                  ("/ui/ui.js", "text/javascript; charset=utf-8"),
                                  ("/ui/ui.css", "text/css; charset=utf-8"),
                                  ("/ui/config.json", "application/json")])
    def test_files(self, path: str, content_type: str) -> None:
        answer = get(registry_site(), path)
        assert answer.code == 200 and answer.headers["content-type"] == content_type
        assert len(answer.raw) > 0
        if content_type.startswith("text/html"):
            assert b'src="/ui/ui.js"' in answer.raw
            assert "default-src 'self'" in answer.headers["content-security-policy"]

    def test_nothing_loaded_from_elsewhere(self) -> None:
        stub = registry_site()
        for name in ("index.html", "ui.js", "ui.css"):
            text = get(stub, f"/ui/{name}").raw.decode()
            assert "http://" not in text and "https://" not in text and "//cdn" not in text, name

    def test_config_names_the_newest_version_the_expiry_and_auth(self) -> None:
        answer = get(registry_site(api_versions=["v1.1", "v1.2"], registration_expiry_interval=30.0),
                     "/ui/config.json")
        assert json.loads(answer.raw) == {"query_version": "v1.2", "registration_version": "v1.2", "expiry": 30.0,
                                          "auth": False}

    @cases("path, method, status", [("/ui/nope", "GET", 404), ("/ui/ui.js/more", "GET", 404),
                                    ("/ui/", "POST", 405), ("/ui/ui.js", "DELETE", 405)])
    def test_anything_else_is_an_nmos_error(self, path: str, method: str, status: int) -> None:
        answer = get(registry_site(), path, method)
        assert answer.code == status and answer.headers["content-type"] == "application/json"
        assert answer.body["code"] == status

    def test_the_root_page_links_it(self) -> None:
        answer = stub_call(registry_site(), "GET", "http://registry.example:8235/",
                           headers={"Accept": "text/html,*/*;q=0.8"})
        assert b'<a href="/ui/">Live registry page</a>' in answer.raw
        json_answer = get(registry_site(), "/")
        assert json_answer.raw == b'["x-nmos/"]'  # the JSON does not list it
