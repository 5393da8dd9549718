"""Attribute indexes over the registry, so common queries touch only the resources they return.

Kept current from `Registry.feed` (the store stays simple); each index maps the keys of `nmos_ref.model.matching`
(strings as they are, tag values simple-case-folded, numbers by canonical text...) to the ids of the resources with
that value anywhere at that path, so a lookup gives exactly the resources that `Equals.matches` accepts on the data
*as registered*. (A query at an older version sees data with keys stripped; the caller rechecks those resources.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from nmos_ref.model.matching import Key, fold, is_tags, leaf_key, leaves
from nmos_ref.model.store import Change, Registry, Resource
from nmos_ref.model.versions import TYPES

# Paths indexed for every type; plus every `tags.<name>`, and `id`, which the store itself answers. Not
# `description`: free text, unique to each resource, rarely queried, and its entries cost about 150 bytes of every
# stored resource (docs/memory.md); a query on it is checked on each candidate.
INDEXED: tuple[tuple[str, ...], ...] = tuple((name,) for name in (
    "label", "format", "transport", "node_id", "device_id", "source_id", "flow_id", "parents"))

_MISSING = object()
ID_PATHS = frozenset((name,) for name in ("node_id", "device_id", "source_id", "flow_id", "parents"))

# A key's ids: one id as itself (most labels belong to one resource), a tuple of up to SMALL ids (the Senders of one
# Device), or a set. A set costs 216 bytes even for two ids; a tuple of two, 56.
Bucket = dict[Key, "str | tuple[str, ...] | set[str]"]
SMALL = 8


class Indexes:
    """Ids by (type, path, key) for the paths in `INDEXED` and every tag name.

    What a record was filed under is worked out again from its data when it is unfiled, rather than remembered:
    it is the same data, and remembering would cost more memory than the rest of the index."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._paths: dict[str, dict[tuple[str, ...], Bucket]] = {kind: {} for kind in TYPES}
        for kind in TYPES:
            for record in registry.resources(kind):
                self._add(record)
        registry.feed.subscribe(self.changed)

    def covers(self, path: Sequence[str]) -> bool:
        """Whether `lookup` answers for `path`."""
        return tuple(path) in INDEXED or tuple(path) == ("id",) or (len(path) == 2 and is_tags(path))

    def lookup(self, kind: str, path: tuple[str, ...], keys: frozenset[Key]) -> set[str] | None:
        """The ids of `kind` resources with any of `keys` at `path` (as registered), or None if `path` is not
        indexed. The set returned may be the index's own: read it, never change it."""
        if path == ("id",):
            return {key for key in keys if isinstance(key, str) and self.registry.get(kind, key) is not None}
        if not self.covers(path):
            return None
        bucket = self._paths[kind].get(path)
        if bucket is None:
            return set()
        found: set[str] = set()
        for key in keys:
            ids = bucket.get(key)
            if ids is None:
                continue
            if isinstance(ids, str):
                found.add(ids)
            elif len(keys) == 1 and isinstance(ids, set):
                return ids
            else:
                found.update(ids)
        return found

    def children(self, kind: str, rid: str) -> set[str]:
        """Ids of `kind` resources that list `rid` in their `parents`."""
        bucket = self._paths[kind].get(("parents",))
        ids = bucket.get(rid) if bucket is not None else None
        return {ids} if isinstance(ids, str) else set(ids or ())

    def changed(self, changes: Sequence[Change]) -> None:
        """Change feed subscriber."""
        for change in changes:
            if change.pre is not None:
                self._remove(change.pre)
            if change.post is not None:
                self._add(change.post)

    def _add(self, record: Resource) -> None:
        rid = record.id
        for bucket, key, path_is_id in self._places(record, True):
            ids = bucket.get(key)
            if ids is None:
                if path_is_id:
                    # An id of another resource (a parent, a Flow): filed under that resource's own string, not
                    # the copy in this record's data, which would stay alive as the key.
                    named = self.registry.find(key)
                    key = named.id if named is not None else key
                bucket[key] = rid
            elif isinstance(ids, str):
                if ids != rid:
                    bucket[key] = (ids, rid)
            elif isinstance(ids, tuple):
                if rid not in ids:
                    bucket[key] = (*ids, rid) if len(ids) < SMALL else {*ids, rid}
            else:
                ids.add(rid)

    def _remove(self, record: Resource) -> None:
        rid = record.id
        for bucket, key, _ in self._places(record, False):
            ids = bucket.get(key)
            if ids is None:
                continue
            if isinstance(ids, str):
                if ids == rid:
                    del bucket[key]
                continue
            if rid not in ids:
                continue
            if isinstance(ids, set):
                ids.discard(rid)
                if len(ids) <= SMALL:
                    bucket[key] = tuple(ids)
            else:
                rest = tuple(other for other in ids if other != rid)
                bucket[key] = rest[0] if len(rest) == 1 else rest

    def _places(self, record: Resource, adding: bool) -> list[tuple[Bucket, Key, bool]]:
        """(bucket, key, whether the path holds ids) of every place `record` is filed at (`adding`: making the
        buckets it needs). Every indexed path is one key deep (a tag is one key inside `tags`), so its leaves are
        the value itself or, for an array, its items (`matching.leaves` for anything nested deeper)."""
        paths = self._paths[record.kind]
        data = record.data
        places: list[tuple[Bucket, Key, bool]] = []
        for path, value, folded in self._values(data):
            bucket = paths.get(path)
            if bucket is None:
                if not adding:
                    continue
                bucket = paths[path] = {}
            holds_ids = path in ID_PATHS
            if isinstance(value, str):  # the common case: a label, a format, an id
                places.append((bucket, fold(value) if folded else value, holds_ids))
                continue
            items = leaves(value, ()) if isinstance(value, list) else (value,)
            for leaf in items:
                key = leaf_key(leaf, folded)
                if key is not None:
                    places.append((bucket, key, holds_ids and isinstance(key, str)))
        return places

    @staticmethod
    def _values(data: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], Any, bool]]:
        """(path, value there, whether keys are case-folded) for each indexed path `data` has."""
        for path in INDEXED:
            value = data.get(path[0], _MISSING)
            if value is not _MISSING:
                yield path, value, False
        tags = data.get("tags")
        if isinstance(tags, dict):
            for name, value in tags.items():
                yield ("tags", name), value, True
