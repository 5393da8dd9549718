"""Serving a resource at an older minor API version than it was registered at: which keys to strip, and a cache.

IS-04 "Upgrade Path", Version Translations: "Query API implementations SHOULD make best efforts to remove attributes
which were not referenced in earlier versions' schemas" and "SHOULD NOT validate translated resources against
schemas". The tables below are that document's lists. A schema diff finds two more paths, `caps.media_types` (v1.1)
and `caps.event_types` (v1.3) on Receivers; they are kept, because `caps` is an open object in every version (v1.0:
"Capabilities (not yet defined)"), so older schemas accept them, and nmos-testing's `downgrade_resource` keeps them.
Nothing is ever translated across a major version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from nmos_ref.model.jsontext import compact
from nmos_ref.model.store import Change, Resource
from nmos_ref.model.versions import ALL_VERSIONS, parse_version

# Keys each minor version added, per resource type. "a.b" is key b inside object a; "a[].b" is key b inside every
# element of array a. Stripping for version X removes what every version above X added.
ADDED_IN: dict[str, dict[str, tuple[str, ...]]] = {
    "v1.1": {
        "node": ("api", "clocks", "description", "tags"),
        "device": ("controls", "description", "tags"),
        "source": ("channels", "clock_name", "grain_rate"),
        "flow": ("bit_depth", "colorspace", "components", "device_id", "DID_SDID", "frame_height", "frame_width",
                 "grain_rate", "interlace_mode", "media_type", "sample_rate", "transfer_characteristic"),
    },
    "v1.2": {
        "node": ("interfaces",),
        "sender": ("caps", "interface_bindings", "subscription"),
        "receiver": ("interface_bindings", "subscription.active"),
    },
    "v1.3": {
        "node": ("interfaces[].attached_network_device", "api.endpoints[].authorization", "services[].authorization"),
        "device": ("controls[].authorization",),
        "source": ("event_type",),
        "flow": ("event_type",),
    },
}

Path = tuple[str, ...]  # "api.endpoints[].authorization" -> ("api", "endpoints", "[]", "authorization")


def _split(path: str) -> Path:
    segments: list[str] = []
    for part in path.split("."):
        if part.endswith("[]"):
            segments += [part[:-2], "[]"]
        else:
            segments.append(part)
    return tuple(segments)


_TABLE: dict[tuple[int, int], dict[str, tuple[Path, ...]]] = {
    parse_version(version): {kind: tuple(_split(path) for path in paths) for kind, paths in kinds.items()}
    for version, kinds in ADDED_IN.items()
}


@cache
def stripped_paths(kind: str, held: str, served: str) -> tuple[Path, ...]:
    """The paths removed from a `kind` held at version `held` to serve it at the lower minor version `served`."""
    low, high = parse_version(served), parse_version(held)
    return tuple(path for version, kinds in _TABLE.items() if low < version <= high
                 and version[0] == low[0] for path in kinds.get(kind, ()))


def affects(paths: Sequence[Path], query_path: Sequence[str]) -> bool:
    """Whether stripping `paths` can change what a query on dotted `query_path` sees (array steps are implicit in
    queries: "api.endpoints.authorization" reaches "api.endpoints[].authorization")."""
    for path in paths:
        keys = [segment for segment in path if segment != "[]"]
        shorter = min(len(keys), len(query_path))
        if list(query_path[:shorter]) == keys[:shorter]:
            return True
    return False


def _without(value: Any, path: Path) -> Any:
    """`value` without `path`: a new object along the path where something was removed, else `value` itself."""
    head, rest = path[0], path[1:]
    if head == "[]":
        if not isinstance(value, list):
            return value
        items = [_without(item, rest) for item in value]
        return items if any(new is not old for new, old in zip(items, value)) else value
    if not isinstance(value, dict) or head not in value:
        return value
    if not rest:
        return {key: item for key, item in value.items() if key != head}
    inner = _without(value[head], rest)
    return value if inner is value[head] else {**value, head: inner}


@cache
def _plan(kind: str, held: str, served: str) -> tuple[frozenset[str], tuple[Path, ...]]:
    """The top-level keys to drop, and the deeper paths to strip afterwards."""
    paths = stripped_paths(kind, held, served)
    top = frozenset(path[0] for path in paths if len(path) == 1)
    return top, tuple(path for path in paths if len(path) > 1 and path[0] not in top)


def downgrade(kind: str, data: Mapping[str, Any], held: str, served: str) -> Mapping[str, Any]:
    """`data` of a `kind` held at `held`, as served at the lower minor version `served`; `data` itself when nothing
    is removed. Never mutates `data` (it is the registered JSON, shared by every reader)."""
    top, nested = _plan(kind, held, served)
    if top and not top.isdisjoint(data):
        data = {key: value for key, value in data.items() if key not in top}
    for path in nested:
        data = _without(data, path)
    return data


@cache
def _markers(kind: str, held: str, served: str) -> tuple[str, ...]:
    """Texts of which at least one is in a record's JSON if serving it at `served` removes anything: each stripped
    path's last key, as it is written before its value (compact JSON, keys as they are: none of these needs an
    escape)."""
    return tuple(f'"{path[-1]}":' for path in stripped_paths(kind, held, served))


class Translations:
    """The served form of records at lower versions than they were registered at, computed when first asked for;
    the texts of the `size` most recently computed are kept (oldest dropped first), and their data is derived
    again (a dict comprehension over the record's decoded data, which `store.DECODED` keeps for recent reads).
    A client that lists one collection again and again finds it ready; lists of more than `size` resources in
    turn are translated anew each time (about 10 µs a resource, a slice at a time: `api.query.LIST_SLICE`).

    A kept text costs about 600 bytes, so the default holds a 20,000-Sender v1.0 list for about 12 MB; the data
    would cost five times that. Records are immutable, so an entry stays valid as long as it belongs to the live
    record object; it is checked by identity on every read, and dropped from the change feed when its record is
    replaced or removed. A record that loses nothing at a version (no stripped key in its text) is served as it
    is, with no entry at all.
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._cache: dict[tuple[str, str], tuple[Resource, str]] = {}  # (id, version) -> (record, text)

    def data(self, record: Resource, version: str) -> Mapping[str, Any]:
        """The record's data as served at `version` (at or below the version it is held at)."""
        if record.api_version == version or not self._strips(record, version):
            return record.data
        return downgrade(record.kind, record.data, record.api_version, version)

    def json(self, record: Resource, version: str, keep: bool = True) -> str:
        """The record as served at `version`, encoded; `keep=False` for a record that is gone (a removal's `pre`):
        translated, but not kept."""
        if record.api_version == version or not self._strips(record, version):
            return record.json
        key = (record.id, version)
        cache = self._cache
        entry = cache.get(key)
        if entry is None or entry[0] is not record:
            held = record.data
            data = downgrade(record.kind, held, record.api_version, version)
            entry = (record, record.json if data is held else compact(data))
            if not keep:
                return entry[1]
            cache[key] = entry
            if len(cache) > self.size:
                del cache[next(iter(cache))]
        return entry[1]

    @staticmethod
    def _strips(record: Resource, version: str) -> bool:
        """Whether serving `record` at `version` may remove something (False: certainly not)."""
        text = record.json
        return any(marker in text for marker in _markers(record.kind, record.api_version, version))

    def changed(self, changes: Sequence[Change]) -> None:
        """Change feed subscriber: forget the translations of replaced and removed records."""
        cache = self._cache
        if not cache:
            return
        for change in changes:
            if change.pre is not None:
                for version in ALL_VERSIONS:
                    cache.pop((change.id, version), None)
