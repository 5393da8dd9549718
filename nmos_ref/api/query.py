"""The IS-04 Query API, every served version at once, mounted at `/x-nmos/query/`.

Handlers parse, ask the model and shape the answer; what a query means lives in `nmos_ref.model.query_params` (with
`matching`, `rql` and `paging`), the version tables in `nmos_ref.model.downgrade` and the indexes in
`nmos_ref.model.indexes`. docs/query.md is the user's view.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, NoReturn
from urllib.parse import unquote_to_bytes, urlsplit

from attrs import frozen
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator, TaskStopped
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from nmos_ref.api.versioned import VersionedAPI, add_common_routes
from nmos_ref.model.downgrade import Translations, affects, stripped_paths
from nmos_ref.model.errors import BadQuery, UnsupportedQuery
from nmos_ref.model.indexes import Indexes
from nmos_ref.model.paging import STAMPS, IndexTimeline, ListTimeline, Page, Paging, page
from nmos_ref.model.query_params import Limits, Query, ancestry, parse_downgrade, parse_query
from nmos_ref.model.store import Registry, Resource
from nmos_ref.model.tai import format_tai
from nmos_ref.model.versions import SINGULARS, parse_version
from nmos_ref.validation import Schemas
from nmos_ref.web.errors import NmosError
from nmos_ref.web.responses import Encoded, empty_response, json_list, json_response, read_json
from nmos_ref.web.server import check_websocket_handshake
from nmos_ref.ws.subscriptions import (DEFAULT_RATE_MS, BadSubscription, PersistenceRequired, Subscription,
                                       SubscriptionFilter, SubscriptionManager, Wanted, parse_subscription)

COLLECTIONS = ["nodes/", "sources/", "flows/", "devices/", "senders/", "receivers/", "subscriptions/"]
# A candidate set this much smaller than its collection is fetched and sorted; a larger one is answered by walking
# the collection in order and testing membership.
_SORT_RATIO = 8
LIST_SLICE = 500  # resources filtered and translated per reactor turn in a long v1.0 list


@frozen
class Param:
    """One query string parameter: decoded key and value, and the bytes it was sent as (kept for `Link`)."""

    key: str
    value: str
    raw: bytes


def query_params(request: IRequest) -> list[Param]:
    """The request's query string, in order (`+` is a space, as in HTML forms); 400 for bytes that are not UTF-8."""
    _, _, query = request.uri.partition(b"?")
    params = []
    for raw in query.split(b"&"):
        if raw:
            key, _, value = raw.partition(b"=")
            params.append(Param(_unquote(key), _unquote(value), raw))
    return params


def _unquote(raw: bytes) -> str:
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise NmosError(400, "The query string is not valid percent-encoded UTF-8",
                        raw.decode("latin-1")) from None


# Bytes kept as they are in a Link URL: RFC 3986 unreserved and reserved characters, except "," (clients, the AMWA
# tool included, split Link headers at commas) and "%" (kept only as the start of an escape).
_UNSAFE = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+;=:@/?%]|%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def wants_websocket(request: IRequest) -> bool:
    """Whether the request asks to upgrade to a WebSocket (RFC 6455: `Upgrade: websocket`)."""
    tokens = (request.getHeader(b"upgrade") or b"").split(b",")
    return any(token.strip().lower() == b"websocket" for token in tokens)


def link_safe(raw: bytes) -> str:
    return _UNSAFE.sub(lambda m: b"%%%02X" % m.group(0)[0], raw).decode("ascii")


def _refuse(exc: Exception) -> NoReturn:
    if isinstance(exc, UnsupportedQuery):
        raise NmosError(501, str(exc)) from None
    raise NmosError(400, str(exc)) from None


def _client_gone(failure: Failure) -> bytes:
    """A sliced answer stopped because its client closed the connection: nothing to send."""
    failure.trap(TaskStopped)
    return b""


class QueryAPI(VersionedAPI):
    """Read-only views of the registry, per version, filtered, paged and translated."""

    app = Klein()
    add_common_routes(app)
    api_name = "Query API"
    base = COLLECTIONS

    def __init__(self, registry: Registry, versions: Sequence[str], host_name: str | None = None,
                 limits: Limits = Limits(), schemas: Schemas | None = None, authorization: bool = False, *,
                 translations: Translations | None = None, subscriptions: SubscriptionManager | None = None,
                 websockets: IResource | None = None, cooperator: Cooperator | None = None) -> None:
        """`translations`: the served forms shared with the subscriptions (made here, fed by the registry, when
        not given). `subscriptions` and `websockets`: the WebSocket subscriptions and the resource that takes their
        sockets over (nmos_ref.wiring.registry); without them /subscriptions is an empty list and POST is a 501.
        `cooperator`: runs the long v1.0 lists a slice at a time (without one they are made in one go)."""
        self.registry = registry
        self.versions = list(versions)
        self.host_name = host_name  # for Link URLs and ws_href; default: the Host the client used
        self.limits = limits
        self.schemas = schemas or Schemas()
        self.authorization = authorization  # whether the API requires authorization (IS-10), for subscriptions
        self.indexes = Indexes(registry)
        if translations is None:
            translations = Translations()
            registry.feed.subscribe(translations.changed)
        self.translations = translations
        self.subscriptions = subscriptions
        self.websockets = websockets
        self.cooperator = cooperator

    # Resources (the listings come from add_common_routes)

    @app.route("/<version>/<collection>", methods=["GET"], strict_slashes=False)
    def list_resources(self, request: IRequest, version: str, collection: str) -> bytes | Deferred[bytes]:
        self._version(version)
        kind = self._kind(collection)
        params = query_params(request)
        try:
            query = parse_query([(p.key, p.value) for p in params], version, collection, self.limits)
        except (BadQuery, UnsupportedQuery) as exc:
            _refuse(exc)
        if self.websockets is not None and version != "v1.0" and request.method == b"GET" and \
                wants_websocket(request):
            return self._upgrade(request, version, collection, params)
        accept = self._acceptor(kind, version, query)
        candidates = self._candidates(kind, query)
        if query.ancestry is not None:
            request.setHeader(b"x-ancestry-generations", str(query.ancestry.generations).encode())
        if query.paging is None:
            if self.cooperator is not None and not self._few(kind, candidates):
                return self._unpaged_in_slices(request, kind, version, candidates, accept)
            records = self._unpaged(kind, candidates, accept)
        else:
            result = self._page(kind, query.paging, candidates, accept)
            self._paging_headers(request, params, result)
            records = result.items
        translations = self.translations
        return json_response(request, 200, json_list([translations.json(record, version) for record in records]))

    @app.route("/<version>/<collection>/<rid>", methods=["GET"], strict_slashes=False)
    def get_resource(self, request: IRequest, version: str, collection: str, rid: str) -> bytes:
        self._version(version)
        kind = self._kind(collection)
        floor = self._single_downgrade(request, version)
        record = self.registry.get(kind, rid)
        if record is None:
            raise NmosError(404, f"No {kind} {rid} is registered")
        if self._visibility(version, floor)(record.api_version):
            return json_response(request, 200, Encoded(self.translations.json(record, version)))
        held, asked = parse_version(record.api_version), parse_version(version)
        if held[0] == asked[0] and held < asked and asked >= (1, 3):
            # QueryAPI.raml v1.3: 409 "when the requested ID exists in the registry at a lower API version and a
            # query downgrade has not been requested, or the requested downgrade does not extend as far as the
            # resource's API version. The correct API version is identified via the Location header."
            raise NmosError(409, f"{kind} {rid} is registered at {record.api_version}; ask for it there or with "
                                 f"query.downgrade={record.api_version}", None,
                            {"Location": f"/x-nmos/query/{record.api_version}/{collection}/{rid}"})
        # v1.1 and v1.2 define no 409 here: the resource does not exist at this version.
        raise NmosError(404, f"No {kind} {rid} is registered at {version}",
                        f"it is registered at {record.api_version}")

    # Subscriptions (nmos_ref.ws, docs/subscriptions.md)

    @app.route("/<version>/subscriptions", methods=["GET"], strict_slashes=False)
    def list_subscriptions(self, request: IRequest, version: str) -> bytes:
        self._version(version)
        params = query_params(request)
        try:
            query = parse_query([(p.key, p.value) for p in params], version, "subscriptions", self.limits)
        except (BadQuery, UnsupportedQuery) as exc:
            _refuse(exc)
        # IS-04 "Upgrade Path": /subscriptions is never translated, so query.downgrade changes nothing here: only
        # the subscriptions made at this version are listed.
        every = self.subscriptions.listing(version) if self.subscriptions is not None else []
        found = every if query.filter is None else [item for item in every if query.filter.matches(item.as_dict())]
        if query.paging is not None:
            newest = max((item.created for item in every), default=0)
            result = page(ListTimeline(found, query.paging.order), newest, query.paging)
            self._paging_headers(request, params, result)
            found = result.items
        return json_response(request, 200, json_list(item.json for item in found))

    @app.route("/<version>/subscriptions", methods=["POST"], strict_slashes=False)
    def post_subscription(self, request: IRequest, version: str) -> bytes:
        self._version(version)
        if self.subscriptions is None:
            raise NmosError(501, "WebSocket subscriptions are not enabled on this server")
        body = read_json(request)
        self.schemas.check(version, "queryapi-subscriptions-post-request", body)
        subscription, created = self.subscriptions.subscribe(*self._wanted(request, version, body))
        # QueryAPI.raml v1.3: 201 and 200 carry "Location: /x-nmos/query/{version}/subscriptions/{id}".
        request.setHeader(b"location", _subscription_location(subscription).encode())
        return json_response(request, 201 if created else 200, Encoded(subscription.json))

    @app.route("/<version>/subscriptions/<sid>", methods=["GET"], strict_slashes=False)
    def get_subscription(self, request: IRequest, version: str, sid: str) -> bytes:
        return json_response(request, 200, Encoded(self._subscription(version, sid).json))

    @app.route("/<version>/subscriptions/<sid>", methods=["DELETE"], strict_slashes=False)
    def delete_subscription(self, request: IRequest, version: str, sid: str) -> bytes:
        subscription = self._subscription(version, sid)
        assert self.subscriptions is not None
        try:
            self.subscriptions.delete(subscription.id)
        except PersistenceRequired as exc:
            raise NmosError(403, str(exc)) from None
        return empty_response(request, 204)

    @app.route("/<version>/ws/<sid>", methods=["GET"], strict_slashes=False)
    def websocket(self, request: IRequest, version: str, sid: str) -> IResource:
        """A subscription's ws_href: Autobahn's WebSocketResource takes the connection over."""
        self._version(version)
        subscription = self.subscriptions.get(sid) if self.subscriptions is not None else None
        if subscription is None or subscription.version != version or self.websockets is None:
            raise NmosError(404, f"No subscription {sid} at {version}")
        if not wants_websocket(request):
            raise NmosError(426, "This is the WebSocket of a subscription: connect with a WebSocket client", None,
                            {"Upgrade": "websocket"})
        check_websocket_handshake(request)  # an NMOS error here, not Autobahn's bare 400
        return self.websockets

    def _upgrade(self, request: IRequest, version: str, collection: str, params: list[Param]) -> IResource:
        """GET on a list with `Upgrade: websocket`. IS-04 v1.3 "Behaviour - Querying": "Query APIs MAY additionally
        support the HTTP protocol upgrade mechanism on list resources such as /nodes ... a corresponding entry in
        /subscriptions for a non-persistent Subscription MUST also be created with matching attributes". Paging
        parameters are left out: they do not apply to sockets."""
        check_websocket_handshake(request)  # before anything is created: a refused handshake leaves nothing behind
        assert self.subscriptions is not None and self.websockets is not None
        body = {"max_update_rate_ms": DEFAULT_RATE_MS, "persist": False, "resource_path": f"/{collection}",
                "params": {p.key: p.value for p in params if not p.key.startswith("paging.")}}
        subscription, _ = self.subscriptions.subscribe(*self._wanted(request, version, body))
        # Autobahn replays the handshake from the request: point it at the subscription's own socket path.
        request.uri = urlsplit(subscription.ws_href).path.encode()
        return self.websockets

    def _wanted(self, request: IRequest, version: str, body: dict[str, Any]) -> tuple[Wanted, SubscriptionFilter]:
        try:
            return parse_subscription(body, version, request.isSecure(), self.authorization, self._authority(request))
        except UnsupportedQuery as exc:
            if version == "v1.0":  # its RAML has no 501 for POST /subscriptions
                raise NmosError(400, str(exc)) from None
            _refuse(exc)
        except (BadQuery, BadSubscription) as exc:
            raise NmosError(400, str(exc)) from None

    def _subscription(self, version: str, sid: str) -> Subscription:
        self._version(version)
        subscription = self.subscriptions.get(sid) if self.subscriptions is not None else None
        if subscription is None:
            raise NmosError(404, f"No subscription {sid}")
        if subscription.version != version:
            if parse_version(version) >= (1, 3):
                # QueryAPI.raml v1.3: 409 "when the requested Subscription ID exists in the registry at a
                # different API version. The correct API version is identified via the Location header."
                raise NmosError(409, f"Subscription {sid} was made at {subscription.version}", None,
                                {"Location": _subscription_location(subscription)})
            raise NmosError(404, f"No subscription {sid} at {version}", f"it was made at {subscription.version}")
        return subscription

    # Helpers

    @staticmethod
    def _kind(collection: str) -> str:
        kind = SINGULARS.get(collection)
        if kind is None:
            raise NmosError(404, f"No collection {collection!r}", f"collections: {', '.join(COLLECTIONS)}")
        return kind

    @staticmethod
    def _visibility(version: str, floor: str | None) -> Callable[[str], bool]:
        """Which held versions a request at `version` serves: its own and higher minors (translated), and the minors
        down to `floor` (`query.downgrade`, served as they are); never another major."""
        major, lowest = parse_version(floor or version)
        verdicts: dict[str, bool] = {}

        def visible(held: str) -> bool:
            verdict = verdicts.get(held)
            if verdict is None:
                held_major, held_minor = parse_version(held)
                verdict = verdicts[held] = held_major == major and held_minor >= lowest
            return verdict

        return visible

    def _single_downgrade(self, request: IRequest, version: str) -> str | None:
        """`query.downgrade` on a single resource (its only trait); other parameters are ignored there."""
        values = [p.value for p in query_params(request) if p.key == "query.downgrade"]
        if not values:
            return None
        if len(values) > 1:
            raise NmosError(400, "the query parameter 'query.downgrade' is given more than once")
        if version == "v1.0":
            raise NmosError(501, "query.downgrade: IS-04 v1.0 has no downgrade queries (they start at v1.1)")
        try:
            return parse_downgrade(values[0], version)
        except BadQuery as exc:
            _refuse(exc)

    def _candidates(self, kind: str, query: Query) -> set[str] | None:
        """Ids the filter and the ancestry search allow, or None for "any"."""
        found = query.filter.candidates(partial(self.indexes.lookup, kind)) if query.filter is not None else None
        if query.ancestry is not None:
            registry, indexes = self.registry, self.indexes

            def parents(rid: str) -> list[str]:
                record = registry.get(kind, rid)
                listed = record.data.get("parents") if record is not None else None
                return listed if isinstance(listed, list) else []

            related = ancestry(query.ancestry.id, query.ancestry.direction, query.ancestry.generations, parents,
                               partial(indexes.children, kind))
            found = related if found is None else related & found
        return found

    def _acceptor(self, kind: str, version: str, query: Query) -> Callable[[Resource], bool]:
        """Whether a resource of the collection belongs in the answer: served at this version, and matching the
        filter as served (keys stripped for a lower version can no longer match)."""
        visible = self._visibility(version, query.downgrade)
        expr = query.filter
        if expr is None:
            return lambda record: visible(record.api_version)
        data = partial(self.translations.data, version=version)
        if query.has_rql or not all(self.indexes.covers(term.path) for term in query.basic):
            return lambda record: visible(record.api_version) and expr.matches(data(record))
        # Only indexed basic terms: the candidates are exact for data as registered, so only resources whose
        # served form lost a queried key need another look.
        paths = [term.path for term in query.basic]
        recheck: dict[str, bool] = {}

        def accept(record: Resource) -> bool:
            held = record.api_version
            if not visible(held):
                return False
            again = recheck.get(held)
            if again is None:
                stripped = stripped_paths(kind, held, version) if held != version else ()
                again = recheck[held] = any(affects(stripped, path) for path in paths)
            return not again or expr.matches(data(record))

        return accept

    def _few(self, kind: str, candidates: set[str] | None) -> bool:
        return candidates is not None and len(candidates) * _SORT_RATIO < self.registry.count(kind)

    def _fetch(self, kind: str, candidates: set[str], accept: Callable[[Resource], bool]) -> list[Resource]:
        get = self.registry.get
        return [record for record in map(partial(get, kind), candidates) if record is not None and accept(record)]

    def _unpaged(self, kind: str, candidates: set[str] | None, accept: Callable[[Resource], bool]) \
            -> list[Resource]:
        """v1.0: every match, oldest registration first."""
        if self._few(kind, candidates):
            assert candidates is not None
            return sorted(self._fetch(kind, candidates, accept), key=lambda record: record.created)
        return [record for record in self.registry.resources(kind)
                if (candidates is None or record.id in candidates) and accept(record)]

    def _unpaged_in_slices(self, request: IRequest, kind: str, version: str, candidates: set[str] | None,
                           accept: Callable[[Resource], bool]) -> Deferred[bytes]:
        """`_unpaged`, answered: a v1.0 list, unpaged by definition, can hold every resource of its type, each
        filtered and translated (about 20 µs apiece when nothing is cached): made `LIST_SLICE` resources at a time
        so that other requests and heartbeats are served between slices. The records are the store's at the
        request (they are immutable), so the answer is one moment's collection even if the store changes meanwhile."""
        records = [record for record in self.registry.resources(kind)
                   if candidates is None or record.id in candidates]
        texts: list[str] = []
        translations = self.translations

        def work() -> Iterator[None]:
            for start in range(0, len(records), LIST_SLICE):
                texts.extend(translations.json(record, version) for record in records[start:start + LIST_SLICE]
                             if accept(record))
                yield None

        assert self.cooperator is not None
        task = self.cooperator.cooperate(work())
        request.notifyFinish().addErrback(lambda _: task.stop())  # the client went: stop working for it
        done: Deferred[bytes] = task.whenDone().addCallback(
            lambda _: json_response(request, 200, json_list(texts)))
        done.addErrback(_client_gone)
        return done

    def _page(self, kind: str, paging: Paging, candidates: set[str] | None,
              accept: Callable[[Resource], bool]) -> Page:
        newest_record = next(self.registry.index(kind, paging.order).newest_first(), None)
        newest = getattr(newest_record, STAMPS[paging.order]) if newest_record is not None else 0
        timeline: IndexTimeline | ListTimeline
        if self._few(kind, candidates):
            assert candidates is not None
            timeline = ListTimeline(self._fetch(kind, candidates, accept), paging.order)
        else:
            timeline = IndexTimeline(self.registry, kind, paging.order, accept, candidates)
        return page(timeline, newest, paging)

    def _paging_headers(self, request: IRequest, params: list[Param], result: Page) -> None:
        """X-Paging-* and Link (IS-04 "APIs - Query Parameters"): absolute URLs that keep every other parameter
        of the request as it was sent (paging.order too, so the next page keeps the same order)."""
        request.setHeader(b"x-paging-limit", str(result.limit).encode())
        request.setHeader(b"x-paging-since", format_tai(result.since).encode())
        request.setHeader(b"x-paging-until", format_tai(result.until).encode())
        base = self._base_url(request)
        kept = [link_safe(p.raw) for p in params if not p.key.startswith("paging.") or p.key == "paging.order"]
        limit = f"paging.limit={result.limit}"

        def url(*paging: str) -> str:
            return base + "?" + "&".join([*kept, *paging])

        links = (("first", url("paging.since=0:0", limit)),
                 ("prev", url(f"paging.until={format_tai(result.since)}", limit)),
                 ("next", url(f"paging.since={format_tai(result.until)}", limit)),
                 ("last", url(limit)))
        request.setHeader(b"link", ", ".join(f'<{target}>; rel="{rel}"' for rel, target in links).encode())

    def _base_url(self, request: IRequest) -> str:
        """scheme://host[:port]/path of the request, as the client addressed it."""
        scheme = "https" if request.isSecure() else "http"
        return f"{scheme}://{self._authority(request)}{link_safe(request.path)}"

    def _authority(self, request: IRequest) -> str:
        """host[:port] as the client addressed the API (`host_name`, when set, replaces the host)."""
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if _HOST.fullmatch(host) is None:
            address: Any = request.getHost()
            name = getattr(address, "host", "localhost")
            host = f"[{name}]:{address.port}" if ":" in name else f"{name}:{address.port}"
        if self.host_name is not None:
            port = host.rpartition(":")[2] if not host.endswith("]") and ":" in host else ""
            name = f"[{self.host_name}]" if ":" in self.host_name else self.host_name
            host = name + (f":{port}" if port else "")
        return host


def _subscription_location(subscription: Subscription) -> str:
    return f"/x-nmos/query/{subscription.version}/subscriptions/{subscription.id}"

