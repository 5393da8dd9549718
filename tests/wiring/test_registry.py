"""The Query API of the real service over a loopback socket: resources registered through the Registration API,
then queried, paged by following the Link headers, and downgraded."""

from __future__ import annotations

from typing import Any

import treq
from attrs import evolve
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from nmos_ref.config import Settings
from nmos_ref.wiring.cluster import ClusterStoreService
from nmos_ref.wiring.registry import build_registry
from tests.support.cases import SocketTest, cases
from tests.support.etcd import shared_member, unique_prefix
from tests.support.samples import Answer, Family, check, node, port_of


async def call(http: Any, url: str, method: str = "GET", body: Any = None) -> Answer:
    response = await http.request(method, url, json=body)
    raw = await response.content()  # always read, so the connection goes back to the pool in a clean state
    headers = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
    answer = Answer(response.code, headers, raw)
    if "/x-nmos/query/" in url:
        assert answer.headers["content-type"] == "application/json"
        check(url.split("/x-nmos/query")[1], answer)
    return answer


class RegistryOnLoopbackTests(SocketTest):
    """The registry service built by wiring, on a loopback port, driven over HTTP."""

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)

    @cases("store", ["memory", "etcd"])
    async def test_query_api_on_a_loopback_port(self, http: Any, store: str) -> None:
        settings = Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off")
        if store == "etcd":  # the same test on a registry cluster's store (docs/cluster.md), one member
            settings = evolve(settings, store=shared_member().store, store_prefix=unique_prefix())
        top = build_registry(settings, reactor, reactor)
        top.startService()
        try:
            if store == "etcd":
                await next(service for service in top if isinstance(service, ClusterStoreService)).loaded
            base = f"http://127.0.0.1:{await port_of(top)}/x-nmos"
            assert "query/" in (await call(http, f"{base}/")).body
            old, new = Family.build("v1.2"), Family.build("v1.3")
            for family in (old, new):
                for kind, data in family.members():
                    answer = await call(http, f"{base}/registration/{family.version}/resource", "POST",
                                        {"type": kind, "data": data})
                    assert answer.code == 201, answer.body
            for _ in range(4):
                answer = await call(http, f"{base}/registration/v1.3/resource", "POST",
                                    {"type": "node", "data": node("v1.3", label="extra")})
                assert answer.code == 201

            answer = await call(http, f"{base}/query/v1.3/nodes?paging.limit=2")
            assert answer.code == 200 and len(answer.body) == 2
            links = answer.links()
            assert links["prev"].startswith(f"{base}/query/v1.3/nodes?paging.until=")  # absolute, from the Host used
            seen = [item["id"] for item in answer.body]
            while answer.body:
                answer = await call(http, answer.links()["prev"])
                seen += [item["id"] for item in answer.body]
            assert len(seen) == 5 and new.node["id"] in seen and old.node["id"] not in seen

            answer = await call(http, f"{base}/query/v1.3/nodes/{old.node['id']}")
            assert answer.code == 409 and answer.headers["location"] == f"/x-nmos/query/v1.2/nodes/{old.node['id']}"
            answer = await call(http, f"{base}/query/v1.3/nodes/{old.node['id']}?query.downgrade=v1.2")
            assert answer.code == 200 and answer.body == old.node
            answer = await call(http, f"{base}/query/v1.2/nodes/{new.node['id']}")
            assert answer.code == 200 and "attached_network_device" not in answer.body["interfaces"][0]

            answer = await call(http, f"{base}/query/v1.0/senders")
            assert {item["id"] for item in answer.body} == {old.sender["id"], new.sender["id"]}
            assert all("subscription" not in item for item in answer.body)
            answer = await call(http, f"{base}/query/v1.3/flows?query.rql=eq(source_id,{new.source['id']})")
            assert [item["id"] for item in answer.body] == [new.flow["id"]]
            answer = await call(http, f"{base}/query/v1.3/nodes?query.rql=sort(label)")
            assert answer.code == 501

            answer = await call(http, f"{base}/registration/v1.3/resource/nodes/{new.node['id']}", "DELETE")
            assert answer.code == 204
            answer = await call(http, f"{base}/query/v1.3/senders/{new.sender['id']}")
            assert answer.code == 404  # the cascade reached the Query API's caches and indexes
            assert (await call(http, f"{base}/query/v1.3/senders?label=sender")).body == []
        finally:
            await top.stopService()
