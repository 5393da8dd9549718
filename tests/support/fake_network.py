"""An in-memory network for the Node's HTTP clients: servers by host:port, each reachable, failing, refusing
connections or never answering, with a record of every request as the server saw it.

`FakeNetwork` has the part of treq's `HTTPClient` the Node uses (`request`); each host is served through
`treq.testing.StubTreq`, so requests are real HTTP/1.1 on both sides (headers as Twisted's Agent sends them).
Time is the test's `Clock`: nothing here sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from attrs import define, field
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource


@define
class Seen:
    """One request as it reached a server (or was attempted, for hosts that do not answer)."""

    time: float
    host: str
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    answered: bool = True

    def json(self) -> Any:
        return json.loads(self.body)


class _Recorder(Resource):
    """Records each request, then lets the wrapped resource tree answer it (or answers `status` itself)."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self.host = host

    def _record(self, request: IRequest) -> None:
        if getattr(request, "_fake_seen", False):
            return
        request._fake_seen = True  # type: ignore[attr-defined]
        body = request.content.read()
        request.content.seek(0)
        headers = {name.decode().lower(): b", ".join(values).decode()
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        self.host.network.seen.append(Seen(self.host.network.clock.seconds(), self.host.name,
                                           request.method.decode(), request.path.decode(), headers, body))

    def _status(self, request: IRequest) -> int | None:
        if self.host.status is not None:
            return self.host.status
        if self.host.answer is not None:
            return self.host.answer(request.method.decode(), request.path.decode())
        return None

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        self._record(request)
        status = self._status(request)
        if status is not None:
            return _Status(status)
        return self.host.resource.getChildWithDefault(name, request)

    def render(self, request: IRequest) -> bytes:
        self._record(request)
        status = self._status(request)
        if status is not None:
            return _Status(status).render(request)
        return self.host.resource.render(request)


class _Status(Resource):
    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"code": self.status, "error": "failing on purpose", "debug": None}).encode()


@define(eq=False)
class Host:
    network: FakeNetwork
    name: str  # "host:port"
    resource: IResource
    mode: str = "up"  # up, refuse (connection refused), hang (never answers)
    status: int | None = None  # answer every request with this status (e.g. 503)
    answer: Callable[[str, str], int | None] | None = None  # (method, path) -> a status to answer with instead
    hold: Callable[[str, str], bool] | None = None  # (method, path) -> park the request until released
    parked: list[tuple[Deferred[Any], Callable[[], Deferred[Any]]]] = field(factory=list)
    stub: StubTreq = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.stub = StubTreq(_Recorder(self))

    def up(self) -> None:
        self.mode, self.status, self.answer = "up", None, None

    def release(self) -> None:
        """Let the parked requests through."""
        parked, self.parked = self.parked, []
        for waiting, send in parked:
            if not waiting.called:
                send().chainDeferred(waiting)
        self.stub.flush()


class FakeNetwork:
    """treq's `HTTPClient.request` over the hosts of this network."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.hosts: dict[str, Host] = {}
        self.seen: list[Seen] = []
        self.cancelled: list[Seen] = []

    def serve(self, name: str, resource: IResource) -> Host:
        host = self.hosts[name] = Host(self, name, resource)
        return host

    def request(self, method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
                **kwargs: Any) -> Deferred[Any]:
        parts = urlsplit(url)
        host = self.hosts.get(parts.netloc)
        if host is None or host.mode == "refuse":
            self.seen.append(Seen(self.clock.seconds(), parts.netloc, method, parts.path, dict(headers or {}),
                                  data or b"", answered=False))
            return fail(ConnectionRefusedError(parts.netloc))

        def send() -> Deferred[Any]:
            sent = host.stub.request(method, url, data=data, headers=headers, **kwargs)
            host.stub.flush()
            return sent

        if host.mode == "hang" or (host.hold is not None and host.hold(method, parts.path)):
            # A hanging host is recorded now; a parked request when the server gets it (on release).
            attempt = Seen(self.clock.seconds(), host.name, method, parts.path, dict(headers or {}), data or b"",
                           answered=False)
            if host.mode == "hang":
                self.seen.append(attempt)
            waiting: Deferred[Any] = Deferred(lambda _: self.cancelled.append(attempt))
            if host.mode != "hang":
                host.parked.append((waiting, send))
            return waiting
        return send()

    # --- reading what happened

    def requests(self, host: str | None = None, method: str | None = None, path: str = "") -> list[Seen]:
        return [seen for seen in self.seen if (host is None or seen.host == host)
                and (method is None or seen.method == method) and path in seen.path]

    def posts(self, host: str | None = None) -> list[tuple[str, str]]:
        """(type, id) of each resource POSTed, in order."""
        return [(seen.json()["type"], seen.json()["data"]["id"])
                for seen in self.requests(host, "POST", "/resource") if seen.answered]

    def heartbeats(self, host: str | None = None) -> list[Seen]:
        return self.requests(host, "POST", "/health/nodes/")
