"""A client of etcd v3's JSON gateway (etcd 3.4: `/v3/kv/*`, `/v3/lease/*`, `/v3/watch`) on an injected treq client.

Every call is one HTTP request within a time limit, sent to the member that answered last; a member that cannot be
reached, does not answer in time, or answers that it cannot serve (no leader, no quorum: gRPC "Unavailable") is left
for the next one, and when none answers the call fails with `EtcdUnavailable`. Anything else etcd refuses is an
`EtcdError` (a compacted revision, an unknown lease), and a transaction whose compares fail is no error at all: its
`TxnResult.succeeded` is False.

A call that timed out may still have been applied, and is then sent to the next member: every call here is safe to
repeat (a put or delete of the same key, a transaction guarded by its compares, a keep-alive), except `lease_grant`,
whose extra lease expires on its own.

The gateway's JSON carries keys and values in base64 and 64-bit integers as strings; this module speaks `str` keys,
`bytes` values and `int`s. The gateway ignores keep-alives streamed in one request, so each renewal is one request.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nmos_ref.web.backoff import Backoff
from nmos_ref.web.client import Reply, Unreachable, exchange

log = Logger()

SCHEME = "etcd://"
# gRPC status codes (the gateway's error JSON carries them as "code").
_UNAVAILABLE, _DEADLINE_EXCEEDED, _NOT_FOUND, _OUT_OF_RANGE = 14, 4, 5, 11
# clientv3's WithRequireLeader, through the gateway: a member that loses its leader ends the watch instead of
# keeping it open with nothing to say.
_REQUIRE_LEADER = {"Grpc-Metadata-Hasleader": "true"}


class EtcdUnavailable(Exception):
    """No member answered (in time, or with a leader); the message says what each one did."""


class EtcdError(Exception):
    """etcd answered, and refused the request: `code` is the gRPC status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RevisionCompacted(EtcdError):
    """The revision asked for is older than the oldest etcd keeps (it was compacted)."""


class LeaseNotFound(EtcdError):
    """The lease is unknown: it expired or was revoked."""


def member_urls(store: str | Sequence[str]) -> list[str]:
    """The members' base URLs: `etcd://HOST:PORT[,HOST:PORT...]` (or a list of `etcd://HOST:PORT`) →
    `["http://HOST:PORT", ...]`."""
    parts = store.split(",") if isinstance(store, str) else list(store)
    urls = []
    for i, part in enumerate(parts):
        part = part.strip()
        if part.startswith(SCHEME):
            part = part[len(SCHEME):]
        elif i == 0 or "://" in part:
            raise ValueError(f"an etcd store is etcd://HOST:PORT[,HOST:PORT...], not {store!r}")
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or "/" in part:
            raise ValueError(f"an etcd member is HOST:PORT, not {part!r} (in {store!r})")
        urls.append(f"http://{host}:{port}")
    if not urls:
        raise ValueError("an etcd store needs at least one member")
    return urls


def prefix_end(prefix: str) -> bytes:
    """The end of the range of every key that starts with `prefix` (etcd's "range_end": the prefix with its last
    byte incremented, trailing 0xff bytes dropped; b"\\0", every key, when there is no such end)."""
    end = bytearray(prefix.encode("utf-8"))
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _b64(raw: str | bytes) -> str:
    return base64.b64encode(raw.encode("utf-8") if isinstance(raw, str) else raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


@frozen
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> KeyValue:
        return cls(_unb64(raw.get("key")).decode("utf-8"), _unb64(raw.get("value")), _int(raw.get("create_revision")),
                   _int(raw.get("mod_revision")), _int(raw.get("version")), _int(raw.get("lease")))


@frozen
class Event:
    """One change seen by a watch: a "put" (`kv` is the new key-value) or a "delete" (`kv` has the key and the
    deletion's `mod_revision`)."""

    type: str
    kv: KeyValue


@frozen
class RangeResult:
    revision: int  # the store's revision the answer was read at
    kvs: tuple[KeyValue, ...]
    count: int  # how many keys the range holds (more than len(kvs) with a limit)
    more: bool


@frozen
class TxnResult:
    succeeded: bool
    revision: int  # the revision after the transaction (unchanged if it wrote nothing)
    responses: tuple[Any, ...]  # per operation of the branch taken: RangeResult for a Get, the number deleted for
    # a Delete, None for a Put


@frozen
class Lease:
    id: int
    ttl: int  # seconds granted (etcd may raise a short TTL to its minimum)


_TARGETS = {"create_revision": "CREATE", "mod_revision": "MOD", "version": "VERSION", "value": "VALUE"}
_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}


@frozen
class Compare:
    """One compare of a transaction: `key`'s `target` ("create_revision", "mod_revision", "version" or "value")
    `result` ("=", "!=", ">", "<") `operand`. A key that does not exist has create_revision, mod_revision and
    version 0."""

    key: str
    target: str
    result: str
    operand: int | bytes

    def encode(self) -> dict[str, Any]:
        operand = _b64(self.operand) if self.target == "value" else str(self.operand)
        return {"key": _b64(self.key), "target": _TARGETS[self.target], "result": _RESULTS[self.result],
                self.target: operand}


def absent(key: str) -> Compare:
    """The compare that holds when `key` does not exist."""
    return Compare(key, "create_revision", "=", 0)


def unchanged(key: str, mod_revision: int) -> Compare:
    """The compare that holds when `key` was last changed at `mod_revision` (0: it does not exist)."""
    return Compare(key, "mod_revision", "=", mod_revision)


@frozen
class Put:
    """Set `key` to `value` with `lease`; with `keep`, only touch it (its mod_revision moves on, its value and
    lease stay: etcd's ignore_value and ignore_lease); with `keep_lease`, set the value and keep the lease."""

    key: str
    value: bytes
    lease: int = 0
    keep: bool = False
    keep_lease: bool = False

    def encode(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key)}
        if self.keep:
            body.update(ignore_value=True, ignore_lease=True)
        else:
            body["value"] = _b64(self.value)
            if self.keep_lease:
                body["ignore_lease"] = True
            elif self.lease:
                body["lease"] = str(self.lease)
        return {"request_put": body}


@frozen
class Get:
    key: str
    prefix: bool = False

    def encode(self) -> dict[str, Any]:
        return {"request_range": _range_body(self.key, self.prefix)}


@frozen
class Delete:
    key: str
    prefix: bool = False

    def encode(self) -> dict[str, Any]:
        return {"request_delete_range": _range_body(self.key, self.prefix)}


def _range_body(key: str, prefix: bool, end: bytes | None = None) -> dict[str, Any]:
    body = {"key": _b64(key)}
    if prefix or end is not None:
        body["range_end"] = _b64(end if end is not None else prefix_end(key))
    return body


def _range_result(raw: dict[str, Any]) -> RangeResult:
    return RangeResult(_int(raw.get("header", {}).get("revision")),
                       tuple(KeyValue.decode(kv) for kv in raw.get("kvs", ())), _int(raw.get("count")),
                       bool(raw.get("more")))


def _txn_response(raw: dict[str, Any]) -> Any:
    if "response_range" in raw:
        return _range_result(raw["response_range"])
    if "response_delete_range" in raw:
        return _int(raw["response_delete_range"].get("deleted"))
    return None


def _refusal(reply: Reply) -> tuple[int, str]:
    """The gRPC code and message of an error answer (0 when the body says nothing)."""
    try:
        body = reply.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return _int(body.get("code")), str(body.get("message") or body.get("error") or "")
    return 0, f"HTTP {reply.code}: {reply.body[:200].decode('utf-8', 'replace')}"


class EtcdClient:
    """etcd's KV, lease and watch services at one of `members` (base URLs, see `member_urls`), through `http` (a
    treq HTTPClient) on `clock`; every request answered within `timeout` seconds or sent to the next member."""

    def __init__(self, http: Any, clock: IReactorTime, members: Sequence[str], timeout: float = 2.0,
                 rng: random.Random | None = None) -> None:
        if not members:
            raise ValueError("an etcd client needs at least one member")
        self.http = http
        self.clock = clock
        self.members = list(members)
        self.timeout = timeout
        self.rng = rng or random.Random()
        self._current = 0  # the member that answered last: asked first

    def member(self) -> str:
        """The member asked first."""
        return self.members[self._current]

    def skip(self, member: str) -> None:
        """Ask another member first from now on (`member` failed a watch, say)."""
        if self.members[self._current] == member:
            self._current = (self._current + 1) % len(self.members)

    # One call

    def call(self, path: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """POST `body` to `path` (say "/v3/kv/range") at the first member that answers; its decoded answer."""
        return ensureDeferred(self._call(path, body))

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        failures = []
        first = self._current  # (a failing watch may move it meanwhile: `skip`)
        for i in range(len(self.members)):
            index = (first + i) % len(self.members)
            member = self.members[index]
            try:
                reply = await exchange(self.http, self.clock, "POST", member + path, timeout=self.timeout,
                                       json_body=body)
            except Unreachable as exc:
                failures.append(f"{member}: {exc}")
            else:
                if reply.code == 200:
                    self._current = index
                    answer = reply.json()
                    return answer if isinstance(answer, dict) else {}
                code, message = _refusal(reply)
                if reply.code != 503 and code not in (_UNAVAILABLE, _DEADLINE_EXCEEDED):
                    if code == _OUT_OF_RANGE and "compacted" in message:
                        raise RevisionCompacted(code, message)
                    if code == _NOT_FOUND and "lease not found" in message:
                        raise LeaseNotFound(code, message)
                    raise EtcdError(code, message or f"HTTP {reply.code}")
                failures.append(f"{member}: {message or f'HTTP {reply.code}'}")
        self._current = (first + 1) % len(self.members)  # next time, start elsewhere
        raise EtcdUnavailable("no etcd member answered: " + "; ".join(failures))

    # KV

    def range(self, key: str, prefix: bool = False, revision: int | None = None, limit: int = 0,
              end: bytes | None = None) -> Deferred[RangeResult]:
        """The key (or every key under the prefix, or every key in [key, end)), at `revision` (default: the
        latest), at most `limit` of them (0: all) in key order."""
        body = _range_body(key, prefix, end)
        if revision is not None:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        return self.call("/v3/kv/range", body).addCallback(_range_result)

    async def range_all(self, prefix: str, page: int = 1000) -> RangeResult:
        """Every key under `prefix`, read `page` keys a request, all at the revision of the first request."""
        first = await self.range(prefix, prefix=True, limit=page)
        kvs, revision, end = list(first.kvs), first.revision, prefix_end(prefix)
        more = first.more
        while more:
            after = kvs[-1].key + "\0"  # the next key after the last one read
            following = await self.range(after, revision=revision, limit=page, end=end)
            kvs.extend(following.kvs)
            more = following.more
        return RangeResult(revision, tuple(kvs), len(kvs), False)

    def put(self, key: str, value: bytes, lease: int = 0, keep_lease: bool = False) -> Deferred[int]:
        """Set `key` (with `lease`, or keeping the lease it has); the revision it made."""
        body = Put(key, value, lease, keep_lease=keep_lease).encode()["request_put"]
        return self.call("/v3/kv/put", body).addCallback(lambda answer: _int(answer["header"].get("revision")))

    def delete_range(self, key: str, prefix: bool = False) -> Deferred[tuple[int, int]]:
        """Delete the key (or every key under the prefix); (the revision after, how many were deleted)."""
        return self.call("/v3/kv/deleterange", _range_body(key, prefix)).addCallback(
            lambda answer: (_int(answer["header"].get("revision")), _int(answer.get("deleted"))))

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Get | Delete],
            failure: Sequence[Put | Get | Delete] = ()) -> Deferred[TxnResult]:
        """If every compare holds, do `success`, else `failure`, atomically; which one ran is in the result."""
        body = {"compare": [c.encode() for c in compare], "success": [op.encode() for op in success],
                "failure": [op.encode() for op in failure]}
        return self.call("/v3/kv/txn", body).addCallback(
            lambda answer: TxnResult(bool(answer.get("succeeded")), _int(answer["header"].get("revision")),
                                     tuple(_txn_response(r) for r in answer.get("responses", ()))))

    def compact(self, revision: int) -> Deferred[None]:
        """Forget every revision before `revision` (history a watch can no longer resume from)."""
        return self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True}).addCallback(
            lambda _: None)

    # Leases

    def lease_grant(self, ttl: int) -> Deferred[Lease]:
        return self.call("/v3/lease/grant", {"TTL": str(ttl)}).addCallback(
            lambda answer: Lease(_int(answer.get("ID")), _int(answer.get("TTL"))))

    def lease_keepalive(self, lease: int) -> Deferred[int]:
        """Renew the lease once (one request: the gateway ignores renewals streamed in one request); the TTL it
        has again. `LeaseNotFound` when it expired or was revoked."""
        def ttl(answer: dict[str, Any]) -> int:
            result = answer.get("result", answer)
            if "error" in answer:
                raise EtcdError(_int(answer["error"].get("grpc_code")), str(answer["error"].get("message")))
            left = _int(result.get("TTL"))
            if left <= 0:
                raise LeaseNotFound(_NOT_FOUND, f"lease {lease:x} expired or was revoked")
            return left
        return self.call("/v3/lease/keepalive", {"ID": str(lease)}).addCallback(ttl)

    def lease_revoke(self, lease: int) -> Deferred[int]:
        """End the lease and delete every key attached to it, at once; the revision after."""
        return self.call("/v3/lease/revoke", {"ID": str(lease)}).addCallback(
            lambda answer: _int(answer.get("header", {}).get("revision")))

    def lease_ttl(self, lease: int) -> Deferred[int | None]:
        """The seconds the lease has left, or None when it expired or was revoked."""
        def left(answer: dict[str, Any]) -> int | None:
            ttl = _int(answer.get("TTL"))
            return ttl if ttl >= 0 else None
        return self.call("/v3/lease/timetolive", {"ID": str(lease)}).addCallback(left)

    # Watch

    def watch(self, prefix: str, start_revision: int, on_events: Callable[[list[Event], int], None],
              on_compacted: Callable[[int], None], backoff: Backoff = Backoff(0.2, 2.0, 5.0)) -> Watch:
        """Watch every key under `prefix` from `start_revision` on (started here; see `Watch`)."""
        watch = Watch(self, prefix, start_revision, on_events, on_compacted, backoff)
        watch.start()
        return watch


class Watch:
    """One prefix watch, read from the gateway's stream of newline-delimited JSON.

    `on_events(events, revision)` gets the events of each revision in order (`revision` is the last event's); when
    the stream ends or fails, or no member answers, it is opened again (at the next member, after a backoff) from
    the revision after the last one delivered, so no event is lost or repeated. When the revision to resume from
    has been compacted the events in between are gone: the watch stops and calls `on_compacted(compact_revision)`,
    and the caller must read the whole prefix again and start a new watch after it.
    """

    def __init__(self, client: EtcdClient, prefix: str, start_revision: int,
                 on_events: Callable[[list[Event], int], None], on_compacted: Callable[[int], None],
                 backoff: Backoff) -> None:
        self.client = client
        self.prefix = prefix
        self.next_revision = start_revision  # the first revision not delivered yet
        self.on_events = on_events
        self.on_compacted = on_compacted
        self.backoff = backoff
        self.connected = False  # the stream is open and etcd confirmed the watch
        self._stopped = False
        self._attempt = 0
        self._request: Deferred[Any] | None = None
        self._streams: set[_Stream] = set()  # open streams (at most one, but a closing one may linger)
        self._retry: IDelayedCall | None = None

    def start(self) -> None:
        self._open()

    def stop(self) -> Deferred[None]:
        """Stop watching; fires once the stream's connection is closed."""
        self._stopped = True
        self.connected = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._request is not None:
            self._request.cancel()
        closing = [stream.close() for stream in list(self._streams)]
        return gatherResults(closing).addCallback(lambda _: None) if closing else succeed(None)

    def _open(self) -> None:
        self._retry = None
        if self._stopped:
            return
        member = self.client.member()
        body = {"create_request": {"key": _b64(self.prefix), "range_end": _b64(prefix_end(self.prefix)),
                                   "start_revision": str(self.next_revision), "progress_notify": True}}
        request = self.client.http.request(
            "POST", member + "/v3/watch", data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", **_REQUIRE_LEADER}, unbuffered=True)
        request.addTimeout(self.client.timeout, self.client.clock)
        self._request = request

        def answered(response: Any) -> None:
            self._request = None
            if response.code != 200:
                response.deliverBody(_Discard())
                self._failed(member, f"HTTP {response.code}")
                return
            stream = _Stream(self, member)
            self._streams.add(stream)
            stream.closed.addCallback(lambda _: self._streams.discard(stream))
            response.deliverBody(stream)

        def failed(failure: Failure) -> None:
            self._request = None
            if not self._stopped:
                self._failed(member, failure.getErrorMessage() or type(failure.value).__name__)

        request.addCallbacks(answered, failed)

    def _failed(self, member: str, why: str) -> None:
        """The stream at `member` could not be opened, or ended: open it again elsewhere, after a while."""
        was = self.connected
        self.connected = False
        if self._stopped:
            return
        self.client.skip(member)
        delay = self.backoff.delay(self._attempt, self.client.rng)
        self._attempt += 1
        if was or self._attempt == 1:
            log.warn("etcd watch of {prefix} at {member} ended ({why}); resuming from revision {revision} in "
                     "{delay:.1f} s", prefix=self.prefix, member=member, why=why, revision=self.next_revision,
                     delay=delay)
        self._retry = self.client.clock.callLater(delay, self._open)

    def _message(self, member: str, line: bytes) -> bool:
        """Handle one line of the stream; False when the stream must be given up."""
        try:
            message = json.loads(line)
        except ValueError:
            log.warn("etcd watch at {member}: not JSON: {line!r}", member=member, line=line[:200])
            return False
        if "error" in message or "result" not in message:
            error = message.get("error")
            why = error.get("message") if isinstance(error, dict) else str(error)
            log.warn("etcd watch at {member} failed: {why}", member=member, why=why)
            return False
        result = message["result"]
        if _int(result.get("compact_revision")):
            self._stopped = True
            self.connected = False
            log.warn("etcd watch of {prefix}: revision {revision} was compacted (oldest kept {oldest}); the "
                     "caller resyncs", prefix=self.prefix, revision=self.next_revision,
                     oldest=result["compact_revision"])
            self.on_compacted(_int(result["compact_revision"]))
            return False
        if result.get("canceled"):
            log.warn("etcd watch at {member} canceled: {why}", member=member, why=result.get("cancel_reason", ""))
            return False
        if result.get("created"):
            self.connected = True
            self._attempt = 0
        events = [Event(raw.get("type", "PUT").lower(), KeyValue.decode(raw["kv"]))
                  for raw in result.get("events", ())]
        if events:
            # One message holds whole revisions in order; deliver them a revision at a time.
            start = 0
            for i in range(1, len(events) + 1):
                if i == len(events) or events[i].kv.mod_revision != events[start].kv.mod_revision:
                    revision = events[start].kv.mod_revision
                    if revision >= self.next_revision:  # never twice, even if a member repeats itself
                        self.next_revision = revision + 1
                        self.on_events(events[start:i], revision)
                    start = i
        elif not result.get("created"):
            # A progress notification: every event up to its revision has been sent.
            self.next_revision = max(self.next_revision, _int(result.get("header", {}).get("revision")) + 1)
        return True


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


class _Stream(Protocol):
    """The body of one watch response, split into lines for the watch."""

    def __init__(self, watch: Watch, member: str) -> None:
        self.watch = watch
        self.member = member
        self.buffer = b""
        self.closed: Deferred[None] = Deferred()
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip() and not self.watch._message(self.member, line):
                self._done = True
                self.transport.stopProducing()  # type: ignore[union-attr]
                if not self.watch._stopped:
                    self.watch._failed(self.member, "the stream said so")
                return

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self._done:
            self._done = True
            if not self.watch._stopped:
                self.watch._failed(self.member, _why(reason))
        self.closed.callback(None)

    def close(self) -> Deferred[None]:
        if not self.closed.called:
            self._done = True
            self.transport.stopProducing()  # type: ignore[union-attr]
        return self.closed


def _why(reason: Failure | None) -> str:
    """One short line for the end of a stream (a ResponseFailed holds a list of failures: its first says it)."""
    if reason is None:
        return "closed"
    inner = getattr(reason.value, "reasons", None)
    if inner:
        reason = inner[0]
    return f"{type(reason.value).__name__}: {reason.getErrorMessage()}"
