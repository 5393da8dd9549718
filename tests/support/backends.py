"""The Registration and Query APIs over one registry, on either store, so that the same test bodies run on both
(issue 14: "the in-memory store's tests and the etcd store's tests are the same tests, parametrised by backend").

- `MemoryApis`: the in-memory `Registry`, asked through StubTreq, every timer on a Clock (no reactor, no socket).
- `EtcdApis`: a cluster member's store (`nmos_ref.wiring.cluster.cluster_store`, what `--store etcd://...` builds)
  on the shared etcd (tests/support/etcd.py), under a key prefix of its own, so each test starts from an empty
  registry; asked over real loopback HTTP with the URL's host in the Host header, as StubTreq would send it.

Both compose the APIs as `nmos_ref.wiring.registry.build_registry` does (with limits it cannot be given: a paging
default of 10 for the documentation's examples), and both give the APIs a Clock that stays at 0, so the TAI stamps
are 0:1, 0:2, ... as in IS-04 "APIs - Query Parameters" (etcd's stamps are `max(now, last + 1)` too). The etcd
store's timers (its client's timeouts, the subscriptions' lease renewals) take real time: `ApiTime`.

Test bodies are `async def` methods of a `Bodies` class, awaiting the harness (`self.api` and the fixtures its
`prepare` makes); a test class per store mixes them with `OnMemory` (a UnitTest: each body runs to its end at once,
since nothing in memory waits) or `OnEtcd` (a SocketTest: skipped with the reason when etcd is not on PATH).
Every answer is checked: no redirect, CORS, JSON, and against the official schemas (tests/support/samples.py).
"""

from __future__ import annotations

import functools
import inspect
import json
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import treq
from attrs import define, field
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, Cooperator
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from nmos_ref.config import Settings
from nmos_ref.model.downgrade import Translations
from nmos_ref.model.query_params import Limits
from nmos_ref.model.store import Registry
from nmos_ref.validation import Schemas
from nmos_ref.web.root import root_resource
from nmos_ref.web.server import make_site
from nmos_ref.wiring.cluster import cluster_store
from nmos_ref.wiring.registry import compose_apis, subscription_service
from nmos_ref.ws.connection import SubscriptionLimits
from tests.support.cases import Bodies, SocketTest, UnitTest
from tests.support.etcd import require_etcd, shared_member, unique_prefix
from tests.support.official import assert_official
from tests.support.samples import VERSIONS, Answer, Family, check
from tests.support.websockets import subscription_body, track_channels

REGISTRATION = "http://127.0.0.1:8235/x-nmos/registration"
QUERY = "http://api.example.com:8235/x-nmos/query"
JSON = {"Content-Type": "application/json"}
TYPES = ("node", "device", "source", "flow", "sender", "receiver")
SCHEMAS = Schemas()
EXPIRY = 3600.0  # seconds: no Node expires during a test (etcd's leases run on its own clock)


@define(frozen=True)
class Options:
    """What a test may ask of its APIs."""

    versions: tuple[str, ...] = VERSIONS
    limits: Limits = field(factory=Limits)
    host_name: str | None = None
    authorization: bool = False
    subscription_limits: SubscriptionLimits = field(factory=SubscriptionLimits)


class Apis:
    """A registry's Registration and Query APIs (with subscriptions), called the way tests call them."""

    backend: str
    clock: Clock

    def __init__(self) -> None:
        self.stamps: dict[str, str] = {}  # resource id -> the X-Paging-Timestamp of its last registration
        self.created: dict[str, str] = {}  # resource id -> that of its creation (a 201)

    async def request(self, method: str, url: str, data: bytes | None, headers: dict[str, str] | None) -> Answer:
        raise NotImplementedError

    async def _answer(self, method: str, url: str, data: bytes | None, headers: dict[str, str] | None) -> Answer:
        answer = await self.request(method, url, data, headers)
        assert not 300 <= answer.code < 400, "IS-04 APIs never redirect"
        assert answer.headers["access-control-allow-origin"] == "*"
        return answer

    # The Registration API (paths below REGISTRATION, or whole URLs)

    async def call(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> Answer:
        if body is not None:
            raw = json.dumps(body).encode()
            headers = headers if headers is not None else JSON
        answer = await self._answer(method, url if url.startswith("http") else REGISTRATION + url, raw, headers)
        if method != "HEAD" and answer.raw:
            assert answer.headers["content-type"] == "application/json"
        if answer.code >= 400:
            error = answer.body
            assert error["code"] == answer.code and isinstance(error["error"], str), error
            assert_official("v1.3", "error", error)
        return answer

    async def post(self, version: str, kind: str, data: dict[str, Any]) -> Answer:
        answer = await self.call("POST", f"/{version}/resource", {"type": kind, "data": data})
        if answer.code in (200, 201):
            self.stamps[data["id"]] = answer.headers["x-paging-timestamp"]
        if answer.code == 201:
            self.created[data["id"]] = answer.headers["x-paging-timestamp"]
        return answer

    async def register(self, kind: str, data: dict[str, Any], version: str) -> dict[str, Any]:
        """Register through the Registration API, which must take it."""
        answer = await self.post(version, kind, data)
        assert answer.code in (200, 201), (kind, answer.body)
        return data

    async def register_family(self, family: Family) -> Family:
        for kind, data in family.members():
            await self.register(kind, data, family.version)
        return family

    async def delete(self, kind: str, rid: str, version: str) -> None:
        answer = await self.call("DELETE", f"/{version}/resource/{kind}s/{rid}")
        assert answer.code == 204, answer.body

    async def snapshot(self) -> Any:
        """Everything the Query API says of the registry: every resource as registered, newest first, with the
        paging headers (which move with any update stamp)."""
        seen = []
        for kind in TYPES:
            answer = await self.get(f"/v1.3/{kind}s?query.downgrade=v1.0&paging.limit=1000")
            seen.append((kind, answer.body, answer.headers["x-paging-since"], answer.headers["x-paging-until"]))
        return seen

    # The Query API (paths below QUERY, or below `base`)

    async def get(self, path: str, method: str = "GET", base: str = QUERY,
                  headers: dict[str, str] | None = None) -> Answer:
        """Call the Query API; the content type every answer needs and, for the versioned paths, the body against
        the official schema of that version (resource, list, listing or error)."""
        answer = await self._answer(method, base + path, None, headers)
        if method != "HEAD":
            assert answer.headers["content-type"] == "application/json"
            if method != "OPTIONS":
                check(path, answer)
        return answer

    async def send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                   base: str = QUERY, raw: bytes | None = None) -> Answer:
        """Like `get`, with a JSON body."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        answer = await self._answer(method, base + path, data, sent)
        assert answer.headers["content-type"] == "application/json"
        if answer.raw:
            check(path, answer)
        return answer

    async def subscribe(self, version: str = "v1.3", **changes: Any) -> Answer:
        return await self.send("POST", f"/{version}/subscriptions", subscription_body(version, **changes))


def _compose(registry: Registry, translations: Translations, subscriptions: Any, clock: Clock,
             cooperator: Cooperator, options: Options, shared: Any = None) -> dict[str, Any]:
    """The APIs as build_registry composes them (`compose_apis`), with what a test asks of them."""
    return compose_apis(registry, translations, subscriptions, clock, cooperator, options.versions, shared,
                        host_name=options.host_name, authorization=options.authorization, limits=options.limits,
                        schemas=SCHEMAS)


class MemoryApis(Apis):
    """The in-memory store, through StubTreq; long work in slices on the Clock, run as the answer is awaited."""

    backend = "memory"

    def __init__(self, options: Options | None = None) -> None:
        super().__init__()
        options = options or Options()
        self.clock = clock = Clock()
        self.registry = Registry()
        translations = Translations()
        self.registry.feed.subscribe(translations.changed)
        self.subscriptions = subscription_service(self.registry, translations, clock, clock,
                                                  options.subscription_limits)
        self.manager = self.subscriptions.manager
        self.store: Any = self.registry  # what the Registration API writes to
        cooperator = Cooperator(scheduler=lambda work: clock.callLater(0, work))
        apis = _compose(self.registry, translations, self.subscriptions, clock, cooperator, options)
        self.stub = StubTreq(root_resource(apis))

    async def request(self, method: str, url: str, data: bytes | None, headers: dict[str, str] | None) -> Answer:
        answers: list[Any] = []
        deferred = self.stub.request(method, url, data=data, headers=headers, allow_redirects=False)
        deferred.addCallback(lambda r: r.content().addCallback(lambda content: answers.append((r, content))))
        deferred.addErrback(answers.append)
        self.stub.flush()
        while not answers and any(call.getTime() <= self.clock.seconds() for call in self.clock.getDelayedCalls()):
            self.clock.advance(0)  # the next slice of a long answer
            self.stub.flush()
        assert answers, f"no answer to {method} {url}"
        if isinstance(answers[0], Failure):
            answers[0].raiseException()
        response, content = answers[0]
        found = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
        return Answer(response.code, found, content)


class ApiTime:
    """A clock telling the APIs' time (a Clock's `seconds`) whose timers take real time (the reactor's
    `callLater`): the etcd store's clock in these tests. Its stamps and heartbeat times are the APIs' own, while
    the etcd client's timeouts, the subscriptions' lease renewals and the store's waits run as in service, so a
    test that advances the Clock leaves them be."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:  # (IReactorTime)
        return reactor.callLater(delay, f, *args, **kwargs)

    def getDelayedCalls(self) -> Any:  # (IReactorTime)
        return reactor.getDelayedCalls()


class EtcdApis(Apis):
    """A registry cluster member's APIs (docs/cluster.md) on the shared etcd, under a fresh key prefix, served on a
    loopback port. `start` registers its own teardown with `test`."""

    backend = "etcd"

    async def start(self, test: SocketTest, options: Options | None = None) -> EtcdApis:
        options = options or Options()
        require_etcd()
        self.clock = clock = Clock()  # the APIs' time (stamps, heartbeats) and the subscriptions' timers
        self.registry = registry = Registry(expiry=EXPIRY)  # the member's replica
        translations = Translations()
        registry.feed.subscribe(translations.changed)
        self.subscriptions = subscription_service(registry, translations, clock, reactor, options.subscription_limits)
        self.manager = self.subscriptions.manager
        settings = Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off", store=shared_member().store,
                            store_prefix=unique_prefix(), registration_expiry_interval=EXPIRY)
        cooperator = Cooperator(scheduler=partial(reactor.callLater, 0))
        # As build_registry calls it for `--store etcd://...`; the store tells the APIs' time (it stamps each
        # attempt with max(the request's time, its own clock's)), its timers take real time.
        self.shared = shared = cluster_store(settings, reactor, ApiTime(clock), registry, self.manager, cooperator)
        self.store = shared.store
        apis = _compose(registry, translations, self.subscriptions, clock, cooperator, options, shared)
        site = make_site(root_resource(apis))
        channels = track_channels(site)
        shared.startService()
        test.addCleanup(self._stop, channels)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        await shared.loaded
        return self

    async def _stop(self, channels: list[tuple[Any, Deferred[None]]]) -> None:
        await self.pool.closeCachedConnections()
        await self.port.stopListening()
        for channel, lost in channels:
            if channel._channel.transport is not None:
                await lost  # the server's side of each connection, with its timeout call
        await self.shared.stopService()

    async def request(self, method: str, url: str, data: bytes | None, headers: dict[str, str] | None) -> Answer:
        scheme, host, path, query, _ = urlsplit(url)
        assert scheme == "http", "the member listens for plain HTTP (the scheme is the memory store's to test)"
        local = urlunsplit(("http", f"127.0.0.1:{self.port.getHost().port}", path, query, ""))
        response = await self.http.request(method, local, data=data, headers={"Host": host, **(headers or {})})
        content = await response.content()
        found = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
        return Answer(response.code, found, content)


# --- test case bases, one per store

def finished(result: Any) -> Any:
    """What a coroutine that never waits returns (or raises): in memory nothing waits on the reactor."""
    if not inspect.iscoroutine(result):
        return result
    outcome: list[Any] = []
    Deferred.fromCoroutine(result).addBoth(outcome.append)
    assert outcome, "an in-memory test waited for something that never came"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def _at_once(test: Any) -> Any:
    @functools.wraps(test)
    def run(self: Any) -> Any:
        return finished(test(self))
    return run


class OnMemory(UnitTest):
    """The bodies on the in-memory store: `self.api` is a `MemoryApis`."""

    options = Options()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in dir(cls):
            test = getattr(cls, name, None) if name.startswith("test") else None
            if callable(test) and not getattr(test, "_at_once", False):
                run = _at_once(test)
                run._at_once = True  # type: ignore[attr-defined]
                setattr(cls, name, run)

    def setUp(self) -> None:
        self.api = MemoryApis(self.options)
        finished(self.prepare())

    async def prepare(self) -> None:
        """Fixtures beyond `self.api` (a Bodies class's own)."""

    async def new_api(self, **options: Any) -> Apis:
        """Another registry with APIs of its own."""
        return MemoryApis(Options(**options))


class OnEtcd(SocketTest):
    """The bodies on the etcd store: `self.api` is an `EtcdApis` (a member under a key prefix of the test's own)."""

    options = Options()
    timeout = 60  # seconds (trial's default is 120): only ever reached when a test is failing

    async def setUp(self) -> None:
        self.api = await EtcdApis().start(self, self.options)
        await self.prepare()

    async def prepare(self) -> None:
        """Fixtures beyond `self.api` (a Bodies class's own)."""

    async def new_api(self, **options: Any) -> Apis:
        return await EtcdApis().start(self, Options(**options))


__all__ = ["Apis", "Bodies", "EtcdApis", "MemoryApis", "OnEtcd", "OnMemory", "Options", "finished"]
