"""The subscription model without sockets (nmos_ref/ws/subscriptions.py): requests, views, grains, the per-socket
rate limit and backlog, and the manager's events and expiry. A Clock drives every timer; sockets are fakes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from nmos_ref.model.errors import BadQuery, UnsupportedQuery
from nmos_ref.ws.connection import Connection, SubscriptionLimits
from nmos_ref.ws.snapshot import Snapshot
from nmos_ref.ws.subscriptions import (BadSubscription, PersistenceRequired, Subscription, event_json, grain_envelope,
                                       grain_json, parse_subscription)
from tests.support.cases import UnitTest, cases
from tests.support.official import assert_official
from tests.support.samples import VERSIONS, Family, bump, node, receiver, sender
from tests.support.websockets import SubscriptionHarness, check_grain, kind_of, subscription_body


class FakeSocket:
    """What a Connection writes to."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.dropped = False

    def send(self, payload: bytes) -> None:
        self.sent.append(json.loads(payload))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def drop(self) -> None:
        self.dropped = True

    def events(self) -> list[dict[str, Any]]:
        """Every event sent so far, and forget them."""
        found = [event for grain in self.sent for event in grain["grain"]["data"]]
        self.sent.clear()
        return found


def turn(scheduler: Clock) -> None:
    """Run one pending reactor turn (Clock.advance would run the turns they schedule too)."""
    call = scheduler.calls.pop(0)
    call.called = 1
    call.func(*call.args, **call.kw)


# --- what a client asks for

class SubscriptionRequestTests(UnitTest):
    @cases("version", VERSIONS)
    def test_defaults_follow_the_api(self, version: str) -> None:
        body = subscription_body(version, secure=None)
        wanted, view = parse_subscription(body, version, False, False, "h:1")
        assert (wanted.secure, wanted.authorization, view.kind, view.filter) == (False, False, "node", None)
        wanted, _ = parse_subscription(body, version, True, version == "v1.3", "h:1")
        assert wanted.secure and wanted.authorization is (version == "v1.3")

    @cases("version", ["v1.1", "v1.2", "v1.3"])
    def test_secure_that_cannot_be_honoured_is_refused(self, version: str) -> None:
        with pytest.raises(BadSubscription, match="served over http"):
            parse_subscription(subscription_body(version, secure=True), version, False, False, "h:1")
        with pytest.raises(BadSubscription, match="served over https"):
            parse_subscription(subscription_body(version, secure=False), version, True, False, "h:1")

    def test_attributes_a_version_does_not_define_are_ignored(self) -> None:
        # The v1.0 schema allows any key; `secure` means nothing there, nor `authorization` before v1.3.
        wanted, _ = parse_subscription(subscription_body("v1.0", secure=True), "v1.0", False, False, "h:1")
        assert wanted.secure is False
        wanted, _ = parse_subscription(subscription_body("v1.2", authorization=True), "v1.2", False, False, "h:1")
        assert wanted.authorization is False

    def test_authorization_follows_the_api_mode(self) -> None:
        with pytest.raises(BadSubscription, match="does not use authorization"):
            parse_subscription(subscription_body(authorization=True), "v1.3", False, False, "h:1")
        with pytest.raises(BadSubscription, match="requires authorization"):
            parse_subscription(subscription_body(authorization=False), "v1.3", False, True, "h:1")

    @cases("changes, refusal", [
        ({"max_update_rate_ms": -1}, BadSubscription),
        ({"params": {"tags": {"location": "x"}}}, BadSubscription),
        ({"params": {"label": ["a"]}}, BadSubscription),
        ({"params": {"paging.limit": "10"}}, BadSubscription),
        ({"params": {"query.rql": "eq(label"}}, BadQuery),
        ({"params": {"query.downgrade": "v2.0"}}, BadQuery),
        ({"params": {"query.rql": "sort(label)"}}, UnsupportedQuery),
        ({"params": {"query.ancestry_id": "x"}}, UnsupportedQuery),
        ({"params": {"query.strip": "true"}}, UnsupportedQuery),
    ])
    def test_params_that_are_refused(self, changes: dict[str, Any], refusal: type[Exception]) -> None:
        with pytest.raises(refusal):
            parse_subscription(subscription_body(**changes), "v1.3", False, False, "h:1")

    def test_v1_0_params_are_basic_queries_and_rql_only(self) -> None:
        with pytest.raises(UnsupportedQuery):
            parse_subscription(subscription_body("v1.0", params={"query.downgrade": "v1.0"}), "v1.0", False, False, "h")
        _, view = parse_subscription(subscription_body("v1.0", params={"label": "a"}), "v1.0", False, False, "h")
        assert view.matches({"label": "a"}) and not view.matches({"label": "b"})
        # RQL at v1.0 is an extension (IS-04-02 test_24_1 asks v1.0 subscriptions for it).
        _, view = parse_subscription(subscription_body("v1.0", params={"query.rql": "eq(label,a)"}), "v1.0", False,
                                     False, "h")
        assert view.matches({"label": "a"}) and not view.matches({"label": "b"})

    def test_param_values_are_matched_as_query_string_text(self) -> None:
        params = {"frame_width": 1920, "subscription.active": False, "grain_rate.numerator": "25"}
        _, view = parse_subscription(subscription_body(resource_path="/flows", params=params), "v1.3", False, False, "h")
        data = {"frame_width": 1920, "subscription": {"active": False}, "grain_rate": {"numerator": 25}}
        assert view.kind == "flow" and view.matches(data) and not view.matches({**data, "frame_width": 1280})

    def test_views_serve_their_version_and_higher_minors_down_to_query_downgrade(self) -> None:
        _, own = parse_subscription(subscription_body("v1.2"), "v1.2", False, False, "h")
        _, lower = parse_subscription(subscription_body(params={"query.downgrade": "v1.1"}), "v1.3", False, False, "h")
        assert [own.visible(v) for v in VERSIONS] == [False, False, True, True]
        assert [lower.visible(v) for v in VERSIONS] == [False, True, True, True]
        assert not own.visible("v2.2")


# --- messages

class MessageTests(UnitTest):
    @cases("version", VERSIONS)
    def test_grains_are_valid_for_every_version(self, version: str) -> None:
        family = Family.build(version)
        before, after = family.sender, bump(family.sender, label="changed")
        events = {"sync": event_json(before["id"], json.dumps(before), json.dumps(before)),
                  "added": event_json(family.receiver["id"], None, json.dumps(family.receiver)),
                  "modified": event_json(before["id"], json.dumps(before), json.dumps(after)),
                  "removed": event_json(family.flow["id"], json.dumps(family.flow), None)}
        for kind, event in events.items():
            grain = json.loads(grain_json("a7f9a1b3-7f47-4a0e-9c38-6c1a1e6f7b11", "0c2b9e67-3b4e-4bb1-a05d-0b1b7a3a0d3e",
                                          "/senders", "1700000000:5", [event]))
            assert_official(version, "queryapi-subscriptions-websocket", grain)
            assert grain["grain"]["topic"] == "/senders/" and grain["origin_timestamp"] == grain["sync_timestamp"]
            assert kind_of(grain["grain"]["data"][0]) == kind


# --- one socket: rate limit, batching, initial state, backlog

def make_grain(data: bytes) -> bytes:
    head, tail = grain_envelope("a7f9a1b3-7f47-4a0e-9c38-6c1a1e6f7b11", "0c2b9e67-3b4e-4bb1-a05d-0b1b7a3a0d3e",
                                "/nodes", "0:0")
    return head.encode() + data + tail.encode()


def connection(interval: float = 0.1, initial: list[str | None] | None = None,
               limits: SubscriptionLimits = SubscriptionLimits(), scheduler: Clock | None = None,
               snapshot: Snapshot[str | None] | None = None) -> tuple[Connection, FakeSocket, Clock, Clock]:
    """A Connection on a FakeSocket whose initial state is `initial` (events, None for a resource that does not
    match) or `snapshot`."""
    clock, socket = Clock(), FakeSocket()
    scheduler = scheduler or Clock()
    if snapshot is None:
        snapshot = Snapshot(initial or [], lambda event: event, scheduler, limits)
    made = Connection("sub", socket, clock, scheduler, interval, make_grain, snapshot, limits)
    made.start()
    return made, socket, clock, scheduler


def added(rid: str) -> tuple[str, str]:
    return rid, event_json(rid, None, json.dumps(node(id=rid)))


IDS = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(10)]


class ConnectionTests(UnitTest):
    def test_the_first_message_goes_at_once_and_the_next_waits_for_the_interval(self) -> None:
        link, socket, clock, scheduler = connection(interval=0.1)
        link.push([added(IDS[0])])
        turn(scheduler)  # the next reactor turn, not the same call: the registration's answer goes first
        assert [event["path"] for event in socket.events()] == [IDS[0]]
        link.push([added(IDS[1])])
        link.push([added(IDS[2]), added(IDS[3])])
        assert not scheduler.calls and socket.sent == []
        clock.advance(0.05)
        assert socket.sent == []
        clock.advance(0.05)
        assert [event["path"] for event in socket.events()] == IDS[1:4]  # everything of the window, in one grain
        clock.advance(10)
        link.push([added(IDS[4])])
        turn(scheduler)  # long after the last message: at once again
        assert len(socket.events()) == 1

    def test_a_grain_holds_one_event_per_resource_and_nothing_is_dropped(self) -> None:
        link, socket, clock, scheduler = connection(interval=0.1)
        same = [added(IDS[0]), (IDS[0], event_json(IDS[0], json.dumps(node(id=IDS[0])), None)), added(IDS[0])]
        link.push([*same, added(IDS[1])])
        turn(scheduler)
        assert [kind_of(event) for event in socket.events()] == ["added"]
        clock.advance(0.1)
        assert [kind_of(event) for event in socket.events()] == ["removed"]
        clock.advance(0.1)
        assert [(kind_of(event), event["path"]) for event in socket.events()] == [("added", IDS[0]), ("added", IDS[1])]
        clock.advance(1)
        assert socket.sent == [] and not clock.calls and not scheduler.calls

    def test_the_initial_state_goes_first_in_slices_and_bounded_grains(self) -> None:
        initial = [event_json(rid, "{}", "{}") if i % 3 else None for i, rid in enumerate(IDS)]  # 6 of 10 match
        link, socket, clock, scheduler = connection(interval=0, initial=initial,
                                                    limits=SubscriptionLimits(sync_slice=2, grain_events=4))
        link.push([added(IDS[0])])  # happened after the snapshot: goes after the initial state
        turns = 0
        while scheduler.calls:
            turn(scheduler)
            turns += 1
        assert turns >= 5  # ten resources, two per turn
        assert [len(grain["grain"]["data"]) for grain in socket.sent] == [4, 2, 1]
        assert [kind_of(event) for event in socket.events()] == ["sync"] * 6 + ["added"]

    def test_no_grain_when_nothing_matches(self) -> None:
        link, socket, _, scheduler = connection(initial=[None, None])
        while scheduler.calls:
            turn(scheduler)
        assert socket.sent == []

    def test_a_paused_socket_holds_events_until_it_resumes(self) -> None:
        link, socket, clock, scheduler = connection(interval=0)
        link.pause()
        link.push([added(IDS[0]), added(IDS[1])])
        clock.advance(1)
        while scheduler.calls:
            turn(scheduler)
        assert socket.sent == [] and not scheduler.calls and not clock.calls
        link.resume()  # from the transport, which has room: at once, not a reactor turn later
        assert len(socket.events()) == 2 and link.backlog == 0 and not scheduler.calls

    def test_a_client_that_stops_reading_is_dropped_once_its_backlog_is_too_big(self) -> None:
        link, socket, clock, scheduler = connection(interval=0, limits=SubscriptionLimits(backlog_bytes=3000))
        link.push([added(IDS[0])])
        link.pause()  # its transport's buffers are full
        link.push([added(IDS[1])])
        assert link.open and not socket.dropped and link.backlog > 0
        link.push([added(rid) for rid in IDS[2:]])
        assert socket.dropped and not link.open and link.backlog == 0
        link.push([added(IDS[0])])
        link.resume()
        assert socket.sent == [] and not scheduler.calls and not clock.calls

    def test_ending_cancels_everything(self) -> None:
        link, socket, clock, scheduler = connection(interval=1)
        link.push([added(IDS[0])])
        turn(scheduler)
        link.push([added(IDS[1])])
        link.end(1000, "subscription deleted")
        assert socket.closed == (1000, "subscription deleted") and not clock.calls
        clock.advance(5)
        assert len(socket.sent) == 1


class SnapshotTests(UnitTest):
    """The initial state a subscription's sockets share (nmos_ref/ws/snapshot.py)."""

    def test_sockets_on_one_snapshot_share_its_encoding(self) -> None:
        scheduler, encoded = Clock(), []
        initial = [event_json(rid, "{}", "{}") for rid in IDS]

        def encode(event: str) -> str:
            encoded.append(event)
            return event

        shared: Snapshot[str] = Snapshot(initial, encode, scheduler, SubscriptionLimits(sync_slice=3, grain_events=4))
        links = [connection(interval=0, scheduler=scheduler, snapshot=shared) for _ in range(3)]
        while scheduler.calls:
            turn(scheduler)
        assert encoded == initial  # once, not once per socket
        for _, socket, _, _ in links:
            assert [len(grain["grain"]["data"]) for grain in socket.sent] == [4, 4, 2]
            assert [event["path"] for event in socket.events()] == IDS
        assert all(link.synced for link, _, _, _ in links) and shared.done and not shared.joinable

    def test_grains_are_bounded_in_bytes_too(self) -> None:
        initial = [event_json(rid, json.dumps(node(id=rid)), json.dumps(node(id=rid))) for rid in IDS]
        limit = 2 * len(initial[0])
        _, socket, _, scheduler = connection(interval=0, initial=list(initial),
                                             limits=SubscriptionLimits(grain_bytes=limit))
        while scheduler.calls:
            turn(scheduler)
        assert [len(grain["grain"]["data"]) for grain in socket.sent] == [2] * 5

    def test_a_paused_socket_gets_nothing_and_only_a_little_is_built_ahead(self) -> None:
        many = [f"{i:08x}-0000-4000-8000-000000000001" for i in range(100)]
        limits = SubscriptionLimits(sync_slice=5, grain_events=5, backlog_bytes=10)
        link, socket, _, scheduler = connection(interval=0, initial=[event_json(rid, "{}", "{}") for rid in many],
                                                limits=limits)
        turn(scheduler)  # the snapshot builds its first slice
        turn(scheduler)  # the first grain
        link.pause()  # the client reads slowly: its transport's buffers are full
        while scheduler.calls:
            turn(scheduler)
        assert len(socket.sent) == 1 and link.open and link.backlog == 0  # never cut for the initial state
        # built only a little ahead of the reader: its first chunk sent, two more ready
        assert link._snapshot is not None and link._snapshot.encoded == 15
        link.resume()
        while scheduler.calls:
            turn(scheduler)
        assert [event["path"] for event in socket.events()] == many and link.synced

    def test_building_stops_at_the_turn_budget(self) -> None:
        scheduler, now = Clock(), [0.0]

        def slow(event: str) -> str:
            now[0] += 0.001  # a millisecond per resource
            return event

        limits = SubscriptionLimits(sync_slice=10_000, slice_seconds=0.05)
        shared: Snapshot[str] = Snapshot([event_json(f"{i:08x}-0000-4000-8000-000000000002", "{}", "{}")
                                          for i in range(500)], slow, scheduler, limits, timer=lambda: now[0])
        connection(interval=0, scheduler=scheduler, snapshot=shared)
        turn(scheduler)
        assert 50 <= shared.encoded <= 64  # checked every 32 resources: at most 32 ms over

    def test_a_stale_snapshot_releases_what_every_reader_has_passed(self) -> None:
        scheduler = Clock()
        shared: Snapshot[str] = Snapshot([event_json(rid, "{}", "{}") for rid in IDS], lambda event: event, scheduler,
                                         SubscriptionLimits(grain_events=2))
        fast, _, _, _ = connection(interval=0, scheduler=scheduler, snapshot=shared)
        slow, _, _, _ = connection(interval=0, scheduler=scheduler, snapshot=shared)
        slow.pause()
        for _ in range(8):
            turn(scheduler)
        assert shared._released == 0  # still current: kept for sockets yet to connect
        shared.stale()
        slow.resume()
        for _ in range(3):
            turn(scheduler)
        assert 0 < shared._released and all(chunk is None for chunk in shared._chunks[:shared._released])
        fast.lost()
        slow.lost()
        assert shared._chunks == [] and shared.done


# --- the manager: events from the registry's changes

def manager_with(*subscriptions: dict[str, Any], version: str = "v1.3",
                 limits: SubscriptionLimits = SubscriptionLimits()) -> tuple[SubscriptionHarness, list[FakeSocket]]:
    harness = SubscriptionHarness(limits=limits)
    sockets = []
    for changes in subscriptions:
        wanted, view = parse_subscription(subscription_body(version, **changes), version, False, False, "h:1")
        made, _ = harness.manager.subscribe(wanted, view)
        socket = FakeSocket()
        assert harness.manager.connect(made.id, socket) is not None
        sockets.append(socket)
    return harness, sockets


def pump(harness: SubscriptionHarness, sockets: list[FakeSocket], version: str = "v1.3",
         downgrade: bool = False) -> None:
    """Let every pending turn and window pass; check every grain sent."""
    harness.clock.advance(0)
    harness.clock.advance(1)
    for socket in sockets:
        for grain in socket.sent:
            check_grain(version, grain, grain["grain"]["topic"][:-1], downgrade)


class ManagerEventTests(UnitTest):
    def test_added_modified_removed_and_cascade(self) -> None:
        harness, (nodes, senders) = manager_with({}, {"resource_path": "/senders"})
        family = Family.build("v1.3").register(harness.registry, now=harness.clock.seconds())
        pump(harness, [nodes, senders])
        assert [(kind_of(e), e["post"]) for e in nodes.events()] == [("added", family.node)]
        assert [(kind_of(e), e["post"]) for e in senders.events()] == [("added", family.sender)]
        changed = bump(family.sender, label="changed")
        harness.registry.register("sender", changed, "v1.3", now=harness.clock.seconds())
        harness.registry.register("sender", changed, "v1.3",
                                  now=harness.clock.seconds())  # the same again: no change, no event
        pump(harness, [nodes, senders])
        assert [(kind_of(e), e["pre"], e["post"]) for e in senders.events()] == [("modified", family.sender, changed)]
        harness.registry.delete("node", family.node["id"], "v1.3")
        pump(harness, [nodes, senders])
        assert [(kind_of(e), e["pre"]) for e in senders.events()] == [("removed", changed)]  # by cascade
        assert [(kind_of(e), e["pre"]) for e in nodes.events()] == [("removed", family.node)]

    def test_garbage_collection_removes(self) -> None:
        harness, (devices,) = manager_with({"resource_path": "/devices"})
        family = Family.build("v1.3").register(harness.registry, now=harness.clock.seconds())
        pump(harness, [devices])
        devices.events()
        harness.clock.advance(13)
        harness.registry.collect_garbage(harness.clock.seconds())
        pump(harness, [devices])
        assert [(kind_of(e), e["pre"]) for e in devices.events()] == [("removed", family.device)]

    def test_filter_transitions_are_added_and_removed(self) -> None:
        harness, (nodes,) = manager_with({"params": {"description": "wanted"}})
        mine, other = node(description="wanted"), node(description="other")
        harness.registry.register("node", other, "v1.3", now=harness.clock.seconds())
        harness.registry.register("node", mine, "v1.3", now=harness.clock.seconds())
        pump(harness, [nodes])
        assert [(kind_of(e), e["post"]) for e in nodes.events()] == [("added", mine)]
        away = bump(mine, description="gone")
        harness.registry.register("node", away, "v1.3", now=harness.clock.seconds())
        harness.registry.register("node", bump(other, label="unrelated"), "v1.3", now=harness.clock.seconds())
        pump(harness, [nodes])
        assert [(kind_of(e), e["pre"]) for e in nodes.events()] == [("removed", mine)]
        back = bump(away, description="wanted")
        harness.registry.register("node", back, "v1.3", now=harness.clock.seconds())
        harness.registry.register("node", bump(back, label="still wanted"), "v1.3", now=harness.clock.seconds())
        pump(harness, [nodes])
        assert [kind_of(e) for e in nodes.events()] == ["added", "modified"]

    def test_rql_filters(self) -> None:
        harness, (receivers,) = manager_with({"resource_path": "/receivers",
                                              "params": {"query.rql": "or(eq(label,a),eq(label,b))"}})
        family = Family.build("v1.3").register(harness.registry, now=harness.clock.seconds())
        for label in ("a", "b", "c"):
            harness.registry.register("receiver", receiver(family.device["id"], label=label), "v1.3",
                                      now=harness.clock.seconds())
        pump(harness, [receivers])
        assert sorted(e["post"]["label"] for e in receivers.events()) == ["a", "b"]

    def test_versions_and_downgrade(self) -> None:
        harness, (own, downgraded) = manager_with({}, {"params": {"query.downgrade": "v1.1"}})
        families = {version: Family.build(version).register(harness.registry,
                                                            now=harness.clock.seconds()) for version in VERSIONS}
        wanted, view = parse_subscription(subscription_body("v1.2"), "v1.2", False, False, "h:1")
        at_v12 = harness.manager.subscribe(wanted, view)[0]
        v12 = FakeSocket()
        harness.manager.connect(at_v12.id, v12)
        pump(harness, [own], "v1.3")
        pump(harness, [downgraded], "v1.3", downgrade=True)
        pump(harness, [v12], "v1.2")
        assert [e["post"] for e in own.events()] == [families["v1.3"].node]
        assert [e["post"] for e in downgraded.events()] == [families[v].node for v in ("v1.1", "v1.2", "v1.3")]
        synced = {e["path"]: e["post"] for e in v12.events()}
        assert synced[families["v1.2"].node["id"]] == families["v1.2"].node
        stripped = synced[families["v1.3"].node["id"]]
        assert "attached_network_device" not in stripped["interfaces"][0] and len(synced) == 2

    def test_a_filter_sees_resources_as_served_at_its_version(self) -> None:
        # IS-04 "Upgrade Path": a v1.2 view of a v1.3 Node has no attached_network_device, so it cannot match on it.
        chassis = {"params": {"interfaces.attached_network_device.chassis_id": "c0-ff-ee-c0-ff-ee"}}
        harness, (at_v13,) = manager_with(chassis)
        wanted, view = parse_subscription(subscription_body("v1.2", **chassis), "v1.2", False, False, "h:1")
        at_v12 = FakeSocket()
        harness.manager.connect(harness.manager.subscribe(wanted, view)[0].id, at_v12)
        Family.build("v1.3").register(harness.registry, now=harness.clock.seconds())
        pump(harness, [at_v13])
        pump(harness, [at_v12], "v1.2")
        assert [kind_of(e) for e in at_v13.events()] == ["added"] and at_v12.sent == []

    def test_a_removed_translation_is_not_kept(self) -> None:
        harness, _ = manager_with()
        wanted, view = parse_subscription(subscription_body("v1.1"), "v1.1", False, False, "h:1")
        socket = FakeSocket()
        harness.manager.connect(harness.manager.subscribe(wanted, view)[0].id, socket)
        family = Family.build("v1.3").register(harness.registry, now=harness.clock.seconds())
        harness.registry.delete("node", family.node["id"], "v1.3")
        pump(harness, [socket], "v1.1")
        assert [kind_of(e) for e in socket.events()] == ["added", "removed"]
        assert all(rid != family.node["id"] for rid, _ in harness.api.translations._cache)

    def test_changes_during_the_initial_state_come_after_it(self) -> None:
        harness = SubscriptionHarness(limits=SubscriptionLimits(sync_slice=1, grain_events=1))
        first, second = node(), node()
        harness.registry.register("node", first, "v1.3", now=harness.clock.seconds())
        harness.registry.register("node", second, "v1.3", now=harness.clock.seconds())
        wanted, view = parse_subscription(subscription_body(max_update_rate_ms=0), "v1.3", False, False, "h:1")
        socket = FakeSocket()
        harness.manager.connect(harness.manager.subscribe(wanted, view)[0].id, socket)
        turn(harness.clock)
        changed = bump(second, label="changed")
        harness.registry.register("node", changed, "v1.3", now=harness.clock.seconds())
        pump(harness, [socket])
        events = socket.events()
        assert [(kind_of(e), e["path"]) for e in events] == [("sync", first["id"]), ("sync", second["id"]),
                                                             ("modified", second["id"])]
        assert events[1]["post"] == second and events[2]["post"] == changed

    def test_sockets_connecting_before_a_change_share_one_snapshot(self) -> None:
        harness = SubscriptionHarness(limits=SubscriptionLimits(grain_events=2))
        registered = [node() for _ in range(5)]
        for data in registered:
            harness.registry.register("node", data, "v1.3", now=harness.clock.seconds())
        made, _ = subscribe(harness, max_update_rate_ms=0)
        early = [FakeSocket() for _ in range(3)]
        for socket in early:
            harness.manager.connect(made.id, socket)
        shared = made.snapshot
        assert shared is not None
        pump(harness, early)
        assert shared.encoded == 5  # once for the three sockets
        assert all([e["post"] for e in socket.events()] == registered for socket in early)
        late = FakeSocket()
        harness.manager.connect(made.id, late)  # after every early socket finished: a new snapshot
        assert made.snapshot is not shared
        pump(harness, [late])
        assert [kind_of(e) for e in late.events()] == ["sync"] * 5

    def test_a_socket_connecting_after_a_change_starts_from_the_new_state(self) -> None:
        harness = SubscriptionHarness(limits=SubscriptionLimits(sync_slice=1, grain_events=1))
        first, second = node(), node()
        for data in (first, second):
            harness.registry.register("node", data, "v1.3", now=harness.clock.seconds())
        made, _ = subscribe(harness, max_update_rate_ms=0)
        before = FakeSocket()
        harness.manager.connect(made.id, before)
        turn(harness.clock)  # the snapshot's first slice: one resource encoded
        changed = bump(second, label="changed")
        harness.registry.register("node", changed, "v1.3", now=harness.clock.seconds())
        after = FakeSocket()
        harness.manager.connect(made.id, after)
        pump(harness, [before, after])
        assert [(kind_of(e), e["post"]) for e in before.events()] == [("sync", first), ("sync", second),
                                                                     ("modified", changed)]
        assert [(kind_of(e), e["post"]) for e in after.events()] == [("sync", first), ("sync", changed)]

    def test_a_client_that_stops_reading_during_the_initial_state_is_dropped_for_its_changes(self) -> None:
        harness = SubscriptionHarness(limits=SubscriptionLimits(grain_events=1, backlog_bytes=4000))
        for _ in range(3):
            harness.registry.register("node", node(), "v1.3", now=harness.clock.seconds())
        made, _ = subscribe(harness, max_update_rate_ms=0)
        reading, stopped = FakeSocket(), FakeSocket()
        harness.manager.connect(made.id, reading)
        link = harness.manager.connect(made.id, stopped)
        assert link is not None
        link.pause()
        harness.registry.register("node", node(), "v1.3", now=harness.clock.seconds())
        assert link.open  # a little: it may yet read
        for _ in range(5):
            harness.registry.register("node", node(description="x" * 1000), "v1.3", now=harness.clock.seconds())
        assert stopped.dropped and not link.open and stopped.sent == []
        pump(harness, [reading])
        assert [kind_of(e) for e in reading.events()] == ["sync"] * 3 + ["added"] * 6

    def test_every_socket_of_a_subscription_is_sent_everything(self) -> None:
        harness, (one,) = manager_with({})
        (subscription,) = harness.manager.listing("v1.3")
        two = FakeSocket()
        harness.manager.connect(subscription.id, two)
        harness.registry.register("node", node(), "v1.3", now=harness.clock.seconds())
        pump(harness, [one, two])
        assert len(one.events()) == len(two.events()) == 1


# --- the manager: lifetime

def subscribe(harness: SubscriptionHarness, host: str = "h:1", **changes: Any) -> tuple[Subscription, bool]:
    wanted, view = parse_subscription(subscription_body(**changes), "v1.3", False, False, host)
    return harness.manager.subscribe(wanted, view)


class ManagerLifetimeTests(UnitTest):
    def test_equal_requests_share_a_subscription(self) -> None:
        harness = SubscriptionHarness()
        first, created = subscribe(harness)
        assert created and subscribe(harness) == (first, False)
        assert subscribe(harness, params={"label": "x"})[1] and subscribe(harness, host="other:1")[1]
        assert subscribe(harness, persist=True)[1] and subscribe(harness, max_update_rate_ms=10)[1]
        persistent, _ = subscribe(harness, persist=True)
        assert subscribe(harness, persist=True) == (persistent, False)

    def test_non_persistent_subscriptions_expire_after_the_grace_period(self) -> None:
        harness = SubscriptionHarness(limits=SubscriptionLimits(grace=30))
        made, _ = subscribe(harness)
        harness.clock.advance(29)
        assert subscribe(harness) == (made, False)  # returned again: the grace period starts again
        harness.clock.advance(29)
        socket = FakeSocket()
        link = harness.manager.connect(made.id, socket)
        assert link is not None
        harness.clock.advance(3600)
        assert harness.manager.get(made.id) is made  # in use
        harness.manager.disconnect(link)
        harness.clock.advance(29.9)
        assert harness.manager.get(made.id) is made
        harness.clock.advance(0.1)
        assert harness.manager.get(made.id) is None and harness.manager.listing("v1.3") == []
        assert harness.manager.connect(made.id, FakeSocket()) is None
        assert subscribe(harness)[1]  # a new one

    def test_persistent_subscriptions_stay_until_deleted(self) -> None:
        harness = SubscriptionHarness()
        made, _ = subscribe(harness, persist=True)
        socket = FakeSocket()
        link = harness.manager.connect(made.id, socket)
        assert link is not None
        harness.manager.disconnect(link)
        harness.clock.advance(365 * 86400)
        assert harness.manager.get(made.id) is made and not harness.clock.calls
        again = FakeSocket()
        harness.manager.connect(made.id, again)
        harness.manager.delete(made.id)
        assert again.closed == (1000, "subscription deleted") and harness.manager.get(made.id) is None
        harness.registry.register("node", node(), "v1.3", now=harness.clock.seconds())
        pump(harness, [again])
        assert again.sent == []

    def test_non_persistent_subscriptions_cannot_be_deleted(self) -> None:
        harness = SubscriptionHarness()
        made, _ = subscribe(harness)
        with pytest.raises(PersistenceRequired):
            harness.manager.delete(made.id)
        assert harness.manager.get(made.id) is made

    def test_stopping_closes_sockets_and_leaves_no_timer(self) -> None:
        harness, (socket,) = manager_with({})
        subscribe(harness, params={"label": "never connected"})
        harness.manager.stop()
        assert socket.closed == (1000, "the Query API is shutting down")
        subscription = harness.manager.listing("v1.3")[0]
        harness.manager.disconnect(next(iter(subscription.connections)))
        assert not harness.clock.calls
        harness.manager.start()
        assert len(harness.clock.calls) == 2  # both are non-persistent, and neither has a socket now

    def test_listing_is_per_version_in_creation_order(self) -> None:
        harness = SubscriptionHarness()
        made = [subscribe(harness, params={"label": str(i)})[0] for i in range(3)]
        wanted, view = parse_subscription(subscription_body("v1.2"), "v1.2", False, False, "h:1")
        other, _ = harness.manager.subscribe(wanted, view)
        assert harness.manager.listing("v1.3") == made and harness.manager.listing("v1.2") == [other]
        assert made[0].created < made[1].created < made[2].created < other.created

    def test_sender_events_keep_the_registered_json(self) -> None:
        harness, (senders,) = manager_with({"resource_path": "/senders"})
        family = Family.build("v1.3").register(harness.registry, now=harness.clock.seconds())
        odd = sender(family.device["id"], None, label="ünïcödé ✓", tags={"z": ["1"], "a": ["2"]})
        harness.registry.register("sender", odd, "v1.3", now=harness.clock.seconds())
        pump(harness, [senders])
        assert [e["post"] for e in senders.events()] == [family.sender, odd]
