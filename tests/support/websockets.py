"""What the subscription tests (tests/test_ws_*.py) share: an in-memory Query API with subscriptions, the real
service on a loopback port, and an Autobahn client that checks every grain against the official schema.

Nothing here sleeps: a client's reads wait on Deferreds fired by arriving messages, with TIMEOUT as a guard against
a test that would otherwise hang.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from attrs import evolve
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool

from nmos_ref.api.query import QueryAPI
from nmos_ref.api.subscription_service import SubscriptionService
from nmos_ref.config import Settings
from nmos_ref.model.downgrade import Translations
from nmos_ref.model.store import Registry
from nmos_ref.model.versions import SINGULARS
from nmos_ref.wiring.registry import build_registry, subscription_service
from nmos_ref.ws.connection import SubscriptionLimits
from tests.support.etcd import shared_member, unique_prefix
from tests.support.official import assert_official, official_errors
from tests.support.samples import VERSIONS, Answer, QueryHarness, check, port_of, stub_call

TIMEOUT = 10.0  # seconds: only ever reached when a test is failing

SUBSCRIPTION = {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes", "params": {}}


def subscription_body(version: str = "v1.3", **changes: Any) -> dict[str, Any]:
    """A POST /subscriptions body as nmos-testing sends it (test_data/IS0402/subscriptions_request.json, with
    `secure` only from v1.1)."""
    body = {**SUBSCRIPTION, **({"secure": False} if version != "v1.0" else {}), **changes}
    return {key: value for key, value in body.items() if value is not None}


def check_grain(version: str, grain: dict[str, Any], topic: str, downgrade: bool = False) -> None:
    """A grain is valid against the official WebSocket schema of its subscription's version. With
    `query.downgrade`, resources held at lower versions are served as they are, so each is checked against the
    schemas of the versions it may be held at, and the envelope without them."""
    assert grain["grain"]["topic"] == topic + "/"
    data = grain["grain"]["data"]
    assert data, "a grain never has an empty data array"
    if not downgrade:
        assert_official(version, "queryapi-subscriptions-websocket", grain)
        return
    envelope = copy.deepcopy(grain)
    envelope["grain"]["data"] = [{"path": event["path"]} for event in data]
    assert_official(version, "queryapi-subscriptions-websocket", envelope)
    kind = SINGULARS[topic[1:]]
    allowed = VERSIONS[:VERSIONS.index(version) + 1]
    for event in data:
        for key in ("pre", "post"):
            if key in event:
                assert any(not official_errors(v, kind, event[key]) for v in allowed), event[key]


def kind_of(event: dict[str, Any]) -> str:
    """sync, added, modified or removed (IS-04 "Behaviour - Querying", WebSocket Messages)."""
    if "pre" in event and "post" in event:
        return "sync" if event["pre"] == event["post"] else "modified"
    return "added" if "post" in event else "removed"


# --- the in-memory Query API (StubTreq: HTTP only, no sockets)

class SubscriptionHarness(QueryHarness):
    """QueryHarness with subscriptions; the manager's clock and scheduler are the harness's Clock."""

    def __init__(self, versions: tuple[str, ...] = VERSIONS, limits: SubscriptionLimits = SubscriptionLimits(),
                 authorization: bool = False) -> None:
        clock = Clock()
        registry = Registry()
        translations = Translations()
        registry.feed.subscribe(translations.changed)
        self.service = subscription_service(registry, translations, clock, clock, limits)
        self.manager = self.service.manager
        super().__init__(versions, clock=clock, registry=registry, api=QueryAPI(
            registry, versions, authorization=authorization, translations=translations,
            subscriptions=self.manager, websockets=self.service.resource))

    def send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             base: str = "http://api.example.com:8235/x-nmos/query", raw: bytes | None = None) -> Answer:
        """Like `get`, with a JSON body; the answer is checked against the official schemas."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        answer = stub_call(self.stub, method, base + path, data=data, headers=sent)
        assert answer.headers["content-type"] == "application/json"
        if answer.raw:
            check(path, answer)
        return answer

    def subscribe(self, version: str = "v1.3", **changes: Any) -> Answer:
        return self.send("POST", f"/{version}/subscriptions", subscription_body(version, **changes))


# --- an Autobahn client

class Client(WebSocketClientProtocol):
    """A subscriber that keeps every grain and hands them out, checked, one at a time."""

    factory: ClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.grains: list[dict[str, Any]] = []
        self.read = 0  # grains handed out
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self._waiting: Deferred[None] | None = None

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.grains.append(json.loads(payload) if not isBinary else {"binary": payload})
        self._wake()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"WebSocket refused: {code} {reason}"))
        self.closed.callback((wasClean, code, reason))
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    @property
    def unread(self) -> int:
        return len(self.grains) - self.read

    async def grain(self) -> dict[str, Any]:
        """The next grain, checked; waits for it."""
        while self.read == len(self.grains):
            assert not self.closed.called, f"the socket closed: {self.closed.result}"
            self._waiting = Deferred()
            self._waiting.addTimeout(TIMEOUT, reactor)
            await self._waiting
        grain = self.grains[self.read]
        self.read += 1
        factory = self.factory
        assert grain["flow_id"] == factory.subscription.get("id", grain["flow_id"])
        check_grain(factory.api_version, grain, factory.subscription["resource_path"], factory.downgrade)
        return grain

    async def events(self, count: int) -> list[dict[str, Any]]:
        """The events of the next grains, until `count` have come (never more)."""
        events: list[dict[str, Any]] = []
        while len(events) < count:
            events += (await self.grain())["grain"]["data"]
        assert len(events) == count, [kind_of(event) for event in events]
        return events

    async def close(self) -> None:
        if not self.closed.called:
            self.sendClose()
        await self.closed


class ClientFactory(WebSocketClientFactory):
    protocol = Client

    def __init__(self, subscription: dict[str, Any], version: str) -> None:
        super().__init__(subscription["ws_href"], reactor=reactor)
        self.subscription = subscription
        self.api_version = version
        self.downgrade = "query.downgrade" in subscription["params"]
        self.opened: Deferred[Client] = Deferred()


async def connect(subscription: dict[str, Any], version: str) -> Client:
    """A client on `subscription` (the JSON a POST returned), once its socket is open."""
    factory = ClientFactory(subscription, version)
    connectWS(factory)
    factory.opened.addTimeout(TIMEOUT, reactor)
    return await factory.opened


# --- the real service on a loopback port

def track_channels(site: Any) -> list[tuple[Any, Deferred[None]]]:
    """Every HTTP connection `site` accepts from now on, with a Deferred that fires once the server's side of it is
    lost (a client's close reaches the server a reactor turn or more later)."""
    channels: list[tuple[Any, Deferred[None]]] = []
    build_protocol = site.buildProtocol

    def track(address: Any) -> Any:
        channel = build_protocol(address)
        lost: Deferred[None] = Deferred()
        connection_lost = channel.connectionLost

        def lose(reason: Any) -> None:
            connection_lost(reason)
            lost.callback(None)

        channel.connectionLost = lose
        channels.append((channel, lost))
        return channel

    site.buildProtocol = track
    return channels


class Served:
    """`build_registry()` on 127.0.0.1:0 with a treq client of its own; `stop` closes every socket and connection.
    `store="etcd"`: a registry cluster member on the shared etcd (tests/support/etcd.py), under a key prefix of its
    own."""

    def __init__(self, clock: IReactorTime | None = None, store: str = "memory") -> None:
        self.clock = clock if clock is not None else reactor  # a Clock for the timers, where a test drives time
        self.store = store
        self.clients: list[Client] = []
        self.stopped = False
        self._channels: list[tuple[Any, Deferred[None]]] = []  # the server's HTTP connections

    async def start(self) -> Served:
        settings = Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off")
        if self.store == "etcd":
            settings = evolve(settings, store=shared_member().store, store_prefix=unique_prefix())
        self.top = build_registry(settings, reactor, self.clock)
        self._channels = track_channels(self.top.site)
        self.top.startService()
        if self.store == "etcd":
            from nmos_ref.wiring.cluster import ClusterStoreService

            await next(child for child in self.top if isinstance(child, ClusterStoreService)).loaded
        self.base = f"http://127.0.0.1:{await port_of(self.top)}/x-nmos"
        self.registry = self.top.registry
        self.service = next(child for child in self.top if isinstance(child, SubscriptionService))
        self.manager = self.service.manager
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        return self

    async def stop(self) -> None:
        """Close every client and wait for the server's side of each socket, then stop the service."""
        for client in self.clients:
            await client.close()
        await self.idle()
        if not self.stopped:
            self.stopped = True
            await self.top.stopService()
        await self.pool.closeCachedConnections()
        for channel, lost in self._channels:
            if channel._channel.transport is not None:  # else a WebSocket took it over: waited for above
                await lost  # the server's side of the connection, with its timeout call, is gone too

    async def idle(self) -> None:
        """Wait until the server has no socket open."""
        for socket in list(self.service.factory.sockets):
            await socket.when_closed()

    async def call(self, method: str, path: str, body: Any = None) -> Answer:
        """`path` below /x-nmos; every body read, and Query API answers checked against the official schemas."""
        response = await self.http.request(method, self.base + path, json=body)
        raw = await response.content()
        headers = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
        answer = Answer(response.code, headers, raw)
        if path.startswith("/query/") and raw:
            assert answer.headers["content-type"] == "application/json"
            check(path[len("/query"):], answer)
        return answer

    async def register(self, version: str, kind: str, data: dict[str, Any], code: int | None = None) -> None:
        answer = await self.call("POST", f"/registration/{version}/resource", {"type": kind, "data": data})
        assert answer.code in ((code,) if code else (200, 201)), answer.body

    async def delete(self, version: str, kind: str, rid: str) -> None:
        answer = await self.call("DELETE", f"/registration/{version}/resource/{kind}s/{rid}")
        assert answer.code == 204, answer.body

    async def subscribe(self, version: str = "v1.3", **changes: Any) -> dict[str, Any]:
        answer = await self.call("POST", f"/query/{version}/subscriptions", subscription_body(version, **changes))
        assert answer.code in (200, 201), answer.body
        if version == "v1.3":
            assert answer.headers["location"] == f"/x-nmos/query/v1.3/subscriptions/{answer.body['id']}"
        return answer.body

    async def connect(self, subscription: dict[str, Any], version: str = "v1.3") -> Client:
        client = await connect(subscription, version)
        self.clients.append(client)
        return client
