"""Query API WebSocket subscriptions without the sockets: what a client may ask for, what each subscription sees,
the grains it is sent and when (rate limit, batching, backlog), and when a subscription goes away.

Sources: IS-04 v1.3 "Behaviour - Querying" (Subscriptions, WebSocket Messages), QueryAPI.raml and the
`queryapi-subscriptions-*` schemas of v1.0-v1.3, ../shared/docs/spec-notes.md §5. docs/subscriptions.md is the
user's view. Time comes from an injected clock, and the pauses between slices of work from an injected scheduler
(both the reactor in service). A socket is anything with `send`, `close` and `drop`: `nmos_ref.ws.protocol` in
service, a fake in unit tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from attrs import define, field, frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from nmos_ref.model.downgrade import Translations
from nmos_ref.model.errors import ModelError, UnsupportedQuery
from nmos_ref.model.jsontext import BadJSON, compact, servable
from nmos_ref.model.matching import Expr
from nmos_ref.model.query_params import parse_query
from nmos_ref.model.store import Change, Registry, Resource
from nmos_ref.model.tai import format_tai
from nmos_ref.model.versions import parse_version
from nmos_ref.ws.connection import Connection, Socket
from nmos_ref.ws.limits import SubscriptionLimits
from nmos_ref.ws.snapshot import Snapshot

log = Logger()

# The resource paths of every version's post-request schema, and the type each holds.
RESOURCE_PATHS = {"/nodes": "node", "/devices": "device", "/sources": "source", "/flows": "flow",
                  "/senders": "sender", "/receivers": "receiver"}
WS_PATH = "/x-nmos/query/{version}/ws/{id}"  # where ws_href points, on the Query API's own port
DEFAULT_RATE_MS = 100  # the schemas' default max_update_rate_ms (used for HTTP Upgrade, which has no body)
MAX_RATE_MS = 86_400_000  # a longer minimum interval between grains is surely a mistake (docs/subscriptions.md)
SECURE_FROM = (1, 1)  # `secure` is defined from v1.1 ...
AUTHORIZATION_FROM = (1, 3)  # ... and `authorization` from v1.3; below, the schemas allow any key and they mean nothing


class BadSubscription(ModelError):
    """A subscription this server cannot provide as asked (400)."""


class PersistenceRequired(ModelError):
    """DELETE of a non-persistent subscription (403: IS-04 "Behaviour - Querying": the Query API "MUST NOT
    acknowledge HTTP DELETE requests for Subscriptions running in this non-persistent mode")."""


# --- what a client asks for

@frozen
class Wanted:
    """The attributes of a subscription, defaults filled in; equal ones are the same subscription."""

    version: str
    resource_path: str
    params: Mapping[str, Any]  # exactly as posted
    max_update_rate_ms: int
    persist: bool
    secure: bool  # wss:// (from v1.1 shown and settable; always the API's own scheme)
    authorization: bool  # the socket needs a token (from v1.3 shown and settable; always the API's own mode)
    host: str  # host[:port] the client addressed: ws_href names it, and only a request there reuses it

    def key(self) -> tuple[Any, ...]:
        return (self.version, self.resource_path, json.dumps(self.params, sort_keys=True), self.max_update_rate_ms,
                self.persist, self.secure, self.authorization, self.host)


def parse_subscription(body: Mapping[str, Any], version: str, served_securely: bool, authorization_mode: bool,
                       host: str) -> tuple[Wanted, SubscriptionFilter]:
    """A POST /subscriptions body that already matches the version's schema, as a subscription and its view.

    IS-04 v1.3 "Behaviour - Querying": `secure` defaults to false under HTTP and true under HTTPS, and "Query API
    clients MAY specify the opposite value ... however they will receive a 400 (Bad Request) response code unless
    the Query API explicitly supports a mismatch" (this one does not: sockets share the API's port, so its scheme);
    `authorization` likewise follows the API's own mode. `BadSubscription` is a 400, `UnsupportedQuery` a 501.
    """
    number = parse_version(version)
    rate = body["max_update_rate_ms"]
    if not 0 <= rate <= MAX_RATE_MS:
        raise BadSubscription(f"max_update_rate_ms must be 0 to {MAX_RATE_MS} (a day), not {rate}")
    secure = body.get("secure", served_securely) if number >= SECURE_FROM else served_securely
    if secure != served_securely:
        scheme, other = ("https", "wss") if served_securely else ("http", "ws")
        raise BadSubscription(f"secure={json.dumps(secure)} is not available here: this Query API is served over "
                              f"{scheme}, and its WebSockets share its port, so they are {other}://")
    authorization = body.get("authorization", authorization_mode) if number >= AUTHORIZATION_FROM \
        else authorization_mode
    if authorization != authorization_mode:
        raise BadSubscription(f"authorization={json.dumps(authorization)} is not available here: this Query API "
                              f"{'requires' if authorization_mode else 'does not use'} authorization")
    wanted = Wanted(version, body["resource_path"], body["params"], rate, body["persist"], secure, authorization,
                    host)
    return wanted, SubscriptionFilter.of(wanted)


@cache
def _minor_version(text: str) -> tuple[int, int]:
    return parse_version(text)


@frozen
class SubscriptionFilter:
    """What a subscription sees: resources of one type held at the versions it serves (its own and higher minors,
    down to `query.downgrade`), that match its filter as served at its version (keys stripped for an older version
    can no longer match) - the same rule as the HTTP lists of `nmos_ref.api.query`."""

    kind: str
    version: str
    lowest: tuple[int, int]
    filter: Expr | None

    @classmethod
    def of(cls, wanted: Wanted) -> SubscriptionFilter:
        """The view `params` ask for: basic query keys, `query.rql` and `query.downgrade`, as for GET (IS-04 v1.3
        "Behaviour - Querying": "As for the HTTP API endpoints, a 501 ... indicates that the requested query
        parameters are not supported")."""
        pairs = []
        for key, value in wanted.params.items():
            if isinstance(value, str):
                text = value
            elif value is None or isinstance(value, (bool, int, float)):
                text = json.dumps(value)  # as it would be written in a query string: true, 1920, null
            else:
                raise BadSubscription(f"params.{key} must be a string, number, boolean or null (name nested "
                                      f"attributes with dots, e.g. tags.location)")
            if key.startswith("paging."):
                raise BadSubscription(f"params.{key}: paging does not apply to WebSocket subscriptions")
            if key.startswith("query.ancestry_"):
                raise UnsupportedQuery(f"params.{key}: ancestry queries are not supported on subscriptions")
            pairs.append((key, text))
        query = parse_query(pairs, wanted.version, wanted.resource_path[1:])
        return cls(RESOURCE_PATHS[wanted.resource_path], wanted.version,
                   _minor_version(query.downgrade or wanted.version), query.filter)

    def visible(self, held: str) -> bool:
        major, minor = _minor_version(held)
        return major == self.lowest[0] and minor >= self.lowest[1]

    def matches(self, data: Mapping[str, Any]) -> bool:
        return self.filter is None or self.filter.matches(data)


# --- messages

def event_json(rid: str, pre: str | None, post: str | None) -> str:
    """One entry of a grain's `data`: only `post` is added, only `pre` removed, both modified (or, equal, sync)."""
    parts = ['{"path":', compact(rid)]
    if pre is not None:
        parts += [',"pre":', pre]
    if post is not None:
        parts += [',"post":', post]
    parts.append("}")
    return "".join(parts)


def grain_json(source_id: str, flow_id: str, topic: str, stamp: str, events: Sequence[str]) -> str:
    """A data Grain (`queryapi-subscriptions-websocket.json`, the same in every version) around encoded events.
    IS-04 "Behaviour - Querying": the three timestamps "MAY be identical"; here all are when the grain was made."""
    head, tail = grain_envelope(source_id, flow_id, topic, stamp)
    return f'{head}{",".join(events)}{tail}'


def grain_envelope(source_id: str, flow_id: str, topic: str, stamp: str) -> tuple[str, str]:
    """What goes before and after the comma-joined events of a grain (`grain_json`), so that encoded events can be
    wrapped without being copied into a new list or decoded."""
    return (f'{{"grain_type":"event","source_id":"{source_id}","flow_id":"{flow_id}",'
            f'"origin_timestamp":"{stamp}","sync_timestamp":"{stamp}","creation_timestamp":"{stamp}",'
            f'"rate":{{"numerator":0,"denominator":1}},"duration":{{"numerator":0,"denominator":1}},'
            f'"grain":{{"type":"urn:x-nmos:format:data.event","topic":"{topic}/","data":['), "]}}"


# --- subscriptions

@define(eq=False)
class Subscription:
    """One entry of /subscriptions and the sockets connected to it."""

    id: str
    wanted: Wanted
    view: SubscriptionFilter
    ws_href: str
    created: int  # TAI ns from the registry's stamps, for paging (a subscription never changes: updated = created)
    connections: set[Connection] = field(factory=set)
    expiry: IDelayedCall | None = None
    snapshot: Snapshot[Resource] | None = None  # the initial state new sockets may share, while it is current
    json: str = field(init=False)  # as /subscriptions serves it; BadJSON at creation if it cannot be

    def __attrs_post_init__(self) -> None:
        self.json = servable(self.as_dict())

    @property
    def version(self) -> str:
        return self.wanted.version

    @property
    def updated(self) -> int:
        return self.created

    def as_dict(self) -> dict[str, Any]:
        """As served at its version (`queryapi-subscription-response.json`)."""
        wanted = self.wanted
        body: dict[str, Any] = {"id": self.id, "ws_href": self.ws_href, "max_update_rate_ms": wanted.max_update_rate_ms,
                                "persist": wanted.persist}
        number = parse_version(wanted.version)
        if number >= SECURE_FROM:
            body["secure"] = wanted.secure
        if number >= AUTHORIZATION_FROM:
            body["authorization"] = wanted.authorization
        body["resource_path"] = wanted.resource_path
        body["params"] = wanted.params
        return body


def ws_href(wanted: Wanted, sid: str) -> str:
    return f"{'wss' if wanted.secure else 'ws'}://{wanted.host}{WS_PATH.format(version=wanted.version, id=sid)}"


class SubscriptionManager:
    """Every subscription of the Query API, and the events the registry's changes make for their sockets.

    Non-persistent subscriptions go `limits.grace` seconds after their last socket closes, or after they were
    created or last returned by a POST if no socket has connected since (IS-04: the Query API "MAY remove any
    Subscriptions with persist set to false that no longer have WebSocket connections"); persistent ones stay until
    DELETE, which closes their sockets ("they SHOULD be forcibly closed by the server").
    """

    def __init__(self, registry: Registry, clock: IReactorTime, translations: Translations,
                 scheduler: IReactorTime | None = None, source_id: str | None = None,
                 limits: SubscriptionLimits = SubscriptionLimits()) -> None:
        self.registry = registry
        self.clock = clock
        self.scheduler = scheduler or clock
        self.translations = translations
        # IS-04: "the source_id in each message identifies the Query API instance"; one per manager, so per process.
        self.source_id = source_id or str(uuid.uuid4())
        self.limits = limits
        self._subscriptions: dict[str, Subscription] = {}  # in creation order
        self._by_key: dict[tuple[Any, ...], Subscription] = {}
        # type -> view -> the subscriptions with sockets that see it: each change is matched once per view
        self._watching: dict[str, dict[SubscriptionFilter, set[Subscription]]] = {}
        self.running = True  # False once stopped: no expiry timers are left behind
        self.dropped = 0  # sockets closed because their client stopped reading (backlog over the limit)
        registry.feed.subscribe(self._changed)

    def stats(self) -> tuple[int, int, int]:
        """(subscriptions, open sockets, bytes of events waiting in the sockets' backlogs), for /metrics."""
        sockets = backlog = 0
        for subscription in self._subscriptions.values():
            for connection in subscription.connections:
                sockets += 1
                backlog += connection.backlog
        return len(self._subscriptions), sockets, backlog

    # The HTTP side

    def subscribe(self, wanted: Wanted, view: SubscriptionFilter) -> tuple[Subscription, bool]:
        """The subscription for `wanted` and whether it is new. IS-04: "the Query API MAY return an existing
        Subscription to the user, if it matches the requested attributes" - this one does, when every attribute and
        the host the client used are the same, which also restarts a non-persistent one's grace period."""
        found = self._by_key.get(wanted.key())
        if found is not None:
            self._arm(found)
            return found, False
        sid = str(uuid.uuid4())
        try:  # never keep one that /subscriptions cannot list
            subscription = Subscription(sid, wanted, view, ws_href(wanted, sid),
                                        self.registry.tai.stamp(self.clock.seconds()))
        except BadJSON as exc:
            raise BadSubscription(f"the subscription cannot be stored: {exc}") from None
        self._subscriptions[sid] = subscription
        self._by_key[wanted.key()] = subscription
        self._arm(subscription)
        log.info("Subscription {id} created: {path} at {version} with {params}, {persist}", id=sid,
                 path=wanted.resource_path, version=wanted.version, params=json.dumps(wanted.params),
                 persist="persistent" if wanted.persist else "non-persistent")
        return subscription, True

    def get(self, sid: str) -> Subscription | None:
        return self._subscriptions.get(sid)

    def listing(self, version: str) -> list[Subscription]:
        """The subscriptions made at `version`, oldest first (IS-04 "Upgrade Path": /subscriptions lists only the
        request's version and is never translated)."""
        return [subscription for subscription in self._subscriptions.values() if subscription.version == version]

    def delete(self, sid: str) -> None:
        """Remove a persistent subscription and close its sockets; `PersistenceRequired` for a non-persistent one."""
        subscription = self._subscriptions[sid]
        if not subscription.wanted.persist:
            raise PersistenceRequired(f"subscription {sid} is not persistent: the Query API removes it once no "
                                      f"WebSocket uses it, and it cannot be deleted")
        self._remove(subscription)
        for connection in list(subscription.connections):
            connection.end(1000, "subscription deleted")
        log.info("Subscription {id} deleted; {count} socket(s) closed", id=sid,
                 count=len(subscription.connections))

    def _remove(self, subscription: Subscription) -> None:
        del self._subscriptions[subscription.id]
        del self._by_key[subscription.wanted.key()]
        self._unwatch(subscription)
        self._disarm(subscription)

    # Expiry

    def _arm(self, subscription: Subscription) -> None:
        """(Re)start the grace period of a non-persistent subscription without sockets."""
        self._disarm(subscription)
        if self.running and not subscription.wanted.persist and not subscription.connections:
            subscription.expiry = self.clock.callLater(self.limits.grace, self._expire, subscription)

    @staticmethod
    def _disarm(subscription: Subscription) -> None:
        if subscription.expiry is not None and subscription.expiry.active():
            subscription.expiry.cancel()
        subscription.expiry = None

    def _expire(self, subscription: Subscription) -> None:
        subscription.expiry = None
        if self._subscriptions.get(subscription.id) is subscription:
            self._remove(subscription)
            log.info("Subscription {id} removed: no WebSocket for {grace} s", id=subscription.id,
                     grace=self.limits.grace)

    # The socket side

    def connect(self, sid: str, socket: Socket) -> Connection | None:
        """A socket opened on a subscription's ws_href: it is sent the current state, then every change."""
        subscription = self._subscriptions.get(sid)
        if subscription is None:
            return None
        view, registry = subscription.view, self.registry
        snapshot = subscription.snapshot
        if snapshot is None or not snapshot.joinable:
            # The state now: records never change, so later changes are queued behind this snapshot in order. Sockets
            # that connect before the subscription's next change share it, and its encoding.
            def encode(record: Resource) -> str | None:
                return self._sync_event(view, record, registry.find(record.id) is record)

            snapshot = subscription.snapshot = Snapshot(list(registry.resources(view.kind)), encode, self.scheduler,
                                                        self.limits)
        topic = subscription.wanted.resource_path
        tai, source_id, clock = registry.tai, self.source_id, self.clock

        def make_grain(data: bytes) -> bytes:
            head, tail = grain_envelope(source_id, sid, topic, format_tai(tai.now(clock.seconds())))
            return b"".join((head.encode("utf-8"), data, tail.encode("utf-8")))

        connection = Connection(sid, socket, self.clock, self.scheduler, subscription.wanted.max_update_rate_ms / 1000,
                                make_grain, snapshot, self.limits)
        subscription.connections.add(connection)
        self._watching.setdefault(view.kind, {}).setdefault(view, set()).add(subscription)
        self._disarm(subscription)
        connection.start()
        return connection

    def disconnect(self, connection: Connection) -> None:
        """A socket closed."""
        connection.lost()
        if connection.overflowed:
            self.dropped += 1
        subscription = self._subscriptions.get(connection.name)
        if subscription is None or connection not in subscription.connections:
            return
        subscription.connections.discard(connection)
        if not subscription.connections:
            self._unwatch(subscription)
            self._arm(subscription)

    def _unwatch(self, subscription: Subscription) -> None:
        view = subscription.view
        views = self._watching.get(view.kind, {})
        watchers = views.get(view, set())
        watchers.discard(subscription)
        if not watchers:
            views.pop(view, None)
            if not views:
                self._watching.pop(view.kind, None)

    def start(self) -> None:
        """(Re)start the grace periods that `stop` cancelled."""
        self.running = True
        for subscription in self._subscriptions.values():
            self._arm(subscription)

    def stop(self) -> None:
        """Shutting down: no more expiry timers, and every socket asked to close."""
        self.running = False
        for subscription in self._subscriptions.values():
            self._disarm(subscription)
            for connection in list(subscription.connections):
                connection.end(1000, "the Query API is shutting down")

    # The registry side

    def _changed(self, changes: Sequence[Change]) -> None:
        """Change feed subscriber: each change as an event to every socket whose view it touches."""
        watching = self._watching
        if not watching:
            return
        batches: dict[Subscription, list[tuple[str, str]]] = {}
        for change in changes:
            for view, watchers in watching.get(change.kind, {}).items():
                event = self._change_event(view, change)
                if event is None:
                    continue
                entry = (change.id, event)
                for subscription in watchers:
                    batch = batches.get(subscription)
                    if batch is None:
                        batches[subscription] = [entry]
                    else:
                        batch.append(entry)
        for subscription, events in batches.items():
            if subscription.snapshot is not None:  # no longer the state now: a socket that connects needs a new one
                subscription.snapshot.stale()
                subscription.snapshot = None
            for connection in list(subscription.connections):
                connection.push(events)

    def _change_event(self, view: SubscriptionFilter, change: Change) -> str | None:
        """IS-04 "Behaviour - Querying": a resource that starts matching is added, one that stops is removed."""
        record = change.post if change.post is not None else change.pre
        assert record is not None
        if not view.visible(record.api_version):  # the same for pre and post: a resource keeps its version
            return None
        pre = self._served(view, change.pre, live=False) if change.pre is not None else None
        post = self._served(view, change.post, live=True) if change.post is not None else None
        if pre is None and post is None:
            return None
        return event_json(change.id, pre, post)

    def _sync_event(self, view: SubscriptionFilter, record: Resource, live: bool) -> str | None:
        if not view.visible(record.api_version):
            return None
        served = self._served(view, record, live)
        return event_json(record.id, served, served) if served is not None else None

    def _served(self, view: SubscriptionFilter, record: Resource, live: bool) -> str | None:
        """The record's JSON as `view` serves it, or None if it does not match. Only live records are kept in the
        shared translation cache: one that is gone would only take the place of one that may be asked for again."""
        if _minor_version(record.api_version) <= _minor_version(view.version):
            # Its own version, or a lower one asked for by query.downgrade: as is (decoded only to be filtered).
            return record.json if view.filter is None or view.filter.matches(record.data) else None
        if view.filter is not None and not view.filter.matches(self.translations.data(record, view.version)):
            return None
        return self.translations.json(record, view.version, keep=live)
