"""The attribute indexes answer exactly what a scan with the matcher would, and follow every change of the store."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmos_ref.model.indexes import INDEXED, SMALL, Indexes
from nmos_ref.model.matching import Equals, is_tags, text_keys
from nmos_ref.model.store import Registry
from tests.support.cases import UnitTest
from tests.support.samples import Family, bump, flow, source


def scan(registry: Registry, kind: str, path: tuple[str, ...], value: str) -> set[str]:
    term = Equals(path, text_keys(value, is_tags(path)))
    return {record.id for record in registry.resources(kind) if term.matches(record.data)}


def lookup(indexes: Indexes, kind: str, path: tuple[str, ...], value: str) -> set[str] | None:
    return indexes.lookup(kind, path, text_keys(value, is_tags(path)))


# Values that collide in interesting ways: numbers and their text, booleans, null, case.
VALUES = st.sampled_from(["a", "A", "b", "1", "1.0", "true", "null", "", "ẞ", "ß", "Salford"])
LEAVES = st.one_of(VALUES, st.integers(-2, 2), st.sampled_from([1.0, 1.5]), st.booleans(), st.none())
TREE = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.sampled_from(["a", "b"]), inner,
                                                                    max_size=2)), max_leaves=6)


NOW = 1_760_000_000.0  # Unix time for every registration: these tests are not about time


class IndexesTests(UnitTest):
    def test_indexes_follow_registration_update_and_removal(self) -> None:
        registry = Registry()
        first = Family.build("v1.3").register(registry, now=NOW)
        indexes = Indexes(registry)  # built from what is already registered
        second = Family.build("v1.2").register(registry, now=NOW)  # then kept current from the feed
        assert lookup(indexes, "flow", ("source_id",), first.source["id"]) == {first.flow["id"]}
        assert lookup(indexes, "sender", ("transport",), "urn:x-nmos:transport:rtp.mcast") == {first.sender["id"],
                                                                                            second.sender["id"]}
        assert lookup(indexes, "node", ("tags", "location"), "SALFORD") == {first.node["id"], second.node["id"]}
        assert lookup(indexes, "node", ("id",), first.node["id"]) == {first.node["id"]}
        assert lookup(indexes, "device", ("id",), first.node["id"]) == set()  # ids are per type

        registry.register("node", bump(first.node, label="renamed", tags={"location": ["London"]}), "v1.3", now=NOW)
        assert lookup(indexes, "node", ("label",), "renamed") == {first.node["id"]}
        assert lookup(indexes, "node", ("label",), "node") == {second.node["id"]}
        assert lookup(indexes, "node", ("tags", "location"), "salford") == {second.node["id"]}
        assert lookup(indexes, "node", ("tags", "location"), "london") == {first.node["id"]}

        registry.delete("node", second.node["id"], "v1.2")  # the cascade removes its whole family
        assert lookup(indexes, "sender", ("transport",), "urn:x-nmos:transport:rtp.mcast") == {first.sender["id"]}
        assert lookup(indexes, "node", ("tags", "location"), "salford") == set()

        registry.collect_garbage(NOW + registry.expiry + 1)  # expiry too
        assert registry.count("node") == 0
        for path in INDEXED:
            for kind in ("node", "device", "source", "flow", "sender", "receiver"):
                assert not indexes._paths[kind].get(path), (kind, path)
        assert not any(bucket for paths in indexes._paths.values() for bucket in paths.values())  # tags too

    def test_unindexed_paths_are_not_answered(self) -> None:
        indexes = Indexes(Registry())
        assert lookup(indexes, "flow", ("frame_width",), "1920") is None
        assert lookup(indexes, "node", ("tags", "a", "b"), "x") is None
        assert lookup(indexes, "node", ("tags", "never-used"), "x") == set()

    def test_children_from_parents(self) -> None:
        registry = Registry()
        family = Family.build("v1.3").register(registry, now=NOW)
        indexes = Indexes(registry)
        child = source(family.device["id"], "v1.3", parents=[family.source["id"]])
        registry.register("source", child, "v1.3", now=NOW)
        assert indexes.children("source", family.source["id"]) == {child["id"]}
        registry.register("source", bump(child, parents=[]), "v1.3", now=NOW)
        assert indexes.children("source", family.source["id"]) == set()

    def test_a_key_shared_by_one_a_few_and_many_resources(self) -> None:
        # One id is held as itself, a few as a tuple, more than SMALL as a set: growing and shrinking through every
        # form, by registration, update and deletion, the answer stays the scan's.
        registry = Registry()
        family = Family.build("v1.3").register(registry, now=NOW)
        indexes = Indexes(registry)
        flows = [flow(family.source["id"], family.device["id"], "v1.3", label="shared") for _ in range(SMALL + 3)]

        def check() -> None:
            for value in ("shared", "moved"):
                assert lookup(indexes, "flow", ("label",), value) == scan(registry, "flow", ("label",), value)

        for data in flows:
            registry.register("flow", data, "v1.3", now=NOW)
            check()
        assert len(lookup(indexes, "flow", ("label",), "shared") or ()) == SMALL + 3
        for data in flows[: SMALL + 1]:
            registry.register("flow", bump(data, label="moved"), "v1.3", now=NOW)
            check()
        for data in flows:
            registry.delete("flow", data["id"], "v1.3")
            check()
        assert not {"shared", "moved"} & indexes._paths["flow"][("label",)].keys()  # no key left with no ids

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.fixed_dictionaries({}, optional={"label": LEAVES, "format": TREE, "parents": TREE,
                                                        "tags": st.dictionaries(st.sampled_from(["x", "Y"]),
                                                                                st.lists(VALUES, max_size=3))}),
                    min_size=1, max_size=6),
           st.sampled_from([("label",), ("format",), ("parents",), ("tags", "x"), ("tags", "Y"), ("id",)]),
           VALUES)
    def test_lookup_equals_a_scan(self, extras: list[dict[str, Any]], path: tuple[str, ...], value: str) -> None:
        registry = Registry()
        family = Family.build("v1.3").register(registry, now=NOW)
        indexes = Indexes(registry)
        for extra in extras:
            data = {**flow(family.source["id"], family.device["id"], "v1.3"), **extra}
            registry.register("flow", data, "v1.3", now=NOW)
        assert lookup(indexes, "flow", path, value) == scan(registry, "flow", path, value)
