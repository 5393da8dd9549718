"""The registry on etcd, through its APIs over loopback: members built by wiring (`--store etcd://...`) on one
shared single-member etcd, each test under a key prefix of its own; the same rules as the in-memory store, shared
between members, with etcd's leases expiring Nodes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.task import Clock, Cooperator, deferLater
from twisted.web.client import Agent, HTTPConnectionPool

import nmos_ref
from nmos_ref.api.subscription_service import SubscriptionService
from nmos_ref.cluster.etcd import Event, KeyValue, Put, RangeResult
from nmos_ref.cluster.store import ClusterStore, encode_record, stamp_text
from nmos_ref.config import Settings
from nmos_ref.model.store import Change, Registry, Resource
from nmos_ref.model.tai import parse_tai
from nmos_ref.cluster.store import decode_record
from nmos_ref.wiring.cluster import ClusterStoreService
from nmos_ref.wiring.registry import build_registry
from tests.cluster.test_etcd import eventually
from tests.support.cases import SocketTest, UnitTest
from tests.support.etcd import free_ports, shared_member, unique_prefix
from tests.support.samples import Answer, Family, QueryHarness, bump, check, device, node, port_of, source
from tests.support.websockets import connect
from tests.test_service import TwistdProcess


async def call(http: Any, url: str, method: str = "GET", body: Any = None) -> Answer:
    response = await http.request(method, url, json=body)
    raw = await response.content()
    headers = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
    answer = Answer(response.code, headers, raw)
    if not raw:
        assert answer.code == 204
        return answer
    assert answer.headers["content-type"] == "application/json"
    if "/x-nmos/query/" in url:
        check(url.split("/x-nmos/query")[1], answer)
    elif answer.code >= 400:
        check("/v1.3/x", answer)  # the NMOS error JSON
    return answer


class Member:
    """One nmos-ref registry built by wiring, on a loopback port, its store on etcd."""

    def __init__(self, top: Any, base: str) -> None:
        self.top = top
        self.base = base
        self.store = next(s for s in top if isinstance(s, ClusterStoreService)).store

    def registration(self, version: str = "v1.3") -> str:
        return f"{self.base}/x-nmos/registration/{version}"

    def query(self, version: str = "v1.3") -> str:
        return f"{self.base}/x-nmos/query/{version}"


class ClusterTest(SocketTest):
    """Members on the shared etcd under a key prefix of the test's own, and an HTTP client."""

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)
        self.prefix = unique_prefix()

    async def member(self, store: str | None = None, expiry: float = 12.0) -> Member:
        settings = Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off",
                            store=store or shared_member().store, store_prefix=self.prefix,
                            registration_expiry_interval=expiry)
        top = build_registry(settings, reactor, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        member = Member(top, f"http://127.0.0.1:{await port_of(top)}")
        if store is None:
            await next(s for s in top if isinstance(s, ClusterStoreService)).loaded
        return member

    async def register(self, member: Member, kind: str, data: dict[str, Any], version: str = "v1.3") -> Answer:
        return await call(self.http, f"{member.registration(version)}/resource", "POST", {"type": kind, "data": data})


class ClusterStoreTests(ClusterTest):
    async def test_create_update_delete_and_409s(self) -> None:
        http, a = self.http, await self.member()
        n = node()
        answer = await self.register(a, "node", n)
        assert answer.code == 201 and answer.body == n
        assert answer.headers["location"] == f"/x-nmos/registration/v1.3/resource/nodes/{n['id']}"
        assert (await self.register(a, "node", n)).code == 200  # the same again: nothing changes
        newer = bump(n, label="renamed")
        assert (await self.register(a, "node", newer)).code == 200
        older = {**n, "label": "stale"}
        stale = await self.register(a, "node", older)
        assert stale.code == 400 and "not later" in stale.body["error"]
        assert (await call(http, f"{a.query()}/nodes/{n['id']}")).body["label"] == "renamed"
        d = device(n["id"])
        assert (await self.register(a, "device", d)).code == 201
        moved = await self.register(a, "device", bump(d, node_id=node()["id"]))
        assert moved.code == 400
        orphan = await self.register(a, "source", source(node()["id"]))
        assert orphan.code == 400 and "not registered" in orphan.body["error"]
        other = await self.register(a, "node", {**newer, "version": "1800000000:0"}, "v1.2")
        assert other.code == 409 and other.headers["location"] == f"/x-nmos/registration/v1.3/resource/nodes/{n['id']}"
        retyped = await self.register(a, "device", {**device(n["id"]), "id": n["id"]})
        assert retyped.code == 400
        health = await call(http, f"{a.registration()}/health/nodes/{n['id']}", "POST")
        assert health.code == 200 and int(health.body["health"]) > 0
        got = await call(http, f"{a.registration()}/health/nodes/{n['id']}")
        assert got.code == 200 and abs(int(got.body["health"]) - int(health.body["health"])) <= 1
        assert (await call(http, f"{a.registration()}/health/nodes/{node()['id']}", "POST")).code == 404
        assert (await call(http, f"{a.registration()}/resource/devices/{d['id']}")).code == 200
        assert (await call(http, f"{a.registration()}/resource/devices/{d['id']}", "DELETE")).code == 204
        assert (await call(http, f"{a.query()}/devices/{d['id']}")).code == 404
        assert (await self.register(a, "device", d)).code == 201  # registered again, once it was gone
        assert (await call(http, f"{a.registration()}/resource/nodes/{n['id']}", "DELETE")).code == 204
        assert (await call(http, f"{a.query()}/devices")).body == []
        assert (await call(http, f"{a.registration()}/resource/nodes/{n['id']}", "DELETE")).code == 404
        assert (await call(http, f"{a.registration()}/health/nodes/{n['id']}", "POST")).code == 404

    async def test_two_members_share_one_registry(self) -> None:
        http, a, b = self.http, await self.member(), await self.member()
        n = node()
        assert (await self.register(a, "node", n)).code == 201
        d = device(n["id"])
        assert (await self.register(b, "device", d)).code == 201  # its parent, registered at a, is known at b
        await eventually(lambda: a.top.registry.find(d["id"]) is not None)
        stamps = []
        for i in range(6):
            answer = await self.register(a if i % 2 else b, "node", node(label=f"n{i}"))
            stamps.append(parse_tai(answer.headers["x-paging-timestamp"]))
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # one order across the cluster
        await eventually(lambda: a.store.applied == b.store.applied)
        for url in ("nodes?paging.limit=3", "nodes?paging.limit=2&paging.order=create", "devices"):
            at_a, at_b = await call(http, f"{a.query()}/{url}"), await call(http, f"{b.query()}/{url}")
            assert at_a.body == at_b.body and at_a.headers.get("link", "").replace(a.base, b.base) == \
                at_b.headers.get("link", "")
        assert (await call(http, f"{b.registration()}/health/nodes/{n['id']}", "POST")).code == 200
        assert (await call(http, f"{b.registration()}/resource/nodes/{n['id']}", "DELETE")).code == 204
        await eventually(lambda: a.top.registry.find(d["id"]) is None)
        assert (await call(http, f"{a.query()}/nodes/{n['id']}")).code == 404

    async def test_expiry_removes_a_node_and_everything_below_it(self) -> None:
        http, a, b = self.http, await self.member(expiry=1), await self.member(expiry=1)
        kept, lost = node(), node()
        for n in (kept, lost):
            assert (await self.register(a, "node", n)).code == 201
            assert (await self.register(a, "device", device(n["id"]))).code == 201

        async def beating() -> bool:  # heartbeats at the other member keep `kept`
            assert (await call(http, f"{b.registration()}/health/nodes/{kept['id']}", "POST")).code == 200
            return not (await call(http, f"{a.query()}/nodes/{lost['id']}")).code == 200

        await eventually(beating, timeout=6.0, step=0.3)
        await eventually(lambda: b.top.registry.count("device") == 1)
        assert a.top.registry.count("device") == 1 and a.top.registry.find(kept["id"]) is not None
        gone = await call(http, f"{b.registration()}/health/nodes/{lost['id']}", "POST")
        assert gone.code == 404

    async def test_members_writing_at_once_do_not_refuse_each_other(self) -> None:
        """Three members each taking 20 registrations at once: all created (a write that loses the stamp to a later
        one takes a later stamp, it is not refused), and the stamps etcd holds increase in revision order."""
        members = [await self.member(), await self.member(), await self.member()]
        families = [(n := node(label=f"n{i}"), device(n["id"])) for i in range(60)]

        async def family(member: Member, n: dict[str, Any], d: dict[str, Any]) -> list[int]:
            return [(await self.register(member, "node", n)).code, (await self.register(member, "device", d)).code]

        answers = await DeferredList([Deferred.fromCoroutine(family(members[i % 3], n, d))
                                      for i, (n, d) in enumerate(families)], fireOnOneErrback=True)
        assert [codes for _, codes in answers] == [[201, 201]] * 60
        held = await members[0].store.etcd.range_all(f"{self.prefix}resource/")
        # Each was written once, at its create_revision (a device's put touches its Node: a later mod_revision).
        stamps = [decode_record(kv.key.rsplit("/", 1)[1], kv.value)[0].updated
                  for kv in sorted(held.kvs, key=lambda kv: kv.create_revision)]
        assert len(stamps) == 120 and stamps == sorted(stamps) and len(set(stamps)) == 120
        for member in members:  # every replica holds them all
            await eventually(lambda member=member: member.top.registry.count("device") == 60)

    async def test_two_members_racing_on_one_id(self) -> None:
        a, b = await self.member(), await self.member()
        for same in (True, False):
            n = node()
            other = n if same else {**n, "label": "the other one"}
            answers = await DeferredList([Deferred.fromCoroutine(self.register(a, "node", n)),
                                          Deferred.fromCoroutine(self.register(b, "node", other))],
                                         consumeErrors=True)
            codes = sorted(answer.code for ok, answer in answers)
            # One creates it; the other finds it there: the same resource is no change, another with the same
            # version is refused. Never two creations.
            assert codes == ([200, 201] if same else [201, 400]), codes
            await eventually(lambda: a.store.applied == b.store.applied)
            assert a.top.registry.find(n["id"]).json == b.top.registry.find(n["id"]).json

    async def test_a_node_deleted_at_one_member_while_heartbeating_at_another(self) -> None:
        http, a, b = self.http, await self.member(), await self.member()
        n = node()
        assert (await self.register(a, "node", n)).code == 201
        d = device(n["id"])
        assert (await self.register(a, "device", d)).code == 201
        await eventually(lambda: b.top.registry.find(d["id"]) is not None)
        beat = f"{b.registration()}/health/nodes/{n['id']}"
        assert (await call(http, beat, "POST")).code == 200
        beating = Deferred.fromCoroutine(call(http, beat, "POST"))
        assert (await call(http, f"{a.registration()}/resource/nodes/{n['id']}", "DELETE")).code == 204
        assert (await beating).code in (200, 404)  # before or after the deletion
        assert (await call(http, beat, "POST")).code == 404  # b's replica may lag; the lease is gone
        await eventually(lambda: b.top.registry.find(d["id"]) is None)
        # A registration of the device now finds no parent anywhere, and the Node registers anew.
        assert (await self.register(b, "device", bump(d))).code == 400
        assert (await self.register(b, "node", n)).code == 201

    async def test_a_replica_behind_compacted_history_reloads_and_publishes_the_difference(self) -> None:
        http, a, b = self.http, await self.member(), await self.member()
        kept, gone, new = node(), node(), node()
        for n in (kept, gone):
            assert (await self.register(a, "node", n)).code == 201
        await eventually(lambda: b.top.registry.find(gone["id"]) is not None)
        changes: list[Any] = []
        b.top.registry.feed.subscribe(changes.extend)
        resume_from = b.store._watch.next_revision
        await b.store._watch.stop()  # b hears nothing for a while
        assert (await self.register(a, "node", new)).code == 201
        assert (await self.register(a, "node", bump(kept, label="changed"))).code == 200
        assert (await call(http, f"{a.registration()}/resource/nodes/{gone['id']}", "DELETE")).code == 204
        await a.store.etcd.compact(a.store.applied)  # and what it missed is no longer in etcd's history
        b.store._watch = b.store.etcd.watch(b.store.prefix, resume_from, b.store._events, b.store._compacted)
        await eventually(lambda: b.top.registry.find(gone["id"]) is None)
        await eventually(lambda: b.store.current)
        seen = {(change.id, change.pre is not None, change.post is not None) for change in changes}
        assert seen == {(new["id"], False, True), (kept["id"], True, True), (gone["id"], True, False)}
        assert b.top.registry.find(kept["id"]).data["label"] == "changed"
        for url in ("nodes", "nodes?paging.limit=2"):
            assert (await call(http, f"{a.query()}/{url}")).body == (await call(http, f"{b.query()}/{url}")).body

    async def test_every_member_lists_every_subscription(self) -> None:
        http, a, b = self.http, await self.member(), await self.member()
        body = {"max_update_rate_ms": 100, "resource_path": "/nodes", "params": {"label": "x"}, "persist": True,
                "secure": False, "authorization": False}
        made = await call(http, f"{a.query()}/subscriptions", "POST", body)
        assert made.code == 201 and made.body["ws_href"].startswith(f"ws://{a.base[len('http://'):]}/")
        passing = await call(http, f"{a.query()}/subscriptions", "POST", {**body, "persist": False})
        assert passing.code == 201
        sid, passing_id = made.body["id"], passing.body["id"]

        async def listed_at_b() -> bool:
            return {item["id"] for item in (await call(http, f"{b.query()}/subscriptions")).body} == {sid, passing_id}

        await eventually(listed_at_b)
        assert (await call(http, f"{b.query()}/subscriptions/{sid}")).body == made.body
        assert (await call(http, f"{b.query()}/subscriptions?paging.limit=1")).body == \
            (await call(http, f"{a.query()}/subscriptions?paging.limit=1")).body
        assert (await call(http, f"{b.query()}/subscriptions/{passing_id}", "DELETE")).code == 403
        assert (await call(http, f"{b.query()}/subscriptions/{sid}", "DELETE")).code == 204
        assert (await call(http, f"{b.query()}/subscriptions/{sid}")).code == 404
        await eventually(lambda: a.top.registry is not None and
                         sid not in {item.id for item in a.store.subscriptions.held.values()} and
                         all(item.id != sid for item in
                             next(s for s in a.top if hasattr(s, "manager")).manager.listing("v1.3")))
        assert (await call(http, f"{a.query()}/subscriptions/{sid}")).code == 404
        # A member whose store stops takes its subscriptions off every list. (Only the store: two registries'
        # log level services, stopped in the order they started, would leave the log observers doubled.)
        await next(s for s in a.top if isinstance(s, ClusterStoreService)).stopService()
        await eventually(lambda: passing_id not in b.store.subscriptions.held)
        assert (await call(http, f"{b.query()}/subscriptions")).body == []

    async def test_a_subscription_deleted_at_its_member_is_gone_there_at_once(self) -> None:
        # The member's table holds its own subscriptions too (the watch brings its puts back) until etcd's
        # deletion comes back: the member must not serve a deleted one from there meanwhile.
        http, a = self.http, await self.member()
        body = {"max_update_rate_ms": 100, "resource_path": "/nodes", "params": {}, "persist": True,
                "secure": False, "authorization": False}
        made = (await call(http, f"{a.query()}/subscriptions", "POST", body)).body
        passing = (await call(http, f"{a.query()}/subscriptions", "POST", {**body, "persist": False})).body
        await eventually(lambda: {made["id"], passing["id"]} <= a.store.subscriptions.held.keys())
        await a.store._watch.stop()  # etcd's deletion will not come back
        a.store._watch = None
        assert (await call(http, f"{a.query()}/subscriptions/{made['id']}", "DELETE")).code == 204
        assert (await call(http, f"{a.query()}/subscriptions/{made['id']}")).code == 404
        assert [item["id"] for item in (await call(http, f"{a.query()}/subscriptions")).body] == [passing["id"]]
        assert (await call(http, f"{a.query()}/subscriptions/{made['id']}", "DELETE")).code == 404

    async def test_a_subscriber_gets_what_its_member_missed_as_ordinary_grains(self) -> None:
        http, a, b = self.http, await self.member(), await self.member()
        first, second = node(), node()
        assert (await self.register(a, "node", first)).code == 201
        await eventually(lambda: b.top.registry.find(first["id"]) is not None)
        body = {"max_update_rate_ms": 100, "resource_path": "/nodes", "params": {}, "persist": False,
                "secure": False}
        subscription = (await call(http, f"{b.query()}/subscriptions", "POST", body)).body
        client = await connect(subscription, "v1.3")
        sockets = next(s for s in b.top if isinstance(s, SubscriptionService)).factory.sockets

        async def closed() -> None:
            await client.close()
            for socket in list(sockets):
                await socket.when_closed()
        self.addCleanup(lambda: Deferred.fromCoroutine(closed()))
        (synced,) = await client.events(1)  # the initial state
        assert synced["post"]["id"] == first["id"]
        resume_from = b.store._watch.next_revision
        await b.store._watch.stop()  # b hears nothing from etcd for a while
        assert (await self.register(a, "node", second)).code == 201
        assert (await self.register(a, "node", bump(first, label="changed"))).code == 200
        assert client.unread == 0
        b.store._watch = b.store.etcd.watch(b.store.prefix, resume_from, b.store._events, b.store._compacted)
        added, changed = await client.events(2)  # in the order etcd made them
        assert "pre" not in added and added["post"]["id"] == second["id"]
        assert changed["pre"]["label"] == "node" and changed["post"]["label"] == "changed"

    async def test_ancestry_at_every_member(self) -> None:
        http, a, b = self.http, await self.member(), await self.member()
        family = Family.build("v1.3")
        for kind, data in family.members():
            assert (await self.register(a, kind, data)).code == 201
        device_id, root = family.device["id"], family.source
        child = source(device_id, parents=[root["id"]])
        grandchild = source(device_id, parents=[child["id"]])
        for data in (child, grandchild):  # registered at the other member
            assert (await self.register(b, "source", data)).code == 201
        await eventually(lambda: a.top.registry.find(grandchild["id"]) is not None)
        for member in (a, b):
            url = f"{member.query()}/sources?query.ancestry_id={root['id']}&query.ancestry_type=children"
            answer = await call(http, url)
            assert {item["id"] for item in answer.body} == {child["id"], grandchild["id"]}
            url = f"{member.query()}/sources?query.ancestry_id={grandchild['id']}&query.ancestry_type=parents"
            assert {item["id"] for item in (await call(http, url)).body} == {child["id"], root["id"]}

    async def test_etcd_out_of_reach_is_a_503_and_the_query_api_still_answers(self) -> None:
        http = self.http
        a = await self.member(store="etcd://" + ",".join(f"127.0.0.1:{port}" for port in free_ports(2)))
        answer = await self.register(a, "node", node())
        assert answer.code == 503 and answer.headers["retry-after"] == "5"
        assert "etcd" in answer.body["error"]
        stale = await call(http, f"{a.query()}/nodes")
        assert stale.code == 200 and stale.headers["x-registry-stale"] == "true"
        assert "X-Registry-Stale" in stale.headers["access-control-expose-headers"]

    async def test_the_query_api_says_when_it_may_be_stale(self) -> None:
        a = await self.member()
        await eventually(lambda: a.store.current)
        assert "x-registry-stale" not in (await call(self.http, f"{a.query()}/nodes")).headers
        await a.store._watch.stop()  # the watch is down (as while etcd is out of reach)
        a.store._watch = None
        assert (await call(self.http, f"{a.query()}/nodes")).headers["x-registry-stale"] == "true"


class BigRemovalTests(ClusterTest):
    """A Node with 1,200 resources goes in one etcd revision; every member's replica removes it REMOVAL_STEP (500)
    resources a step, a whole tree after each, and applies the revisions after it only then."""

    SIZE = 1200

    async def big_node(self, member: Member, n: dict[str, Any] | None = None) -> dict[str, Any]:
        """A Node (`n`, or a new one) with a Device and SIZE - 2 Sources at `member`: the Node and the Device
        registered, the Sources judged by the member's rules and written as it would write them (with the Node's
        lease and fresh stamps), 100 a transaction rather than one at a time (which takes ten seconds)."""
        n = n or node()
        if member.top.registry.find(n["id"]) is None:
            assert (await self.register(member, "node", n)).code == 201
        d = device(n["id"])
        assert (await self.register(member, "device", d)).code == 201
        store = member.store
        lease, stamp = store._leases[n["id"]], store._stamp[0]
        for start in range(0, self.SIZE - 2, 100):
            writes = []
            for _ in range(min(100, self.SIZE - 2 - start)):
                stamp += 1
                record = member.top.registry.propose("source", source(d["id"]), "v1.3").record(stamp)
                writes.append(Put(store._key(record.id), encode_record(record, lease), lease))
            writes.append(Put(store._stamp_key, stamp_text(stamp)))
            async with store._turn:  # the member's own writes wait
                assert (await store.etcd.txn([], writes)).succeeded
        await eventually(lambda: member.top.registry.count("source") == self.SIZE - 2)
        return n

    @staticmethod
    def steps(member: Member) -> list[tuple[int, int, int]]:
        """What `member`'s replica publishes from now on: (removals, other changes, the revision applied) per
        batch, each checked to leave a whole tree."""
        seen: list[tuple[int, int, int]] = []
        registry = member.top.registry

        def published(changes: Any) -> None:
            for kind in ("device", "source"):
                for record in registry.resources(kind):
                    assert registry.find(record.parent_id) is not None, f"{record} outlived its parent"
            removed = sum(1 for change in changes if change.post is None)
            seen.append((removed, len(changes) - removed, member.store.applied))
        registry.feed.subscribe(published)
        return seen

    async def test_a_big_node_deleted_at_one_member_goes_in_steps_at_every_member(self) -> None:
        http, a, b = self.http, await self.member(expiry=60), await self.member(expiry=60)  # no heartbeats
        n = await self.big_node(a)
        await eventually(lambda: b.top.registry.count("source") == self.SIZE - 2)
        # b hears nothing for a moment, then gets the deletion and the registration after it in one delivery
        resume_from = b.store._watch.next_revision
        await b.store._watch.stop()
        at_a, at_b = self.steps(a), self.steps(b)
        before = a.store.applied
        assert (await call(http, f"{a.registration()}/resource/nodes/{n['id']}", "DELETE")).code == 204
        # The 204 came once a's replica had applied all of it, in ceil(1200 / 500) steps
        assert [removed for removed, _, _ in at_a] == [500, 500, 200] and a.top.registry.count("source") == 0
        deletion = a.store.applied
        assert [applied for _, _, applied in at_a] == [before, before, before] and deletion > before
        after = node()
        assert (await self.register(a, "node", after)).code == 201  # a write at a after it reads its own write
        assert (await call(http, f"{a.query()}/nodes/{after['id']}")).body == after
        assert (await call(http, f"{a.query()}/nodes/{n['id']}")).code == 404
        # b still holds the Node: a Device registered there is judged against it, loses its compare at etcd and
        # waits for b's replica to apply what won, then is judged again, against the replica without it
        late = Deferred.fromCoroutine(self.register(b, "device", device(n["id"])))
        await eventually(lambda: b.store._waiters)  # lost, waiting for b's replica
        b.store._watch = b.store.etcd.watch(b.store.prefix, resume_from, b.store._events, b.store._compacted)
        refused = await late
        assert refused.code == 400 and "not registered" in refused.body["error"]
        await eventually(lambda: b.top.registry.find(after["id"]) is not None)
        # at b: the removal in three steps, the revision that came with it applied after them, `applied` moving
        # to the deletion's revision only once the whole of it was applied
        assert at_b == [(500, 0, before), (500, 0, before), (200, 0, before), (0, 1, deletion)]
        assert (await call(http, f"{b.query()}/sources")).body == []
        assert (await call(http, f"{b.query()}/nodes")).body == [after]

    async def test_a_big_node_expired_goes_in_steps_at_every_member(self) -> None:
        http, a, b = self.http, await self.member(expiry=2), await self.member(expiry=2)
        beating = [True]

        async def heartbeats(node_id: str) -> None:
            while beating[0]:
                assert (await call(http, f"{b.registration()}/health/nodes/{node_id}", "POST")).code == 200
                await deferLater(reactor, 0.5, lambda: None)

        n = node()
        assert (await self.register(a, "node", n)).code == 201
        beat = Deferred.fromCoroutine(heartbeats(n["id"]))  # at b, while it grows at a
        await self.big_node(a, n)
        await eventually(lambda: b.top.registry.count("source") == self.SIZE - 2)
        at_a, at_b = self.steps(a), self.steps(b)
        beating[0] = False
        await beat
        await eventually(lambda: a.top.registry.find(n["id"]) is None and b.top.registry.find(n["id"]) is None)
        for seen in (at_a, at_b):
            assert [removed for removed, _, _ in seen] == [500, 500, 200]
            assert len({applied for _, _, applied in seen}) == 1  # the expiry's revision applied after the last
        assert a.store.applied == b.store.applied > at_a[0][2]
        assert (await call(http, f"{b.query()}/sources")).body == []


class MemberProcessTests(ClusterTest):
    """Members as twistd processes, one of them killed with SIGKILL."""

    async def twistd_member(self) -> tuple[Any, str]:
        twistd = str(Path(sys.executable).with_name("twistd"))
        process = TwistdProcess()
        env = {**os.environ, "PYTHONPATH": str(Path(nmos_ref.__file__).parents[1])}  # this copy of nmos_ref
        transport = reactor.spawnProcess(process, twistd, [
            twistd, "-n", "--pidfile=", "nmos-ref", "registry", "--listen", "tcp:0:interface=127.0.0.1",
            "--dns-sd", "off", "--store", shared_member().store, "--config", str(self.config)],
            env=env, path=str(self.tmp_path))

        async def ended() -> None:
            if transport.pid is not None:
                transport.signalProcess("KILL")
            await process.ended
        self.addCleanup(lambda: Deferred.fromCoroutine(ended()))
        port = await process.port
        return transport, f"http://127.0.0.1:{port}"

    async def test_a_member_killed_in_the_middle_of_a_registration(self) -> None:
        self.config = self.tmp_path / "nmos.json"
        self.config.write_text(json.dumps({"store_prefix": self.prefix}))
        http, b = self.http, await self.member()
        killed, base = await self.twistd_member()
        early = node()
        assert (await call(http, f"{base}/x-nmos/registration/v1.3/resource", "POST",
                           {"type": "node", "data": early})).code == 201
        late = [node() for _ in range(5)]
        posting = [Deferred.fromCoroutine(call(http, f"{base}/x-nmos/registration/v1.3/resource", "POST",
                                               {"type": "node", "data": n})) for n in late]
        await deferLater(reactor, 0.01, lambda: None)  # (a registration at etcd takes a few milliseconds)
        killed.signalProcess("KILL")
        await DeferredList(posting, consumeErrors=True)  # some answers never come
        # The Node fails over to another member: its registration there is a 201 or, if the killed member had
        # committed it, a 200; never an error, and one copy of it.
        for n in late:
            assert (await self.register(b, "node", n)).code in (200, 201)
        assert (await call(http, f"{b.registration()}/health/nodes/{early['id']}", "POST")).code == 200
        ids = [item["id"] for item in (await call(http, f"{b.query()}/nodes")).body]
        assert sorted(ids) == sorted([early["id"]] + [n["id"] for n in late])


# The replica fed by a watch whose revisions the test delivers itself, its cooperator's turns on a Clock.

PREFIX = "/unit/"
TURN = 0.001  # the cooperator's turns are this far apart on the Clock, so that one advance is one turn


class HeldEtcd:
    """What the store reads of etcd to load its replica and watch it (`range_all`, `watch`), held by the test."""

    def __init__(self) -> None:
        self.snapshot = RangeResult(1, (), 0, False)
        self.watches: list[HeldWatch] = []

    def range_all(self, prefix: str) -> Deferred[RangeResult]:
        return succeed(self.snapshot)

    def watch(self, prefix: str, start_revision: int, on_events: Any, on_compacted: Any) -> HeldWatch:
        self.watches.append(HeldWatch(start_revision, on_events, on_compacted))
        return self.watches[-1]


class HeldWatch:
    connected = True

    def __init__(self, start_revision: int, on_events: Any, on_compacted: Any) -> None:
        self.start_revision = start_revision
        self.deliver = on_events  # (events, revision), as etcd's watch hands them over
        self.compacted = on_compacted

    def stop(self) -> Deferred[None]:
        return succeed(None)


def put(record: Resource, revision: int) -> Event:
    return Event("put", KeyValue(f"{PREFIX}resource/{record.id}", encode_record(record, 7), revision, revision, 1, 7))


def deleted(rid: str, revision: int) -> Event:
    return Event("delete", KeyValue(f"{PREFIX}resource/{rid}", b"", 0, revision, 0))


class ReplicaStepTests(UnitTest):
    """A revision that removes more than `step` resources is applied a step per turn of the cooperator (a Clock's
    turns here), the revisions delivered meanwhile waiting behind it; what the store promises meanwhile holds."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.turns = 0

        def schedule(work: Any) -> Any:
            return self.clock.callLater(TURN, work)

        cooperator = Cooperator(scheduler=schedule, terminationPredicateFactory=lambda: lambda: True)
        self.etcd = HeldEtcd()
        self.replica = Registry()
        self.store = ClusterStore(self.etcd, self.replica, self.clock, PREFIX, cooperator=cooperator,  # type: ignore
                                  step=4)
        self.successResultOf(self.store.start())
        self.query = QueryHarness(registry=self.replica)
        self.published: list[list[Change]] = []
        self.replica.feed.subscribe(lambda changes: self.published.append(list(changes)))
        self.origin = Registry()  # where the records come from, stamped (as another member would)
        self.now = 1_760_000_000.0
        big = self.make("node", node())
        dev = self.make("device", device(big.id))
        self.big = [big, dev] + [self.make("source", source(dev.id)) for _ in range(8)]  # 10: 3 steps of 4
        self.other = self.make("node", node())
        self.watch.deliver([put(record, 2) for record in self.big + [self.other]], 2)
        del self.published[:]

    @property
    def watch(self) -> HeldWatch:
        return self.etcd.watches[-1]

    def make(self, kind: str, data: dict[str, Any]) -> Resource:
        self.now += 1  # the origin's own time: the store's Clock moves only by turns
        return self.origin.register(kind, data, "v1.3", now=self.now).resource

    def turn(self) -> None:
        self.turns += 1
        self.clock.advance(TURN)

    def assert_whole_tree_served(self) -> None:
        """Every device and source the Query API lists has its parent listed too."""
        nodes = {item["id"] for item in self.query.get("/v1.3/nodes").body}
        devices = self.query.get("/v1.3/devices").body
        assert all(item["node_id"] in nodes for item in devices), devices
        ids = {item["id"] for item in devices}
        assert all(item["device_id"] in ids for item in self.query.get("/v1.3/sources").body)

    def removals(self) -> list[str]:
        return [change.id for batch in self.published for change in batch if change.post is None]

    def test_a_big_removal_a_step_per_turn_and_what_follows_after_it(self) -> None:
        store = self.store
        assert store.applied == 2
        written = ensureDeferred(store._caught_up(3))  # a write of revision 3 waits for the replica to apply it
        self.watch.deliver([deleted(record.id, 3) for record in sorted(self.big, key=lambda r: r.id)], 3)
        assert [len(batch) for batch in self.published] == [4]  # the first step, in the delivery's own turn
        late = self.make("device", device(self.other.id))
        self.watch.deliver([put(late, 4)], 4)  # waits behind the removal
        assert self.replica.find(late.id) is None and store.applied == 2
        self.assertNoResult(written)
        seen = [[len(batch) for batch in self.published]]
        while store._stepping is not None:
            self.assert_whole_tree_served()
            assert store.applied == 2 and self.replica.find(late.id) is None
            self.assertNoResult(written)
            self.turn()
            seen.append([len(batch) for batch in self.published])
        # ceil(10 / 4) steps, the first in the delivery's turn; revision 4 in the turn that ends revision 3
        assert seen == [[4], [4, 4], [4, 4, 2, 1]] and self.turns == 2
        assert self.successResultOf(written) is None and store.applied == 4
        removed = self.removals()
        assert sorted(removed) == sorted(record.id for record in self.big)  # each exactly once
        assert [change.id for change in self.published[-1]] == [late.id] and self.replica.find(late.id) is not None
        assert self.clock.getDelayedCalls() == []  # nothing left scheduled
        assert all(record.id not in store._revisions for record in self.big) and self.big[0].id not in store._leases
        assert store._revisions[late.id] == 4
        self.assert_whole_tree_served()

    def test_a_small_removal_is_applied_at_once(self) -> None:
        small = self.big[:2] + self.big[-2:]  # the node, its device and two sources: 4, one step's worth
        self.watch.deliver([deleted(record.id, 3) for record in self.big[2:-2]], 3)  # 6 sources: two steps
        self.turn()
        del self.published[:]
        self.watch.deliver([deleted(record.id, 4) for record in small], 4)
        assert [len(batch) for batch in self.published] == [4] and self.store.applied == 4
        assert self.store._stepping is None and self.clock.getDelayedCalls() == []

    def test_a_reload_while_a_removal_steps_leaves_the_replica_equal_to_etcd(self) -> None:
        store = self.store
        self.watch.deliver([deleted(record.id, 3) for record in self.big], 3)
        new, newer = self.make("node", node()), self.make("node", node())
        self.watch.deliver([put(new, 4)], 4)  # waits behind, and is then dropped: the snapshot holds it
        assert self.removals() == [record.id for record in self.published[0]] and len(self.removals()) == 4
        # etcd compacts its history past the watch; the reload finds revision 6 with two new Nodes
        self.etcd.snapshot = RangeResult(6, tuple(put(record, 5).kv for record in (self.other, new, newer)), 3,
                                         False)
        self.watch.compacted(5)
        assert self.watch.start_revision == 7  # watched again from after the snapshot
        last = self.make("device", device(newer.id))
        self.watch.deliver([put(last, 7)], 7)  # waits behind the reload's own removal (the 6 left: two steps)
        assert store.applied == 2 and self.replica.find(last.id) is None
        while store._stepping is not None:
            self.assert_whole_tree_served()
            self.turn()
        assert sorted(self.removals()) == sorted(record.id for record in self.big)  # each exactly once
        held = sorted(record.id for kind in ("node", "device", "source") for record in self.replica.resources(kind))
        assert held == sorted(record.id for record in (self.other, new, newer, last))
        assert store.applied == 7 and self.clock.getDelayedCalls() == []
        assert sorted(store._revisions) == sorted(record.id for record in (self.other, new, newer, last))

    def test_a_revision_that_cannot_be_read_does_not_stop_those_behind_it(self) -> None:
        store = self.store
        self.watch.deliver([deleted(record.id, 3) for record in self.big], 3)
        broken = Event("put", KeyValue(f"{PREFIX}resource/{self.other.id}", b"not JSON", 2, 4, 2, 7))
        self.watch.deliver([broken], 4)
        late = self.make("node", node())
        self.watch.deliver([put(late, 5)], 5)
        while store._stepping is not None:
            self.turn()
        assert len(self.flushLoggedErrors(ValueError)) == 1
        assert self.replica.find(late.id) is not None and store.applied == 5 and self.clock.getDelayedCalls() == []
        assert self.replica.find(self.other.id) is not None  # as it was

    def test_stop_while_a_removal_steps_leaves_nothing_scheduled(self) -> None:
        store = self.store
        self.watch.deliver([deleted(record.id, 3) for record in self.big], 3)
        self.watch.deliver([put(self.make("node", node()), 4)], 4)
        assert self.clock.getDelayedCalls() != []  # the next step
        self.successResultOf(store.stop())
        assert self.clock.getDelayedCalls() == [] and store._stepping is None
        self.watch.deliver([put(self.make("node", node()), 5)], 5)  # late: ignored
        assert [len(batch) for batch in self.published] == [4] and store.applied == 2
