"""A Node's resources from its description: a JSON file (docs/node.md) or the built-in demo.

A description lists the Node's attributes and its devices, sources, flows, senders and receivers in IS-04 v1.3 form,
each named by a `key` and pointing at its parent by key (`"device": "main"`, `"source": "video"`, `"flow": "video"`).
What the Node knows better than the author is filled in here: ids, `version`, the parent ids, `device_id` of flows and
senders, the deprecated `senders`/`receivers` arrays of devices, `subscription`, `caps.version` of receivers with
constraint sets, and (in `NodeModel`, once the Node listens) `href`, `api` and the manifest URLs.

IS-04 "Data Model - Identifier Mapping": ids must survive a restart, and a Device id is best made from its Node id and
a persistent index. So the Node id is a uuid5 of the seed (default: the host name), and every other id a uuid5 of the
Node id, the type and the key: renaming a label keeps ids, and two Nodes with different seeds never share one.
"""

from __future__ import annotations

import copy
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

from attrs import frozen

from nmos_ref.config import ConfigError, read_json_object
from nmos_ref.model.versions import ALL_VERSIONS
from nmos_ref.validation import Schemas, SchemaViolation

# nmos-ref's own uuid5 namespace (a random UUID fixed once): Node id = uuid5(NAMESPACE, "node:" + seed).
NAMESPACE = uuid.UUID("aadcceb8-1a4b-4ab6-a2e5-084682bba4ee")

SUB_KINDS = ("device", "source", "flow", "sender", "receiver")
HELD_VERSION = ALL_VERSIONS[-1]  # the form resources are described and held in

GROUPHINT = "urn:x-nmos:tag:grouphint/v1.0"
ASSET_MANUFACTURER = "urn:x-nmos:tag:asset:manufacturer/v1.0"
ASSET_PRODUCT = "urn:x-nmos:tag:asset:product/v1.0"
ASSET_INSTANCE = "urn:x-nmos:tag:asset:instance-id/v1.0"
ASSET_FUNCTION = "urn:x-nmos:tag:asset:function/v1.0"

RTP = "urn:x-nmos:transport:rtp"
_UNBOUND = ("urn:x-nmos:transport:mxl",)  # transports without network interfaces
MANIFEST_ROOT = "x-nmos-ref"  # the Node's own content beside /x-nmos: nmos_ref.api.node.ManifestAPI
MANIFEST_PATH = f"{MANIFEST_ROOT}/sdp/"  # + "<sender id>.sdp", below the Node's base URL

_NODE_KEYS = {"label", "description", "tags", "hostname", "caps", "services", "clocks", "interfaces"}
_TOP_KEYS = _NODE_KEYS | {"devices", "sources", "flows", "senders", "receivers"}
# Keys of a description entry that are instructions to nmos-ref, not IS-04 attributes.
_LINKS = {
    "device": {"key", "id"},
    "source": {"key", "id", "device"},
    "flow": {"key", "id", "source", "device"},
    "sender": {"key", "id", "flow", "device", "destination", "active"},
    "receiver": {"key", "id", "device"},
}
# Attributes nmos-ref derives and a description must leave out.
_DERIVED = {
    "node": {"id", "version", "href", "api"},
    "device": {"version", "node_id", "senders", "receivers"},
    "source": {"version", "device_id"},
    "flow": {"version", "source_id", "device_id"},
    "sender": {"version", "device_id", "flow_id", "subscription"},
    "receiver": {"version", "device_id", "subscription"},
}
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@frozen
class Endpoint:
    """One address and port the Node API answers on (an entry of the Node's `api.endpoints`)."""

    host: str
    port: int
    protocol: str = "http"
    authorization: bool = False  # IS-10: the Node API wants bearer tokens here (v1.3 `api.endpoints[].authorization`)

    @property
    def base(self) -> str:
        """The URL of the server root, with a trailing slash: "http://192.0.2.1:8236/"."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}/"

    def as_json(self) -> dict[str, Any]:
        # The v1.3 form; the model's downgrade drops `authorization` below v1.3.
        return {"host": self.host, "port": self.port, "protocol": self.protocol, "authorization": self.authorization}


@frozen
class Stream:
    """Where a sender's RTP stream goes, for the SDP file nmos-ref serves for it."""

    destination_ip: str
    destination_port: int


@frozen
class Built:
    """The Node's resources, v1.3 form, by type and id in description order (parents before children)."""

    node: dict[str, Any]
    resources: dict[str, dict[str, dict[str, Any]]]  # kind -> id -> data, for the SUB_KINDS
    streams: dict[str, Stream]  # sender id -> its stream, for senders whose SDP nmos-ref serves
    keys: dict[str, str]  # id -> "kind key", for messages
    # id -> {"services" or "controls": the list as described}, for those with hrefs relative to the Node's base URL
    relative: dict[str, dict[str, list[dict[str, Any]]]]


def node_id_for(seed: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"node:{seed}"))


def resource_id(node_id: str, kind: str, key: str) -> str:
    return str(uuid.uuid5(uuid.UUID(node_id), f"{kind}:{key}"))


def addressed_node(node: Mapping[str, Any], endpoints: Sequence[Endpoint], versions: Sequence[str]) -> dict[str, Any]:
    """`node` with `href` and `api` for these endpoints. IS-04 v1.1+: `api.endpoints` lists every address and port
    the Node API answers on; `href` (deprecated) is the first of them."""
    data = dict(node)
    data["href"] = endpoints[0].base if endpoints else "http://127.0.0.1/"
    data["api"] = {"versions": list(versions), "endpoints": [endpoint.as_json() for endpoint in endpoints]}
    return data


def resolved(links: Sequence[Mapping[str, Any]], endpoints: Sequence[Endpoint]) -> list[dict[str, Any]]:
    """`services` or `controls` with each relative `href` ("x-manufacturer/tally/") made absolute against the Node's
    base URL, so it follows where the Node really listens."""
    base = endpoints[0].base if endpoints else "http://127.0.0.1/"
    return [{**link, "href": base + link["href"].lstrip("/")} if _relative(link) else dict(link) for link in links]


def _relative(link: Mapping[str, Any]) -> bool:
    href = link.get("href")
    return isinstance(href, str) and "://" not in href


def manifest_href(endpoints: Sequence[Endpoint], sender_id: str) -> str:
    base = endpoints[0].base if endpoints else "http://127.0.0.1/"
    return f"{base}{MANIFEST_PATH}{sender_id}.sdp"


# --- reading a description

def load_description(path: str | Path) -> dict[str, Any]:
    """The description in a JSON file; ConfigError names the file and what is wrong (checked fully by `build`)."""
    return read_json_object(path, "Node description")


def _fail(where: str, message: str) -> NoReturn:
    raise ConfigError(f"{where}: {message}")


def build(description: Mapping[str, Any], *, seed: str, stamp: str, hostname: str | None,
          endpoints: Sequence[Endpoint], versions: Sequence[str] = ALL_VERSIONS,
          schemas: Schemas | None = None) -> Built:
    """The resources a description stands for, each checked against the v1.3 schema and the rules the AMWA tool
    checks of a Node (unique ids, clocks, interface bindings, formats, grain rates, group hints); ConfigError says
    which entry is wrong and why."""
    schemas = schemas or Schemas()
    unknown = sorted(set(description) - _TOP_KEYS)
    if unknown:
        _fail("description", f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
    node_id = node_id_for(seed)
    node: dict[str, Any] = {"id": node_id, "version": stamp, "label": description.get("label", f"Node {seed}"),
                            "description": description.get("description", ""), "tags": description.get("tags", {})}
    if hostname is not None or "hostname" in description:
        node["hostname"] = description.get("hostname", hostname)
    node.update({"href": "", "caps": description.get("caps", {}), "services": description.get("services", []),
                 "clocks": description.get("clocks", []), "interfaces": description.get("interfaces", [])})
    node = addressed_node(node, endpoints, versions)
    relative: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if isinstance(node["services"], list) and any(_relative(link) for link in node["services"]
                                                  if isinstance(link, dict)):
        relative[node_id] = {"services": copy.deepcopy(node["services"])}
        node["services"] = resolved(node["services"], endpoints)
    ids: dict[str, dict[str, str]] = {kind: {} for kind in SUB_KINDS}  # kind -> key -> id
    keys: dict[str, str] = {node_id: "node"}
    resources: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in SUB_KINDS}
    streams: dict[str, Stream] = {}

    entries: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for kind in SUB_KINDS:
        plural = kind + "s"
        items = description.get(plural, [])
        if not isinstance(items, list):
            _fail(plural, "must be a list")
        entries[kind] = []
        for index, entry in enumerate(items):
            where = f"{plural}[{index}]"
            if not isinstance(entry, dict):
                _fail(where, "must be an object")
            key = entry.get("key")
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                _fail(where, "needs a 'key': 1-64 letters, digits, '_', '.' or '-', naming it for the others "
                             "(ids are derived from it)")
            where = f"{plural}[{index}] ({key!r})"
            if key in ids[kind]:
                _fail(where, f"the key {key!r} is used by another {kind}")
            derived = sorted(set(entry) & _DERIVED[kind])
            if derived:
                _fail(where, f"{', '.join(derived)} {'is' if len(derived) == 1 else 'are'} filled in by nmos-ref; "
                             "leave it out")
            rid = entry.get("id", resource_id(node_id, kind, key))
            if not isinstance(rid, str) or not _UUID.fullmatch(rid):
                _fail(where, f"'id' must be a lower-case UUID, not {rid!r}")
            if rid in keys:
                _fail(where, f"id {rid} is already the id of {keys[rid]}")
            ids[kind][key] = rid
            keys[rid] = f"{kind} {key!r}"
            entries[kind].append((where, entry))

    def parent(where: str, entry: Mapping[str, Any], kind: str, required: bool = True) -> str | None:
        key = entry.get(kind)
        if key is None and not required:
            return None
        if key not in ids[kind]:
            _fail(where, f"'{kind}' must name one of the {kind}s by key ({', '.join(ids[kind]) or 'none'}), "
                         f"not {key!r}")
        return ids[kind][key]

    def attributes(kind: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in entry.items() if k not in _LINKS[kind]}

    def core(rid: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": rid, "version": stamp, "label": entry.get("label", entry["key"]),
                "description": entry.get("description", ""), "tags": copy.deepcopy(entry.get("tags", {}))}

    device_of: dict[str, str] = {}  # any resource id -> its device id
    for where, entry in entries["device"]:
        rid = ids["device"][entry["key"]]
        data = {**core(rid, entry), "type": "urn:x-nmos:device:generic", **attributes("device", entry)}
        data.update(node_id=node_id, senders=[], receivers=[])
        data.setdefault("controls", [])
        if isinstance(data["controls"], list) and any(_relative(link) for link in data["controls"]
                                                      if isinstance(link, dict)):
            relative[rid] = {"controls": copy.deepcopy(data["controls"])}
            data["controls"] = resolved(data["controls"], endpoints)
        resources["device"][rid] = data
    for where, entry in entries["source"]:
        rid = ids["source"][entry["key"]]
        device_id = parent(where, entry, "device")
        data = {**core(rid, entry), "caps": {}, "parents": [], "clock_name": None, **attributes("source", entry)}
        data["device_id"] = device_of[rid] = device_id  # type: ignore[assignment]
        resources["source"][rid] = data
    for where, entry in entries["flow"]:
        rid = ids["flow"][entry["key"]]
        source_id = parent(where, entry, "source")
        assert source_id is not None
        device_id = parent(where, entry, "device") if "device" in entry else device_of[source_id]
        data = {**core(rid, entry), "parents": [], **attributes("flow", entry)}
        data.update(source_id=source_id, device_id=device_id)
        device_of[rid] = device_id  # type: ignore[assignment]
        resources["flow"][rid] = data
    for where, entry in entries["sender"]:
        rid = ids["sender"][entry["key"]]
        flow_id = parent(where, entry, "flow", required=False)
        if "device" in entry or flow_id is None:
            device_id = parent(where, entry, "device")
        else:
            device_id = device_of[flow_id]
        data = {**core(rid, entry), **attributes("sender", entry)}
        data.update(flow_id=flow_id, device_id=device_id)
        data.setdefault("interface_bindings", [])
        active = entry.get("active", True)
        if not isinstance(active, bool):
            _fail(where, f"'active' must be true or false, not {active!r}")
        data["subscription"] = {"receiver_id": None, "active": active}
        if "manifest_href" not in entry:
            if not str(data.get("transport", "")).startswith(RTP) or flow_id is None:
                _fail(where, "nmos-ref makes SDP files only for RTP senders of a flow; give 'manifest_href' "
                             "(a URL, or null where the transport needs no transport file)")
            streams[rid] = _stream(where, rid, entry.get("destination"))
            data["manifest_href"] = manifest_href(endpoints, rid)
        elif "destination" in entry:
            _fail(where, "'destination' is only used for the SDP file nmos-ref makes; with your own "
                         "'manifest_href' leave it out")
        resources["sender"][rid] = data
    for where, entry in entries["receiver"]:
        rid = ids["receiver"][entry["key"]]
        data = {**core(rid, entry), **attributes("receiver", entry)}
        data["device_id"] = parent(where, entry, "device")
        data.setdefault("interface_bindings", [])
        data["subscription"] = {"sender_id": None, "active": False}
        caps = data.get("caps")
        if isinstance(caps, dict) and "constraint_sets" in caps and "version" not in caps:
            # BCP-004-01: "version" says when caps last changed; required with constraint_sets.
            data["caps"] = {**caps, "version": stamp}
        resources["receiver"][rid] = data
    for kind in ("sender", "receiver"):
        for rid, data in resources[kind].items():
            resources["device"][data["device_id"]][kind + "s"].append(rid)

    places = {rid: where for kind in SUB_KINDS for (where, entry) in entries[kind]
              for rid in [ids[kind][entry["key"]]]}
    _check_schema(schemas, "node", node, "the Node")
    for kind in SUB_KINDS:
        for rid, data in resources[kind].items():
            _check_schema(schemas, kind, data, places[rid])
    _check_rules(node, resources, places)
    return Built(node, resources, streams, keys, relative)


def _stream(where: str, rid: str, destination: Any) -> Stream:
    """The destination from the description, or a stable multicast group made from the sender id."""
    if destination is None:
        digest = hashlib.sha256(rid.encode()).digest()
        return Stream(f"239.{digest[0]}.{digest[1]}.{max(digest[2], 1)}", 5004)
    if not isinstance(destination, dict) or set(destination) - {"ip", "port"}:
        _fail(where, "'destination' must be an object with 'ip' and 'port'")
    ip, port = destination.get("ip"), destination.get("port", 5004)
    if not isinstance(ip, str) or not ip or not isinstance(port, int) or isinstance(port, bool) \
            or not 1 <= port <= 65535:
        _fail(where, f"'destination' needs an 'ip' string and a 'port' from 1 to 65535, not {destination!r}")
    return Stream(ip, port)


def _check_schema(schemas: Schemas, kind: str, data: Mapping[str, Any], where: str) -> None:
    try:
        schemas.check(HELD_VERSION, kind, data)
    except SchemaViolation as exc:
        _fail(where, f"not a valid IS-04 {HELD_VERSION} {kind}: {exc.message}")


def _rate(value: Mapping[str, Any]) -> Fraction:
    return Fraction(value["numerator"], value.get("denominator", 1))


def _check_rules(node: Mapping[str, Any], resources: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 places: Mapping[str, str]) -> None:
    """What the schemas cannot say and the AMWA tool checks of a Node (IS-04-01 test_18, 19, 23, 24, 26)."""
    clocks = [clock["name"] for clock in node["clocks"]]
    if len(set(clocks)) != len(clocks):
        _fail("clocks", "clock names must be unique")
    interfaces = [interface["name"] for interface in node["interfaces"]]
    if len(set(interfaces)) != len(interfaces):
        _fail("interfaces", "interface names must be unique")
    for rid, source in resources["source"].items():
        if source["clock_name"] is not None and source["clock_name"] not in clocks:
            _fail(places[rid], f"clock_name {source['clock_name']!r} is not one of the Node's clocks "
                               f"({', '.join(clocks) or 'none'})")
        if source["format"] in ("urn:x-nmos:format:video", "urn:x-nmos:format:mux") and "grain_rate" not in source:
            _fail(places[rid], "a video or mux source is periodic and needs a grain_rate")
    for rid, flow in resources["flow"].items():
        source = resources["source"][flow["source_id"]]
        if flow["format"] != source["format"]:
            _fail(places[rid], f"format {flow['format']} differs from its source's {source['format']}")
        if "grain_rate" in flow:
            if "grain_rate" not in source:
                _fail(places[rid], "has a grain_rate, so its source needs one too")
            if (_rate(source["grain_rate"]) / _rate(flow["grain_rate"])).denominator != 1:
                _fail(places[rid], "grain_rate must divide its source's grain_rate (IS-04 flow.json)")
    for kind in ("sender", "receiver"):
        for rid, data in resources[kind].items():
            for name in data["interface_bindings"]:
                if name not in interfaces:
                    _fail(places[rid], f"interface_bindings names {name!r}, which is not one of the Node's "
                                       f"interfaces ({', '.join(interfaces) or 'none'})")
            if not data["interface_bindings"] and not data["transport"].startswith(_UNBOUND):
                # The AMWA tool (IS-04-01 test_19) wants every sender and receiver bound to an interface.
                _fail(places[rid], "interface_bindings must name at least one of the Node's interfaces")
    _check_groups(resources, places)


def _check_groups(resources: Mapping[str, Mapping[str, Mapping[str, Any]]], places: Mapping[str, str]) -> None:
    """BCP-002-01 group hints: "<group>:<role>[:device|node]", one role per member of a group."""
    roles: dict[tuple[str, str, str], str] = {}
    for kind in ("sender", "receiver"):
        for rid, data in resources[kind].items():
            hints = data.get("tags", {}).get(GROUPHINT)
            if hints is None:
                continue
            if not isinstance(hints, list) or not hints:
                _fail(places[rid], f"the {GROUPHINT} tag must be a non-empty list")
            for hint in hints:
                parts = hint.split(":")
                if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("device", "node")):
                    _fail(places[rid], f"group hint {hint!r} is not '<group>:<role>[:device|node]' (BCP-002-01)")
                scope = data["device_id"] if len(parts) == 2 or parts[2] == "device" else "node"
                slot = (scope, parts[0], parts[1])
                if slot in roles:
                    _fail(places[rid], f"group {parts[0]!r} already has a member with role {parts[1]!r} "
                                       f"({places[roles[slot]]})")
                roles[slot] = rid


# --- the built-in demo

