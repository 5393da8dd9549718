"""/subscriptions over HTTP on both stores (tests/support/backends.py: in memory through StubTreq, and a registry
cluster member on etcd, whose subscriptions every member lists): every answer checked against the official schemas
of its version (tests/support/samples.py `check`). The sockets themselves are in test_query_sockets.py."""

from __future__ import annotations

import uuid

import pytest

from tests.support.backends import Bodies, OnEtcd, OnMemory
from tests.support.cases import cases
from tests.support.samples import VERSIONS, QueryHarness
from tests.support.websockets import subscription_body

PATHS = ("/nodes", "/devices", "/sources", "/flows", "/senders", "/receivers")


class SubscriptionsOverHttp(Bodies):
    @cases("version", VERSIONS)
    async def test_post_creates_then_returns_the_same_subscription(self, version: str) -> None:
        harness = self.api
        created = await harness.subscribe(version)
        assert created.code == 201
        body = created.body
        assert created.headers["location"] == f"/x-nmos/query/{version}/subscriptions/{body['id']}"
        assert body["ws_href"] == f"ws://api.example.com:8235/x-nmos/query/{version}/ws/{body['id']}"
        assert (body["resource_path"], body["params"], body["persist"], body["max_update_rate_ms"]) == \
               ("/nodes", {}, False, 100)
        assert ("secure" in body) is (version != "v1.0") and ("authorization" in body) is (version == "v1.3")
        again = await harness.subscribe(version)
        assert again.code == 200 and again.body == body and again.headers["location"] == created.headers["location"]
        other = await harness.subscribe(version, params={"label": "x"})
        assert other.code == 201 and other.body["id"] != body["id"] and other.body["params"] == {"label": "x"}
        assert (await harness.send("GET", f"/{version}/subscriptions/{body['id']}")).body == body

    @cases("path", PATHS)
    async def test_every_resource_path(self, path: str) -> None:
        answer = await self.api.subscribe(resource_path=path, persist=True, max_update_rate_ms=0)
        assert answer.code == 201 and answer.body["resource_path"] == path and answer.body["persist"]

    async def test_authorization_follows_the_api_mode(self) -> None:
        assert (await self.api.subscribe(authorization=None)).body["authorization"] is False
        assert (await self.api.subscribe(authorization=True)).code == 400
        secured = await self.new_api(authorization=True)
        assert (await secured.subscribe(authorization=None)).body["authorization"] is True
        assert (await secured.subscribe(authorization=False)).code == 400
        assert (await secured.subscribe("v1.2")).code == 201  # no such attribute before v1.3

    async def test_ws_href_names_the_host_the_client_used(self) -> None:
        harness = self.api
        first = await harness.send("POST", "/v1.3/subscriptions", subscription_body(),
                             base="http://192.0.2.1:9000/x-nmos/query")
        assert first.body["ws_href"].startswith("ws://192.0.2.1:9000/x-nmos/query/v1.3/ws/")
        second = await harness.subscribe()
        assert second.code == 201 and second.body["id"] != first.body["id"]  # only reused on the same host
        named = await self.new_api(host_name="registry.example")
        assert (await named.subscribe()).body["ws_href"].startswith("ws://registry.example:8235/x-nmos/query/v1.3/ws/")

    @cases("body", [
        {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes"},
        {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes/", "params": {}},
        {"max_update_rate_ms": 100, "persist": False, "resource_path": "/subscriptions", "params": {}},
        {"max_update_rate_ms": "100", "persist": False, "resource_path": "/nodes", "params": {}},
        {"max_update_rate_ms": 100, "persist": "no", "resource_path": "/nodes", "params": {}},
        {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes", "params": []},
        {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes", "params": {}, "secure": "no"},
        {"max_update_rate_ms": -1, "persist": False, "resource_path": "/nodes", "params": {}},
        {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes", "params": {"tags": {"a": "b"}}},
        {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes", "params": {"paging.limit": "1"}},
        {"max_update_rate_ms": 100, "persist": False, "resource_path": "/nodes", "params": {"query.rql": "eq(a"}},
        [],
    ], ids=["no_params", "trailing_slash", "subscriptions_path", "rate_a_string", "persist_a_string", "params_a_list",
            "secure_a_string", "negative_rate", "nested_param", "paging_param", "bad_rql", "not_an_object"])
    @cases("version", VERSIONS)
    async def test_bad_bodies_are_400(self, version: str, body: object) -> None:
        harness = self.api
        answer = await harness.send("POST", f"/{version}/subscriptions", body)
        if version == "v1.0" and isinstance(body, dict) and "secure" in body:
            assert answer.code == 201  # v1.0 defines no `secure`, and its schema allows any other key
            return
        assert answer.code == 400, answer.body
        assert (await harness.send("GET", f"/{version}/subscriptions")).body == []

    async def test_bodies_that_are_not_json(self) -> None:
        harness = self.api
        assert (await harness.send("POST", "/v1.3/subscriptions", raw=b"{")).code == 400
        # #11: each of these was stored (a lone surrogate, as a persistent subscription whose id was never revealed,
        # then broke GET /subscriptions until restart; 1e400 broke the socket's rate limit).
        for value in (b'"\\ud800"', b"NaN", b"1e400", b"Infinity", b"[" * 100 + b"]" * 100):
            raw = b'{"max_update_rate_ms": 100, "persist": true, "resource_path": "/nodes", "params": {"label": ' + \
                value + b"}}"
            answer = await harness.send("POST", "/v1.3/subscriptions", raw=raw)
            assert answer.code == 400 and "not valid JSON" in answer.body["error"], (value, answer.body)
        raw = b'{"max_update_rate_ms": 1e400, "persist": true, "resource_path": "/nodes", "params": {}}'
        assert (await harness.send("POST", "/v1.3/subscriptions", raw=raw)).code == 400
        assert (await harness.send("GET", "/v1.3/subscriptions")).body == []

    @cases("rate,status,served", [(0, 201, 0), (86_400_000, 201, 86_400_000),
                                  (86_400_001, 400, None), (2 ** 63, 400, None), (1e300, 400, None)])
    async def test_max_update_rate_ms_is_bounded_and_served_as_an_integer(self, rate: float, status: int,
                                                                     served: int) -> None:
        answer = await self.api.subscribe(max_update_rate_ms=rate)
        assert answer.code == status, answer.body
        if served is not None:
            assert answer.body["max_update_rate_ms"] == served and isinstance(answer.body["max_update_rate_ms"], int)

    @cases("params", [{"query.rql": "sort(label)"}, {"query.ancestry_id": str(uuid.uuid4()),
                                                     "query.ancestry_type": "children"}], ids=["sort", "ancestry"])
    async def test_unsupported_params_are_501_from_v1_1(self, params: dict[str, str]) -> None:
        harness = self.api
        assert (await harness.subscribe(resource_path="/sources", params=params)).code == 501
        assert (await harness.subscribe("v1.1", resource_path="/sources", params=params)).code == 501
        # v1.0's RAML has no 501 for POST /subscriptions, and v1.0 has no query.* parameters at all
        assert (await harness.subscribe("v1.0", resource_path="/sources", params=params)).code == 400

    async def test_supported_params(self) -> None:
        harness = self.api
        for params in ({"label": "a", "tags.location": "Salford", "frame_width": 1920, "subscription.active": True},
                       {"query.rql": "and(eq(label,a),ne(description,b))"}, {"query.downgrade": "v1.0"}):
            assert (await harness.subscribe(params=params)).code == 201

    @cases("version", VERSIONS)
    async def test_listing_holds_only_the_version_asked(self, version: str) -> None:
        harness = self.api
        made = {v: (await harness.subscribe(v)).body for v in VERSIONS}
        persistent = (await harness.subscribe(version, persist=True)).body
        answer = await harness.send("GET", f"/{version}/subscriptions")
        assert answer.code == 200
        if version == "v1.0":
            assert answer.body == [made["v1.0"], persistent] and "x-paging-limit" not in answer.headers
        else:
            assert answer.body == [persistent, made[version]]  # paged: newest first
            assert answer.headers["x-paging-limit"] == "100"
            # nmos-testing test_22_1: query.downgrade is accepted and lists only this version's subscriptions
            downgraded = await harness.send("GET", f"/{version}/subscriptions?query.downgrade=v1.0")
            assert downgraded.code == 200 and downgraded.body == answer.body
            page = await harness.send("GET", f"/{version}/subscriptions?paging.limit=1")
            assert page.body == [persistent] and "rel=\"prev\"" in page.headers["link"]
            assert (await harness.send("GET", page.links()["prev"].split("/x-nmos/query")[1])).body == [made[version]]
        assert (await harness.send("GET", f"/{version}/subscriptions?persist=true")).body == [persistent]

    async def test_get_and_delete_at_another_version(self) -> None:
        harness = self.api
        at_v12 = (await harness.subscribe("v1.2", persist=True)).body
        at_v13 = (await harness.subscribe("v1.3", persist=True)).body
        for method in ("GET", "DELETE"):
            # QueryAPI.raml v1.3: 409 with the right version in Location; v1.2 defines no 409
            answer = await harness.send(method, f"/v1.3/subscriptions/{at_v12['id']}")
            assert answer.code == 409 and \
                answer.headers["location"] == f"/x-nmos/query/v1.2/subscriptions/{at_v12['id']}"
            assert (await harness.send(method, f"/v1.2/subscriptions/{at_v13['id']}")).code == 404
        assert (await harness.send("GET", f"/v1.2/subscriptions/{at_v12['id']}")).code == 200

    @cases("version", VERSIONS)
    async def test_delete(self, version: str) -> None:
        harness = self.api
        persistent = (await harness.subscribe(version, persist=True)).body
        temporary = (await harness.subscribe(version)).body
        path = f"/{version}/subscriptions/"
        assert (await harness.send("DELETE", path + temporary["id"])).code == 403
        answer = await harness.send("DELETE", path + persistent["id"])
        assert answer.code == 204 and answer.raw == b""
        assert (await harness.send("GET", path + persistent["id"])).code == 404
        assert (await harness.send("DELETE", path + persistent["id"])).code == 404
        assert (await harness.send("DELETE", path + str(uuid.uuid4()))).code == 404
        assert (await harness.send("GET", path + temporary["id"])).code == 200

    async def test_non_persistent_subscriptions_expire(self) -> None:
        # The manager's Clock (the same on both stores): on etcd the member's table still holds the key until the
        # member's next sync deletes it and the watch says so, and the listing must not show it meanwhile.
        harness = self.api
        made = (await harness.subscribe()).body
        harness.clock.advance(harness.manager.limits.grace)
        assert (await harness.send("GET", f"/v1.3/subscriptions/{made['id']}")).code == 404
        assert (await harness.send("GET", "/v1.3/subscriptions")).body == []

    async def test_the_socket_path_answers_http_with_nmos_errors(self) -> None:
        harness = self.api
        made = (await harness.subscribe()).body
        path = made["ws_href"].split("/x-nmos/query")[1]
        assert (await harness.send("GET", path)).code == 426  # Upgrade Required (with "Upgrade: websocket", which treq hides)
        assert (await harness.send("GET", path.replace("v1.3", "v1.2"))).code == 404
        assert (await harness.send("GET", f"/v1.3/ws/{uuid.uuid4()}", headers={"Upgrade": "websocket"})).code == 404
        assert (await harness.send("GET", f"/v9.9/ws/{made['id']}")).code == 404
        assert (await harness.send("POST", path, {})).code == 405

    @cases("path, methods", [("/v1.3/subscriptions", "GET, HEAD, OPTIONS, POST"),
                             ("/v1.3/subscriptions/" + str(uuid.uuid4()), "DELETE, GET, HEAD, OPTIONS")],
           ids=["subscriptions", "one_subscription"])
    async def test_options(self, path: str, methods: str) -> None:
        answer = await self.api.get(path, method="OPTIONS")
        assert answer.code == 200 and answer.headers["access-control-allow-methods"] == methods


class TestSubscriptionsOverHttpOnMemory(SubscriptionsOverHttp, OnMemory):
    """What the etcd member in these tests cannot show (it listens for plain HTTP: the https scheme), what reaches
    into the manager, and a Query API without subscriptions."""

    @cases("version", ["v1.1", "v1.2", "v1.3"])
    async def test_secure_defaults_to_the_scheme_and_a_mismatch_is_refused(self, version: str) -> None:
        harness = self.api
        https = "https://api.example.com/x-nmos/query"
        answer = await harness.send("POST", f"/{version}/subscriptions", subscription_body(version, secure=None), base=https)
        assert answer.code == 201 and answer.body["secure"] is True
        assert answer.body["ws_href"].startswith("wss://api.example.com/x-nmos/query/")  # nmos-testing test_29/29_1
        answer = await harness.send("POST", f"/{version}/subscriptions", subscription_body(version, secure=None))
        assert answer.code == 201 and answer.body["secure"] is False and answer.body["ws_href"].startswith("ws://")
        assert (await harness.subscribe(version, secure=True)).code == 400
        assert (await harness.send("POST", f"/{version}/subscriptions", subscription_body(version, secure=False),
                            base=https)).code == 400

    async def test_v1_0_ws_href_follows_the_scheme(self) -> None:
        harness = self.api
        answer = await harness.send("POST", "/v1.0/subscriptions", subscription_body("v1.0"),
                              base="https://api.example.com/x-nmos/query")
        assert answer.code == 201 and answer.body["ws_href"].startswith("wss://") and "secure" not in answer.body

    async def test_a_subscription_that_cannot_be_served_is_not_kept(self) -> None:
        """Behind the API's strict JSON: the manager itself refuses what it could not list."""
        from nmos_ref.ws.subscriptions import (
            BadSubscription,
            SubscriptionFilter,
            Wanted,
        )
        harness = self.api
        wanted = Wanted("v1.3", "/nodes", {"x": "\ud800"}, 100, True, False, False, "api.example.com")
        with pytest.raises(BadSubscription, match="cannot be stored"):
            harness.manager.subscribe(wanted, SubscriptionFilter("node", "v1.3", (1, 3), None))
        assert harness.manager.listing("v1.3") == []
        assert (await harness.send("POST", "/v1.3/subscriptions", subscription_body(),
                            headers={"Content-Type": "text/plain"})).code == 415

    async def test_without_subscriptions_the_api_says_so(self) -> None:
        # A Query API given no subscription manager (QueryHarness) lists none and cannot make one.
        harness = QueryHarness()
        assert harness.get("/v1.3/subscriptions").body == []
        assert harness.get("/v1.3/subscriptions", method="POST").code == 501
        assert harness.get(f"/v1.3/ws/{uuid.uuid4()}").code == 404


class TestSubscriptionsOverHttpOnEtcd(SubscriptionsOverHttp, OnEtcd):
    pass
