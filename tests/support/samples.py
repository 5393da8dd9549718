"""Valid IS-04 resources for each version, and an in-memory Query API to ask about them.

Each resource carries every key its version added, so that serving it at an older version has something to strip
(tests/api/test_query_resources.py proves them valid against the official schemas). Each version's resource is written
out here, not derived from a newer one, so the downgrade tests never check the code against itself. `Family`
registers a Node with one resource of each type below it; `QueryHarness` serves a registry through StubTreq.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from attrs import define
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from nmos_ref.web.root import root_resource
from nmos_ref.api.query import QueryAPI
from nmos_ref.model.query_params import Limits
from nmos_ref.model.store import Registry
from nmos_ref.model.versions import SINGULARS
from nmos_ref.wiring.listeners import listening
from tests.support.official import assert_official, official_errors

VERSIONS = ("v1.0", "v1.1", "v1.2", "v1.3")
_versions = itertools.count(1)


def new_id() -> str:
    return str(uuid.uuid4())


def tai() -> str:
    """A fresh resource `version` (later than every one handed out before)."""
    return f"1700000000:{next(_versions)}"


def at_least(version: str, minimum: str) -> bool:
    return tuple(map(int, version[1:].split("."))) >= tuple(map(int, minimum[1:].split(".")))


def node(version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": new_id(), "version": tai(), "label": "node", "hostname": "node-1.example", "href": "http://192.0.2.10/",
        "caps": {}, "services": [{"href": "http://192.0.2.10/x-manufacturer/tally/",
                                  "type": "urn:x-manufacturer:service:tally"}],
    }
    if at_least(version, "v1.1"):
        data.update(description="a node", tags={"location": ["Salford"]},
                    api={"versions": [version], "endpoints": [{"host": "192.0.2.10", "port": 80, "protocol": "http"}]},
                    clocks=[{"name": "clk0", "ref_type": "internal"},
                            {"name": "clk1", "ref_type": "ptp", "traceable": False, "version": "IEEE1588-2008",
                             "gmid": "08-00-11-ff-fe-21-e1-b0", "locked": True}])
    if at_least(version, "v1.2"):
        data["interfaces"] = [{"chassis_id": "74-26-96-db-87-31", "port_id": "74-26-96-db-87-32", "name": "eth0"}]
    if at_least(version, "v1.3"):
        data["interfaces"][0]["attached_network_device"] = {"chassis_id": "c0-ff-ee-c0-ff-ee",
                                                             "port_id": "ff-ff-ff-ff-ff-01"}
        data["api"]["endpoints"][0]["authorization"] = False
        data["services"][0]["authorization"] = False
    return {**data, **keys}


def device(node_id: str, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": new_id(), "version": tai(), "label": "device", "type": "urn:x-nmos:device:generic",
                            "node_id": node_id, "senders": [], "receivers": []}
    if at_least(version, "v1.1"):
        data.update(description="a device", tags={}, controls=[{"href": "http://192.0.2.10/x-manufacturer/control/",
                                                                "type": "urn:x-manufacturer:control:generic"}])
    if at_least(version, "v1.3"):
        data["controls"][0]["authorization"] = False
    return {**data, **keys}


def source(device_id: str, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    """A video source; `format="urn:x-nmos:format:audio"` adds channels, `format=...:data` (v1.3) an event type."""
    data: dict[str, Any] = {"id": new_id(), "version": tai(), "label": "source", "description": "a source",
                            "format": "urn:x-nmos:format:video", "caps": {}, "tags": {}, "device_id": device_id,
                            "parents": []}
    data.update(keys)
    if at_least(version, "v1.1"):
        data.setdefault("clock_name", "clk0")
        data.setdefault("grain_rate", {"numerator": 25, "denominator": 1})
        if data["format"] == "urn:x-nmos:format:audio":
            data.setdefault("channels", [{"label": "left", "symbol": "L"}, {"label": "right", "symbol": "R"}])
    if at_least(version, "v1.3") and data["format"] == "urn:x-nmos:format:data":
        data.setdefault("event_type", "boolean")
    return data


def flow(source_id: str, device_id: str, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    """A raw video flow; `format="urn:x-nmos:format:data"` makes a JSON data flow (with an event type at v1.3)."""
    data: dict[str, Any] = {"id": new_id(), "version": tai(), "label": "flow", "description": "a flow",
                            "format": "urn:x-nmos:format:video", "tags": {}, "source_id": source_id, "parents": []}
    data.update(keys)
    if at_least(version, "v1.1"):
        data["device_id"] = keys.get("device_id", device_id)
        data.setdefault("grain_rate", {"numerator": 25, "denominator": 1})
        if data["format"] == "urn:x-nmos:format:video":
            data.setdefault("media_type", "video/raw")
            for key, value in (("frame_width", 1920), ("frame_height", 1080), ("colorspace", "BT709"),
                               ("interlace_mode", "progressive"), ("transfer_characteristic", "SDR"),
                               ("components", [{"name": "Y", "width": 1920, "height": 1080, "bit_depth": 10},
                                               {"name": "Cb", "width": 960, "height": 1080, "bit_depth": 10},
                                               {"name": "Cr", "width": 960, "height": 1080, "bit_depth": 10}])):
                data.setdefault(key, value)
        elif data["format"] == "urn:x-nmos:format:data" and at_least(version, "v1.3"):
            data.setdefault("media_type", "application/json")
            data.setdefault("event_type", "boolean")
    return data


def sender(device_id: str, flow_id: str | None, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": new_id(), "version": tai(), "label": "sender", "description": "a sender",
                            "flow_id": flow_id, "transport": "urn:x-nmos:transport:rtp.mcast", "device_id": device_id,
                            "manifest_href": "http://192.0.2.10/x-manufacturer/sdp/1.sdp"}
    data["tags"] = {}  # optional at v1.0, required from v1.1
    if at_least(version, "v1.2"):
        data.update(caps={}, interface_bindings=["eth0"], subscription={"receiver_id": None, "active": False})
    return {**data, **keys}


def receiver(device_id: str, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": new_id(), "version": tai(), "label": "receiver", "description": "a receiver",
                            "format": "urn:x-nmos:format:video", "caps": {}, "tags": {}, "device_id": device_id,
                            "transport": "urn:x-nmos:transport:rtp", "subscription": {"sender_id": None}}
    if at_least(version, "v1.1"):
        data["caps"] = {"media_types": ["video/raw"]}
    if at_least(version, "v1.2"):
        data["interface_bindings"] = ["eth0"]
        data["subscription"] = {"sender_id": None, "active": False}
    return {**data, **keys}


def bump(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The same resource, changed, with a later version."""
    return {**data, **changes, "version": tai()}


@define
class Family:
    """A Node and one resource of each type below it, all at one version."""

    version: str
    node: dict[str, Any]
    device: dict[str, Any]
    source: dict[str, Any]
    flow: dict[str, Any]
    sender: dict[str, Any]
    receiver: dict[str, Any]

    @classmethod
    def build(cls, version: str = "v1.3") -> Family:
        n = node(version)
        d = device(n["id"], version)
        s = source(d["id"], version)
        f = flow(s["id"], d["id"], version)
        return cls(version, n, d, s, f, sender(d["id"], f["id"], version), receiver(d["id"], version))

    def members(self) -> list[tuple[str, dict[str, Any]]]:
        """(type, data) in registration order."""
        return [("node", self.node), ("device", self.device), ("source", self.source), ("flow", self.flow),
                ("sender", self.sender), ("receiver", self.receiver)]

    def register(self, registry: Registry, *, now: float) -> Family:
        for kind, data in self.members():
            registry.register(kind, data, self.version, now=now)
        return self


# --- an in-memory Query API

@define
class Answer:
    code: int
    headers: dict[str, str]  # lower-case names
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw)

    def links(self) -> dict[str, str]:
        """The Link header as {rel: url} (split the way nmos-testing does, at commas)."""
        found = {}
        for part in self.headers["link"].split(", "):
            target, _, rel = part.partition(">; rel=")
            found[rel.strip('"')] = target.lstrip("<")
        return found


def stub_call(stub: StubTreq, method: str, url: str, data: bytes | None = None,
              headers: dict[str, str] | None = None) -> Answer:
    """One request through StubTreq with its body read, checked for what every NMOS answer needs: no redirect, and
    CORS headers."""
    deferred = stub.request(method, url, data=data, headers=headers, allow_redirects=False)
    stub.flush()
    answers: list[Any] = []
    deferred.addCallback(lambda r: r.content().addCallback(lambda content: answers.append((r, content))))
    deferred.addErrback(answers.append)
    stub.flush()
    response, content = answers[0]
    found = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
    answer = Answer(response.code, found, content)
    assert not 300 <= answer.code < 400, "IS-04 APIs never redirect"
    assert answer.headers["access-control-allow-origin"] == "*"
    return answer


class QueryHarness:
    """A registry and its Query API in memory. The Clock stays at 0, so TAI stamps are 0:1, 0:2, ... as in the
    examples of IS-04 "APIs - Query Parameters"."""

    def __init__(self, versions: tuple[str, ...] = VERSIONS, limits: Limits = Limits(),
                 host_name: str | None = None, *, clock: Clock | None = None, registry: Registry | None = None,
                 api: QueryAPI | None = None) -> None:
        self.clock = clock or Clock()
        self.registry = registry or Registry()
        self.api = api or QueryAPI(self.registry, versions, host_name=host_name, limits=limits)
        self.stub = StubTreq(root_resource({"query": self.api.app.resource()}))

    def get(self, path: str, method: str = "GET", base: str = "http://api.example.com:8235/x-nmos/query",
            headers: dict[str, str] | None = None) -> Answer:
        """Call the API; check the CORS and content type every answer needs and, for the versioned paths, the body
        against the official schema of that version (resource, list, listing or error)."""
        answer = stub_call(self.stub, method, base + path, headers=headers)
        if method != "HEAD":
            assert answer.headers["content-type"] == "application/json"
            if method != "OPTIONS":
                check(path, answer)
        return answer

    def register(self, kind: str, data: dict[str, Any], version: str) -> dict[str, Any]:
        self.registry.register(kind, data, version, now=self.clock.seconds())
        return data


def check(path: str, answer: Answer) -> None:
    """The body is what the official schema of the path's version says it must be."""
    segments = [segment for segment in path.split("?")[0].split("/") if segment]
    if not segments or segments[0] not in VERSIONS:
        assert isinstance(answer.body, (list, dict))
        if answer.code >= 400:
            assert_official("v1.3", "error", answer.body)
        return
    version = segments[0]
    if answer.code >= 400:
        assert_official(version, "error", answer.body)
        assert answer.body["code"] == answer.code
    elif len(segments) == 1:
        assert_official(version, "queryapi-base", answer.body)
    elif segments[1] == "subscriptions":
        # the list, or one subscription (GET by id, and the answer to POST)
        assert_official(version, "queryapi-subscriptions-response" if isinstance(answer.body, list)
                        else "queryapi-subscription-response", answer.body)
    elif "query.downgrade=v" in path:
        # Resources held at the versions from query.downgrade up are served as they are: each is valid at its own.
        lowest = path.split("query.downgrade=")[1][:4]
        allowed = VERSIONS[VERSIONS.index(lowest):VERSIONS.index(version) + 1] if lowest in VERSIONS else (version,)
        kind = SINGULARS[segments[1]]
        for item in answer.body if len(segments) == 2 else [answer.body]:
            assert any(not official_errors(v, kind, item) for v in allowed), (allowed, item)
    elif len(segments) == 2:
        assert_official(version, segments[1], answer.body)
    else:
        assert_official(version, SINGULARS[segments[1]], answer.body)


async def port_of(service: Any) -> int:
    """The port a started listener (or the first listener of a started service tree) listens on."""
    listener = next(iter(service)) if hasattr(service, "__iter__") else service
    [(_, address)] = await listening([listener])
    return address.port


class OpenConnections:
    """The connections a server factory (a Site) has open; `closed()` fires once none is. For fixtures that must
    leave no socket behind: a client's closing reaches the server a reactor turn or more later."""

    def __init__(self, factory: Any) -> None:
        self.open: set[Any] = set()
        self._waiting: list[Deferred[None]] = []
        build = factory.buildProtocol

        def tracked(address: Any) -> Any:
            protocol = build(address)
            if protocol is None:
                return None
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> None:
                self.open.discard(protocol)
                lost(reason)
                if not self.open:
                    waiting, self._waiting = self._waiting, []
                    for deferred in waiting:
                        deferred.callback(None)

            protocol.connectionLost = connection_lost
            self.open.add(protocol)
            return protocol

        factory.buildProtocol = tracked

    def closed(self) -> Deferred[None]:
        if not self.open:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        return waiting
