"""The Node's live state: its resources as they are now, and how each served API version shows them.

Resources are held in IS-04 v1.3 form. A lower version is served by removing the keys that version does not know (the
registry's own downgrade table, so the Node API and the Query API agree key for key). IS-04 "Upgrade Path": a Node
serving several versions "must expose schema-valid resources at every version it serves" and may have to hide some
at older versions; here a resource is shown at a version only if its stripped form is valid there and its parents
are shown, so e.g. a v1.3-only transport is hidden at v1.0 (and never registered at it).

Every change stores a new dict with a new TAI `version` (IS-04 "APIs - Common Keys": the version changes whenever any
attribute does) and tells the listeners, which is how the registration client learns what to re-POST.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from attrs import frozen
from twisted.logger import Logger

from nmos_ref.model.downgrade import downgrade
from nmos_ref.model.jsontext import compact
from nmos_ref.model.tai import TAIClock, format_tai
from nmos_ref.model.versions import TYPES, parse_version, sort_versions
from nmos_ref.node.description import (HELD_VERSION, SUB_KINDS, Built, Endpoint, Stream, addressed_node, manifest_href,
                                       resolved)
from nmos_ref.validation import SchemaViolation, Schemas

log = Logger()


# What a resource needs shown before it can be shown (and registered): its parents, and a sender its flow (not a
# parent for the registry, but a sender of a flow a version cannot show cannot be used at that version either).
_PARENTS = {"device": ("node_id",), "source": ("device_id",), "flow": ("device_id", "source_id"),
            "sender": ("device_id", "flow_id"), "receiver": ("device_id",)}

# Keys a Node keeps at a version that did not define them. v1.0's schemas allow extra keys; BCP-002-02 puts asset
# information in Node and Device `tags` at every version, and the AMWA suite (IS-04-01 test_24, test_24_01, test_28)
# reads `grain_rate` and `tags` at v1.0 too. The registry stores what the Node registers, so the Query API serves the
# same. (The registry's own translation of newer resources still strips them, as "Upgrade Path" says.)
KEPT_AT: dict[str, dict[str, tuple[str, ...]]] = {
    "v1.0": {"node": ("tags",), "device": ("tags",), "source": ("grain_rate",), "flow": ("grain_rate",)},
}


@frozen
class ResourceAtVersion:
    """One resource as served at one API version: `data` and its JSON, or `hidden` with the reason."""

    kind: str
    id: str
    data: Mapping[str, Any] | None
    json: str
    hidden: str | None = None


class NodeModel:
    """The resources of one Node (node, devices, sources, flows, senders, receivers)."""

    def __init__(self, built: Built, tai: TAIClock, versions: Sequence[str], schemas: Schemas | None = None) -> None:
        self.tai = tai
        self.versions = sort_versions(list(versions))
        self.schemas = schemas or Schemas()
        self.streams: dict[str, Stream] = dict(built.streams)
        self._relative = built.relative  # services and controls whose hrefs follow the endpoints
        self.endpoints: tuple[Endpoint, ...] = ()
        self._data: dict[str, dict[str, dict[str, Any]]] = {"node": {built.node["id"]: built.node}}
        self._data.update({kind: dict(built.resources[kind]) for kind in SUB_KINDS})
        self._kinds = {rid: kind for kind, items in self._data.items() for rid in items}
        self._views: dict[tuple[str, str], tuple[dict[str, Any], ResourceAtVersion]] = {}
        self._listeners: list[Callable[[str, str], None]] = []

    # --- reading

    @property
    def node_id(self) -> str:
        return next(iter(self._data["node"]))

    @property
    def node(self) -> dict[str, Any]:
        return self._data["node"][self.node_id]

    def kind_of(self, rid: str) -> str | None:
        return self._kinds.get(rid)

    def get(self, kind: str, rid: str) -> dict[str, Any] | None:
        return self._data[kind].get(rid)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return list(self._data[kind].values())

    def view(self, kind: str, rid: str, version: str) -> ResourceAtVersion | None:
        """The resource at `version`; None if the Node has no such resource."""
        data = self._data[kind].get(rid)
        if data is None:
            return None
        cached = self._views.get((rid, version))
        if cached is None or cached[0] is not data:
            cached = (data, self._shape(kind, data, version))
            self._views[(rid, version)] = cached
        view = cached[1]
        if view.hidden is None:
            for key in _PARENTS.get(kind, ()):
                parent_id = data.get(key)
                parent_kind = self._kinds.get(parent_id) if isinstance(parent_id, str) else None
                if parent_kind is None:
                    continue
                parent = self.view(parent_kind, parent_id, version)
                if parent is not None and parent.hidden is not None:
                    return ResourceAtVersion(kind, rid, None, "",
                                             f"its {parent_kind} {parent_id} is hidden at {version}")
        return view

    def views(self, kind: str, version: str) -> list[ResourceAtVersion]:
        """The resources of `kind` shown at `version`."""
        found = []
        for rid in self._data[kind]:
            view = self.view(kind, rid, version)
            if view is not None and view.hidden is None:
                found.append(view)
        return found

    def registrable(self, version: str) -> Iterator[ResourceAtVersion]:
        """Everything shown at `version`, parents first (IS-04 "Behaviour - Registration", Referential Integrity)."""
        for kind in TYPES:
            yield from self.views(kind, version)

    def lowest_showing(self, kind: str, rid: str) -> str | None:
        """The lowest served version at which the resource is shown."""
        for version in self.versions:
            view = self.view(kind, rid, version)
            if view is not None and view.hidden is None:
                return version
        return None

    def _shape(self, kind: str, data: dict[str, Any], version: str) -> ResourceAtVersion:
        rid = data["id"]
        if parse_version(version)[0] != parse_version(HELD_VERSION)[0]:
            return ResourceAtVersion(kind, rid, None, "", f"no translation to {version}")
        shaped = downgrade(kind, data, HELD_VERSION, version)
        kept = KEPT_AT.get(version, {}).get(kind, ())
        if kept:
            shaped = {**shaped, **{key: data[key] for key in kept if key in data}}
        try:
            self.schemas.check(version, kind, shaped)
        except SchemaViolation as exc:
            reason = f"not valid at {version}: {exc.message}"
            log.debug("{kind} {id} is hidden at {version}: {reason}", kind=kind, id=rid, version=version,
                      reason=reason)
            return ResourceAtVersion(kind, rid, None, "", reason)
        return ResourceAtVersion(kind, rid, shaped, compact(shaped))

    # --- changing

    def subscribe(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call `listener(kind, id)` after every change; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _changed(self, kind: str, rid: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, rid)
            except Exception:
                log.failure("A listener of Node changes failed on {kind} {id}", kind=kind, id=rid)

    def _stamp(self) -> str:
        return format_tai(self.tai.stamp())

    def update(self, kind: str, rid: str, **changes: Any) -> dict[str, Any]:
        """Change attributes of a resource; it gets a new version. KeyError if there is no such resource."""
        old = self._data[kind][rid]
        new = {**old, **changes, "version": self._stamp()}
        self._data[kind][rid] = new
        log.debug("{kind} {id} changed: {keys}", kind=kind, id=rid, keys=", ".join(sorted(changes)))
        self._changed(kind, rid)
        return new

    def add(self, kind: str, data: dict[str, Any]) -> None:
        """Add a resource (v1.3 form, parents already present); a sender or receiver joins its device's list."""
        rid = data["id"]
        if rid in self._kinds:
            raise ValueError(f"id {rid} is already a {self._kinds[rid]}")
        self._data[kind][rid] = {**data, "version": self._stamp()}
        self._kinds[rid] = kind
        self._changed(kind, rid)
        if kind in ("sender", "receiver"):
            device = self._data["device"][data["device_id"]]
            self.update("device", device["id"], **{kind + "s": [*device[kind + "s"], rid]})

    def remove(self, kind: str, rid: str) -> None:
        """Remove a resource and everything below it."""
        data = self._data[kind].pop(rid)
        del self._kinds[rid]
        self.streams.pop(rid, None)
        for version in self.versions:
            self._views.pop((rid, version), None)
        self._changed(kind, rid)
        for child_kind, key in (("source", "device_id"), ("flow", "device_id"), ("flow", "source_id"),
                                ("sender", "device_id"), ("receiver", "device_id")):
            for child in [c for c in self._data[child_kind].values() if c.get(key) == rid]:
                if child["id"] in self._kinds:
                    self.remove(child_kind, child["id"])
        if kind in ("sender", "receiver"):
            device = self._data["device"].get(data["device_id"])
            if device is not None:
                self.update("device", device["id"], **{kind + "s": [i for i in device[kind + "s"] if i != rid]})

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Where the Node API now answers: the Node's `href` and `api`, and the manifest URLs nmos-ref serves."""
        self.endpoints = tuple(endpoints)
        addressed = addressed_node(self.node, self.endpoints, self.versions)
        if addressed != self.node:
            self.update("node", self.node_id, href=addressed["href"], api=addressed["api"])
        for rid, links in self._relative.items():
            kind = self._kinds.get(rid)
            if kind is None:
                continue
            changes = {key: resolved(value, self.endpoints) for key, value in links.items()}
            if any(self._data[kind][rid][key] != value for key, value in changes.items()):
                self.update(kind, rid, **changes)
        for rid in self.streams:
            href = manifest_href(self.endpoints, rid)
            if self._data["sender"][rid]["manifest_href"] != href:
                self.update("sender", rid, manifest_href=href)
