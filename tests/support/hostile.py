"""Hostile input for the registry's HTTP boundary (issue #11): the cases, the raw-socket client that sends them, and
the rules every answer is judged by. tests/api/test_hostile.py runs a seeded, bounded set of them on every commit;
scripts/hostile_campaign.py runs many more against a running registry.

A case is the exact bytes of one request (or of a request sent a byte per reactor turn, or cut off half-way) plus
what the fixed product may answer. Whatever it is, the answer must follow the rules of IS-04 "APIs" and of this
project's docs/limits.md: no 5xx, no 3xx, `Access-Control-Allow-Origin: *`, every error the NMOS error JSON
(`{"code", "error", "debug"}`, `Content-Type: application/json`), every JSON body strict RFC 8259 JSON in UTF-8,
and the store unchanged by anything that is refused. A category is a generator of cases: `CATEGORIES[name](target,
rng, scale)`, seeded by `rng`, with more random cases as `scale` grows.

Nothing here sleeps or blocks: the client is a Twisted `Protocol` on a loopback connection, every case has a timeout
(only reached when the server is stuck) and every timer is cancelled when the connection closes.
"""

from __future__ import annotations

import base64
import copy
import inspect
import json
import math
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from tests.support.official import IS04, official_errors
from tests.support.samples import VERSIONS, Family, device, flow, node, receiver, sender, source, tai

MAX_BODY = 1 << 20  # docs/limits.md: bodies up to 1 MiB are read; a larger one is refused with 413
MAX_DEPTH = 64  # docs/limits.md: nesting deeper than this (the whole document counted) is refused with 400
MIN_INT, MAX_INT = -(2 ** 63), 2 ** 64 - 1  # docs/limits.md: integers a 64-bit peer can read
TYPES = ("node", "device", "source", "flow", "sender", "receiver")
COLLECTIONS = ("nodes", "devices", "sources", "flows", "senders", "receivers", "subscriptions")
GROUPHINT = "urn:x-nmos:tag:grouphint/v1.0"  # BCP-002-01 Natural Grouping
TIMEOUT = 5.0  # seconds a case may go unanswered: loopback answers take milliseconds, so only a stuck server waits
CLOSE_WAIT = 1.0  # seconds the server has to close a connection whose body it refused to read, once it answered
# Seconds to wait for an answer to bytes that hold no complete request: a server may well wait for the rest.
ANSWERLESS_WAIT = 0.5
SETTLE = 5.0  # seconds the server may take to close its side of a connection its client closed

OK = frozenset({200, 201})
BAD = frozenset({400})


# --- cases, answers and problems

@define
class Case:
    """One hostile request and what the fixed product may answer to it."""

    category: str
    name: str
    data: bytes = b""  # the bytes sent
    expect: frozenset[int] | None = None  # the statuses allowed (None: any that keeps the rules)
    refused: bool = True  # the store (resources and subscriptions) must be unchanged afterwards
    answerless: bool = False  # no parseable request is sent: closing without an answer is acceptable
    pieces: tuple[bytes, ...] | None = None  # sent one per reactor turn, instead of `data`
    hang_up: bool = False  # the client closes once everything is sent, without waiting for an answer
    head: bool = False  # a HEAD request: the answer has no body
    same_as: bytes | None = None  # another request, whose answer must have the same status and JSON body
    must_close: bool = False  # the server must close the connection itself once it has answered (a refused body)

    @property
    def writes(self) -> bool:
        """Whether the request could change anything (reads cannot, except a WebSocket upgrade on a list)."""
        sent = self.data if self.pieces is None else b"".join(self.pieces)
        return not sent.startswith((b"GET ", b"HEAD ", b"OPTIONS ")) or b"upgrade:" in sent.lower()


@define
class Reply:
    """The first HTTP response read from a connection, or why there was none."""

    status: int | None = None
    headers: dict[str, list[str]] = field(factory=dict)  # lower-case names
    body: bytes = b""
    raw: bytes = b""
    timed_out: bool = False
    error: str | None = None  # why no response could be read
    closed_by_server: bool = False

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return ", ".join(values) if values else None


@define(frozen=True)
class Problem:
    """A broken rule: `rule` is one of RULES, `case` names the request."""

    rule: str
    case: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.case}: {self.detail}"


RULES = {
    "5xx": "answered 5xx (other than 501 and 505)",
    "3xx": "answered 3xx (IS-04 APIs never redirect)",
    "not-nmos-error": "a 4xx/5xx that is not the NMOS error JSON",
    "no-cors": "no Access-Control-Allow-Origin: *",
    "not-strict-json": "a JSON body that is not strict RFC 8259 JSON in UTF-8",
    "status": "a status other than the one expected",
    "store-changed": "a refused request changed the store",
    "no-answer": "the connection closed without an answer to a parseable request",
    "stuck": "no answer and no close within the timeout",
    "kept-open": "the server kept the connection open after refusing a body it had not read",
    "differs": "answer differs from the same request in canonical form",
    "collections": "a Query API collection did not answer 200 with strict JSON",
    "lingering": "server connections still open after the category",
}


# --- strict JSON, as a client must be able to read every answer

class NotStrict(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise NotStrict(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStrict(f"the number {text[:30]} is not finite")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 20 or not MIN_INT <= int(text) <= MAX_INT:
        raise NotStrict(f"the integer {text[:30]} is outside {MIN_INT}..{MAX_INT}")
    return int(text)


def strict_json(raw: bytes) -> Any:
    """`raw` as RFC 8259 JSON: strict UTF-8, no NaN or Infinity, numbers in range, no lone surrogate escapes;
    NotStrict (a ValueError) otherwise."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_int)
        text.encode("utf-8")
    except NotStrict:
        raise
    except RecursionError:
        raise NotStrict("nested too deeply to read") from None
    except ValueError as exc:  # UnicodeError and JSONDecodeError are ValueErrors
        raise NotStrict(str(exc)[:200]) from None
    stack = [value]
    while stack:  # no lone surrogate from a \udXXX escape, in keys or values (iteratively: any depth)
        item = stack.pop()
        texts: Any = ()
        if isinstance(item, str):
            texts = (item,)
        elif isinstance(item, dict):
            texts = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        for part in texts:
            try:
                part.encode("utf-8")
            except UnicodeEncodeError:
                raise NotStrict(f"the string {part[:20]!r} holds a lone surrogate") from None
    return value


def error_problems(status: int, body: bytes) -> list[str]:
    """Why `body` is not the NMOS error JSON for `status` (empty when it is)."""
    try:
        value = strict_json(body)
    except NotStrict as exc:
        return [f"the body is not JSON ({exc}): {body[:80]!r}"]
    if not isinstance(value, dict):
        return [f"the body is not an object: {body[:80]!r}"]
    found = []
    if value.get("code") != status:
        found.append(f"code {value.get('code')!r} is not the status {status}")
    if not isinstance(value.get("error"), str):
        found.append(f"error {value.get('error')!r} is not a string")
    if "debug" not in value or not (value["debug"] is None or isinstance(value["debug"], str)):
        found.append(f"debug {value.get('debug')!r} is not a string or null")
    if IS04.is_dir():  # the official schema (tests/official.py), when ../shared/amwa is there
        found += [f"official error schema: {error}" for error in official_errors("v1.3", "error", value)]
    return found


def judge(case: Case, reply: Reply, changed: str | None) -> list[Problem]:
    """Every rule `reply` (the answer to `case`) breaks; `changed` says how the store changed, if it did."""
    found: list[Problem] = []

    def problem(rule: str, detail: str) -> None:
        found.append(Problem(rule, f"{case.category}/{case.name}", detail))

    status = reply.status
    if status is None:
        if reply.timed_out and not case.answerless:
            problem("stuck", f"neither an answer nor a close within {TIMEOUT} s")
        elif not case.answerless and not reply.timed_out:
            problem("no-answer", reply.error or "closed")
    else:
        content_type = reply.header("content-type")
        # 501 and 505 say what the server does not implement (IS-04 v1.3 "APIs": 501 for unsupported query
        # features; RFC 9110 §15.6.6 for HTTP versions): answers about the request, judged by `expect`, not failures.
        if status >= 500 and status not in (501, 505):
            problem("5xx", f"{status}: {reply.body[:200]!r}")
        if 300 <= status < 400:
            problem("3xx", f"{status} Location: {reply.header('location')}")
        if status != 101 and reply.header("access-control-allow-origin") != "*":
            problem("no-cors", f"{status} with Access-Control-Allow-Origin "
                               f"{reply.header('access-control-allow-origin')!r}")
        if status >= 400:
            reasons = [] if content_type == "application/json" else [f"Content-Type {content_type!r}"]
            reasons += error_problems(status, reply.body)
            if reasons:
                problem("not-nmos-error", f"{status}: {'; '.join(reasons)}")
        elif content_type == "application/json" and reply.body:
            try:
                strict_json(reply.body)
            except NotStrict as exc:
                problem("not-strict-json", f"{status}: {exc}")
        if case.must_close and not reply.closed_by_server:
            problem("kept-open", f"{status}, then the connection stayed open for {CLOSE_WAIT} s")
        if case.expect is not None and status not in case.expect:
            problem("status", f"answered {status}, expected {'/'.join(map(str, sorted(case.expect)))}: "
                              f"{reply.body[:160]!r}")
    if changed is not None and case.refused:
        problem("store-changed", changed)
    return found


# --- reading HTTP responses off a raw connection

def _broken(raw: bytes, why: str) -> Reply:
    return Reply(raw=raw, error=f"{why}: {raw[:120]!r}" if raw else "closed without sending anything")


def parse_response(raw: bytes, head: bool = False, closed: bool = False) -> Reply | None:
    """The first final response in `raw` (1xx other than 101 skipped); None while it is incomplete and the
    connection is open; a Reply with `error` when the connection closed on an incomplete or broken one."""
    start = 0
    while True:
        end = raw.find(b"\r\n\r\n", start)
        if end < 0:
            return _broken(raw, "no complete response head") if closed else None
        lines = raw[start:end].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
            return _broken(raw, "not an HTTP/1.x status line")
        status = int(parts[1])
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return _broken(raw, "a header line without a colon")
            headers.setdefault(name.strip().lower().decode("latin-1"), []).append(value.strip().decode("latin-1"))
        begin = end + 4
        if 100 <= status < 200 and status != 101:
            start = begin  # 100 Continue: the final answer follows
            continue
        break
    if head or status in (101, 204, 304):
        return Reply(status, headers, b"", raw)
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        body, at = bytearray(), begin
        while True:
            line_end = raw.find(b"\r\n", at)
            if line_end < 0:
                return _broken(raw, "an incomplete chunk") if closed else None
            try:
                size = int(raw[at:line_end].split(b";")[0], 16)
            except ValueError:
                return _broken(raw, "a bad chunk size")
            if size == 0:
                if raw.find(b"\r\n", line_end + 2) < 0 and not closed:
                    return None
                return Reply(status, headers, bytes(body), raw)
            if len(raw) < line_end + 2 + size + 2:
                return _broken(raw, "an incomplete chunk") if closed else None
            body += raw[line_end + 2:line_end + 2 + size]
            at = line_end + 2 + size + 2
    lengths = headers.get("content-length")
    if lengths is not None:
        try:
            length = int(lengths[0])
        except ValueError:
            return _broken(raw, "a bad Content-Length")
        if len(raw) - begin >= length:
            return Reply(status, headers, raw[begin:begin + length], raw)
        return _broken(raw, "a body shorter than its Content-Length") if closed else None
    return Reply(status, headers, raw[begin:], raw) if closed else None


class _Exchange(Protocol):
    """Sends one case's bytes and reads the first response; `done` fires with the Reply once the connection is
    closed (by the server, by us once the response is complete, or by the timeout)."""

    def __init__(self, case: Case, clock: Any, timeout: float) -> None:
        self.case = case
        self.clock = clock
        self.timeout = timeout
        self.received = bytearray()
        self.reply: Reply | None = None
        self.timed_out = False
        self.closing = False  # we close (or have closed) the connection
        self.done: Deferred[Reply] = Deferred()
        self._timer: Any = None
        self._turn: Any = None

    def connectionMade(self) -> None:
        with suppress(Exception):
            self.transport.setTcpNoDelay(True)  # a piece per reactor turn reaches the server as its own segment
        waiting = ANSWERLESS_WAIT if self.case.answerless and not self.case.hang_up else self.timeout
        self._timer = self.clock.callLater(min(waiting, self.timeout), self._give_up)
        if self.case.pieces is not None:
            self._send(0)
        else:
            self.transport.write(self.case.data)
            self._sent()

    def _send(self, index: int) -> None:
        self._turn = None
        if self.closing:
            return
        assert self.case.pieces is not None
        self.transport.write(self.case.pieces[index])
        if index + 1 < len(self.case.pieces):
            self._turn = self.clock.callLater(0, self._send, index + 1)
        else:
            self._sent()

    def _sent(self) -> None:
        if self.case.hang_up and not self.closing:
            self.closing = True
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.reply is None:
            self.reply = parse_response(bytes(self.received), self.case.head)
            if self.reply is None or self.closing:
                return
            if not self.case.must_close:
                self.closing = True
                self.transport.loseConnection()
            elif self._timer is not None:  # the server is to close: give it CLOSE_WAIT more, at most
                self._timer.reset(min(CLOSE_WAIT, max(0.0, self._timer.getTime() - self.clock.seconds())))

    def _give_up(self) -> None:
        self._timer = None
        self.timed_out = True
        self.closing = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        for call in (self._timer, self._turn):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._turn = None
        reply = self.reply or parse_response(bytes(self.received), self.case.head, closed=True)
        assert reply is not None
        if reply.status is None:
            reply.timed_out = self.timed_out
        reply.closed_by_server = not self.closing
        self.done.callback(reply)


async def exchange(reactor: Any, host: str, port: int, case: Case, timeout: float = TIMEOUT) -> Reply:
    """Send `case` on a new loopback connection; the Reply."""
    protocol = _Exchange(case, reactor, timeout)
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=timeout), protocol)
    except Exception as exc:
        return Reply(error=f"could not connect: {exc}")
    return await protocol.done


# --- the registry under test

@define
class Target:
    """Where the cases go: the registry's address, one registered Family per version, and the socket path of a
    subscription made for the run."""

    host: str
    port: int
    families: dict[str, Family]
    spare: Family  # a second v1.3 Family (for parent changes)
    ws_path: str

    @property
    def authority(self) -> bytes:
        return f"{self.host}:{self.port}".encode()

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}/x-nmos"


async def seed(http: Any, base: str, host: str, port: int) -> Target:
    """Register a Family at every version (and a spare at v1.3) and a persistent subscription, through the APIs."""
    families = {version: Family.build(version) for version in VERSIONS}
    spare = Family.build("v1.3")
    for family in (*families.values(), spare):
        for kind, data in family.members():
            response = await http.post(f"{base}/registration/{family.version}/resource",
                                       json={"type": kind, "data": data})
            body = await response.content()
            assert response.code == 201, (kind, family.version, body[:300])
    response = await http.post(f"{base}/query/v1.3/subscriptions",
                               json={"max_update_rate_ms": 100, "persist": True, "resource_path": "/nodes",
                                     "params": {}, "secure": False})
    body = await response.content()
    assert response.code in (200, 201), body[:300]
    href = json.loads(body)["ws_href"]
    path = "/" + href.split("://", 1)[1].split("/", 1)[1]
    return Target(host, port, families, spare, path)


class LocalRegistry:
    """The registry built and started in this process on 127.0.0.1:0: the exact store to compare around each
    refused request, and the server's connections, to wait until it has closed its side of each. `store` "etcd": a
    member of a registry cluster on the tests' shared etcd (tests/support/etcd.py), under a key prefix of its own,
    whose replica is the store compared (a write answers once the replica holds it; a refused one writes nothing)."""

    def __init__(self, reactor: Any, store: str = "memory") -> None:
        from nmos_ref.config import Settings
        from nmos_ref.wiring.registry import build_registry
        from nmos_ref.api.subscription_service import SubscriptionService
        from tests.support.websockets import track_channels

        self.reactor = reactor
        where: dict[str, Any] = {}
        if store == "etcd":
            from tests.support.etcd import require_etcd, shared_member, unique_prefix

            require_etcd()
            where = {"store": shared_member().store, "store_prefix": unique_prefix()}
        # Nodes never expire during a run: a garbage collection would look like a refused request changing the store.
        self.top = build_registry(Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off",
                                  registration_expiry_interval=3600, **where), reactor, reactor)
        self.subscriptions = next(child for child in self.top if isinstance(child, SubscriptionService))
        self.channels = track_channels(self.top.site)

    @property
    def registry(self) -> Any:
        return self.top.registry

    async def start(self) -> int:
        """Start the service; its port."""
        from tests.support.samples import port_of

        from nmos_ref.wiring.cluster import ClusterStoreService

        self.top.startService()
        for child in self.top:
            if isinstance(child, ClusterStoreService):
                await child.loaded  # the replica holds what etcd held: writes may begin
        return await port_of(self.top)

    def snapshot(self) -> list[tuple[Any, ...]]:
        return ([(r.kind, r.id, r.data, r.api_version, r.updated) for kind in TYPES
                 for r in self.registry.resources(kind)] +
                [("subscription", s.id, version) for version in VERSIONS
                 for s in self.subscriptions.manager.listing(version)])

    def nodes(self) -> list[tuple[str, str | None]]:
        """(id, API version) of every Node."""
        return [(record.id, record.api_version) for record in self.registry.resources("node")]

    def unservable(self, category: str) -> list[Problem]:
        """Every stored record that does not encode as strict JSON in UTF-8."""
        found = []
        for kind in TYPES:
            for record in self.registry.resources(kind):
                try:
                    json.dumps(record.data, allow_nan=False, ensure_ascii=False).encode("utf-8")
                except (ValueError, TypeError, RecursionError) as exc:
                    found.append(Problem("not-strict-json", f"{category}/stored", f"{kind} {record.id}: {exc}"))
        return found

    def _open(self) -> list[Deferred[None]]:
        # A channel whose transport a WebSocket took over is followed through the socket instead.
        waiting = [lost for channel, lost in self.channels
                   if not lost.called and channel._channel.transport is not None]
        return waiting + [socket.when_closed() for socket in list(self.subscriptions.factory.sockets)]

    async def settled(self, category: str, timeout: float = SETTLE) -> list[Problem]:
        """Wait (at most `timeout` for each) until the server has closed every connection, WebSockets included."""
        left = 0
        for deferred in self._open():
            try:
                await deferred.addTimeout(timeout, self.reactor)
            except Exception:
                left += 1
        self.channels[:] = [(channel, lost) for channel, lost in self.channels if not lost.called]
        return [Problem("lingering", f"{category}/after", f"{left} server connections still open {timeout} s "
                                                          f"after their clients closed")] if left else []

    async def stop(self) -> None:
        await self.top.stopService()
        for deferred in self._open():
            await deferred.addTimeout(SETTLE, self.reactor)


def collection_paths() -> list[str]:
    return [f"/x-nmos/query/{version}/{collection}" for version in VERSIONS for collection in COLLECTIONS]


async def collections_problems(http: Any, base: str, category: str) -> list[Problem]:
    """After a category: every Query API collection at every version answers 200 with strict JSON (a list)."""
    found = []
    for path in collection_paths():
        where = f"{category}/after: GET {path}"
        try:
            response = await http.get(base.removesuffix("/x-nmos") + path)
            raw = await response.content()
        except Exception as exc:
            found.append(Problem("collections", where, f"failed: {exc!r}"))
            continue
        if response.code != 200:
            found.append(Problem("collections", where, f"answered {response.code}: {raw[:200]!r}"))
            continue
        try:
            value = strict_json(raw)
        except NotStrict as exc:
            found.append(Problem("collections", where, f"not strict JSON: {exc}"))
            continue
        if not isinstance(value, list):
            found.append(Problem("collections", where, "not a JSON array"))
    return found


Snapshot = Callable[[], Any]  # returns the state (or an awaitable of it); equal before and after = unchanged


def store_change(before: Any, after: Any) -> str | None:
    """How the store changed between two snapshots (sequences of tuples whose first items are kind and id), or
    None. A subscription that went away does not count: IS-04 lets a non-persistent one expire at any time once it
    has no socket, and a refused DELETE that removed one would answer 204, which the expected status catches."""
    old = {tuple(item[:2]): item for item in before}
    new = {tuple(item[:2]): item for item in after}
    added = [key for key in new if key not in old]
    removed = [key for key in old if key not in new and key[0] != "subscription"]
    changed = [key for key in new if key in old and new[key] != old[key]]
    parts = [f"{label}: {', '.join(f'{kind} {rid}' for kind, rid in keys[:3])}"
             for label, keys in (("added", added), ("removed", removed), ("changed", changed)) if keys]
    return "; ".join(parts) or None


async def _state(snapshot: Snapshot) -> Any:
    state = snapshot()
    return await state if inspect.isawaitable(state) else state


async def run_case(reactor: Any, target: Target, case: Case, snapshot: Snapshot,
                   timeout: float = TIMEOUT) -> list[Problem]:
    """Send one case and judge its answer (and the store)."""
    check_store = case.refused and case.writes
    before = await _state(snapshot) if check_store else None
    reply = await exchange(reactor, target.host, target.port, case, timeout)
    changed = store_change(before, await _state(snapshot)) if check_store else None
    found = judge(case, reply, changed)
    if case.same_as is not None and reply.status is not None:
        canonical = await exchange(reactor, target.host, target.port, Case(case.category, "canonical",
                                                                           case.same_as), timeout)
        try:
            same = canonical.status == reply.status and json.loads(canonical.body) == json.loads(reply.body)
        except ValueError:
            same = canonical.body == reply.body
        if not same:
            found.append(Problem("differs", f"{case.category}/{case.name}",
                                 f"{reply.status} {reply.body[:80]!r} vs {canonical.status} {canonical.body[:80]!r}"))
    return found


# --- building requests

class Raw:
    """JSON text put into a document as it is (a token, a string with its quotes, a nested structure), by
    `render`; also usable as an object key."""

    def __init__(self, text: bytes | str) -> None:
        self.text = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text


def render(document: Any) -> bytes:
    """`document` as JSON bytes, with every Raw in it (value or key) replaced by its text as it is."""
    pieces: list[bytes] = []

    def mark(value: Any) -> Any:
        if isinstance(value, Raw):
            pieces.append(value.text)
            return f"\u0001{len(pieces) - 1}\u0001"
        if isinstance(value, dict):
            return {mark(key) if isinstance(key, Raw) else key: mark(item) for key, item in value.items()}
        if isinstance(value, list):
            return [mark(item) for item in value]
        return value

    text = json.dumps(mark(document), ensure_ascii=True, separators=(",", ":")).encode("ascii")
    for number, piece in enumerate(pieces):
        text = text.replace(b'"\\u0001%d\\u0001"' % number, piece, 1)
    return text


def quoted(fragment: bytes) -> Raw:
    """A JSON string whose content is `fragment` exactly (escapes and raw bytes as given)."""
    return Raw(b'"' + fragment + b'"')


def http_request(target: Target, method: str | bytes, path: str | bytes, body: bytes | None = None, *,
                 content_type: bytes | None = b"application/json", headers: Sequence[tuple[bytes, bytes]] = (),
                 version: bytes = b"HTTP/1.1", close: bool = True) -> bytes:
    """The bytes of one request, which asks the server to close after answering (unless `close` is false)."""
    method = method.encode() if isinstance(method, str) else method
    path = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    head = [method + b" " + path + b" " + version, b"Host: " + target.authority] + ([b"Connection: close"] * close)
    if body is not None:
        if content_type is not None:
            head.append(b"Content-Type: " + content_type)
        head.append(b"Content-Length: %d" % len(body))
    head += [name + b": " + value for name, value in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")


def rid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def fresh(target: Target, kind: str, rng: random.Random, api: str = "v1.3", **keys: Any) -> dict[str, Any]:
    """A valid new resource of `kind` under the registered Family of API version `api`, with a seeded id and
    version; `keys` replace or add keys of the resource (`version` included)."""
    family = target.families[api]
    keys.setdefault("id", rid(rng))
    stamp = keys.pop("version", f"{1_700_000_000 + rng.randrange(10 ** 6)}:{rng.randrange(10 ** 9)}")
    if kind == "node":
        data = node(api, **keys)
    elif kind == "device":
        data = device(family.node["id"], api, **keys)
    elif kind == "source":
        data = source(family.device["id"], api, **keys)
    elif kind == "flow":
        data = flow(family.source["id"], family.device["id"], api, **keys)
    elif kind == "sender":
        data = sender(family.device["id"], family.flow["id"], api, **keys)
    else:
        data = receiver(family.device["id"], api, **keys)
    data["version"] = stamp
    return data


def registration(kind: str, data: Any) -> bytes:
    return render({"type": kind, "data": data})


def resource_path(version: str) -> str:
    return f"/x-nmos/registration/{version}/resource"


def post(target: Target, category: str, name: str, body: bytes, expect: frozenset[int] | set[int] | None,
         refused: bool = True, version: str = "v1.3", path: str | None = None,
         content_type: bytes | None = b"application/json") -> Case:
    """A POST of `body`; one over the size limit is sent without `Connection: close`, as the server must close
    the connection itself rather than read the body."""
    too_big = len(body) > MAX_BODY
    return Case(category, name, http_request(target, "POST", path or resource_path(version), body,
                                             content_type=content_type, close=not too_big),
                frozenset(expect) if expect is not None else None, refused, must_close=too_big)


def verdict(version: str, kind: str, data: Any) -> tuple[frozenset[int] | None, bool]:
    """(expected statuses, refused) for registering `data`, as the official schemas judge it (any non-5xx answer
    when they are not there)."""
    if not IS04.is_dir():
        return None, False
    return (OK, False) if not official_errors(version, kind, data) else (BAD, True)


# --- JSON paths of a document, for replacing and removing keys

def key_paths(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every key of `data`, of its objects, and of the first object in each of its arrays."""
    paths: list[tuple[Any, ...]] = []
    for key, value in data.items():
        paths.append((key,))
        if isinstance(value, dict):
            paths += [(key, inner) for inner in value]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            paths += [(key, 0, inner) for inner in value[0]]
    return paths


def get_path(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


def set_path(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    holder = get_path(changed, path[:-1])
    holder[path[-1]] = value
    return changed


def del_path(data: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    del get_path(changed, path[:-1])[path[-1]]
    return changed


def wrong_types(value: Any) -> list[Any]:
    """Values of every JSON type other than `value`'s."""
    candidates: list[Any] = [None, True, 0, -1, 1.5, "", "x", [], ["x"], {}, {"x": 1}]
    kinds = {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object",
             type(None): "null"}

    def kind(item: Any) -> str:
        return kinds[type(item)]

    return [item for item in candidates if kind(item) != kind(value)]


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(map(str, path))


# --- the categories

def bad_json(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Malformed JSON, wrong top-level types, BOMs and other encodings, wrong types for every key of valid bodies,
    missing keys."""
    category = "json"
    good = registration("node", fresh(target, "node", rng))
    cuts = {1, 2, len(good) // 2, len(good) - 1} | {rng.randrange(1, len(good)) for _ in range(3 * scale)}
    for cut in sorted(cuts):
        yield post(target, category, f"truncated at byte {cut}", good[:cut], BAD)
    for tail in (b"x", b"}", b",", b" {}", b"\x00", b'\n{"a":1}', b"//", b"/* */", b"\xff"):
        yield post(target, category, f"trailing {tail!r}", registration("node", fresh(target, "node", rng)) + tail,
                   BAD)
    for whole in (b"", b" ", b"[]", b"null", b"1", b'"node"', b"true", b"{}", b'{"type":"node"}', b'{"data":{}}',
                  b'[{"type":"node","data":{}}]', b"{'type':'node'}", b"nul", b"tru"):
        yield post(target, category, f"body {whole!r}", whole, BAD)
    text = registration("node", fresh(target, "node", rng)).decode()
    yield post(target, category, "UTF-8 byte order mark", b"\xef\xbb\xbf" + text.encode(), {201, 400}, refused=False)
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        # RFC 8259 §8.1: JSON exchanged between systems MUST be UTF-8
        body = registration("node", fresh(target, "node", rng)).decode().encode(encoding)
        yield post(target, category, f"body in {encoding}", body, BAD)
    twice = render({"type": "node", "data": fresh(target, "node", rng)})[:-2] + b',"label":"again"}}'
    yield post(target, category, "a key twice", twice, {201, 400}, refused=False)
    for content_type, expect in ((b"text/plain", {400, 415}), (None, {400, 415}), (b"application/jsonx", {400, 415}),
                                 (b"application/x-www-form-urlencoded", {400, 415}),
                                 (b"application/json; charset=utf-8", {201}), (b"Application/JSON", {201})):
        yield post(target, category, f"Content-Type {content_type!r}", registration(
            "node", fresh(target, "node", rng)), expect, refused=201 not in expect, content_type=content_type)
    for wrong in (1, None, [], {}, "nodes", "Node", "node ", "", Raw(b'"node\\u0000"')):
        body = render({"type": wrong, "data": fresh(target, "device", rng)})
        yield post(target, category, f"type {body[8:30]!r}", body, BAD)
    for wrong in (None, [], "x", 1, True, [fresh(target, "node", rng)]):
        yield post(target, category, f"data {json.dumps(wrong)[:20]}", render({"type": "node", "data": wrong}), BAD)
    older = [version for version in VERSIONS if version != "v1.3"]
    for kind in TYPES:
        example = fresh(target, kind, rng)
        for path in key_paths(example):
            versions = ["v1.3"] + rng.sample(older, k=min(len(older), scale - 1))
            for version in versions:
                data = fresh(target, kind, rng, version)
                if path[0] not in data or (len(path) > 1 and not _has(data, path)):
                    continue
                for wrong in rng.sample(wrong_types(get_path(data, path)), k=min(scale, 3)):
                    changed = set_path(data, path, wrong)
                    expect, refused = verdict(version, kind, changed)
                    yield post(target, category, f"{version} {kind}.{dotted(path)}={json.dumps(wrong)}",
                               registration(kind, changed), expect, refused, version)
                changed = del_path(data, path)
                if path == ("id",):
                    expect, refused = BAD, True
                else:
                    expect, refused = verdict(version, kind, changed)
                yield post(target, category, f"{version} {kind} without {dotted(path)}", registration(kind, changed),
                           expect, refused, version)


def _has(data: Any, path: tuple[Any, ...]) -> bool:
    try:
        get_path(data, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


# Numbers a 64-bit peer cannot read (refused), and some it can (stored).
BAD_NUMBERS = (b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 400, b"-1" + b"0" * 400,
               b"9" * 5000, str(2 ** 64).encode(), str(-(2 ** 63) - 1).encode(), b"1.5e309", b"2e308", b"-2e308",
               b"nan", b"inf", b"+1", b"01", b"1.", b".5", b"0x10", b"1e", b"-", b"--1")
GOOD_NUMBERS = (str(2 ** 64 - 1).encode(), str(-(2 ** 63)).encode(), b"0", b"-0", b"1.7976931348623157e308",
                b"5e-324", b"1E+2", b"0.1", b"-1.5e-10", b"1e-400")


def huge(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Bodies at the 1 MiB limit, numbers out of range, long strings, many keys."""
    category = "numbers"
    for size, expect in ((MAX_BODY - 1, {201}), (MAX_BODY, {201}), (MAX_BODY + 1, {413}), (2 * MAX_BODY, {413})):
        data = fresh(target, "node", rng, label="")
        shortfall = size - len(registration("node", data))
        body = registration("node", {**data, "label": "x" * shortfall})
        assert len(body) == size
        yield post(target, category, f"a body of {size} bytes", body, expect, refused=413 in expect)
    over = registration("node", fresh(target, "node", rng, label="y" * (MAX_BODY + 10)))
    yield Case(category, "a chunked body over 1 MiB", _chunked(target, resource_path("v1.3"), over, 65536, False),
               frozenset({413}), must_close=True)
    under = registration("node", fresh(target, "node", rng))
    yield Case(category, "a small chunked body", _chunked(target, resource_path("v1.3"), under, 100),
               frozenset({201}), refused=False)
    numeric = [("node", ("x_number",)), ("node", ("api", "endpoints", 0, "port")), ("flow", ("frame_width",)),
               ("flow", ("grain_rate", "numerator")), ("source", ("grain_rate", "denominator")),
               ("node", ("x_list",)), ("node", ("tags", "x"))]
    for token in BAD_NUMBERS:
        for kind, path in [numeric[0]] + rng.sample(numeric[1:], k=min(len(numeric) - 1, scale)):
            value = Raw(b"[1," + token + b"]") if path == ("x_list",) else Raw(token)
            data = set_path(fresh(target, kind, rng), path, value)
            yield post(target, category, f"{kind}.{dotted(path)}={token[:24].decode()}", registration(kind, data), BAD)
    for token in GOOD_NUMBERS:
        data = fresh(target, "node", rng, x_number=Raw(token))
        yield post(target, category, f"node.x_number={token.decode()}", registration("node", data), {201},
                   refused=False)
    yield post(target, category, "label of 200 KB", registration("node", fresh(target, "node", rng,
                                                                              label="l" * 200_000)), {201}, False)
    yield post(target, category, "id of 100 KB", registration("node", fresh(target, "node", rng, id="a" * 100_000)),
               BAD)
    yield post(target, category, "version of 10000 digits", registration(
        "node", fresh(target, "node", rng, version="1:" + "9" * 10_000)), {201, 400}, refused=False)
    yield post(target, category, "key of 100 KB", registration("node", fresh(target, "node", rng,
                                                                            **{"k" * 100_000: 1})), {201}, False)
    yield post(target, category, "20000 tags", registration("node", fresh(target, "node", rng, tags={
        f"t{i}": ["v"] for i in range(20_000)})), {201}, False)
    yield post(target, category, "an array of 100000 zeros", registration("node", fresh(
        target, "node", rng, x_zeros=Raw(b"[" + b",".join([b"0"] * 100_000) + b"]"))), {201}, False)
    yield post(target, category, "a tag of 50000 values", registration("node", fresh(
        target, "node", rng, tags={"many": ["v"] * 50_000})), {201}, False)


def _chunked(target: Target, path: str, body: bytes, size: int, close: bool = True) -> bytes:
    head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + target.authority + b"\r\n" +
            b"Connection: close\r\n" * close + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return head + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


# Inside a JSON string: what a strict boundary refuses, and what it must keep.
BAD_TEXT = (b"\\ud800", b"\\udfff", b"\\ud800x", b"\\udc00\\ud800", b"\\ud800\\u0041", b"\\udbff",
            b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\xae", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xff", b"\xfe", b"\x80",
            b"\xe2\x82", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\x00", b"\x1f", b"\t", b"\\uZZZZ", b"\\u12",
            b"\\x41", b"\\")
GOOD_TEXT = (b"\\u0000", b"\\ud83d\\ude00", "\U0001f600".encode(), b"\\uffff", b"\\ufffe", b"\\ufdd0",
             "\uffff".encode(), b"\\u202e", "\u200f".encode(), ("a" + "\u0301" * 5000).encode(), b"\\u200b",
             b"\\ufeff", "\U0010ffff".encode(), b"\\udbff\\udfff", b"\\u001f", "\u2028\u2029".encode())


def unicode_text(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Lone surrogates, encoded surrogates, overlong and invalid UTF-8, NULs, non-characters, bidi marks and long
    combining sequences in labels, tags, keys and ids; and in query strings."""
    category = "unicode"
    places = ("label", "description", "tag name", "tag value", "key", "value", "nested key", "id")
    for fragments, good in ((BAD_TEXT, False), (GOOD_TEXT, True)):
        for fragment in fragments:
            chosen = places if scale > 1 or rng.random() < 0.75 else rng.sample(places, 4)
            for place in chosen:
                kind = rng.choice(("node", "device", "sender", "receiver"))
                data = fresh(target, kind, rng)
                text = quoted(fragment)
                if place in ("label", "description"):
                    data[place] = text
                elif place == "tag name":
                    data["tags"] = {text: ["x"]}
                elif place == "tag value":
                    data["tags"] = {"location": ["x", text]}
                elif place == "key":
                    data[text] = "x"
                elif place == "value":
                    data["x_text"] = text
                elif place == "nested key":
                    data["x_object"] = {"a": [{text: 1}]}
                else:
                    data["id"] = Raw(b'"' + data["id"].encode() + fragment + b'"')
                keep = good and place != "id"
                yield post(target, category, f"{kind} {place} {fragment[:16]!r}", registration(kind, data),
                           {201} if keep else BAD, refused=not keep)
    for escaped, expect in ((b"%ED%A0%80", BAD), (b"%C0%AE", BAD), (b"%FF", BAD), (b"%F0%9F%98%80", OK),
                            (b"%E2%80%AE", OK), (b"%00", {200, 400}), (b"%EF%BF%BF", OK), (b"%F4%90%80%80", BAD)):
        for collection in rng.sample(COLLECTIONS[:6], 2):
            for key in (b"label", b"tags.location", escaped):
                value = escaped if key != escaped else b"x"
                target_path = b"/x-nmos/query/v1.3/" + collection.encode() + b"?" + key + b"=" + value
                yield Case(category, f"GET {collection}?{key.decode()}={value.decode()}",
                           http_request(target, "GET", target_path), frozenset(expect))


def nest(depth: int, shape: str) -> bytes:
    if shape == "array":
        return b"[" * depth + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    pairs, odd = divmod(depth, 2)
    return b"[" * odd + b'[{"a":' * pairs + b"1" + b"}]" * pairs + b"]" * odd


def nesting(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Extra keys holding deeply nested arrays and objects; whole bodies nested; nested subscription params."""
    category = "nesting"
    depths = [62, 63, 64, 65, 400, 980, 5000, 100_000] + [rng.randrange(66, 3000) for _ in range(scale - 1)]
    for depth in depths:
        for shape in ("array", "object", "mixed"):
            # the document counts too: {"type", "data": {..., "x": <depth levels>}} is depth + 2 deep
            expect = {201} if depth + 2 <= MAX_DEPTH else {201, 400} if depth <= MAX_DEPTH else BAD
            kind = rng.choice(TYPES)
            data = fresh(target, kind, rng, x_deep=Raw(nest(depth, shape)))
            yield post(target, category, f"{kind} with {depth} nested {shape}s", registration(kind, data), expect,
                       refused=expect == BAD)
        body = nest(depth, "array")
        yield post(target, category, f"a body of {depth} nested arrays", body, BAD)
        params = render({"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes", "secure": False,
                         "params": {"label": Raw(nest(depth, "object"))}})
        yield post(target, category, f"subscription params {depth} deep", params, BAD,
                   path="/x-nmos/query/v1.3/subscriptions")
    for depth in (65, 1000, 100_000):
        data = fresh(target, "node", rng, tags={"deep": [Raw(nest(depth, "array"))]})
        yield post(target, category, f"a tag value {depth} deep", registration("node", data), BAD)


BAD_IDS = ("UPPER", "{id}\n", "{id}\r\n", " {id}", "{id} ", "1:2:3", "", "-1", "0", "{hex}", "{{{id}}}",
           "urn:uuid:{id}", "{v0}", "{variant_c}", "../{id}", "{id}/x", "g" * 36, "{id}\u0000", "{id}%0A",
           "{id}{id}", "{short}")


def _bad_id(template: str, rng: random.Random) -> str:
    good = rid(rng)
    if template == "UPPER":
        return good.upper()
    v0 = good[:14] + "0" + good[15:]
    variant_c = good[:19] + "c" + good[20:]
    return template.format(id=good, hex=good.replace("-", ""), v0=v0, variant_c=variant_c, short=good[:-1])


def bad_ids(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Malformed ids and versions, versions going backwards, missing parents, type and parent changes, API version
    conflicts, bad ids in DELETEs and heartbeats."""
    category = "ids"
    family = target.families["v1.3"]
    for template in BAD_IDS:
        for kind in rng.sample(TYPES, min(len(TYPES), 1 + scale)):
            data = fresh(target, kind, rng, id=_bad_id(template, rng))
            yield post(target, category, f"{kind} id {data['id'][:40]!r}", registration(kind, data), BAD)
    for version_text, expect in (("1:2:3", BAD), ("-1:0", BAD), ("1:-1", BAD), ("", BAD), ("1", BAD), (":", BAD),
                                 ("1:", BAD), (":1", BAD), ("1.5:0", BAD), (" 1:0", BAD), ("1:0\n", BAD),
                                 ("1:0 ", BAD), ("\uff11:0", BAD), ("1:0x10", BAD),
                                 ("99999999999999999999999:0", {201, 400}), ("0:1000000000", {201, 400}),
                                 ("1:" + "9" * 5000, {201, 400}), ("00001:0001", {201, 400})):
        kind = rng.choice(TYPES)
        data = fresh(target, kind, rng, version=version_text)
        yield post(target, category, f"{kind} version {version_text[:30]!r}", registration(kind, data), expect,
                   refused=expect == BAD)
    for kind, data in family.members():
        yield post(target, category, f"{kind} version going backwards", registration(
            kind, {**data, "label": "older", "version": "1:0"}), BAD)
        yield post(target, category, f"{kind} changed at the same version", registration(
            kind, {**data, "label": "changed"}), BAD)
        yield post(target, category, f"{kind} re-registered unchanged", registration(kind, data), {200})
    missing = rid(rng)
    for kind, data in (("device", device(missing, id=rid(rng))), ("source", source(missing, id=rid(rng))),
                       ("flow", flow(family.source["id"], missing, id=rid(rng))),
                       ("sender", sender(missing, None, id=rid(rng))), ("receiver", receiver(missing, id=rid(rng))),
                       ("device", device(family.device["id"], id=rid(rng))),
                       ("sender", sender(family.node["id"], None, id=rid(rng))),
                       ("source", source(family.flow["id"], id=rid(rng)))):
        yield post(target, category, f"{kind} whose parent is not a registered parent", registration(kind, data), BAD)
    v10 = target.families["v1.0"]
    yield post(target, category, "v1.0 flow whose source does not exist", registration(
        "flow", flow(missing, v10.device["id"], "v1.0", id=rid(rng))), BAD, version="v1.0")
    for kind, data, other in (("device", device(family.node["id"], id=family.node["id"]), "node"),
                              ("node", node(id=family.device["id"]), "device"),
                              ("sender", sender(family.device["id"], None, id=family.receiver["id"]), "receiver"),
                              ("flow", flow(family.source["id"], family.device["id"], id=family.source["id"]),
                               "source")):
        yield post(target, category, f"{kind} reusing a {other}'s id", registration(kind, data), BAD)
    yield post(target, category, "device moved to another node", registration(
        "device", {**family.device, "node_id": target.spare.node["id"], "version": tai()}), BAD)
    yield post(target, category, "sender moved to another device", registration(
        "sender", {**family.sender, "device_id": target.spare.device["id"], "version": tai()}), BAD)
    older = target.families["v1.2"]
    yield post(target, category, "v1.2 node re-registered at v1.3", registration(
        "node", {**older.node, "version": tai()}), {400, 409})
    yield post(target, category, "v1.3 device re-registered at v1.2", registration(
        "device", {**family.device, "version": tai(), "controls": []}), {400, 409}, version="v1.2")
    for version in ("v1.4", "v2.0", "V1.3", "v1.3.0", "v1", "1.3", "v01.3", "v1.3%00"):
        yield post(target, category, f"registration at {version}", registration("node", fresh(target, "node", rng)),
                   {404}, path=f"/x-nmos/registration/{version}/resource")
    node_id = family.node["id"]
    for path, expect in ((f"nodes/{node_id.upper()}", {404}), (f"nodez/{node_id}", {404}),
                         (f"nodes/{node_id}%0A", {404}), (f"devices/{node_id}", {404}), (f"nodes/{rid(rng)}", {404}),
                         (f"nodes/{node_id}/x", {404}), ("nodes/%00", {404}), ("nodes/..", {404}),
                         (f"nodes/{node_id}%2F..", {404})):
        yield Case(category, f"DELETE {path[:60]}", http_request(
            target, "DELETE", f"/x-nmos/registration/v1.3/resource/{path}"), frozenset(expect))
    yield Case(category, "DELETE a v1.3 node at v1.2", http_request(
        target, "DELETE", f"/x-nmos/registration/v1.2/resource/nodes/{node_id}"), frozenset({404, 409}))
    for path, expect in ((rid(rng), {404}), (family.device["id"], {404}), ("%00", {404}), (node_id.upper(), {404}),
                         ("x" * 5000, {404})):
        yield Case(category, f"heartbeat {path[:40]}", http_request(
            target, "POST", f"/x-nmos/registration/v1.3/health/nodes/{path}", b""), frozenset(expect))
    yield Case(category, "heartbeat a v1.3 node at v1.2", http_request(
        target, "POST", f"/x-nmos/registration/v1.2/health/nodes/{node_id}", b""), frozenset({404, 409}))
    for path in (f"nodes/{node_id.upper()}", f"nodes/{node_id}%0A", f"senders/{node_id}", f"flows/{'f' * 3000}"):
        yield Case(category, f"GET registration {path[:50]}", http_request(
            target, "GET", f"/x-nmos/registration/v1.3/resource/{path}"), frozenset({404}))
        yield Case(category, f"GET query {path[:50]}", http_request(
            target, "GET", f"/x-nmos/query/v1.3/{path}"), frozenset({404}))


def query_strings(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Bad paging, RQL, downgrade and ancestry values, and basic queries with odd keys, on every version."""
    category = "query"
    family = target.families["v1.3"]
    paged = [  # (query string, expected at v1.1 and later)
        ("paging.since=abc", BAD), ("paging.since=99999999999999999999:0", {200, 400}), ("paging.limit=-1", BAD),
        ("paging.limit=99999999999999999999999999", {200, 400}), ("paging.limit=abc", BAD), ("paging.limit=", BAD),
        ("paging.limit=1.5", BAD), ("paging.limit=1e3", BAD), ("paging.limit=0x10", BAD),
        ("paging.since=1:2:3", BAD), ("paging.since=-1:0", BAD), ("paging.until=1:-1", BAD),
        ("paging.since=5:0&paging.until=1:0", BAD), ("paging.order=sideways", BAD), ("paging.order=", BAD),
        ("paging.since=0:99999999999", {200, 400}), ("paging.since=" + "9" * 5000 + ":0", {200, 400}),
        ("paging.until=0:0", OK), ("paging.since=%00", BAD), ("paging.limit=1&paging.limit=2", {200, 400}),
        ("paging.since=1:0\n", BAD), ("paging.limit=%2B5", {200, 400}), ("paging.limit=\u0665".replace(
            "\u0665", "%D9%A5"), BAD)]
    rql = [
        ("query.rql=" + "and(" * 1000 + "eq(label,x)" + ")" * 1000, {400}),
        ("query.rql=" + "and(" * 20 + "eq(label,x)" + ")" * 20, {200, 400}),
        ("query.rql=and(eq(label,x)", {400}), ("query.rql=eq(label,x))", {400}), ("query.rql=eq(label,x", {400}),
        ("query.rql=)(", {400}), ("query.rql=", {200, 400}), ("query.rql=eq(label," + "x" * 5000 + ")", {200, 400}),
        ("query.rql=eq(" + "x" * 5000 + ",y)", {200, 400}), ("query.rql=eq(label,number:abc)", {400}),
        ("query.rql=eq(label,foo:bar)", {200, 400, 501}), ("query.rql=eq(frame_width,number:1e400)", {200, 400}),
        ("query.rql=eq(frame_width,number:NaN)", {200, 400}), ("query.rql=sort(label)", {501}),
        ("query.rql=eq(label,%ED%A0%80)", BAD), ("query.rql=in(label,(a,b)", {400}),
        ("query.rql=eq(label,x),eq(label,y)", {200, 400}), ("query.rql=eq(,)", {200, 400}),
        ("query.rql=" + ",".join(["eq(label,x)"] * 2000), {200, 400, 414}),
        ("query.rql=limit(99999999999999999999)", {400, 501}),
        ("query.rql=eq(label,string:%00)", {200, 400}), ("query.rql=and(" * 1 + ")", {200, 400}),
        ("query.rql=eq(tags.urn:x-nmos:tag:grouphint/v1.0,x)", {200, 400})]
    downgrade = [("query.downgrade=v9.9", BAD), ("query.downgrade=vX", BAD), ("query.downgrade=v2.0", BAD),
                 ("query.downgrade=", BAD), ("query.downgrade=1.0", BAD), ("query.downgrade=v1.0.0", BAD),
                 ("query.downgrade=v1.0&query.downgrade=v1.1", {200, 400}), ("query.downgrade=v1.%00", BAD),
                 ("query.downgrade=v01.0", {200, 400}), ("query.downgrade=v1." + "9" * 5000, BAD)]
    ancestry = [("query.ancestry_id=notauuid", {200, 400}), ("query.ancestry_type=sideways&query.ancestry_id=" +
                                                             family.source["id"], BAD),
                ("query.ancestry_id=" + family.source["id"] + "&query.ancestry_generations=-1", BAD),
                ("query.ancestry_id=" + family.source["id"] + "&query.ancestry_generations=99999999999999999999",
                 {200, 400}), ("query.ancestry_id=" + family.source["id"] + "&query.ancestry_generations=abc", BAD),
                ("query.ancestry_generations=2", {200, 400}), ("query.ancestry_type=children", {200, 400}),
                ("query.ancestry_id=%ED%A0%80&query.ancestry_type=children", BAD),
                ("query.ancestry_id=" + family.source["id"] + "&query.ancestry_type=parents" +
                 "&query.ancestry_generations=2", OK)]
    basic = [("tags.urn:x-nmos:tag:grouphint/v1.0=SDI%201:Video", OK), ("=x", {200, 400}), ("=", {200, 400}),
             ("label%00=x", {200, 400}), ("%00=%00", {200, 400}), ("label=%ff", BAD), ("label=%", {200, 400}),
             ("label=%zz", {200, 400}), ("&&&&", OK), ("label[]=x", {200, 400}), ("x" * 5000 + "=y", {200, 400}),
             ("a." * 500 + "b=c", {200, 400}), ("label=" + "x" * 50000, {200, 400, 414}),
             ("&".join(f"k{i}=v" for i in range(1000)), {200, 400, 414}), ("label=x&label=y", {200, 400}),
             ("tags.=x", {200, 400}), (".=x", {200, 400}), ("label.=x", {200, 400}), ("..=x", {200, 400}),
             ("id=" + family.node["id"].upper(), OK), ("caps=x", OK), ("frame_width=1920", OK),
             ("frame_width=1e400", {200, 400}), ("subscription.active=true", OK), ("label=%E2%80%AE", OK),
             ("version=1700000000:1", OK), ("query.unknown=1", {200, 400, 501}), ("paging=1", {200, 400}),
             ("query.rql", {200, 400}), ("label", {200, 400})]
    lists = [c for c in COLLECTIONS if c != "subscriptions"]
    for version in VERSIONS:
        for query, expect in paged + rql + downgrade + basic:
            if version != "v1.3" and rng.random() > 0.2 * scale:
                continue
            collection = rng.choice(lists + ["subscriptions"] if query.startswith("paging") else lists)
            # v1.0 has none of the query parameters of v1.1: refusing them (400/501) or ignoring them (200) is fine
            allowed = frozenset(expect) | {200, 400, 501} if version == "v1.0" and "=" in query else frozenset(expect)
            if query.startswith("query.rql=sort") and version != "v1.3":
                allowed = frozenset({400, 501})
            if query.startswith("query.downgrade") and version == "v1.0":
                allowed = frozenset({200, 400, 501})
            yield Case(category, f"GET {version}/{collection}?{query[:60]}", http_request(
                target, "GET", f"/x-nmos/query/{version}/{collection}?{query}"), allowed)
        for query, expect in ancestry:
            if version == "v1.0":
                continue
            collection = rng.choice(("sources", "flows"))
            yield Case(category, f"GET {version}/{collection}?{query[:60]}", http_request(
                target, "GET", f"/x-nmos/query/{version}/{collection}?{query}"), frozenset(expect) | {501})
            yield Case(category, f"GET {version}/nodes?{query[:60]}", http_request(
                target, "GET", f"/x-nmos/query/{version}/nodes?{query}"), frozenset({200, 400, 501}))
    for rid_text in (family.node["id"], family.node["id"].upper(), "%00", "x" * 3000):
        for query in ("query.downgrade=vX", "query.downgrade=v1.0&query.downgrade=v1.1", "paging.limit=-1"):
            yield Case(category, f"GET one node {rid_text[:8]}?{query}", http_request(
                target, "GET", f"/x-nmos/query/v1.3/nodes/{rid_text}?{query}"), frozenset({200, 400, 404}))


SUBSCRIPTION = {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes", "params": {}, "secure": False}


def subscriptions(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """POST /subscriptions bodies with bad rates, persistence, params and paths; bad subscription ids."""
    category = "subscriptions"
    path = "/x-nmos/query/v1.3/subscriptions"

    def body(**changes: Any) -> bytes:
        return render({**SUBSCRIPTION, **changes})

    changes: list[tuple[str, dict[str, Any], frozenset[int], bool]] = []
    for token in (b"1e400", b"-1e400", b"NaN", b"Infinity", b"-1", str(2 ** 70).encode(), str(2 ** 64).encode(),
                  b'"100"', b"1.5", b"null", b"true", b"[]", b"{}", b"-0.5", b"1e2"):
        expect = {201, 400} if token == b"1e2" else BAD
        changes.append((f"max_update_rate_ms={token[:20].decode()}", {"max_update_rate_ms": Raw(token)},
                        frozenset(expect), expect == BAD))
    changes += [("max_update_rate_ms=0", {"max_update_rate_ms": 0}, OK, False),
                (f"max_update_rate_ms={2 ** 63 - 1}", {"max_update_rate_ms": 2 ** 63 - 1}, frozenset({200, 201, 400}),
                 False)]
    for token in (b'"yes"', b"1", b"null", b'"true"', b"[]"):
        changes.append((f"persist={token.decode()}", {"persist": Raw(token)}, BAD, True))
    for name, params in (("a lone surrogate", {"label": quoted(b"\\ud800")}),
                         ("a surrogate key", {quoted(b"\\udfff"): "x"}), ("NaN", {"label": Raw(b"NaN")}),
                         ("1e400", {"label": Raw(b"1e400")}), ("an object", {"label": {"a": 1}}),
                         ("an array", {"label": [1]}), ("raw ED A0 80", {"label": quoted(b"\xed\xa0\x80")}),
                         ("paging", {"paging.limit": "5"}), ("deep RQL", {"query.rql": "and(" * 1000 + ")" * 1000}),
                         ("downgrade v9.9", {"query.downgrade": "v9.9"}), ("ancestry", {"query.ancestry_id": "x"}),
                         ("RQL sort", {"query.rql": "sort(label)"}), ("2**70", {"label": 2 ** 70})):
        expect = {400, 501} if name in ("RQL sort", "ancestry") else BAD
        changes.append((f"params with {name}", {"params": params}, frozenset(expect), True))
    for params, expect in (({"label": "x"}, OK), ({"label": 5}, {200, 201, 400}),
                           ({GROUPHINT: "SDI 1:Video"}, OK), ({"tags." + GROUPHINT: "SDI 1:Video"}, OK),
                           ({"label": None}, {200, 201, 400}), ({"": "x"}, {200, 201, 400})):
        changes.append((f"params {json.dumps(params)[:40]}", {"params": params}, frozenset(expect), False))
    for params in ([], "x", None, 1):
        changes.append((f"params={json.dumps(params)}", {"params": params}, BAD, True))
    for value in ("/nope", "/nodes/", "", "nodes", "/Nodes", "/subscriptions", 1, None, Raw(b'"/nodes\\u0000"'),
                  "/nodes/../devices", "/nodes?x=1", ["/nodes"]):
        changes.append((f"resource_path={render(value)[:30].decode('latin-1')}", {"resource_path": value}, BAD, True))
    for key, value in (("secure", True), ("secure", "false"), ("secure", None), ("authorization", True),
                       ("authorization", "no")):
        changes.append((f"{key}={json.dumps(value)}", {key: value}, BAD, True))
    for name, extra in (("authorization false", {"authorization": False}), ("extra key", {"x_extra": 1})):
        changes.append((name, extra, frozenset({200, 201, 400}), False))
    for name, change, expect, refused in changes:
        yield post(target, category, name, body(**change), expect, refused, path=path)
    for key in SUBSCRIPTION:
        without = {k: v for k, v in SUBSCRIPTION.items() if k != key}
        expect = {200, 201} if key == "secure" else BAD
        yield post(target, category, f"without {key}", render(without), expect, refused=key != "secure", path=path)
    for whole in (b"[]", b'"x"', b"", b"{", render(SUBSCRIPTION)[:-1], b"null"):
        yield post(target, category, f"body {whole[:20]!r}", whole, BAD, path=path)
    for version in ("v1.0", "v1.1", "v1.2"):
        for name, change in (("secure key", {}), ("NaN rate", {"max_update_rate_ms": Raw(b"NaN")}),
                             ("bad path", {"resource_path": "/nope"})):
            expect = {200, 201, 400} if name == "secure key" else BAD
            yield post(target, category, f"{version} {name}", body(**change), expect, refused=expect == BAD,
                       path=f"/x-nmos/query/{version}/subscriptions")
    sid = target.ws_path.rstrip("/").rsplit("/", 1)[1]
    for method, sub_path, expect in (("POST", sid, {404, 405}), ("DELETE", sid.upper(), {404}),
                                     ("DELETE", rid(rng), {404}), ("GET", sid.upper(), {404}),
                                     ("DELETE", "%00", {404}), ("PUT", sid, {404, 405}), ("PATCH", "", {404, 405}),
                                     ("DELETE", "", {404, 405})):
        yield Case(category, f"{method} subscriptions/{sub_path[:12]}", http_request(
            target, method, f"{path}/{sub_path}", b"{}" if method in ("POST", "PUT", "PATCH") else None),
            frozenset(expect))
    yield Case(category, "DELETE a v1.3 subscription at v1.2", http_request(
        target, "DELETE", f"/x-nmos/query/v1.2/subscriptions/{sid}"), frozenset({404, 409}))


def _ws(target: Target, path: str, drop: tuple[bytes, ...] = (), add: Sequence[tuple[bytes, bytes]] = (),
        method: bytes = b"GET", version: bytes = b"HTTP/1.1", key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    headers = [(b"Host", target.authority), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
               (b"Sec-WebSocket-Key", key), (b"Sec-WebSocket-Version", b"13")]
    headers = [(name, value) for name, value in headers if name.lower() not in drop] + list(add)
    return (method + b" " + path.encode() + b" " + version + b"\r\n" +
            b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n")


def websocket_handshakes(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Bad WebSocket opening handshakes, to a real subscription's socket and to a list with `Upgrade`."""
    category = "websocket"
    key = base64.b64encode(rng.randbytes(16))
    lists = "/x-nmos/query/v1.3/nodes"
    unique = iter(range(1 << 30))
    run = f"{rng.getrandbits(32):08x}"

    def at(is_list: bool) -> str:
        # Each upgrade on a list asks for a subscription no other case asks for, so that one made by a refused
        # handshake cannot hide behind one made (or reused) before.
        return f"{lists}?label=hostile-{run}-{next(unique)}" if is_list else target.ws_path

    for is_list in (False, True):
        where = "list" if is_list else "socket"
        yield Case(category, f"{where}: a valid handshake", _ws(target, at(is_list), key=key), frozenset({101}),
                   refused=False)
        yield Case(category, f"{where}: Upgrade: WebSocket, Connection: keep-alive, Upgrade", _ws(
            target, at(is_list), drop=(b"upgrade", b"connection"), key=key,
            add=[(b"Upgrade", b"WebSocket"), (b"Connection", b"keep-alive, Upgrade")]), frozenset({101}),
            refused=False)
        bad = [("no Sec-WebSocket-Key", (b"sec-websocket-key",), [], BAD),
               ("a short key", (b"sec-websocket-key",), [(b"Sec-WebSocket-Key", base64.b64encode(rng.randbytes(8)))],
                BAD),
               ("a key that is not base64", (b"sec-websocket-key",),
                [(b"Sec-WebSocket-Key", b"!!!!!!!!!!!!!!!!!!!!!!==")], BAD),
               ("two keys", (), [(b"Sec-WebSocket-Key", key)], BAD),
               ("Sec-WebSocket-Version 99", (b"sec-websocket-version",), [(b"Sec-WebSocket-Version", b"99")],
                {400, 426}),
               ("Sec-WebSocket-Version abc", (b"sec-websocket-version",), [(b"Sec-WebSocket-Version", b"abc")],
                {400, 426}),
               ("no Sec-WebSocket-Version", (b"sec-websocket-version",), [], {400, 426}),
               ("Upgrade: h2c", (b"upgrade",), [(b"Upgrade", b"h2c")], {200, 400, 426} if is_list else {400, 426}),
               ("a key with NUL", (b"sec-websocket-key",), [(b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZS\x00ub25jZQ==")],
                BAD)]
        for name, drop, add, expect in bad:
            yield Case(category, f"{where}: {name}", _ws(target, at(is_list), drop=drop, add=add, key=key),
                       frozenset(expect))
        # Without "Connection: Upgrade" it is no upgrade request (RFC 9110 §7.8): a list may answer the plain GET.
        for name, drop, add in (("no Connection: Upgrade", (b"connection",), []),
                                ("Connection: keep-alive", (b"connection",), [(b"Connection", b"keep-alive")])):
            yield Case(category, f"{where}: {name}", _ws(target, at(is_list), drop=drop, add=add, key=key),
                       frozenset({200, 400, 426} if is_list else {400, 426}))
        yield Case(category, f"{where}: Sec-WebSocket-Version 8", _ws(
            target, at(is_list), drop=(b"sec-websocket-version",), add=[(b"Sec-WebSocket-Version", b"8")], key=key),
            frozenset({101, 400, 426}), refused=False)
        yield Case(category, f"{where}: HTTP/1.0", _ws(target, at(is_list), version=b"HTTP/1.0", key=key),
                   frozenset({101, 400, 426, 505}), refused=False)
        yield Case(category, f"{where}: POST", _ws(target, at(is_list), method=b"POST", key=key,
                                                   add=[(b"Content-Length", b"0")]), frozenset({400, 404, 405}))
        yield Case(category, f"{where}: a key of 600 bytes", _ws(
            target, at(is_list), drop=(b"sec-websocket-key",), add=[(b"Sec-WebSocket-Key", base64.b64encode(
                rng.randbytes(450)))], key=key), BAD)
    sid = target.ws_path.rstrip("/").rsplit("/", 1)[1]
    base = target.ws_path.rstrip("/").rsplit("/", 1)[0]
    for path, expect in ((f"{base}/{rid(rng)}", {404}), (f"{base}/{sid.upper()}", {404}),
                         (target.ws_path.replace("/v1.3/", "/v1.2/"), {404}), (f"{base}/%00", {404}),
                         (target.ws_path + "/x", {404}), (target.ws_path + "?x=%ff", {101, 400, 404}),
                         (lists + "?paging.limit=-1", BAD), (lists + "?label=%ED%A0%80", BAD),
                         (lists + "?query.rql=sort(label)", {501}), (lists + "?query.downgrade=vX", BAD),
                         ("/x-nmos/query/v1.3/nodez", {404}), ("/x-nmos/query/v1.3/subscriptions", {200, 400, 405}),
                         ("/x-nmos/query/v1.0/nodes", {200, 400, 426}), ("/x-nmos/registration/v1.3/resource",
                                                                         {400, 404, 405})):
        yield Case(category, f"upgrade {path[-40:]}", _ws(target, path, key=key), frozenset(expect),
                   refused=101 not in expect)


def _raw(target: Target, line: bytes, headers: Sequence[bytes] = (), body: bytes = b"", host: bool = True,
         close: bool = True) -> bytes:
    lines = [line] + ([b"Host: " + target.authority] if host else []) + [b"Connection: close"] * close + list(headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def http_oddities(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Requests broken at the HTTP layer, sent as raw bytes."""
    category = "http"
    nodes = b"/x-nmos/query/v1.3/nodes"
    post_line = b"POST /x-nmos/registration/v1.3/resource HTTP/1.1"
    body = registration("node", fresh(target, "node", rng))
    canonical = _raw(target, b"GET " + nodes + b" HTTP/1.1")
    cases: list[tuple[str, bytes, Any, dict[str, Any]]] = [
        ("non-ASCII bytes in the path", _raw(target, b"GET " + nodes + b"/\xff\xfe HTTP/1.1"), {400, 404}, {}),
        ("UTF-8 in the path", _raw(target, b"GET " + nodes + "/é".encode() + b" HTTP/1.1"), {400, 404}, {}),
        ("invalid UTF-8 in the query", _raw(target, b"GET " + nodes + b"?label=\xff HTTP/1.1"), BAD, {}),
        ("UTF-8 in the query", _raw(target, b"GET " + nodes + "?label=é".encode() + b" HTTP/1.1"), {200, 400}, {}),
        ("NUL in the path", _raw(target, b"GET " + nodes + b"\x00 HTTP/1.1"), {400, 404}, {}),
        ("NUL in a header", _raw(target, b"GET " + nodes + b" HTTP/1.1", [b"X-Hostile: a\x00b"]), {200, 400}, {}),
        ("CR in a header", _raw(target, b"GET " + nodes + b" HTTP/1.1", [b"X-Hostile: a\rb"]), {200, 400}, {}),
        ("Content-Length -1", _raw(target, post_line, [b"Content-Type: application/json", b"Content-Length: -1"],
                                   body[:10]), BAD, {}),
        ("Content-Length abc", _raw(target, post_line, [b"Content-Type: application/json", b"Content-Length: abc"],
                                    body[:10]), BAD, {}),
        ("Content-Length +5", _raw(target, post_line, [b"Content-Type: application/json", b"Content-Length: +5"],
                                   b"{}{}{"), BAD, {}),
        ("Content-Length 10737418240 and a short body", _raw(
            target, post_line, [b"Content-Type: application/json", b"Content-Length: 10737418240"], body,
            close=False), {413}, {"must_close": True}),
        ("Content-Length 99999999999999999999999", _raw(
            target, post_line, [b"Content-Type: application/json", b"Content-Length: 99999999999999999999999"],
            body, close=False), {400, 413}, {"must_close": True}),
        ("two different Content-Lengths", _raw(target, post_line, [
            b"Content-Type: application/json", b"Content-Length: 2", b"Content-Length: 3"], b"{}}"), BAD, {}),
        ("chunk size ffffffffffffffffffff", _raw(target, post_line, [
            b"Content-Type: application/json", b"Transfer-Encoding: chunked"], b"ffffffffffffffffffff\r\n{}",
            close=False), {413}, {"must_close": True}),
        ("chunk size 200000 (over 1 MiB in all)", _raw(target, post_line, [
            b"Content-Type: application/json", b"Transfer-Encoding: chunked"], b"200000\r\n{}", close=False), {413},
         {"must_close": True}),
        ("chunk size zz", _raw(target, post_line, [b"Content-Type: application/json", b"Transfer-Encoding: chunked"],
                               b"zz\r\n{}\r\n0\r\n\r\n"), BAD, {}),
        ("Transfer-Encoding gzip", _raw(target, post_line, [
            b"Content-Type: application/json", b"Transfer-Encoding: gzip", b"Content-Length: 2"], b"{}"),
         {400, 501}, {}),
        ("Transfer-Encoding chunked and Content-Length", _raw(target, post_line, [
            b"Content-Type: application/json", b"Content-Length: 4", b"Transfer-Encoding: chunked"],
            b"2\r\n[]\r\n0\r\n\r\n"), BAD, {}),
        ("HTTP/2.0", _raw(target, b"GET " + nodes + b" HTTP/2.0"), {505}, {}),
        ("HTTP/3.0", _raw(target, b"GET " + nodes + b" HTTP/3.0"), {505}, {}),
        ("HTTP/1.2", _raw(target, b"GET " + nodes + b" HTTP/1.2"), {200, 505}, {}),
        ("HTTP/1", _raw(target, b"GET " + nodes + b" HTTP/1"), {400, 505}, {}),
        ("HTTP/1.0", _raw(target, b"GET " + nodes + b" HTTP/1.0"), OK, {}),
        ("FTP/1.1", _raw(target, b"GET " + nodes + b" FTP/1.1"), {400, 505}, {}),
        ("a header of 64 KiB", _raw(target, b"GET " + nodes + b" HTTP/1.1", [b"X-Big: " + b"b" * 65536]), {431}, {}),
        ("600 headers", _raw(target, b"GET " + nodes + b" HTTP/1.1",
                             [b"X-H%d: v" % i for i in range(600)]), {431}, {}),
        ("a path of 20 KB", _raw(target, b"GET " + nodes + b"/" + b"p" * 20_000 + b" HTTP/1.1"),
         {400, 404, 414, 431}, {}),
        ("absolute-form target", _raw(target, b"GET http://" + target.authority + b"/x-nmos/ HTTP/1.1"), {200},
         {"same_as": _raw(target, b"GET /x-nmos/ HTTP/1.1")}),
        ("absolute-form target to the query API", _raw(target, b"GET http://" + target.authority + nodes +
                                                       b" HTTP/1.1"), {200}, {"same_as": canonical}),
        ("doubled slashes", _raw(target, b"GET //x-nmos//query//v1.3//nodes HTTP/1.1"), {200},
         {"same_as": canonical}),
        ("a trailing slash", _raw(target, b"GET " + nodes + b"/ HTTP/1.1"), {200}, {"same_as": canonical}),
        ("%c0%ae in the path", _raw(target, b"GET /x-nmos/query/v1.3/%c0%ae%c0%ae/nodes HTTP/1.1"), {400, 404}, {}),
        ("dot segments", _raw(target, b"GET /x-nmos/query/v1.2/../v1.3/nodes HTTP/1.1"), {200, 400, 404}, {}),
        ("%2e%2e in the path", _raw(target, b"GET /x-nmos/query/%2e%2e/%2e%2e/ HTTP/1.1"), {400, 404}, {}),
        ("%2F in a segment", _raw(target, b"GET /x-nmos/query/v1.3%2Fnodes HTTP/1.1"), {200, 400, 404}, {}),
        ("BREW", _raw(target, b"BREW " + nodes + b" HTTP/1.1"), {405, 501}, {}),
        ("PATCH", _raw(target, b"PATCH " + nodes + b" HTTP/1.1", [b"Content-Length: 0"]), {405}, {}),
        ("TRACE", _raw(target, b"TRACE " + nodes + b" HTTP/1.1"), {405, 501}, {}),
        ("PUT", _raw(target, b"PUT " + nodes + b" HTTP/1.1", [b"Content-Length: 0"]), {405}, {}),
        ("DELETE on a list", _raw(target, b"DELETE " + nodes + b" HTTP/1.1"), {405}, {}),
        ("CONNECT", _raw(target, b"CONNECT " + target.authority + b" HTTP/1.1"), {400, 404, 405, 501}, {}),
        ("lower-case get", _raw(target, b"get " + nodes + b" HTTP/1.1"), {200, 400, 405, 501}, {}),
        ("OPTIONS *", _raw(target, b"OPTIONS * HTTP/1.1"), {200, 400, 404}, {}),
        ("OPTIONS on a list", _raw(target, b"OPTIONS " + nodes + b" HTTP/1.1"), {200}, {}),
        ("HEAD on a list", _raw(target, b"HEAD " + nodes + b" HTTP/1.1"), {200}, {"head": True}),
        # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request
        # message that lacks a Host header field and to any request message that contains more than one Host header
        # field line or a Host header field with an invalid field value."
        ("no Host", _raw(target, b"GET " + nodes + b" HTTP/1.1", host=False), BAD, {}),
        ("no Host at HTTP/1.0", _raw(target, b"GET " + nodes + b" HTTP/1.0", host=False), OK, {}),
        ("two Hosts", _raw(target, b"GET " + nodes + b" HTTP/1.1", [b"Host: a.example"]), BAD, {}),
        ("Host with a bad port", _raw(target, b"GET " + nodes + b" HTTP/1.1", host=False,
                                      headers=[b"Host: 127.0.0.1:99999999"]), BAD, {}),
        ("Host with odd bytes", _raw(target, b"GET " + nodes + b"?paging.limit=1 HTTP/1.1", host=False,
                                     headers=[b"Host: <x>\xff"]), BAD, {}),
        ("a header line without a colon", _raw(target, b"GET " + nodes + b" HTTP/1.1", [b"NoColonHere"]),
         BAD, {}),
        ("obs-fold", _raw(target, b"GET " + nodes + b" HTTP/1.1", [b"X-Fold: a", b" b"]), {200, 400}, {}),
        ("space before the colon", _raw(target, b"GET " + nodes + b" HTTP/1.1", [b"X-Space : v"]), {200, 400}, {}),
        ("bare LF line ends", b"GET " + nodes + b" HTTP/1.1\nHost: " + target.authority + b"\nConnection: close\n\n",
         {200, 400}, {"answerless": True}),  # RFC 9112 §2.2: a server MAY take a bare LF as a line end
        ("leading empty lines", b"\r\n\r\n" + canonical, {200, 400}, {}),
        ("two spaces in the request line", _raw(target, b"GET  " + nodes + b" HTTP/1.1"), {200, 400, 404}, {}),
        ("a request line of one word", _raw(target, b"GET"), {400, 505}, {"answerless": True}),
        ("a request line of four words", _raw(target, b"GET " + nodes + b" HTTP/1.1 extra"), {400, 505}, {}),
        ("Expect: 100-continue over the limit", _raw(target, post_line, [
            b"Content-Type: application/json", b"Expect: 100-continue", b"Content-Length: 2000000"]), {413}, {}),
        ("a GET with a body", _raw(target, b"GET " + nodes + b" HTTP/1.1", [b"Content-Length: 5"], b"hello"),
         {200, 400}, {}),
        ("two requests at once", canonical.replace(b"Connection: close", b"Connection: keep-alive") + canonical,
         {200}, {}),
        ("a TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + rng.randbytes(150), {400},
         {"answerless": True}),
        ("random bytes", rng.randbytes(300) + b"\r\n\r\n", {400, 404, 405, 501, 505}, {"answerless": True}),
        ("a path that is only spaces", _raw(target, b"GET   HTTP/1.1"), {400, 404}, {"answerless": True}),
        # (a request that prefers text/html, a browser, gets the error as an HTML page: tests/web/test_html_view.py)
        ("Accept: text/html below JSON", _raw(target, b"GET /x-nmos/query/v1.3/nodez HTTP/1.1",
                                             [b"Accept: text/html;q=0.9, application/json"]), {404}, {}),
        ("Accept: text/html at q=0", _raw(target, b"GET /x-nmos/query/v1.3/nodez HTTP/1.1",
                                          [b"Accept: text/html;q=0, */*"]), {404}, {}),
        ("a 404 on the root", _raw(target, b"GET /nope HTTP/1.1"), {404}, {}),
        ("a 405 on the root", _raw(target, b"POST / HTTP/1.1", [b"Content-Length: 0"]), {405}, {}),
        ("a query on the root", _raw(target, b"GET /?%ff HTTP/1.1"), {200, 400}, {}),
    ]
    for name, data, expect, extra in cases:
        yield Case(category, name, data, frozenset(expect), **extra)
    for _ in range(10 * scale):  # request lines of random printable and non-printable bytes
        line = bytes(rng.choice(b"GETPOSabc/ \t%\x00\x7f\x80\xff:?#=&x-nmos.") for _ in range(rng.randrange(1, 60)))
        yield Case(category, f"random request line {line[:20]!r}", _raw(target, line), None, answerless=True)


def slow_requests(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Requests sent a byte per reactor turn, and requests abandoned half-way."""
    category = "slow"
    good = http_request(target, "POST", resource_path("v1.3"), registration("node", fresh(target, "node", rng)))
    yield Case(category, "a registration a byte at a time", pieces=tuple(good[i:i + 1] for i in range(len(good))),
               expect=frozenset({201}), refused=False)
    get = http_request(target, "GET", "/x-nmos/query/v1.3/nodes?paging.limit=2")
    yield Case(category, "a GET a byte at a time", pieces=tuple(get[i:i + 1] for i in range(len(get))), expect=OK)
    bad = http_request(target, "POST", resource_path("v1.3"), b'{"type":"node","data":{"id":NaN}}')
    yield Case(category, "bad JSON a byte at a time", pieces=tuple(bad[i:i + 1] for i in range(len(bad))),
               expect=BAD)
    cuts = sorted({rng.randrange(1, len(get)) for _ in range(2 + scale)})
    yield Case(category, f"a GET in pieces at {cuts}", pieces=tuple(get[a:b] for a, b in zip([0] + cuts,
                                                                                            cuts + [len(get)])),
               expect=OK)
    for fraction in (0.5, 0.9, 0.999):
        data = http_request(target, "POST", resource_path("v1.3"), registration("node", fresh(target, "node", rng)))
        head_end = data.index(b"\r\n\r\n") + 4
        cut = head_end + int((len(data) - head_end) * fraction)
        yield Case(category, f"a body cut at {fraction:.0%}, then the client closes", data[:cut], answerless=True,
                   hang_up=True)
        yield Case(category, f"head, then a body cut at {fraction:.0%} in pieces, then the client closes",
                   pieces=(data[:head_end], data[head_end:cut - 1], data[cut - 1:cut]), answerless=True, hang_up=True)
    data = http_request(target, "POST", resource_path("v1.3"), registration("node", fresh(target, "node", rng)))
    yield Case(category, "headers cut half-way, then the client closes", data[:data.index(b"\r\n\r\n") // 2],
               answerless=True, hang_up=True)
    chunked = _chunked(target, resource_path("v1.3"), registration("node", fresh(target, "node", rng)), 64)
    yield Case(category, "a chunked body cut mid-chunk, then the client closes", chunked[:len(chunked) - 40],
               answerless=True, hang_up=True)
    yield Case(category, "Content-Length 2 MiB, 10 bytes, then the client closes", _raw(
        target, b"POST /x-nmos/registration/v1.3/resource HTTP/1.1", [b"Content-Type: application/json",
                                                                      b"Content-Length: 2097152"], b'{"type":"n'),
        answerless=True, hang_up=True)
    sub = http_request(target, "POST", "/x-nmos/query/v1.3/subscriptions", render(SUBSCRIPTION))
    yield Case(category, "a subscription body cut half-way, then the client closes", sub[:len(sub) - 20],
               answerless=True, hang_up=True)
    yield Case(category, "connect and close at once", b"", answerless=True, hang_up=True)
    yield Case(category, "a request line and nothing more, then the client closes",
               b"GET /x-nmos/query/v1.3/nodes HTTP/1.1\r\n", answerless=True, hang_up=True)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON-ish value drawn from what a peer may send: strings with surrogates and odd bytes, non-finite and
    huge numbers, deep nesting, small objects and arrays of the same."""
    roll = rng.random()
    if roll < 0.15 and depth < 3:
        return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if roll < 0.3 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if roll < 0.4:
        return Raw(nest(rng.choice((1, 30, 62, 63, 65, 200, 1000, 3000)), rng.choice(("array", "object", "mixed"))))
    if roll < 0.55:
        return Raw(rng.choice(BAD_NUMBERS + GOOD_NUMBERS))
    if roll < 0.65:
        return rng.choice((None, True, False, rng.randrange(-(2 ** 70), 2 ** 70), rng.uniform(-1e308, 1e308)))
    return quoted(b"".join(rng.choice(BAD_TEXT + GOOD_TEXT + (b"a", b"label", b" ")) for _ in range(
        rng.randrange(1, 4))))


def random_key(rng: random.Random) -> Any:
    if rng.random() < 0.3:
        return rng.choice(("label", "tags", "description", "id", "version", "x", ""))
    return quoted(b"".join(rng.choice(BAD_TEXT + GOOD_TEXT + (b"k",)) for _ in range(rng.randrange(1, 3))))


def random_bodies(target: Target, rng: random.Random, scale: int = 1) -> Iterator[Case]:
    """Valid Nodes and Devices with random extra keys and values: any answer that keeps the rules will do, and
    whatever is stored must be served as strict JSON afterwards (the collections check, after the category)."""
    for number in range(40 * scale):
        kind = rng.choice(("node", "device"))
        api = rng.choice(VERSIONS)
        data = fresh(target, kind, rng, api)
        for _ in range(rng.randrange(1, 4)):
            data[random_key(rng)] = random_value(rng)
        yield post(target, "random", f"{api} {kind} #{number}", registration(kind, data), None, refused=False,
                   version=api)


CATEGORIES: dict[str, Callable[[Target, random.Random, int], Iterator[Case]]] = {
    "json": bad_json,
    "numbers": huge,
    "unicode": unicode_text,
    "nesting": nesting,
    "ids": bad_ids,
    "query": query_strings,
    "subscriptions": subscriptions,
    "websocket": websocket_handshakes,
    "http": http_oddities,
    "slow": slow_requests,
    "random": random_bodies,
}


async def run_category(reactor: Any, target: Target, category: str, cases: Iterator[Case] | list[Case],
                       snapshot: Snapshot, timeout: float = TIMEOUT,
                       keep_going: Callable[[], bool] = lambda: True) -> tuple[int, list[Problem]]:
    """Send every case of one category in turn; (requests sent, problems found)."""
    sent = 0
    found: list[Problem] = []
    for case in cases:
        if not keep_going():
            break
        found += await run_case(reactor, target, case, snapshot, timeout)
        sent += 1 + (case.same_as is not None)
    return sent, found


def summarise(found: Sequence[Problem], limit: int = 40) -> str:
    """Problems grouped by rule, the first few of each."""
    lines = []
    for rule in RULES:
        mine = [problem for problem in found if problem.rule == rule]
        if mine:
            lines.append(f"{rule} ({len(mine)}): {RULES[rule]}")
            lines += [f"    {problem.case}: {problem.detail[:240]}" for problem in mine[:limit]]
            if len(mine) > limit:
                lines.append(f"    ... and {len(mine) - limit} more")
    return "\n".join(lines)
