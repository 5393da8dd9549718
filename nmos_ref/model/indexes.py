"""Attribute indexes over the registry, so common queries touch only the resources they return.

Kept current from `Registry.feed` (the store stays simple); each index maps the keys of `nmos_ref.model.matching`
(strings as they are, tag values simple-case-folded, numbers by canonical text...) to the ids of the resources with
that value anywhere at that path, so a lookup gives exactly the resources that `Equals.matches` accepts on the data
*as registered*. (A query at an older version sees data with keys stripped; the caller rechecks those resources.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nmos_ref.model.matching import Key, is_tags, leaf_key, leaves
from nmos_ref.model.store import Change, Registry, Resource
from nmos_ref.model.versions import TYPES

# Paths indexed for every type; plus every `tags.<name>`, and `id`, which the store itself answers.
INDEXED: tuple[tuple[str, ...], ...] = tuple((name,) for name in (
    "label", "description", "format", "transport", "node_id", "device_id", "source_id", "flow_id", "parents"))

Bucket = dict[Key, set[str]]


class Indexes:
    """Ids by (type, path, key) for the paths in `INDEXED` and every tag name."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._paths: dict[str, dict[tuple[str, ...], Bucket]] = {kind: {} for kind in TYPES}
        self._entries: dict[str, list[tuple[Bucket, Key]]] = {}  # id -> where it is filed, to unfile it
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
        if len(keys) == 1:
            (key,) = keys
            return bucket.get(key) or set()
        found: set[str] = set()
        for key in keys:
            found.update(bucket.get(key, ()))
        return found

    def children(self, kind: str, rid: str) -> set[str]:
        """Ids of `kind` resources that list `rid` in their `parents`."""
        bucket = self._paths[kind].get(("parents",))
        return (bucket.get(rid) if bucket is not None else None) or set()

    def changed(self, changes: Sequence[Change]) -> None:
        """Change feed subscriber."""
        for change in changes:
            if change.pre is not None:
                self._remove(change.id)
            if change.post is not None:
                self._add(change.post)

    def _add(self, record: Resource) -> None:
        paths = self._paths[record.kind]
        filed: list[tuple[Bucket, Key]] = []
        data = record.data
        for path in INDEXED:
            if path[0] in data:
                self._file(paths, path, data, record.id, filed, False)
        tags = data.get("tags")
        if isinstance(tags, dict):
            for name in tags:
                self._file(paths, ("tags", name), data, record.id, filed, True)
        self._entries[record.id] = filed

    @staticmethod
    def _file(paths: dict[tuple[str, ...], Bucket], path: tuple[str, ...], data: Any, rid: str,
              filed: list[tuple[Bucket, Key]], folded: bool) -> None:
        bucket = paths.get(path)
        if bucket is None:
            bucket = paths[path] = {}
        for leaf in leaves(data, path):
            key = leaf_key(leaf, folded)
            if key is None:
                continue
            ids = bucket.get(key)
            if ids is None:
                ids = bucket[key] = set()
            if rid not in ids:
                ids.add(rid)
                filed.append((bucket, key))

    def _remove(self, rid: str) -> None:
        for bucket, key in self._entries.pop(rid, ()):
            ids = bucket.get(key)
            if ids is not None:
                ids.discard(rid)
                if not ids:
                    del bucket[key]
