"""Subscriptions end to end: the real service on 127.0.0.1:0, resources registered over HTTP, Autobahn clients on
the ws_href each POST returned. Every grain is checked against the official WebSocket schema
(tests.support.websockets.Client) and every Query API answer against the official schemas. Where timers matter (rate
limit, expiry, garbage collection) the service runs on a Clock; the sockets always run on the real reactor. Nothing
sleeps. What goes through the APIs on the reactor's clock runs on both stores: in memory and as a registry cluster
member on etcd (`store = "etcd"`), whose grains come from the changes its replica applies.
"""

from __future__ import annotations

import socket as sockets
from typing import Any

import pytest
from autobahn.twisted.websocket import connectWS
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher

from nmos_ref.ws.connection import SubscriptionLimits
from tests.support.cases import Bodies, SocketTest, cases, open_selectables, pending_calls
from tests.support.etcd import require_etcd
from tests.support.samples import VERSIONS, Family, bump, node
from tests.support.websockets import Client, ClientFactory, Served, TIMEOUT, connect, kind_of


def nothing_left_behind(test: SocketTest) -> None:
    """After the test (and its service's teardown, a cleanup added later, so run earlier): no timer, socket or
    connection of its own is left behind (what other test modules left in the shared reactor is theirs to answer
    for)."""
    calls, selectables = pending_calls(), open_selectables()

    def check() -> None:
        assert pending_calls() - calls == set()
        assert open_selectables() - selectables == set()
    test.addCleanup(check)


async def turns_until(condition: Any, limit: int = 5000) -> None:
    """Let the reactor turn (no timer: each turn runs whatever I/O is ready) until `condition()` holds."""
    for _ in range(limit):
        if condition():
            return
        await deferLater(reactor, 0, lambda: None)
    raise AssertionError("the condition never held")


def small_buffers(served: Served, client: Client) -> Any:
    """The server's side of `client`'s socket, both ends with small socket buffers, so that a few hundred KB fill
    them instead of megabytes."""
    (server_side,) = [p for p in served.service.factory.sockets
                      if p.transport.getPeer().port == client.transport.getHost().port]
    server_side.transport.getHandle().setsockopt(sockets.SOL_SOCKET, sockets.SO_SNDBUF, 4096)
    client.transport.getHandle().setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, 4096)
    return server_side


class OnTheReactor(Bodies):
    """The service on the real reactor's clock, as `served`, its store `store` (everything through its APIs)."""

    store = "memory"

    async def setUp(self) -> None:
        if self.store == "etcd":
            require_etcd()
        nothing_left_behind(self)
        self.served = await Served(store=self.store).start()
        self.addCleanup(self.served.stop)

    @cases("version", VERSIONS)
    async def test_sync_modified_removed_added_as_nmos_testing_test_31_checks(self, served: Served,
                                                                              version: str) -> None:
        """A socket per resource type, connected after the resources were registered: SYNC (pre == post == the posted
        JSON), MODIFIED after a re-registration, REMOVED after deletion in reverse order, ADDED after registering
        again."""
        family = Family.build(version)
        members = family.members()
        subscriptions = {kind: await served.subscribe(version, resource_path=f"/{kind}s") for kind, _ in members}
        for kind, data in members:
            await served.register(version, kind, data, 201)
        clients = {kind: await served.connect(subscriptions[kind], version) for kind, _ in members}
        for kind, data in members:
            assert [(kind_of(e), e["path"], e["post"]) for e in await clients[kind].events(1)] == \
                   [("sync", data["id"], data)]
        changed = {kind: bump(data, label=f"{kind} changed") for kind, data in members}
        for kind, _ in members:
            await served.register(version, kind, changed[kind], 200)
        for kind, data in members:
            assert [(kind_of(e), e["pre"], e["post"]) for e in await clients[kind].events(1)] == \
                   [("modified", data, changed[kind])]
        for kind, data in reversed(members):
            await served.delete(version, kind, data["id"])
        for kind, _ in members:
            assert [(kind_of(e), e["pre"]) for e in await clients[kind].events(1)] == [("removed", changed[kind])]
        again = {kind: bump(data) for kind, data in members}
        for kind, _ in members:
            await served.register(version, kind, again[kind], 201)
        for kind, _ in members:
            assert [(kind_of(e), e["post"]) for e in await clients[kind].events(1)] == [("added", again[kind])]

    @cases("params", [{"description": "{id}"}, {"query.rql": "eq(description,{id})"}])
    async def test_filters_as_nmos_testing_test_23_1_and_24_1_check(self, served: Served,
                                                                     params: dict[str, str]) -> None:
        wanted, other = node(), node()
        wanted["description"], other["description"] = wanted["id"], other["id"]
        subscription = await served.subscribe(params={key: value.format(id=wanted["id"])
                                                      for key, value in params.items()})
        client = await served.connect(subscription)
        await served.register("v1.3", "node", other, 201)  # does not match: no event (else it would come first)
        await served.register("v1.3", "node", wanted, 201)
        assert [(kind_of(e), e["post"]) for e in await client.events(1)] == [("added", wanted)]
        moved = bump(wanted, description="something else")
        await served.register("v1.3", "node", moved, 200)
        assert [(kind_of(e), e["pre"]) for e in await client.events(1)] == [("removed", wanted)]
        await served.register("v1.3", "node", bump(moved, description=wanted["id"]), 200)
        assert [kind_of(e) for e in await client.events(1)] == ["added"]

    async def test_downgrade_as_nmos_testing_test_22_2_checks(self, served: Served) -> None:
        clients = {}
        for version in VERSIONS:
            params = {"query.downgrade": version} if version != "v1.3" else {}
            clients[version] = await served.connect(await served.subscribe(params=params))
        nodes = {}
        for version in VERSIONS:  # oldest first, so a Node that must not be announced would come before the others
            nodes[version] = node(version)
            await served.register(version, "node", nodes[version], 201)
        for floor, client in clients.items():
            expected = [nodes[version] for version in VERSIONS if version >= floor]
            assert [(kind_of(e), e["post"]) for e in await client.events(len(expected))] == \
                   [("added", data) for data in expected]

    async def test_translated_for_an_older_version(self, served: Served) -> None:
        client = await served.connect(await served.subscribe("v1.1", resource_path="/flows"), "v1.1")
        family = Family.build("v1.3")
        for kind, data in family.members():
            await served.register("v1.3", kind, data, 201)
        (event,) = await client.events(1)
        assert kind_of(event) == "added" and "event_type" not in event["post"]
        assert event["post"] == {key: value for key, value in family.flow.items() if key != "event_type"}

    async def test_http_upgrade_on_a_list_creates_a_subscription(self, served: Served) -> None:
        href = served.base.replace("http://", "ws://") + "/query/v1.3/nodes?label=up&paging.limit=5"
        client = await connect({"ws_href": href, "params": {"label": "up"}, "resource_path": "/nodes"}, "v1.3")
        served.clients.append(client)
        (listed,) = (await served.call("GET", "/query/v1.3/subscriptions")).body
        assert listed["params"] == {"label": "up"} and listed["persist"] is False
        assert listed["resource_path"] == "/nodes" and listed["max_update_rate_ms"] == 100
        up = node(label="up")
        await served.register("v1.3", "node", node(label="down"), 201)
        await served.register("v1.3", "node", up, 201)
        grain = await client.grain()
        assert grain["flow_id"] == listed["id"] and [e["post"] for e in grain["grain"]["data"]] == [up]
        # v1.0 has no upgrade: the GET is answered as a GET, and the handshake fails
        refused = ClientFactory({"ws_href": served.base.replace("http://", "ws://") + "/query/v1.0/nodes",
                                 "params": {}, "resource_path": "/nodes"}, "v1.0")
        connectWS(refused)
        refused.opened.addTimeout(TIMEOUT, reactor)
        with pytest.raises(ConnectionError):
            await refused.opened

    async def test_stopping_the_service_closes_every_socket(self, served: Served) -> None:
        client: Client = await served.connect(await served.subscribe(persist=True))
        served.stopped = True
        await served.top.stopService()
        assert await client.closed == (True, 1000, "the Query API is shutting down")


class SubscriptionsOnTheReactorTests(OnTheReactor, SocketTest):
    pass


class SubscriptionsOnTheReactorOnEtcdTests(OnTheReactor, SocketTest):
    """A registry cluster member's subscriptions (docs/cluster.md): the grains of changes that came through etcd."""

    store = "etcd"


class SlowSubscribersTests(SocketTest):
    """Backpressure, with many big resources put in the in-memory registry directly (through the Registration API
    they would cost seconds, and the sockets' side is the same on every store)."""

    async def setUp(self) -> None:
        nothing_left_behind(self)
        self.served = await Served().start()
        self.addCleanup(self.served.stop)

    async def test_a_client_that_stops_reading_is_dropped_without_delaying_others(self, served: Served) -> None:
        served.manager.limits = SubscriptionLimits(backlog_bytes=32 * 1024)
        subscription = await served.subscribe(max_update_rate_ms=0)
        healthy = await served.connect(subscription)
        slow = await served.connect(subscription)
        server_side = small_buffers(served, slow)
        slow.transport.pauseProducing()  # the client stops reading
        dropped = server_side.when_closed()
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        try:
            sent = 0
            while not dropped.called:
                assert sent < 2000, "the slow client was never dropped"
                batch = [node(description="x" * 2000) for _ in range(10)]
                for data in batch:
                    served.registry.register("node", data, "v1.3", now=served.clock.seconds())
                sent += len(batch)
                # the other socket gets everything, at once
                assert [e["post"] for e in await healthy.events(len(batch))] == batch
        finally:
            globalLogPublisher.removeObserver(logged.append)
        assert any("stopped reading" in event.get("log_format", "") for event in logged)
        (live,) = served.manager.get(subscription["id"]).connections
        assert live.backlog == 0
        slow.transport.resumeProducing()
        was_clean, _, _ = await slow.closed
        assert not was_clean
        await served.register("v1.3", "node", node(), 201)
        assert len(await healthy.events(1)) == 1

    async def test_a_client_that_reads_slowly_is_sent_its_whole_initial_state(self, served: Served) -> None:
        # An initial state 50 times the backlog limit, and a client that stops reading while it is being sent: it is
        # sent as the client reads, never queued, so the client is not cut; changes meanwhile come after it. (Few,
        # big resources: checking a grain against the official schema costs about 30 ms per event.)
        served.manager.limits = SubscriptionLimits(backlog_bytes=32 * 1024, grain_bytes=32 * 1024)
        registered = [node(description="x" * 40_000) for _ in range(40)]
        for data in registered:
            served.registry.register("node", data, "v1.3", now=served.clock.seconds())
        client = await served.connect(await served.subscribe(max_update_rate_ms=0))
        (server_side,) = served.service.factory.sockets
        # A small send buffer (the client's stays as it is: a tiny receive window stalls TCP for seconds once the
        # client reads again), so that the server's own buffers fill after a few hundred KB.
        server_side.transport.getHandle().setsockopt(sockets.SOL_SOCKET, sockets.SO_SNDBUF, 4096)
        client.transport.pauseProducing()  # the client stops reading
        await turns_until(lambda: server_side.connection._paused)  # and the server's buffers fill up
        assert not server_side.connection.synced
        changes = [node() for _ in range(5)]
        for data in changes:
            served.registry.register("node", data, "v1.3", now=served.clock.seconds())
        assert server_side.connection.backlog > 0 and server_side.connection.open
        client.transport.resumeProducing()  # reading again
        events = await client.events(len(registered) + len(changes))
        assert [(kind_of(e), e["post"]) for e in events] == \
               [("sync", data) for data in registered] + [("added", data) for data in changes]
        assert [len(grain["grain"]["data"]) for grain in client.grains[:40]] == [1] * 40  # 40 KB each: one a grain
        assert server_side.connection.open and server_side.connection.synced

    async def test_a_large_registry_is_sent_in_bounded_grains(self, served: Served) -> None:
        # Smaller numbers than the defaults (1000 events per grain), so that checking every event against the official
        # schema stays quick.
        served.manager.limits = SubscriptionLimits(sync_slice=16, grain_events=50)
        registered = [node() for _ in range(120)]
        for data in registered:
            served.registry.register("node", data, "v1.3", now=served.clock.seconds())
        client = await served.connect(await served.subscribe(max_update_rate_ms=0))
        events = await client.events(len(registered))
        assert [e["post"] for e in events] == registered and {kind_of(e) for e in events} == {"sync"}
        assert [len(grain["grain"]["data"]) for grain in client.grains] == [50, 50, 20]


class SubscriptionsOnAClockTests(SocketTest):
    """The service on a Clock (registry stamps, garbage collection, rate limits, expiry), as `clocked`."""

    async def setUp(self) -> None:
        nothing_left_behind(self)
        self.clocked = await Served(Clock()).start()
        self.addCleanup(self.clocked.stop)

    async def test_cascades_and_garbage_collection_remove(self, clocked: Served) -> None:
        first, second = Family.build("v1.3"), Family.build("v1.3")
        for family in (first, second):
            for kind, data in family.members():
                await clocked.register("v1.3", kind, data, 201)
        clients = {kind: await clocked.connect(await clocked.subscribe(resource_path=f"/{kind}s"))
                   for kind in ("node", "device", "sender")}
        for client in clients.values():
            assert [kind_of(e) for e in await client.events(2)] == ["sync", "sync"]
        await clocked.delete("v1.3", "node", first.node["id"])
        clocked.clock.advance(0.1)  # the rate limit's interval since the initial state
        for kind, client in clients.items():
            assert [(kind_of(e), e["pre"]) for e in await client.events(1)] == [("removed", getattr(first, kind))]
        for _ in range(26):  # no heartbeat for longer than the 12 s expiry: garbage collection (in steps of the
            clocked.clock.advance(0.5)  # sweep's period: a single jump would be a stall, which postpones expiry)
        for kind, client in clients.items():
            assert [(kind_of(e), e["pre"]) for e in await client.events(1)] == [("removed", getattr(second, kind))]

    async def test_the_rate_limit_batches_into_the_next_grain(self, clocked: Served) -> None:
        client = await clocked.connect(await clocked.subscribe(max_update_rate_ms=250))
        first, second, third = node(), node(), node()
        await clocked.register("v1.3", "node", first, 201)
        assert [e["post"] for e in (await client.grain())["grain"]["data"]] == [first]  # at once: nothing before it
        await clocked.register("v1.3", "node", second, 201)
        await clocked.register("v1.3", "node", third, 201)
        clocked.clock.advance(0.249)
        assert client.unread == 0
        clocked.clock.advance(0.001)
        # both changes of the interval in the next grain: had either gone alone, this grain would hold only it
        assert [e["post"] for e in (await client.grain())["grain"]["data"]] == [second, third]

    async def test_non_persistent_subscriptions_expire_after_their_last_socket(self, clocked: Served) -> None:
        grace = clocked.manager.limits.grace
        subscription = await clocked.subscribe()
        path = f"/query/v1.3/subscriptions/{subscription['id']}"
        one, two = await clocked.connect(subscription), await clocked.connect(subscription)
        await one.close()
        clocked.clock.advance(grace * 10)
        assert (await clocked.call("GET", path)).code == 200  # a socket is still open
        await two.close()
        await clocked.idle()
        clocked.clock.advance(grace - 0.5)
        assert (await clocked.call("GET", path)).code == 200
        clocked.clock.advance(0.5)
        assert (await clocked.call("GET", path)).code == 404
        assert (await clocked.call("GET", "/query/v1.3/subscriptions")).body == []

    async def test_persistent_subscriptions_stay_and_delete_closes_their_sockets(self, clocked: Served) -> None:
        subscription = await clocked.subscribe(persist=True)
        path = f"/query/v1.3/subscriptions/{subscription['id']}"
        await (await clocked.connect(subscription)).close()
        await clocked.idle()
        clocked.clock.advance(365 * 86400)
        assert (await clocked.call("GET", path)).body == subscription
        client = await clocked.connect(subscription)
        assert (await clocked.call("DELETE", path)).code == 204
        assert await client.closed == (True, 1000, "subscription deleted")
        assert (await clocked.call("GET", path)).code == 404
        temporary = await clocked.subscribe()
        assert (await clocked.call("DELETE", f"/query/v1.3/subscriptions/{temporary['id']}")).code == 403
