"""web/client: `exchange` through `PlainHTTP` (treq's client surface on a bare Agent) against a loopback server."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from nmos_ref.web.client import PlainHTTP, Unreachable, exchange
from tests.support.cases import SocketTest
from tests.support.etcd import free_ports
from tests.support.samples import OpenConnections


class Echo(Resource):
    isLeaf = True

    def render(self, request: Any) -> Any:
        request.setHeader(b"x-method", request.method)
        request.setHeader(b"x-type", request.getHeader(b"content-type") or b"none")
        if request.path == b"/streamed":  # chunked, written in two pieces
            request.write(b"one,")
            reactor.callLater(0, lambda: (request.write(b"two"), request.finish()))
            return NOT_DONE_YET
        request.setResponseCode(201)
        return request.content.read()


class PlainHTTPTests(SocketTest):
    async def test_requests_and_answers(self) -> None:
        site = Site(Echo())
        connections = OpenConnections(site)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        pool = HTTPConnectionPool(reactor, persistent=True)

        async def close() -> None:
            await pool.closeCachedConnections()
            await port.stopListening()
            await connections.closed()
        self.addCleanup(close)
        http, base = PlainHTTP(Agent(reactor, pool=pool)), f"http://127.0.0.1:{port.getHost().port}"
        reply = await exchange(http, reactor, "POST", f"{base}/echo", timeout=5, json_body={"a": [1, "é"]})
        assert reply.code == 201 and reply.json() == {"a": [1, "é"]}
        assert reply.headers["x-method"] == "POST" and reply.headers["x-type"] == "application/json"
        reply = await exchange(http, reactor, "GET", f"{base}/streamed", timeout=5)
        assert reply.code == 200 and reply.body == b"one,two" and reply.headers["x-type"] == "none"
        with self.assertRaises(Unreachable):
            await exchange(http, reactor, "GET", f"http://127.0.0.1:{free_ports(1)[0]}/", timeout=5)
