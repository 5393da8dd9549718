"""The HTTP edge (nmos_ref/web/server.py, and the handshake refusals of nmos_ref/api/query_sockets.py): whatever layer
refuses a request, Twisted's parser, Werkzeug's router or Autobahn's handshake, the answer is the NMOS error JSON with
CORS headers, and a refusal at the HTTP layer closes the connection after it. Normal requests keep keep-alive and
pipelining. The real service on 127.0.0.1:0, sent raw bytes by a Twisted client; the channel itself over a
StringTransport where that is simpler.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from attrs import define
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from nmos_ref.web.errors import NmosError
from nmos_ref.web.responses import MAX_BODY
from nmos_ref.web.root import root_resource
from nmos_ref.web.server import NmosChannel, check_websocket_handshake, error_answer, make_site
from tests.support.cases import SocketTest, UnitTest, cases
from tests.support.official import assert_official
from tests.support.samples import node
from tests.support.websockets import Served

TIMEOUT = 5.0  # seconds an exchange may take: loopback answers take milliseconds, so only a stuck server waits
HOST = b"Host: 127.0.0.1\r\n"
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


# --- raw answers


@define
class Answer:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse(raw: bytes) -> tuple[list[Answer], bytes]:
    """The complete answers at the start of `raw` (each framed by Content-Length), and what follows them."""
    answers = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, reason = (status_line.split(" ", 2) + [""])[:3]
        assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            break
        answers.append(Answer(int(status), reason, headers, rest[:length]))
        raw = rest[length:]
    return answers, raw


def assert_nmos_error(answer: Answer, status: int, closes: bool = True) -> dict[str, Any]:
    """`answer` is the NMOS error JSON for `status`, with CORS (and `Connection: close` when `closes`)."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers.get("content-type") == "application/json", answer.headers
    assert answer.headers.get("access-control-allow-origin") == "*", answer.headers
    if closes:
        assert answer.headers.get("connection") == "close", answer.headers
    body = answer.json()
    assert body["code"] == status and isinstance(body["error"], str) and body["error"]
    assert body["debug"] is None or isinstance(body["debug"], str)
    assert_official("v1.3", "error", body)
    return body


# --- a raw client


@define
class Exchange:
    answers: list[Answer]
    closed: bool  # whether the server closed the connection (rather than the client, once it had its answers)
    rest: bytes = b""


class _Client(Protocol):
    """Writes `pieces` (one per reactor turn), then collects answers until `count` are complete (then closes) or
    the server closes."""

    def __init__(self, pieces: list[bytes], count: int | None) -> None:
        self.pieces = pieces
        self.count = count
        self.data = b""
        self.closed_by_server = True
        self.done: Deferred[Exchange] = Deferred(lambda _: self.transport.abortConnection())

    def connectionMade(self) -> None:
        self._write()

    def _write(self) -> None:
        if self.pieces and self.transport is not None and self.transport.connected:
            self.transport.write(self.pieces.pop(0))
            if self.pieces:
                reactor.callLater(0, self._write)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.count is not None and len(parse(self.data)[0]) >= self.count:
            self.closed_by_server = False
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:  # (it has, when it timed out)
            try:
                answers, rest = parse(self.data)
            except Exception:
                self.done.errback()
            else:
                self.done.callback(Exchange(answers, self.closed_by_server, rest))


async def exchange(port: int, *pieces: bytes, count: int | None = None) -> Exchange:
    """Send `pieces` on a new connection; the answers, read until the server closes (or `count` are complete)."""
    client = _Client(list(pieces), count)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    client.done.addTimeout(TIMEOUT, reactor)
    return await client.done


async def refused(port: int, *pieces: bytes) -> Answer:
    """The one answer to `pieces`, after which the server closed the connection."""
    result = await exchange(port, *pieces)
    assert result.closed and len(result.answers) == 1 and not result.rest, result
    return result.answers[0]


class ServedTest(SocketTest):
    """The real service on 127.0.0.1:0, as `served`."""

    async def setUp(self) -> None:
        self.served = await Served().start()
        self.addCleanup(self.served.stop)


def port_of(served: Served) -> int:
    return int(served.base.split(":")[2].split("/")[0])


def post(path: bytes, headers: bytes, body: bytes = b"") -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\n" + HOST + headers + b"\r\n" + body


REGISTER = b"/x-nmos/registration/v1.3/resource"
JSON = b"Content-Type: application/json\r\n"


# --- 5. Twisted's own refusals, explained


TWISTED_REFUSALS = [
    ("raw non-ASCII bytes in the path", b"GET /x-nmos/query/\xc3\xa9 HTTP/1.1\r\n" + HOST + b"\r\n", 400,
     "printable ASCII"),
    ("a raw byte Twisted lets through, 0x80", b"GET /x-nmos/query/\x80 HTTP/1.1\r\n" + HOST + b"\r\n", 400,
     "printable ASCII"),
    ("a raw DEL in the path", b"GET /x-nmos/\x7f HTTP/1.1\r\n" + HOST + b"\r\n", 400, "printable ASCII"),
    ("raw non-ASCII bytes in the query", b"GET /x-nmos/query/v1.3/nodes?label=\xff HTTP/1.1\r\n" + HOST + b"\r\n",
     400, "printable ASCII"),
    ("a NUL in a header value", b"GET /x-nmos/ HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", 400, "NUL"),
    ("Content-Length: -1", post(REGISTER, JSON + b"Content-Length: -1\r\n"), 400, "Content-Length"),
    ("Content-Length: abc", post(REGISTER, JSON + b"Content-Length: abc\r\n"), 400, "Content-Length"),
    ("Content-Length twice", post(REGISTER, JSON + b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"), 400,
     "Content-Length"),
    ("Content-Length and Transfer-Encoding",
     post(REGISTER, JSON + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400,
     "Transfer-Encoding"),
    ("an unknown transfer coding", post(REGISTER, JSON + b"Transfer-Encoding: gzip\r\n"), 501, "chunked"),
    ("HTTP/2.0 in the request line", b"GET /x-nmos/ HTTP/2.0\r\n" + HOST + b"\r\n", 505, "HTTP/2.0"),
    ("the HTTP/2 connection preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2.0"),
    ("a malformed HTTP version", b"GET /x-nmos/ HTTQ/1.1\r\n" + HOST + b"\r\n", 400, "HTTP version"),
    ("no HTTP version", b"GET /x-nmos/\r\n\r\n", 400, "request line"),
    ("a method that is not a token", b"G(T /x-nmos/ HTTP/1.1\r\n" + HOST + b"\r\n", 400, "method"),
    ("TLS bytes on the plain port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400, "request line"),
    ("a 64 KiB header", b"GET /x-nmos/ HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n", 431,
     "header line"),
    ("a 20 KiB request line", b"GET /x-nmos/" + b"a" * 20000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414,
     "request line"),
    ("headers adding up to 20 KiB",
     b"GET /x-nmos/ HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: %s\r\n" % (n, b"a" * 1000) for n in range(20)) + b"\r\n",
     431, "header fields"),
    ("600 headers", b"GET /x-nmos/ HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: a\r\n" % n for n in range(600)) + b"\r\n",
     431, "header fields"),
    ("a space in a header name", b"GET /x-nmos/ HTTP/1.1\r\n" + HOST + b"X A: b\r\n\r\n", 400, "name"),
    ("a header line without a colon", b"GET /x-nmos/ HTTP/1.1\r\n" + HOST + b"garbage\r\n\r\n", 400, "colon"),
    ("a chunk size that is not hex", post(REGISTER, JSON + b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n"), 400,
     "chunked"),
    ("a chunk not ended by CRLF", post(REGISTER, JSON + b"Transfer-Encoding: chunked\r\n", b"2\r\n{}XX0\r\n\r\n"),
     400, "chunked"),
    ("no Host at HTTP/1.1", b"GET /x-nmos/ HTTP/1.1\r\n\r\n", 400, "Host"),
    ("two Hosts", b"GET /x-nmos/ HTTP/1.1\r\n" + HOST + b"Host: a.example\r\n\r\n", 400, "Host"),
    ("a Host with a bad port", b"GET /x-nmos/ HTTP/1.1\r\nHost: 127.0.0.1:99999999\r\n\r\n", 400, "Host"),
    ("a Host with odd bytes", b"GET /x-nmos/query/v1.3/nodes HTTP/1.1\r\nHost: <x>\xff\r\n\r\n", 400, "Host"),
    ("percent-escapes that are not UTF-8", b"GET /x-nmos/query/%c0%ae%c0%ae/ HTTP/1.1\r\n" + HOST + b"\r\n", 400,
     "UTF-8"),
]


class TwistedRefusalTests(ServedTest):
    """Requests Twisted's parser refuses, answered with the NMOS error JSON."""

    @cases("name, data, status, named", TWISTED_REFUSALS, ids=[case[0] for case in TWISTED_REFUSALS])
    async def test_malformed_requests_get_the_nmos_error_json_then_a_close(self, served: Served, name: str,
                                                                           data: bytes, status: int,
                                                                           named: str) -> None:
        count = served.registry.count("node")
        body = assert_nmos_error(await refused(port_of(served), data), status)
        assert named.lower() in body["error"].lower(), body
        assert served.registry.count("node") == count

    async def test_an_http_1_0_request_may_leave_host_out(self, served: Served) -> None:
        result = await exchange(port_of(served), b"GET /x-nmos/ HTTP/1.0\r\n\r\n")
        assert result.closed and [answer.status for answer in result.answers] == [200]

    async def test_a_long_header_sent_in_pieces_is_refused_as_soon_as_it_is_too_long(self, served: Served) -> None:
        """LineReceiver.lineLengthExceeded: the line never ends, and the answer comes anyway."""
        start = b"GET /x-nmos/ HTTP/1.1\r\n" + HOST + b"X-Big: "
        answer = await refused(port_of(served), start, *[b"a" * 4096] * 8)
        assert_nmos_error(answer, 431)

    async def test_a_bad_form_upload_gets_the_nmos_error_json(self, served: Served) -> None:
        """Twisted would parse a multipart body into request.args (and refuse a broken one with a bare 400); the APIs
        take JSON only, so they say so."""
        data = post(REGISTER, b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 5\r\n", b"hello")
        result = await exchange(port_of(served), data, count=1)
        assert_nmos_error(result.answers[0], 415, closes=False)


# --- 5. Autobahn's handshake refusals


BAD_HANDSHAKES = [
    ("no Sec-WebSocket-Key", b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"),
    ("a short Sec-WebSocket-Key",
     b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n"),
    ("Sec-WebSocket-Version 7", b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 7\r\n" + KEY),
    ("no Connection: Upgrade", b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" + KEY),
]


async def _socket_path(served: Served) -> bytes:
    answer = await served.call("POST", "/query/v1.3/subscriptions",
                               {"max_update_rate_ms": 100, "resource_path": "/nodes", "params": {},
                                "persist": True, "secure": False})
    assert answer.code == 201, answer.body
    return ("/" + answer.body["ws_href"].split("/", 3)[3]).encode()


class HandshakeRefusalTests(ServedTest):
    """WebSocket handshakes refused, by the Query API or by Autobahn, answered with the NMOS error JSON."""

    @cases("name, headers", BAD_HANDSHAKES, ids=[case[0] for case in BAD_HANDSHAKES])
    @cases("where", ["subscription socket", "list upgrade"])
    async def test_bad_websocket_handshakes_get_the_nmos_error_json(self, served: Served, where: str, name: str,
                                                                    headers: bytes) -> None:
        """Refused by the Query API before the WebSocket library sees them (the connection stays usable), or by
        SubscriptionProtocol.failHandshake (then closed); either way NMOS JSON."""
        path = await _socket_path(served) if where == "subscription socket" else b"/x-nmos/query/v1.3/nodes"
        data = b"GET " + path + b" HTTP/1.1\r\n" + HOST + headers + b"\r\n"
        result = await exchange(port_of(served), data, count=1)
        [answer] = result.answers
        assert answer.status in {400, 426}
        assert_nmos_error(answer, answer.status, closes=answer.headers.get("connection") == "close")

    @cases("name, headers", BAD_HANDSHAKES, ids=[case[0] for case in BAD_HANDSHAKES])
    async def test_a_bad_handshake_on_a_list_creates_no_subscription(self, served: Served, name: str,
                                                                     headers: bytes) -> None:
        """IS-04 v1.3: an upgrade on a list creates a subscription; a refused one must not leave one behind."""
        data = b"GET /x-nmos/query/v1.3/nodes HTTP/1.1\r\n" + HOST + headers + b"\r\n"
        result = await exchange(port_of(served), data, count=1)
        assert_nmos_error(result.answers[0], result.answers[0].status, closes=False)
        assert served.manager.listing("v1.3") == []

    async def test_a_handshake_only_autobahn_refuses_gets_the_nmos_error_json_then_a_close(self,
                                                                                           served: Served) -> None:
        """SubscriptionProtocol.failHandshake, the backstop: an Origin that is not a URL."""
        path = await _socket_path(served)
        data = (b"GET " + path + b" HTTP/1.1\r\n" + HOST + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\n" + KEY + b"Origin: http://[\r\n\r\n")
        body = assert_nmos_error(await refused(port_of(served), data), 400)
        assert "origin" in body["error"].lower()


class HandshakeCheckTests(UnitTest):
    """check_websocket_handshake on its own, over DummyRequests."""

    def test_the_handshake_check_accepts_an_rfc_6455_handshake_and_says_what_is_wrong_with_others(self) -> None:
        def request(*headers: tuple[bytes, bytes], version: bytes = b"HTTP/1.1") -> DummyRequest:
            made = DummyRequest([b""])
            made.clientproto = version
            for name, value in headers:
                made.requestHeaders.addRawHeader(name, value)
            return made

        good = [(b"host", b"example.test"), (b"upgrade", b"websocket"), (b"connection", b"keep-alive, Upgrade"),
                (b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
        check_websocket_handshake(request(*good))
        cases = [
            (request(*good, version=b"HTTP/1.0"), 400, "HTTP/1.1"),
            (request(*good[1:]), 400, "Host"),
            (request(*good[:2], *good[3:]), 400, "Connection"),
            (request(*good[:3], good[4]), 400, "Sec-WebSocket-Version"),
            (request(*good[:3], (b"sec-websocket-version", b"8"), good[4]), 426, "version 13"),
            (request(*good[:4]), 400, "Sec-WebSocket-Key"),
            (request(*good[:4], (b"sec-websocket-key", b"abc")), 400, "Sec-WebSocket-Key"),
            (request(*good, good[4]), 400, "Sec-WebSocket-Key"),
        ]
        for made, status, named in cases:
            with pytest.raises(NmosError) as raised:
                check_websocket_handshake(made)
            assert raised.value.status == status and named in raised.value.error, raised.value.error
        with pytest.raises(NmosError) as raised:
            check_websocket_handshake(request(*good[:3], (b"sec-websocket-version", b"8"), good[4]))
        assert raised.value.headers == {"Sec-WebSocket-Version": "13"}


# --- 6. repeated slashes


class RepeatedSlashTests(ServedTest):
    """Empty path segments: served as single slashes, never redirected."""

    async def test_repeated_slashes_are_served_as_single_ones_without_a_redirect(self, served: Served) -> None:
        answer = await served.call("POST", "/registration/v1.3/resource", {"type": "node", "data": node("v1.3")})
        assert answer.code == 201
        single, double = b"/x-nmos/query/v1.3/nodes?paging.limit=2", b"//x-nmos//query//v1.3//nodes?paging.limit=2"
        [one] = (await exchange(port_of(served), b"GET " + single + b" HTTP/1.1\r\n" + HOST + b"\r\n", count=1)).answers
        [two] = (await exchange(port_of(served), b"GET " + double + b" HTTP/1.1\r\n" + HOST + b"\r\n", count=1)).answers
        assert one.status == two.status == 200 and one.body == two.body and len(one.json()) == 1
        assert two.headers["link"] == one.headers["link"]  # built from the path as served, single slashes

    async def test_encoded_slashes_that_make_an_empty_segment_are_a_404_not_a_redirect(self, served: Served) -> None:
        answer = await refused(port_of(served), b"GET /x-nmos/query/v1.3/%2F%2Fnodes HTTP/1.1\r\n" + HOST + b"\r\n")
        assert_nmos_error(answer, 404)


# --- 7. the absolute form


class RequestTargetTests(ServedTest):
    """The absolute and asterisk forms of the request target, and targets that are neither a path nor a URL."""

    async def test_an_absolute_form_target_is_served_as_its_path_with_its_authority_as_host(self,
                                                                                            served: Served) -> None:
        port = port_of(served)
        result = await exchange(port, b"GET http://127.0.0.1:%d/x-nmos/ HTTP/1.1\r\n" % port + HOST + b"\r\n", count=1)
        [answer] = result.answers
        assert answer.status == 200 and answer.json() == ["query/", "registration/"]
        # RFC 9112 §3.2.2: the target's authority replaces Host (seen in the Link URLs the Query API builds from it).
        result = await exchange(port, b"GET HTTP://example.test:1234/x-nmos/query/v1.3/nodes?paging.limit=2"
                                b" HTTP/1.1\r\n" + HOST + b"\r\n", count=1)
        [answer] = result.answers
        assert answer.status == 200
        assert "<http://example.test:1234/x-nmos/query/v1.3/nodes?" in answer.headers["link"]
        result = await exchange(port, b"GET http://127.0.0.1:%d HTTP/1.1\r\n\r\n" % port, count=1)  # empty path: "/"
        assert result.answers[0].status == 200 and result.answers[0].json() == ["x-nmos/"]

    @cases("target", [b"http:///x-nmos/", b"http://user@127.0.0.1/x-nmos/", b"ftp://127.0.0.1/",
                      b"127.0.0.1:80"])
    async def test_a_target_that_is_neither_a_path_nor_an_http_url_is_a_400(self, served: Served,
                                                                            target: bytes) -> None:
        answer = await refused(port_of(served), b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n")
        assert_nmos_error(answer, 400)

    async def test_the_asterisk_form_is_for_options_only(self, served: Served) -> None:
        port = port_of(served)
        result = await exchange(port, b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", count=1)
        [answer] = result.answers
        assert answer.status == 200 and answer.headers["content-type"] == "application/json"
        assert answer.headers["access-control-allow-origin"] == "*"
        assert_nmos_error(await refused(port, b"GET * HTTP/1.1\r\n" + HOST + b"\r\n"), 400)


# --- 8. declared bodies over the limit


class BodyLimitTests(ServedTest):
    """Bodies declared (or chunked) over MAX_BODY are refused before they are read."""

    async def test_a_declared_content_length_over_the_limit_is_refused_before_the_body(self, served: Served) -> None:
        answer = await refused(port_of(served), post(REGISTER, JSON + b"Content-Length: 10737418240\r\n", b"{}"))
        assert "larger than" in assert_nmos_error(answer, 413)["error"]
        assert served.registry.count("node") == 0

    async def test_an_expect_100_continue_over_the_limit_gets_413_and_no_100(self, served: Served) -> None:
        data = post(REGISTER, JSON + b"Expect: 100-continue\r\nContent-Length: %d\r\n" % (MAX_BODY + 1))
        answer = await refused(port_of(served), data)
        assert_nmos_error(answer, 413)

    @cases("chunks", [b"ffffffffffffffffffff\r\n{}", b"%x\r\n{}" % (MAX_BODY + 1),
                      b"2\r\n{}\r\n%x\r\n{}" % (MAX_BODY - 1)])
    async def test_chunk_sizes_adding_up_to_more_than_the_limit_are_refused_at_once(self, served: Served,
                                                                                    chunks: bytes) -> None:
        answer = await refused(port_of(served), post(REGISTER, JSON + b"Transfer-Encoding: chunked\r\n", chunks))
        assert_nmos_error(answer, 413)
        assert served.registry.count("node") == 0

    async def test_a_chunked_registration_within_the_limit_is_served(self, served: Served) -> None:
        body = json.dumps({"type": "node", "data": node("v1.3")}).encode()
        chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
        result = await exchange(port_of(served), post(REGISTER, JSON + b"Transfer-Encoding: chunked\r\n", chunks),
                                count=1)
        assert result.answers[0].status == 201 and served.registry.count("node") == 1


# --- keep-alive and pipelining


def _get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\n" + HOST + b"\r\n"


class KeepAliveTests(ServedTest):
    """Several requests on one connection, one after another or pipelined."""

    async def test_keep_alive_serves_request_after_request_on_one_connection(self, served: Served) -> None:
        body = json.dumps({"type": "node", "data": node("v1.3")}).encode()
        requests = [_get(b"/x-nmos/"), post(REGISTER, JSON + b"Content-Length: %d\r\n" % len(body), body),
                    _get(b"/x-nmos/query/v1.3/nodes"), _get(b"//x-nmos//query/")]
        result = await exchange(port_of(served), *requests, count=len(requests))
        assert not result.closed  # the client closed it, once it had every answer
        assert [answer.status for answer in result.answers] == [200, 201, 200, 200]
        assert all("connection" not in answer.headers for answer in result.answers)

    async def test_pipelined_requests_are_answered_in_order(self, served: Served) -> None:
        body = json.dumps({"type": "node", "data": node("v1.3")}).encode()
        paths = [b"/x-nmos/", b"/x-nmos/query/", b"/x-nmos/registration/", b"/"]
        data = b"".join(map(_get, paths[:2])) + post(REGISTER, JSON + b"Content-Length: %d\r\n" % len(body), body) + \
            b"".join(map(_get, paths[2:]))
        result = await exchange(port_of(served), data, count=5)
        assert [answer.status for answer in result.answers] == [200, 200, 201, 200, 200]
        assert [answer.json() for answer in result.answers[:2]] == [["query/", "registration/"],
                                                                   ["v1.0/", "v1.1/", "v1.2/", "v1.3/"]]
        assert [answer.json() for answer in result.answers[3:]] == [["v1.0/", "v1.1/", "v1.2/", "v1.3/"], ["x-nmos/"]]

    async def test_a_malformed_request_after_pipelined_good_ones_is_refused_after_their_answers(
            self, served: Served) -> None:
        data = _get(b"/x-nmos/") + _get(b"/x-nmos/query/") + b"GET /x-nmos/ HTTP/2.0\r\n" + HOST + b"\r\n" + \
            _get(b"/x-nmos/")
        result = await exchange(port_of(served), data)
        assert result.closed and [answer.status for answer in result.answers] == [200, 200, 505]
        assert_nmos_error(result.answers[2], 505)


# --- the channel in memory


def _channel() -> tuple[Any, StringTransport]:
    site = make_site(root_resource({}))
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def _stop(channel: Any) -> None:
    channel.connectionLost(Failure(ConnectionError()))


class ChannelInMemoryTests(UnitTest):
    """NmosChannel over a StringTransport, and the error answer it writes."""

    def test_an_idle_connection_timed_out_is_a_debug_line(self) -> None:
        """issue 15: Twisted's "Timing out client" came at info for every idle keep-alive connection closed."""
        from twisted.internet.task import Clock
        from twisted.logger import LogLevel, globalLogPublisher

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        channel, transport = _channel()
        clock = Clock()
        channel._channel.callLater = clock.callLater  # TimeoutMixin's timer, for the forced abort that follows
        try:
            channel._channel.timeoutConnection()
            assert transport.disconnecting
            timing_out = [e for e in seen if "Timing out client" in (e.get("log_format") or "")]
            assert [e["log_level"] for e in timing_out] == [LogLevel.debug]
            assert clock.getDelayedCalls()[0].getTime() == channel._channel.abortTimeout
        finally:
            _stop(channel)

    def test_the_site_builds_nmos_channels(self) -> None:
        channel, _ = _channel()
        try:
            assert isinstance(channel._channel, NmosChannel)
        finally:
            _stop(channel)

    @cases("split", [1, 7, 100])
    def test_a_refusal_arrives_whole_and_closes_however_the_bytes_come(self, split: int) -> None:
        channel, transport = _channel()
        data = b"GET /x-nmos/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\nGET /x-nmos/ HTTP/1.1\r\n\r\n"
        try:
            for start in range(0, len(data), split):
                channel.dataReceived(data[start:start + split])
                if transport.disconnecting:
                    break
            assert transport.disconnecting
            [answer], rest = parse(transport.value())
            assert not rest
            assert_nmos_error(answer, 400)
        finally:
            _stop(channel)

    def test_a_request_line_one_byte_over_the_line_limit_is_a_414_and_a_long_one_within_it_is_served(self) -> None:
        # (the line and the header fields together have a limit of the same size: 100 bytes are left for Host)
        for extra, status in ((-100, 404), (1, 414)):
            channel, transport = _channel()
            try:
                line = b"GET /" + b"a" * (NmosChannel.MAX_LENGTH - len(b"GET / HTTP/1.1") + extra) + b" HTTP/1.1"
                channel.dataReceived(line + b"\r\nHost: a\r\n\r\n")
                [answer], _ = parse(transport.value())
                assert_nmos_error(answer, status, closes=status != 404)
            finally:
                _stop(channel)

    def test_the_error_answer_is_a_whole_http_message(self) -> None:
        data = error_answer(NmosError(426, "Only WebSocket version 13", None, {"Sec-WebSocket-Version": "13"}))
        [answer], rest = parse(data)
        assert not rest and answer.reason == "Upgrade Required"
        assert answer.headers["sec-websocket-version"] == "13"
        assert answer.headers["access-control-allow-methods"]
        assert_nmos_error(answer, 426)
        [answer], _ = parse(error_answer(NmosError(431, "too many")))
        assert answer.reason == "Request Header Fields Too Large"


class ChannelAddressTests(UnitTest):
    """The channel asks its transport once per connection for what cannot change while it lasts."""

    def test_the_local_address_and_tls_are_read_once_per_connection(self) -> None:
        channel, transport = _channel()
        try:
            calls = []
            real_get_host = transport.getHost
            self.patch(transport, "getHost", lambda: calls.append("host") or real_get_host())
            inner = channel._channel
            for _ in range(3):
                channel.dataReceived(b"GET /x-nmos/ HTTP/1.1\r\nHost: a\r\n\r\n")
            answers, _ = parse(transport.value())
            assert [answer.status for answer in answers] == [200, 200, 200]
            assert calls == ["host"]
            assert inner.getHost() == real_get_host() and inner.isSecure() is False
        finally:
            _stop(channel)
