"""The IS-04 Registration API, every served version at once, mounted at `/x-nmos/registration/`."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.web.iweb import IRequest

from nmos_ref.api.versioned import VersionedAPI, add_common_routes
from nmos_ref.model.store import REMOVAL_STEP, RegisterOutcome, Registry
from nmos_ref.model.tai import format_tai
from nmos_ref.model.versions import SINGULARS, TYPES
from nmos_ref.validation import Schemas
from nmos_ref.web.errors import NmosError
from nmos_ref.web.hot_routes import HotKlein
from nmos_ref.web.logs import Logger
from nmos_ref.web.responses import Encoded, empty_response, json_response, read_json, resource_location

log = Logger()


def _client(request: IRequest) -> str | None:
    """The OAuth client of the request's token, when authorization is on (set by nmos_ref.auth.guard)."""
    return getattr(request, "nmos_client_id", None)


def _address(request: IRequest) -> str:
    """The client's address, as the log names it."""
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


class RegistrationAPI(VersionedAPI):
    """Resources in, heartbeats in; the rules themselves live in the `Registry`."""

    app = HotKlein()  # registrations and heartbeats are its hot routes: every Node sends them all the time
    add_common_routes(app)
    api_name = "Registration API"
    base = ["resource/", "health/"]

    def __init__(self, registry: Registry | Any, schemas: Schemas, versions: list[str], clock: IReactorTime,
                 cooperator: Cooperator | None = None) -> None:
        # The in-memory Registry, answering at once, or a store whose writes answer Deferreds (nmos_ref.cluster).
        self.registry = registry
        self.clock = clock  # read once per request: the store is given the time as a value
        self.schemas = schemas
        self.versions = list(versions)
        # Takes the steps of a large DELETE in turns of the reactor; without one a DELETE is done in one go.
        self.cooperator = cooperator

    @app.hot_route("/<version>/resource", "POST")
    def post_resource(self, request: IRequest, version: str) -> bytes | Deferred[bytes]:
        self._version(version)
        body = read_json(request)
        kind, data = self._registration(body)
        self.schemas.check(version, kind, data)
        outcome = self.registry.register(kind, data, version, client_id=_client(request), now=self.clock.seconds())
        if isinstance(outcome, Deferred):  # a store shared through etcd (nmos_ref.cluster); in memory: at once
            return outcome.addCallback(self._registered, request, version, kind)
        return self._registered(outcome, request, version, kind)

    def _registered(self, outcome: RegisterOutcome, request: IRequest, version: str, kind: str) -> bytes:
        record = outcome.resource
        if outcome.created and kind == "node":  # a Node's first registration only: never an update or a heartbeat
            held = self.registry if isinstance(self.registry, Registry) else self.registry.replica
            log.info("Node {id} ({label}) registered at {version} from {client}; the registry holds {nodes} Nodes "
                     "and {resources} resources", id=record.id, label=record.data.get("label"), version=version,
                     client=_address(request), nodes=held.count("node"),
                     resources=sum(held.count(each) for each in TYPES))
        log.debug("{action} {kind} {id} at {version}", action="Registered" if outcome.created else "Updated",
                  kind=kind, id=record.id, version=version)
        request.setHeader(b"location", resource_location(version, kind, record.id).encode())
        # Debug header nmos-testing reads to check clock synchronisation in its paging tests.
        request.setHeader(b"x-paging-timestamp", format_tai(record.updated).encode())
        return json_response(request, 201 if outcome.created else 200, Encoded(record.json))

    @staticmethod
    def _registration(body: Any) -> tuple[str, dict[str, Any]]:
        """`{"type": ..., "data": {...}}` split up; the same verdict as registrationapi-resource-post-request.json,
        whose branches differ only in the type, with `data` then checked against that type's schema."""
        if not isinstance(body, dict):
            raise NmosError(400, "The request body does not match the schema",
                            "the body must be an object with 'type' and 'data'")
        kind = body.get("type")
        if kind not in TYPES:
            raise NmosError(400, "The request body does not match the schema",
                            f"type must be one of {', '.join(TYPES)}, not {kind!r}")
        if "data" not in body:
            raise NmosError(400, "The request body does not match the schema", "'data' is required")
        data = body["data"]
        if not isinstance(data, dict):
            raise NmosError(400, "The request body does not match the schema", "'data' must be an object")
        return kind, data

    def _kind(self, plural: str) -> str:
        kind = SINGULARS.get(plural)
        if kind is None:
            raise NmosError(404, f"No resource type {plural!r}", f"types: {', '.join(s + 's' for s in TYPES)}")
        return kind

    @app.route("/<version>/resource/<types>/<rid>", methods=["GET"], strict_slashes=False)
    def get_resource(self, request: IRequest, version: str, types: str, rid: str) -> bytes:
        self._version(version)
        kind = self._kind(types)
        record = self.registry.get(kind, rid)
        if record is None:
            raise NmosError(404, f"No {kind} {rid} is registered")
        if record.api_version != version:
            raise NmosError(409, f"{kind} {rid} is registered at {record.api_version}", None,
                            {"Location": resource_location(record.api_version, kind, rid)})
        return json_response(request, 200, Encoded(record.json))

    @app.route("/<version>/resource/<types>/<rid>", methods=["DELETE"], strict_slashes=False)
    def delete_resource(self, request: IRequest, version: str, types: str, rid: str) -> bytes | Deferred[bytes]:
        self._version(version)
        kind = self._kind(types)
        registry = self.registry
        root = registry.get(kind, rid)
        label = root.data.get("label") if root is not None and kind == "node" else None
        address = _address(request)

        def deleted(count: int) -> bytes:
            if kind == "node":
                log.info("Node {id} ({label}) deleted at {version} by {client}, and {below} resources below it",
                         id=rid, label=label, version=version, client=address, below=count - 1)
            else:
                log.debug("Deleted {kind} {id} at {version} ({count} resources removed)", kind=kind, id=rid,
                          version=version, count=count)
            return empty_response(request, 204)

        if not isinstance(registry, Registry):  # a store shared through etcd (nmos_ref.cluster): a Deferred
            removed: Deferred[Sized] = registry.delete(kind, rid, version, client_id=_client(request))
            return removed.addCallback(lambda changes: deleted(len(changes)))
        removal = registry.removal(kind, rid, version, client_id=_client(request))
        if self.cooperator is None:
            return deleted(len(removal.step(None)))
        # A Node with thousands of resources is removed REMOVAL_STEP at a time, leaves first, in turns of the
        # reactor (other Nodes' heartbeats are answered between them); the 204 comes once all of it is gone.
        counted = [len(removal.step(REMOVAL_STEP))]
        if removal.done:
            return deleted(counted[0])

        def steps() -> Iterator[None]:
            while not removal.done:
                counted[0] += len(removal.step(REMOVAL_STEP))
                yield None

        return self.cooperator.coiterate(steps()).addCallback(lambda _: deleted(counted[0]))

    @app.hot_route("/<version>/health/nodes/<rid>", "POST")
    def heartbeat(self, request: IRequest, version: str, rid: str) -> bytes | Deferred[bytes]:
        self._version(version)
        seen = self.registry.heartbeat(rid, version, client_id=_client(request), now=self.clock.seconds())
        if isinstance(seen, Deferred):
            return seen.addCallback(self._beaten, request)
        return self._beaten(seen, request)

    @staticmethod
    def _beaten(seen: float, request: IRequest) -> bytes:
        # {"health": "<seconds>"}, written out: the JSON encoder costs more than the rest of this handler.
        return json_response(request, 200, Encoded(f'{{"health":"{int(seen)}"}}'))

    @app.route("/<version>/health/nodes/<rid>", methods=["GET"], strict_slashes=False)
    def health(self, request: IRequest, version: str, rid: str) -> bytes | Deferred[bytes]:
        self._version(version)
        seen = self.registry.health(rid, version)
        if isinstance(seen, Deferred):
            return seen.addCallback(lambda at: json_response(request, 200, {"health": str(int(at))}))
        return json_response(request, 200, {"health": str(int(seen))})
