"""The registry model: rules, cascade, health and garbage collection, stamps and the change feed. No HTTP, no
sockets; time comes from a Clock."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from twisted.internet.task import Clock

from nmos_ref.model.errors import InvalidResource, UnknownResource, VersionConflict
from nmos_ref.model.store import Change, Registry, Resource
from nmos_ref.model.tai import NS, TAIClock, format_tai, leap_offset, parse_tai, unix_to_tai_ns
from tests.support.cases import UnitTest, cases

START = 1_760_000_000.0  # a Unix time in 2025: TAI - UTC = 37 s


class StoreTest(UnitTest):
    """What every store test starts from: a Clock at START, an empty registry, the changes it publishes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.registry = Registry()
        self.changes: list[Change] = []
        self.registry.feed.subscribe(self.changes.extend)


def new_id() -> str:
    return str(uuid.uuid4())


def res(version: str = "100:0", **keys: Any) -> dict[str, Any]:
    """A minimal resource: the model checks links and versions, not the schema (the API edge does that)."""
    return {"id": keys.pop("id", new_id()), "version": version, "label": keys.pop("label", "x"), **keys}


def family(registry: Registry, version: str = "v1.3", *, now: float) -> dict[str, dict[str, Any]]:
    """A Node with one of everything below it."""
    node = res()
    device = res(node_id=node["id"])
    source = res(device_id=device["id"])
    flow = res(device_id=device["id"], source_id=source["id"])
    sender = res(device_id=device["id"], flow_id=flow["id"])
    receiver = res(device_id=device["id"])
    items = {"node": node, "device": device, "source": source, "flow": flow, "sender": sender, "receiver": receiver}
    for kind, data in items.items():
        assert registry.register(kind, data, version, now=now).created
    return items


def snapshot(registry: Registry) -> dict[str, Any]:
    return {kind: [(r.id, r.data, r.updated) for r in registry.resources(kind)]
            for kind in ("node", "device", "source", "flow", "sender", "receiver")}


class TestRegister(StoreTest):
    def test_create_keeps_data_exactly_and_stamps_it(self, registry: Registry, changes: list[Change]) -> None:
        data = res(label="Studio 1 ünïcode", tags={"a": ["b"]})
        outcome = registry.register("node", data, "v1.3", now=self.clock.seconds())
        assert outcome.created
        record = registry.get("node", data["id"])
        assert record is outcome.resource and record.data is data
        assert record.api_version == "v1.3" and record.node_id == data["id"] and record.parent_id is None
        assert record.created == record.updated == unix_to_tai_ns(START)
        assert [(c.kind, c.id, c.pre, c.post, c.cause) for c in changes] == [("node", data["id"], None, record,
                                                                              "register")]

    def test_identical_repost_is_a_no_op(self, registry: Registry, changes: list[Change], clock: Clock) -> None:
        data = res()
        first = registry.register("node", data, "v1.3", now=clock.seconds()).resource
        clock.advance(1)
        again = registry.register("node", dict(data), "v1.3", now=clock.seconds())
        assert not again.created and again.resource is first
        assert len(changes) == 1

    def test_update_needs_a_later_version(self, registry: Registry, changes: list[Change], clock: Clock) -> None:
        data = res(version="100:5")
        first = registry.register("node", data, "v1.3", now=clock.seconds()).resource
        clock.advance(1)
        for version in ("100:5", "100:4", "99:999999999"):
            with pytest.raises(InvalidResource, match="not later"):
                registry.register("node", {**data, "label": "changed", "version": version}, "v1.3", now=clock.seconds())
        assert registry.get("node", data["id"]) is first
        updated = registry.register("node", {**data, "label": "changed", "version": "100:6"}, "v1.3",
                                    now=clock.seconds())
        assert not updated.created
        assert updated.resource.created == first.created and updated.resource.updated > first.updated
        assert changes[-1].pre is first and changes[-1].post is updated.resource

    def test_versions_compare_as_numbers(self, registry: Registry) -> None:
        data = res(version="9:999999999")
        registry.register("node", data, "v1.3", now=self.clock.seconds())
        assert not registry.register("node", {**data, "version": "10:0", "label": "y"}, "v1.3",
                                     now=self.clock.seconds()).created

    def test_ids_are_exact_uuids(self, registry: Registry) -> None:
        good = new_id()
        for bad in (good + "\n", good.upper(), "not-a-uuid", 42):
            with pytest.raises(InvalidResource, match="UUID"):
                registry.register("node", res(id=bad), "v1.3", now=self.clock.seconds())
        assert registry.count("node") == 0

    def test_a_bad_version_is_refused(self, registry: Registry) -> None:
        with pytest.raises(InvalidResource, match="TAI"):
            registry.register("node", res(version="1.5"), "v1.3", now=self.clock.seconds())
        assert registry.count("node") == 0

    @cases("kind,link", [("device", "node_id"), ("source", "device_id"), ("sender", "device_id"),
                          ("receiver", "device_id"), ("flow", "device_id")])
    def test_parent_must_exist(self, registry: Registry, kind: str, link: str) -> None:
        with pytest.raises(InvalidResource, match="not registered"):
            registry.register(kind, res(**{link: new_id()}), "v1.3", now=self.clock.seconds())
        assert registry.count(kind) == 0

    def test_parent_must_be_of_the_right_type(self, registry: Registry) -> None:
        items = family(registry, now=self.clock.seconds())
        with pytest.raises(InvalidResource):
            registry.register("device", res(node_id=items["device"]["id"]), "v1.3", now=self.clock.seconds())
        with pytest.raises(InvalidResource):
            registry.register("sender", res(device_id=items["node"]["id"]), "v1.3", now=self.clock.seconds())

    def test_v1_0_flow_hangs_off_its_source(self, registry: Registry) -> None:
        items = family(registry, "v1.0", now=self.clock.seconds())
        flow = res(source_id=items["source"]["id"])
        assert registry.register("flow", flow, "v1.0",
                                 now=self.clock.seconds()).resource.parent_id == items["source"]["id"]
        with pytest.raises(InvalidResource):
            registry.register("flow", res(source_id=new_id()), "v1.0", now=self.clock.seconds())
        registry.delete("source", items["source"]["id"], "v1.0")
        assert registry.get("flow", flow["id"]) is None

    def test_sender_flow_is_not_a_link(self, registry: Registry) -> None:
        items = family(registry, now=self.clock.seconds())
        sender = res(device_id=items["device"]["id"], flow_id=new_id())
        assert registry.register("sender", sender, "v1.3", now=self.clock.seconds()).created

    def test_an_id_belongs_to_one_type(self, registry: Registry) -> None:
        items = family(registry, now=self.clock.seconds())
        with pytest.raises(InvalidResource, match="already registered as a device"):
            registry.register("source", res(id=items["device"]["id"], device_id=items["device"]["id"]), "v1.3",
                              now=self.clock.seconds())

    def test_parent_never_changes(self, registry: Registry) -> None:
        items = family(registry, now=self.clock.seconds())
        other = res(node_id=items["node"]["id"])
        registry.register("device", other, "v1.3", now=self.clock.seconds())
        moved = {**items["source"], "device_id": other["id"], "version": "200:0"}
        with pytest.raises(InvalidResource, match="cannot change"):
            registry.register("source", moved, "v1.3", now=self.clock.seconds())
        assert registry.get("source", moved["id"]).data["device_id"] == items["device"]["id"]

    def test_another_api_version_conflicts(self, registry: Registry) -> None:
        items = family(registry, "v1.2", now=self.clock.seconds())
        with pytest.raises(VersionConflict) as caught:
            registry.register("node", {**items["node"], "version": "200:0"}, "v1.3", now=self.clock.seconds())
        assert (caught.value.kind, caught.value.rid, caught.value.held_version) == ("node", items["node"]["id"],
                                                                                    "v1.2")
        with pytest.raises(VersionConflict):
            registry.delete("device", items["device"]["id"], "v1.3")
        with pytest.raises(VersionConflict):
            registry.heartbeat(items["node"]["id"], "v1.3", now=self.clock.seconds())
        assert registry.get("device", items["device"]["id"]) is not None

    def test_rejections_leave_the_store_unchanged(self, registry: Registry, changes: list[Change]) -> None:
        items = family(registry, now=self.clock.seconds())
        before, published = snapshot(registry), len(changes)
        for kind, data, version in [
            ("device", res(node_id=new_id()), "v1.3"),
            ("node", {**items["node"], "version": "1:0", "label": "older"}, "v1.3"),
            ("node", {**items["node"], "version": "900:0"}, "v1.2"),
            ("source", {**items["device"], "device_id": items["device"]["id"]}, "v1.3"),
            ("flow", {**items["flow"], "device_id": new_id(), "version": "900:0"}, "v1.3"),
        ]:
            with pytest.raises((InvalidResource, VersionConflict)):
                registry.register(kind, data, version, now=self.clock.seconds())
        assert snapshot(registry) == before and len(changes) == published


class TestDelete(StoreTest):
    def test_cascades_leaves_first(self, registry: Registry, changes: list[Change]) -> None:
        items = family(registry, now=self.clock.seconds())
        del changes[:]
        removed = registry.delete("node", items["node"]["id"], "v1.3")
        assert removed == changes
        assert {c.id for c in removed} == {d["id"] for d in items.values()}
        assert removed[-1].id == items["node"]["id"] and removed[-1].cause == "delete"
        assert {c.cause for c in removed[:-1]} == {"cascade"}
        assert all(c.post is None and c.pre is not None for c in removed)
        position = {c.id: i for i, c in enumerate(removed)}
        assert position[items["device"]["id"]] > position[items["source"]["id"]]
        assert all(registry.find(d["id"]) is None for d in items.values())
        assert registry.last_seen(items["node"]["id"]) is None

    def test_deleting_a_device_keeps_its_node(self, registry: Registry) -> None:
        items = family(registry, now=self.clock.seconds())
        registry.delete("device", items["device"]["id"], "v1.3")
        assert registry.get("node", items["node"]["id"]) is not None
        assert all(registry.find(items[k]["id"]) is None for k in ("device", "source", "flow", "sender", "receiver"))
        assert not registry.children(items["node"]["id"])

    def test_children_deleted_in_the_wrong_order(self, registry: Registry) -> None:
        items = family(registry, now=self.clock.seconds())
        registry.delete("node", items["node"]["id"], "v1.3")
        with pytest.raises(UnknownResource):
            registry.delete("device", items["device"]["id"], "v1.3")
        # Re-registering the tree from scratch works: nothing stale was left behind.
        assert registry.register("node", items["node"], "v1.3", now=self.clock.seconds()).created
        assert registry.register("device", items["device"], "v1.3", now=self.clock.seconds()).created

    def test_unknown_or_wrong_type(self, registry: Registry) -> None:
        items = family(registry, now=self.clock.seconds())
        with pytest.raises(UnknownResource):
            registry.delete("node", new_id(), "v1.3")
        with pytest.raises(UnknownResource):
            registry.delete("source", items["device"]["id"], "v1.3")


class TestHealth(StoreTest):
    def test_heartbeat_refreshes_and_never_creates(self, registry: Registry, clock: Clock) -> None:
        items = family(registry, now=self.clock.seconds())
        clock.advance(3.5)
        assert registry.heartbeat(items["node"]["id"], "v1.3", now=clock.seconds()) == START + 3.5
        assert registry.health(items["node"]["id"], "v1.3") == START + 3.5
        with pytest.raises(UnknownResource):
            registry.heartbeat(new_id(), "v1.3", now=clock.seconds())
        with pytest.raises(UnknownResource):
            registry.heartbeat(items["device"]["id"], "v1.3", now=clock.seconds())
        assert registry.count("node") == 1

    def test_node_repost_counts_as_a_heartbeat(self, registry: Registry, clock: Clock) -> None:
        items = family(registry, now=self.clock.seconds())
        clock.advance(10)
        registry.register("node", items["node"], "v1.3", now=clock.seconds())
        assert registry.last_seen(items["node"]["id"]) == START + 10


class TestGarbageCollection(StoreTest):
    def test_never_sooner_than_the_expiry(self, registry: Registry, clock: Clock) -> None:
        node = res()
        registry.register("node", node, "v1.3", now=clock.seconds())
        clock.advance(11.999)
        assert registry.collect_garbage(clock.seconds()) == []
        clock.advance(0.001)
        assert [c.id for c in registry.collect_garbage(clock.seconds())] == [node["id"]]

    def test_queue_stays_small_and_deleted_nodes_are_skipped(self, registry: Registry, clock: Clock) -> None:
        items = family(registry, now=self.clock.seconds())
        registry.delete("node", items["node"]["id"], "v1.3")
        clock.advance(13)
        assert registry.collect_garbage(clock.seconds()) == []

    def test_clock_going_backwards_does_not_keep_nodes_for_ever(self, registry: Registry, clock: Clock) -> None:
        node = res()
        registry.register("node", node, "v1.3", now=clock.seconds())
        clock.rightNow = START - 3600  # the wall clock is set back an hour
        assert registry.collect_garbage(clock.seconds()) == []
        clock.advance(11.9)
        assert registry.collect_garbage(clock.seconds()) == []
        clock.advance(0.2)
        assert [c.id for c in registry.collect_garbage(clock.seconds())] == [node["id"]]


class TestStamps(StoreTest):
    def test_leap_seconds(self) -> None:
        assert leap_offset(START) == 37
        assert leap_offset(1483228799) == 36 and leap_offset(1483228800) == 37
        assert leap_offset(0) == 0
        assert unix_to_tai_ns(1483228800.5) == (1483228800 + 37) * NS + NS // 2

    def test_text_form(self) -> None:
        assert format_tai(10) == "0:10"
        assert format_tai(5 * NS + 7) == "5:7"
        assert parse_tai("5:7") == 5 * NS + 7 and parse_tai("1:000000010") == NS + 10
        for bad in ("5", "5.7", "-1:0", "1:1234567890", "a:b", "1:2:3", ""):
            with pytest.raises(ValueError):
                parse_tai(bad)

    def test_strictly_increasing_even_if_time_stands_still_or_goes_back(self, clock: Clock) -> None:
        tai = TAIClock(clock)
        stamps = [tai.stamp() for _ in range(3)]
        clock.rightNow = START - 10
        stamps += [tai.stamp() for _ in range(2)]
        assert stamps == sorted(set(stamps)) and len(stamps) == 5

    def test_every_change_gets_a_unique_increasing_stamp(self, registry: Registry) -> None:
        items = family(registry, now=self.clock.seconds())
        updated = registry.register("node", {**items["node"], "version": "200:0"}, "v1.3",
                                    now=self.clock.seconds()).resource
        stamps = [registry.find(d["id"]).updated for d in items.values() if d is not items["node"]]
        assert len(set(stamps + [updated.updated])) == 6 and updated.updated > max(stamps)


class TestChangeFeed(StoreTest):
    def test_a_failing_subscriber_does_not_stop_the_others(self, registry: Registry) -> None:
        seen: list[Change] = []

        def broken(batch: Any) -> None:
            raise RuntimeError("consumer bug")

        registry.feed.subscribe(broken)
        registry.feed.subscribe(seen.extend)
        node = res()
        registry.register("node", node, "v1.3", now=self.clock.seconds())
        assert [c.id for c in seen] == [node["id"]] and registry.get("node", node["id"]) is not None
        assert len(self.flushLoggedErrors(RuntimeError)) == 1

    def test_unsubscribe(self, registry: Registry) -> None:
        seen: list[Change] = []
        stop = registry.feed.subscribe(seen.extend)
        stop()
        stop()
        registry.register("node", res(), "v1.3", now=self.clock.seconds())
        assert seen == []


class TestPagingIndex(StoreTest):
    def test_windows_follow_updates_and_deletes(self, registry: Registry, clock: Clock) -> None:
        nodes = [res() for _ in range(100)]
        for node in nodes:
            clock.advance(0.01)
            registry.register("node", node, "v1.3", now=clock.seconds())
        index = registry.index("node", "update")
        order = [r.id for r in index.newest_first()]
        assert order == [n["id"] for n in reversed(nodes)]
        # Move the oldest to the newest by updating it, and delete eighty others: compaction must keep the rest.
        registry.register("node", {**nodes[0], "version": "200:0"}, "v1.3", now=clock.seconds())
        for node in nodes[1:81]:
            registry.delete("node", node["id"], "v1.3")
        live = [r.id for r in index.newest_first()]
        assert live == [nodes[0]["id"]] + [n["id"] for n in reversed(nodes[81:])]
        assert len(index) == 20
        created = [r.id for r in registry.index("node", "create").oldest_first()]
        assert created == [nodes[0]["id"]] + [n["id"] for n in nodes[81:]]

    def test_bounds_are_since_exclusive_until_inclusive(self, registry: Registry, clock: Clock) -> None:
        records = []
        for _ in range(5):
            clock.advance(1)
            records.append(registry.register("node", res(), "v1.3", now=clock.seconds()).resource)
        index = registry.index("node")
        window = list(index.newest_first(since=records[1].updated, until=records[3].updated))
        assert window == [records[3], records[2]]
        assert list(index.oldest_first(since=records[3].updated)) == [records[4]]
        assert list(index.newest_first(until=records[0].updated - 1)) == []


class TestOnlyServableIsStored(StoreTest):
    """#11: a record is kept only once its JSON is known to be sendable; the store never holds what an answer
    could not carry (each of these was stored before and broke every later read of its collection)."""

    @cases("bad", [float("nan"), float("inf"), "\ud800", {"\udfff": 1}, [object()]],
           ids=["nan", "inf", "lone_surrogate", "surrogate_key", "object"])
    def test_create_refused_and_nothing_kept(self, registry: Registry, changes: list[Change], bad: Any) -> None:
        data = res(x_extra=bad)
        with pytest.raises(InvalidResource, match="cannot be stored"):
            registry.register("node", data, "v1.3", now=self.clock.seconds())
        assert registry.find(data["id"]) is None and registry.count("node") == 0 and changes == []
        assert registry.last_seen(data["id"]) is None

    def test_update_refused_and_the_old_record_kept(self, registry: Registry, changes: list[Change]) -> None:
        items = family(registry, now=self.clock.seconds())
        before = registry.get("source", items["source"]["id"])
        seen = len(changes)
        with pytest.raises(InvalidResource, match="cannot be stored"):
            registry.register("source", {**items["source"], "version": "101:0", "label": "\ud800"}, "v1.3",
                              now=self.clock.seconds())
        assert registry.get("source", items["source"]["id"]) is before and len(changes) == seen

    def test_the_stored_json_is_the_one_served(self, registry: Registry) -> None:
        data = res(label="caf\u00e9 \U0001f3a5")
        record = registry.register("node", data, "v1.3", now=self.clock.seconds()).resource
        assert record.json.encode("utf-8").decode("utf-8") == record.json
        assert json.loads(record.json) == data


def big_node(registry: Registry, devices: int = 3, senders: int = 12, *, now: float) -> dict[str, Any]:
    """A Node with `devices` Devices, each with a Source, a Flow, `senders` Senders and `senders` Receivers."""
    node = res()
    registry.register("node", node, "v1.3", now=now)
    for _ in range(devices):
        dev = res(node_id=node["id"])
        registry.register("device", dev, "v1.3", now=now)
        src = res(device_id=dev["id"])
        registry.register("source", src, "v1.3", now=now)
        flo = res(device_id=dev["id"], source_id=src["id"])
        registry.register("flow", flo, "v1.3", now=now)
        for _ in range(senders):
            registry.register("sender", res(device_id=dev["id"], flow_id=flo["id"]), "v1.3", now=now)
            registry.register("receiver", res(device_id=dev["id"]), "v1.3", now=now)
    return node


def held(registry: Registry) -> list[Resource]:
    return [record for kind in ("node", "device", "source", "flow", "sender", "receiver")
            for record in registry.resources(kind)]


def assert_whole_tree(registry: Registry) -> None:
    """Every resource's parent is registered, and the family links say exactly who is whose child."""
    records = held(registry)
    expected: dict[str, list[str]] = {}
    for record in records:
        if record.parent_id is not None:
            assert registry.find(record.parent_id) is not None, f"{record} outlived its parent"
            expected.setdefault(record.parent_id, []).append(record.id)
    for record in records:
        assert sorted(registry.children(record.id)) == sorted(expected.get(record.id, [])), record


class TestRemovalInSteps(StoreTest):
    """A large removal taken a few resources at a time (a big Node's DELETE, a mass expiry) leaves the store a
    whole tree after every step, and in the end removes the same as a removal in one go."""

    def test_each_step_leaves_a_whole_tree(self, registry: Registry, changes: list[Change]) -> None:
        node = big_node(registry, now=START)
        size = len(held(registry))
        del changes[:]
        removal = registry.removal("node", node["id"], "v1.3")
        steps = 0
        while not removal.done:
            step = removal.step(7)
            steps += 1
            assert 0 < len(step) <= 7
            assert changes[-len(step):] == step  # published as it went
            assert_whole_tree(registry)
        assert steps == -(-size // 7) and held(registry) == []
        assert len(changes) == size and len({change.id for change in changes}) == size
        assert [change.cause for change in changes] == ["cascade"] * (size - 1) + ["delete"]
        assert removal.step(7) == [] and registry.children(node["id"]) == ()

    def test_what_is_registered_below_meanwhile_goes_too(self, registry: Registry) -> None:
        node = big_node(registry, now=START)
        removal = registry.removal("node", node["id"], "v1.3")
        removal.step(5)
        device = next(iter(registry.resources("device")))
        late = res(device_id=device.id)
        assert registry.register("receiver", late, "v1.3", now=START + 1).created
        while not removal.done:
            removal.step(5)
            assert_whole_tree(registry)
        assert registry.find(late["id"]) is None and held(registry) == []

    def test_an_update_of_the_root_between_steps_does_not_stop_it(self, registry: Registry,
                                                                  changes: list[Change]) -> None:
        node = big_node(registry, devices=1, now=START)
        removal = registry.removal("node", node["id"], "v1.3")
        removal.step(3)
        registry.register("node", dict(node, version="101:0", label="again"), "v1.3", now=START + 1)
        while not removal.done:
            removal.step(3)
        assert held(registry) == []
        assert changes[-1].cause == "delete" and changes[-1].pre is not None and changes[-1].pre.data["label"] == "again"

    def test_the_checks_come_before_any_step(self, registry: Registry) -> None:
        node = big_node(registry, devices=1, now=START)
        with self.assertRaises(VersionConflict):
            registry.removal("node", node["id"], "v1.2")
        with self.assertRaises(UnknownResource):
            registry.removal("node", new_id(), "v1.3")
        assert len(held(registry)) == 1 + 3 + 24

    def test_a_replicated_removal_in_steps_then_the_records(self, registry: Registry,
                                                            changes: list[Change]) -> None:
        # What the etcd cluster's replica does with a revision that deletes a big Node (and puts another).
        node = big_node(registry, now=START)
        other = family(registry, now=START)["node"]["id"]
        gone = [record.id for record in held(registry) if record.node_id == node["id"]]
        size = len(gone)
        origin = Registry()
        new = origin.register("node", res(), "v1.3", now=START + 1).resource
        del changes[:]
        replication = registry.replication([new], list(reversed(gone)))  # in any order: etcd's is by key
        steps = []
        while not replication.done:
            step = replication.step(10)
            steps.append(step)
            assert changes[-len(step):] == step  # published as it went, one batch a step
            assert_whole_tree(registry)
            assert (registry.find(new.id) is not None) == replication.done  # the records in the last step
        assert [len(step) for step in steps] == [10] * (size // 10) + [size % 10 + 1]
        assert [change.id for change in changes[:-1]] == [change.id for change in changes[:-1] if change.post is None]
        assert {change.id for change in changes[:-1]} == set(gone) and len(changes) == size + 1
        assert changes[-1].post is new and changes[-2].cause == "delete" and changes[-2].id == node["id"]
        assert registry.find(other) is not None and len(held(registry)) == 6 + 1
        assert replication.step(10) == []

    def test_apply_is_a_replication_in_one_step(self, registry: Registry, changes: list[Change]) -> None:
        node = big_node(registry, devices=1, now=START)
        size = len(held(registry))
        del changes[:]
        removed = registry.apply([], [record.id for record in held(registry)])
        assert len(removed) == size and changes == removed and held(registry) == []
        assert removed[-1].id == node["id"] and removed[-1].cause == "delete"

    def test_a_mass_expiry_with_a_limit(self, registry: Registry, changes: list[Change]) -> None:
        first, second = big_node(registry, now=START), big_node(registry, devices=2, now=START)
        alive = family(registry, now=START)["node"]["id"]
        size = len(held(registry)) - 6
        registry.heartbeat(alive, "v1.3", now=START + 10)
        del changes[:]
        now = START + registry.expiry + 1
        calls = 0
        while True:
            made = registry.collect_garbage(now, 10)
            calls += 1
            assert len(made) <= 10
            assert_whole_tree(registry)
            if registry.find(first["id"]) is not None:
                assert registry.health(first["id"], "v1.3") == START  # an expiring Node still answers for itself
            if not registry.collecting:
                break
        assert calls == -(-size // 10) and len(changes) == size
        assert registry.find(first["id"]) is None and registry.find(second["id"]) is None
        assert [change.id for change in changes if change.cause == "expire"] == [first["id"], second["id"]]
        assert registry.find(alive) is not None and len(held(registry)) == 6
        assert registry.collect_garbage(now, 10) == [] and not registry.collecting

    def test_without_a_limit_everything_expired_goes_at_once(self, registry: Registry) -> None:
        big_node(registry, now=START)
        made = registry.collect_garbage(START + registry.expiry + 1)
        assert len(made) == 1 + 3 * (3 + 24) and held(registry) == [] and not registry.collecting


class TestReplication(StoreTest):
    """What a registry cluster's member does with its replica (nmos_ref.cluster.store): judge without storing, and
    apply what etcd decided, with its stamps."""

    def test_propose_judges_without_storing(self, registry: Registry) -> None:
        node = res()
        proposal = registry.propose("node", node, "v1.3")
        assert proposal.existing is None and proposal.text == json.dumps(node, separators=(",", ":"))
        assert registry.count("node") == 0 and self.changes == []
        registry.register("node", node, "v1.3", now=self.clock.seconds())
        assert registry.propose("node", dict(node), "v1.3").text is None  # the same resource: nothing to change
        newer = registry.propose("node", {**node, "version": "101:0"}, "v1.3")
        assert newer.existing is registry.get("node", node["id"]) and newer.text is not None
        with self.assertRaises(InvalidResource):
            registry.propose("node", {**node, "label": "y"}, "v1.3")  # changed, but not a later version
        with self.assertRaises(VersionConflict):
            registry.propose("node", node, "v1.2")
        assert registry.deletable("node", node["id"], "v1.3").id == node["id"]
        assert registry.heartbeat_target(node["id"], "v1.3").id == node["id"]
        with self.assertRaises(UnknownResource):
            registry.deletable("device", node["id"], "v1.3")
        assert registry.count("node") == 1 and len(self.changes) == 1

    def test_apply_keeps_the_stamps_it_is_given(self, registry: Registry) -> None:
        source = Registry()
        items = family(source, now=self.clock.seconds())
        records = sorted((record for kind in items for record in source.resources(kind)), key=lambda r: r.updated)
        registry.apply(records, [])
        assert snapshot(registry) == snapshot(source) and len(self.changes) == 6
        assert [c.cause for c in self.changes] == ["register"] * 6
        assert registry.apply(records, []) == []  # the same records again: nothing changes
        node = items["node"]
        updated = source.register("node", {**node, "version": "101:0"}, "v1.3", now=self.clock.seconds() + 1)
        (change,) = registry.apply([updated.resource], [])
        assert change.pre is records[0] and change.post is updated.resource
        assert list(registry.index("node").newest_first()) == [updated.resource]
        removed = registry.apply([], [items["device"]["id"]])
        assert [c.kind for c in removed][-1] == "device" and len(removed) == 5
        assert registry.count("device") == 0 and not registry.children(node["id"])
        assert registry.collect_garbage(self.clock.seconds() + 3600) == []  # expiry is the cluster's to decide
