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
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

import nmos_ref
from nmos_ref.api.subscription_service import SubscriptionService
from nmos_ref.config import Settings
from nmos_ref.model.tai import parse_tai
from nmos_ref.cluster.store import decode_record
from nmos_ref.wiring.cluster import ClusterStoreService
from nmos_ref.wiring.registry import build_registry
from tests.cluster.test_etcd import eventually
from tests.support.cases import SocketTest
from tests.support.etcd import free_ports, shared_member, unique_prefix
from tests.support.samples import Answer, Family, bump, check, device, node, port_of, source
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
