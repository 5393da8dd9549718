"""HotKlein (nmos_ref/web/hot_routes.py): the Registration API's heartbeats and registrations answered without
Werkzeug and Klein's Deferreds, byte for byte as Klein answers them, and everything else left to Klein."""

from __future__ import annotations

import json
import re
from typing import Any

from klein.resource import KleinResource
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from nmos_ref.api.registration import RegistrationAPI
from nmos_ref.api.versioned import add_error_handlers
from nmos_ref.model.store import Registry
from nmos_ref.validation import Schemas
from nmos_ref.web.errors import NmosError
from nmos_ref.web.hot_routes import HotKlein, HotResource
from nmos_ref.web.root import root_resource
from nmos_ref.web.server import make_site
from tests.support.cases import UnitTest, cases
from tests.support.samples import VERSIONS, device, node

SCHEMAS = Schemas()
NODE = node("v1.3")
DEVICE = device(NODE["id"], "v1.3")
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def _request(method: str, path: str, body: bytes | None = None, extra: str = "",
             content_type: str = "application/json") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8235\r\n{extra}"
    if body is not None and content_type:
        head += f"Content-Type: {content_type}\r\n"
    if body is not None or method == "POST":
        head += f"Content-Length: {len(body or b'')}\r\n"
    return head.encode("ascii") + b"\r\n" + (body or b"")


def _post(version: str, kind: str, data: Any, slash: str = "") -> bytes:
    return _request("POST", f"/x-nmos/registration/{version}/resource{slash}",
                    json.dumps({"type": kind, "data": data}).encode())


def _beat(path: str, **keys: Any) -> bytes:
    return _request("POST", f"/x-nmos/registration/{path}", **keys)


# Every answer of the hot routes, and requests near them that must stay Klein's.
EXCHANGE = [
    _post("v1.3", "node", NODE),
    _post("v1.3", "device", DEVICE),
    _post("v1.3", "device", DEVICE, slash="/"),  # an update, with a trailing slash
    _post("v1.2", "device", DEVICE),  # registered at another version: 409 with Location
    _post("v9.9", "device", DEVICE),
    _post("v1.3", "device", {**DEVICE, "node_id": UNKNOWN}),  # no such parent
    _post("v1.3", "flow", {"id": "not a flow"}),  # schema violation
    _post("v1.3", "bogus", {}),
    _request("POST", "/x-nmos/registration/v1.3/resource", b"{not json"),
    _request("POST", "/x-nmos/registration/v1.3/resource", b'{"a":1,"a":2}'),
    _request("POST", "/x-nmos/registration/v1.3/resource", b'{"type":"node","data":{}}', content_type="text/plain"),
    _request("POST", "/x-nmos/registration/v1.3/resource", b'{"type":"node","data":{}}', content_type=""),
    _request("POST", "/x-nmos/registration/v1.3/resource", b"{}", extra="Access-Control-Request-Headers: X-A\r\n"),
    _request("POST", "/x-nmos/registration/v1.3/resource/extra", b"{}"),
    _request("PUT", "/x-nmos/registration/v1.3/resource", b"{}"),
    _beat(f"v1.3/health/nodes/{NODE['id']}"),
    _beat(f"v1.3/health/nodes/{NODE['id']}/"),
    _beat(f"v1.3/health/nodes/{NODE['id']}", extra="Access-Control-Request-Headers: X-A\r\n"),
    _beat(f"v1.2/health/nodes/{NODE['id']}"),
    _beat(f"v1.3/health/nodes/{UNKNOWN}"),
    _beat("v1.3/health/nodes/%41"),
    _beat("v1.3/health/nodes/a%2Fb"),  # a decoded slash: two segments, as Werkzeug sees it
    _beat("v1.3/health/nodes/%C3%A9"),
    _beat("v9/health/nodes/x"),
    _beat(f"v1.3/health/nodes/{NODE['id']}", body=b"{}"),
    _beat("v1.3/health/nodes"),
    _beat(f"v1.3/health/nodes/{NODE['id']}/more"),
    _beat(f"v1.3/health/nodes/{NODE['id']}?a=1"),
    _request("GET", f"/x-nmos/registration/v1.3/health/nodes/{NODE['id']}"),
    _request("OPTIONS", f"/x-nmos/registration/v1.3/health/nodes/{NODE['id']}"),
    _request("OPTIONS", "/x-nmos/registration/v1.3/resource"),
    _request("DELETE", f"/x-nmos/registration/v1.3/resource/nodes/{NODE['id']}"),
    _beat(f"v1.3/health/nodes/{NODE['id']}"),  # deleted meanwhile: 404
]


def _answers(klein_only: bool) -> list[bytes]:
    """The raw answers to EXCHANGE from a fresh registry: through the API's own resource (hot routes), or through
    plain Klein; one connection each, so that a refusal that closes one does not end the exchange."""
    clock = Clock()
    clock.advance(1_760_000_000)
    api = RegistrationAPI(Registry(), SCHEMAS, list(VERSIONS), clock)
    resource = KleinResource(api.app) if klein_only else api.app.resource()
    site = make_site(root_resource({"registration": resource}))
    answers = []
    for data in EXCHANGE:
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        try:
            channel.dataReceived(data)
        finally:
            channel.connectionLost(Failure(ConnectionError()))
        answers.append(re.sub(rb"(?m)^Date: [^\r]*", b"Date: -", transport.value()))
    return answers


class HotAnswerTests(UnitTest):
    def test_the_hot_routes_answer_byte_for_byte_as_klein(self) -> None:
        hot, klein = _answers(klein_only=False), _answers(klein_only=True)
        for data, mine, theirs in zip(EXCHANGE, hot, klein):
            assert mine == theirs, data.split(b"\r\n")[0]
        statuses = [answer.split(b" ", 2)[1] for answer in hot]
        assert statuses[:3] == [b"201", b"201", b"200"] and b"409" in statuses and b"400" in statuses
        assert all(answer.count(b"HTTP/1.1 ") == 1 for answer in hot)

    def test_heartbeats_and_registrations_do_not_go_through_klein(self) -> None:
        def refuse(resource: Any, request: IRequest) -> None:
            raise AssertionError(f"Klein answered {request.method!r} {request.path!r}")

        self.patch(KleinResource, "render", refuse)
        answers = _answers(klein_only=False)
        self.flushLoggedErrors(AssertionError)  # the requests Klein would have answered are 500s here
        assert [answer.split(b" ", 2)[1] for answer in answers[:3]] == [b"201", b"201", b"200"]
        assert answers[EXCHANGE.index(_beat(f"v1.3/health/nodes/{NODE['id']}"))].startswith(b"HTTP/1.1 200 ")


def _dummy(method: bytes, path: str) -> DummyRequest:
    request = DummyRequest(path.encode("utf-8").split(b"/"))
    request.method = method
    request.path = b"/" + path.encode("utf-8")
    return request


class MatchTests(UnitTest):
    """`match_hot` chooses what Werkzeug chooses, or leaves the request to Klein."""

    @cases("path", ["v1.3/resource", "v1.3/resource/", "x/resource", "v1.3/health/nodes/abc",
                    "v1.3/health/nodes/abc/", "v1.3/health/nodes/%41", "v1.3/health/nodes/..",
                    "v1.3/health/nodes/a b", "v1.3/health/nodes/\u00e9", "resource/resource"])
    def test_the_same_route_and_arguments_as_werkzeug(self, path: str) -> None:
        app = RegistrationAPI(Registry(), SCHEMAS, list(VERSIONS), Clock()).app
        endpoint, _, arguments = app.match_hot(_dummy(b"POST", path))
        adapter = app.url_map.bind("localhost", path_info="/" + path, default_method="POST")
        rule, expected = adapter.match(return_rule=True)
        assert (endpoint, arguments) == (rule.endpoint, expected)

    @cases("method, path", [(b"POST", "v1.3//resource"), (b"POST", "v1.3/resource//"), (b"POST", "/v1.3/resource"),
                            (b"POST", "v1.3/health/nodes//"), (b"POST", "v1.3/health/nodes/a/b"),
                            (b"POST", "v1.3/health/nodes"), (b"GET", "v1.3/health/nodes/a"),
                            (b"PUT", "v1.3/resource"), (b"POST", "v1.3"), (b"POST", "")])
    def test_anything_else_is_left_to_klein(self, method: bytes, path: str) -> None:
        app = RegistrationAPI(Registry(), SCHEMAS, list(VERSIONS), Clock()).app
        assert app.match_hot(_dummy(method, path)) is None

    def test_a_segment_that_is_not_utf8_is_left_to_klein(self) -> None:
        app = RegistrationAPI(Registry(), SCHEMAS, list(VERSIONS), Clock()).app
        request = DummyRequest([b"v1.3", b"health", b"nodes", b"\xff"])
        request.method = b"POST"
        assert app.match_hot(request) is None


class _Odd:
    app = HotKlein()
    add_error_handlers(app)

    @app.hot_route("/<name>/text", "POST")
    def text(self, request: IRequest, name: str) -> Any:
        return name  # not bytes: a mistake a hot route must not hide


class _Later:
    """Hot routes whose handlers answer later (the etcd store's writes, nmos_ref.cluster)."""

    app = HotKlein()
    add_error_handlers(app)

    def __init__(self) -> None:
        self.pending: Deferred[bytes] = Deferred()

    @app.hot_route("/<name>/later", "POST")
    def later(self, request: IRequest, name: str) -> Deferred[bytes]:
        return self.pending


class DeferredAnswerTests(UnitTest):
    def test_the_answer_is_written_when_it_comes(self) -> None:
        api = _Later()
        request = _dummy(b"POST", "abc/later")
        api.app.resource().render(request)
        assert not request.finished
        api.pending.callback(b"done")
        assert request.finished and request.written == [b"done"]

    def test_a_failure_is_the_nmos_error(self) -> None:
        api = _Later()
        request = _dummy(b"POST", "abc/later")
        api.app.resource().render(request)
        api.pending.errback(NmosError(503, "the store cannot be reached", None, {"Retry-After": "5"}))
        assert request.finished and request.responseCode == 503
        assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"5"]
        assert json.loads(b"".join(request.written))["code"] == 503

    def test_nothing_is_written_once_the_client_went_away(self) -> None:
        api = _Later()
        request = _dummy(b"POST", "abc/later")
        api.app.resource().render(request)
        request.processingFailed(Failure(ConnectionDone()))
        api.pending.callback(b"too late")
        assert request.written == []


class DeclarationTests(UnitTest):
    @cases("url", ["/<path:rest>", "/a//b", "/<a", "/<int:n>/x"])
    def test_only_literals_and_plain_variables(self, url: str) -> None:
        with self.assertRaises(ValueError):
            HotKlein().hot_route(url, "POST")

    def test_a_handler_that_does_not_answer_bytes_is_a_500_in_nmos_json(self) -> None:
        resource = _Odd().app.resource()
        assert isinstance(resource, HotResource)
        request = _dummy(b"POST", "abc/text")
        resource.render(request)
        assert request.finished and request.responseCode == 500
        body = json.loads(b"".join(request.written))
        assert body["code"] == 500 and "not bytes" in body["debug"]
        assert len(self.flushLoggedErrors(TypeError)) == 1
