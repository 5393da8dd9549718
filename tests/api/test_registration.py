"""The Registration API, every version, on both stores (tests/support/backends.py): the in-memory registry through
StubTreq, and a registry cluster member on etcd over loopback; every answer is checked against the official
schemas. What drives time through the Clock (expiry) or the in-memory store's slices stays in memory."""

from __future__ import annotations

import json
from typing import Any

from nmos_ref.model.store import REMOVAL_STEP
from nmos_ref.model.tai import format_tai, parse_tai
from tests.support.backends import JSON, REGISTRATION, Apis, Bodies, OnEtcd, OnMemory
from tests.support.cases import cases
from tests.support.official import assert_official
from tests.support.samples import VERSIONS, Family, bump, device, new_id, node, source

BASE = REGISTRATION


async def registered(api: Apis, version: str) -> list[tuple[str, dict[str, Any]]]:
    members = Family.build(version).members()
    for kind, data in members:
        assert (await api.post(version, kind, data)).code == 201
    return members


async def paged_at(api: Apis, version: str, kind: str, rid: str, stamp: str) -> None:
    """The Query API pages the resource at exactly `stamp`: up to it, and not up to a nanosecond before (v1.0 is
    not paged: asked at v1.1 with query.downgrade)."""
    at, down = ("v1.1", "&query.downgrade=v1.0") if version == "v1.0" else (version, "")
    found = await api.get(f"/{at}/{kind}s?id={rid}&paging.until={stamp}{down}")
    assert [item["id"] for item in found.body] == [rid]
    before = format_tai(parse_tai(stamp) - 1)
    assert (await api.get(f"/{at}/{kind}s?id={rid}&paging.until={before}{down}")).body == []


class Listings(Bodies):
    @cases("path", ["", "/"], ids=["bare", "slash"])
    async def test_versions(self, api: Apis, path: str) -> None:
        answer = await api.call("GET", path)
        assert answer.code == 200 and answer.body == ["v1.0/", "v1.1/", "v1.2/", "v1.3/"]

    @cases("version", VERSIONS)
    @cases("slash", ["", "/"], ids=["bare", "slash"])
    async def test_version_base(self, api: Apis, version: str, slash: str) -> None:
        answer = await api.call("GET", f"/{version}{slash}")
        assert answer.code == 200
        assert_official(version, "registrationapi-base", answer.body)

    @cases("path", ["/", "/x-nmos", "/x-nmos/"], ids=["root", "x_nmos", "x_nmos_slash"])
    async def test_root_listings(self, api: Apis, path: str) -> None:
        answer = await api.call("GET", "http://127.0.0.1:8235" + path)
        assert answer.code == 200
        assert answer.body == (["x-nmos/"] if path == "/" else ["query/", "registration/"])  # as build_registry serves

    async def test_head_has_no_body(self, api: Apis) -> None:
        answer = await api.call("HEAD", "/v1.3/")
        assert answer.code == 200 and answer.raw == b""

    async def test_unserved_version(self, api: Apis) -> None:
        assert (await api.call("GET", "/v1.4/")).code == 404
        assert (await api.post("v2.0", "node", node())).code == 404


class Register(Bodies):
    @cases("version", VERSIONS)
    async def test_family_created_then_updated(self, api: Apis, version: str) -> None:
        for kind, data in Family.build(version).members():
            answer = await api.post(version, kind, data)
            assert answer.code == 201, answer.body
            assert answer.body == data
            assert_official(version, "registrationapi-resource-response", answer.body)
            assert answer.headers["location"] == f"/x-nmos/registration/{version}/resource/{kind}s/{data['id']}"
            await paged_at(api, version, kind, data["id"], answer.headers["x-paging-timestamp"])
            again = await api.post(version, kind, data)
            assert again.code == 200 and again.body == data
            changed = bump(data, label="changed")
            updated = await api.post(version, kind, changed)
            assert updated.code == 200 and updated.body == changed
            assert updated.headers["location"] == answer.headers["location"]
            assert int(updated.headers["x-paging-timestamp"].replace(":", "")) > 0

    async def test_stored_exactly_as_sent(self, api: Apis) -> None:
        data = node(description="ünïcødé ✓ \u2028", tags={"Studio": ["A", "b"]}, x_vendor={"nested": [1, 2.5, None]})
        raw = json.dumps({"type": "node", "data": data}, ensure_ascii=True).encode()
        answer = await api.call("POST", "/v1.3/resource", raw=raw, headers=JSON)
        assert answer.code == 201 and answer.body == data
        assert (await api.call("GET", f"/v1.3/resource/nodes/{data['id']}")).body == data

    async def test_trailing_slash_and_charset_are_accepted(self, api: Apis) -> None:
        data = node()
        answer = await api.call("POST", "/v1.3/resource/", {"type": "node", "data": data},
                          headers={"Content-Type": "application/json; charset=utf-8"})
        assert answer.code == 201

    async def test_sender_with_unregistered_or_null_flow(self, api: Apis) -> None:
        members = dict(await registered(api, "v1.3"))
        for flow_id in (new_id(), None):
            sender = {**members["sender"], "id": new_id(), "flow_id": flow_id}
            assert (await api.post("v1.3", "sender", sender)).code == 201


class ReadAndDelete(Bodies):
    @cases("version", VERSIONS)
    async def test_get_delete_cascade(self, api: Apis, version: str) -> None:
        members = await registered(api, version)
        for kind, data in members:
            answer = await api.call("GET", f"/{version}/resource/{kind}s/{data['id']}/")
            assert answer.code == 200 and answer.body == data
            assert_official(version, kind, answer.body)
        node_id = members[0][1]["id"]
        answer = await api.call("DELETE", f"/{version}/resource/nodes/{node_id}")
        assert answer.code == 204 and answer.raw == b""
        for kind, data in members:
            assert (await api.call("GET", f"/{version}/resource/{kind}s/{data['id']}")).code == 404
        assert (await api.call("DELETE", f"/{version}/resource/nodes/{node_id}")).code == 404

    async def test_other_version_conflicts(self, api: Apis) -> None:
        members = await registered(api, "v1.2")
        node_id = members[0][1]["id"]
        for method, path in [("GET", f"/v1.3/resource/nodes/{node_id}"), ("DELETE", f"/v1.3/resource/nodes/{node_id}"),
                             ("POST", f"/v1.3/health/nodes/{node_id}")]:
            answer = await api.call(method, path)
            assert answer.code == 409, (method, path)
            assert answer.headers["location"] == f"/x-nmos/registration/v1.2/resource/nodes/{node_id}"
        answer = await api.post("v1.3", "node", bump(members[0][1]) | {"api": {"versions": ["v1.3"], "endpoints": []},
                                                                    "interfaces": []})
        assert answer.code == 409
        assert answer.headers["location"] == f"/x-nmos/registration/v1.2/resource/nodes/{node_id}"
        held = await api.get(f"/v1.3/nodes/{node_id}")  # still held at v1.2
        assert held.code == 409 and held.headers["location"] == f"/x-nmos/query/v1.2/nodes/{node_id}"

    async def test_wrong_type_in_path(self, api: Apis) -> None:
        members = dict(await registered(api, "v1.3"))
        assert (await api.call("GET", f"/v1.3/resource/devices/{members['node']['id']}")).code == 404
        assert (await api.call("GET", f"/v1.3/resource/widgets/{members['node']['id']}")).code == 404
        assert (await api.call("DELETE", f"/v1.3/resource/sources/{members['device']['id']}")).code == 404
        assert (await api.get(f"/v1.3/devices/{members['device']['id']}")).code == 200


class Health(Bodies):
    @cases("version", VERSIONS)
    async def test_heartbeat(self, api: Apis, version: str) -> None:
        members = await registered(api, version)
        node_id = members[0][1]["id"]
        api.clock.advance(5)
        answer = await api.call("POST", f"/{version}/health/nodes/{node_id}")
        assert answer.code == 200 and answer.body == {"health": str(int(api.clock.seconds()))}
        assert_official(version, "registrationapi-health-response", answer.body)
        # (When: on etcd the lease's TTL, to the second, read on the store's own clock: docs/cluster.md.)
        seen = await api.call("GET", f"/{version}/health/nodes/{node_id}/")
        assert seen.code == 200
        assert_official(version, "registrationapi-health-response", seen.body)
        assert (await api.call("DELETE", f"/{version}/resource/nodes/{node_id}")).code == 204
        assert (await api.call("POST", f"/{version}/health/nodes/{node_id}")).code == 404
        assert (await api.call("GET", f"/{version}/health/nodes/{node_id}")).code == 404

    async def test_heartbeat_never_creates_a_node(self, api: Apis) -> None:
        node_id = new_id()
        assert (await api.call("POST", f"/v1.3/health/nodes/{node_id}")).code == 404
        assert (await api.get(f"/v1.3/nodes/{node_id}")).code == 404


class TestExpiryOnMemory(OnMemory):
    """Expiry is timed by the Clock (on etcd, by etcd's leases: tests/cluster/test_store.py), and the last heartbeat
    read back exactly (on etcd, from the lease's TTL, to the second)."""

    @cases("version", VERSIONS)
    async def test_heartbeat_and_expiry(self, api: Apis, version: str) -> None:
        members = await registered(api, version)
        node_id = members[0][1]["id"]
        api.clock.advance(5)
        answer = await api.call("POST", f"/{version}/health/nodes/{node_id}")
        assert answer.code == 200 and answer.body == {"health": str(int(api.clock.seconds()))}
        assert_official(version, "registrationapi-health-response", answer.body)
        assert (await api.call("GET", f"/{version}/health/nodes/{node_id}/")).body == answer.body
        api.clock.advance(12)
        api.registry.collect_garbage(api.clock.seconds())
        assert (await api.call("POST", f"/{version}/health/nodes/{node_id}")).code == 404
        assert (await api.call("GET", f"/{version}/resource/devices/{members[1][1]['id']}")).code == 404


def deep(levels: int) -> bytes:
    return b'{"type":"node","data":' + b"[" * levels + b"]" * levels + b"}"


def with_extra(value: bytes) -> bytes:
    """A valid v1.3 Node body with one extra key (the schema allows them) holding `value` as raw JSON text."""
    text = json.dumps({"type": "node", "data": node()}).encode()
    return text[:-2] + b', "x_extra": ' + value + b"}}"


def too_big() -> bytes:
    data = node(description="x" * (1 << 20))
    return json.dumps({"type": "node", "data": data}).encode()


class BadInput(Bodies):
    @cases("raw,headers,status,words", [
        (b'{"type": "node", "data": {', JSON, 400, "not valid JSON"),
        (b"\xff\xfe", JSON, 400, "not valid JSON"),
        (b'{"type": "node", "data": {}}', {"Content-Type": "text/plain"}, 415, "application/json"),
        (b'{"type": "node", "data": {}}', {}, 415, "application/json"),
        (too_big(), JSON, 413, "larger than"),
        (deep(100_000), JSON, 400, "nested more than 64"),
        (deep(500), JSON, 400, "nested more than 64"),
        (deep(60), JSON, 400, "schema"),
        # #11: what Python's json reads but no JSON peer can: each was stored, then broke every later answer.
        (with_extra(b'"\\ud800"'), JSON, 400, "lone surrogate"),
        (with_extra(b'"\xed\xa0\x80"'), JSON, 400, "not valid UTF-8"),
        (with_extra(b'"\xc0\xae"'), JSON, 400, "not valid UTF-8"),
        (with_extra(b"NaN"), JSON, 400, "NaN is not a JSON number"),
        (with_extra(b"-Infinity"), JSON, 400, "not a JSON number"),
        (with_extra(b"1e400"), JSON, 400, "out of range"),
        (with_extra(b"1" * 5000), JSON, 400, "out of range"),
        (with_extra(b"18446744073709551616"), JSON, 400, "out of range"),
        (with_extra(b"[" * 400 + b"1" + b"]" * 400), JSON, 400, "nested more than 64"),
        (with_extra(b'1, "x_extra": 2'), JSON, 400, "appears twice"),
        (b"\xef\xbb\xbf" + with_extra(b"1"), JSON, 400, "byte order mark"),
        (b'[1, 2, 3]', JSON, 400, "schema"),
        (b'{"type": "widget", "data": {}}', JSON, 400, "schema"),
        (b'{"type": "node"}', JSON, 400, "schema"),
        (b'{"type": "node", "data": "text"}', JSON, 400, "schema"),
        (b'{"type": "node", "data": {"id": "not-a-uuid"}}', JSON, 400, "schema"),
    ], ids=["cut_short", "not_utf8", "text_plain", "no_content_type", "too_big", "deep_100000", "deep_500", "deep_60",
            "lone_surrogate", "encoded_surrogate", "overlong_utf8", "nan", "minus_infinity", "1e400", "5000_digits",
            "2_to_the_64", "extra_nested_400", "duplicate_key", "byte_order_mark", "array", "unknown_type", "no_data",
            "data_a_string", "bad_id"])
    async def test_rejected_and_nothing_changes(self, api: Apis, raw: bytes, headers: dict[str, str], status: int,
                                          words: str) -> None:
        await registered(api, "v1.3")
        before = await api.snapshot()
        answer = await api.call("POST", "/v1.3/resource", raw=raw, headers=headers)
        assert answer.code == status and words in answer.body["error"] + str(answer.body["debug"])
        assert await api.snapshot() == before

    @cases("version", VERSIONS)
    @cases("kind", ["node", "device", "source", "flow", "sender", "receiver"])
    async def test_schema_violations_name_the_key(self, api: Apis, version: str, kind: str) -> None:
        members = dict(await registered(api, version))
        before = await api.snapshot()
        broken = {k: v for k, v in bump(members[kind]).items() if k != "label"}
        answer = await api.post(version, kind, broken)
        assert answer.code == 400 and "label" in answer.body["debug"]
        wrong_type = bump(members[kind], label=42)
        assert (await api.post(version, kind, wrong_type)).code == 400
        bad_uuid = {**members[kind], "id": members[kind]["id"].upper()}
        assert (await api.post(version, kind, bad_uuid)).code == 400
        assert await api.snapshot() == before

    async def test_rule_violations(self, api: Apis) -> None:
        members = dict(await registered(api, "v1.3"))
        before = await api.snapshot()
        cases = [
            ("device", device(new_id())),  # missing parent
            ("source", source(members["node"]["id"])),  # parent of the wrong type
            ("device", {**members["node"], "type": "urn:x-nmos:device:generic", "node_id": members["node"]["id"],
                        "senders": [], "receivers": [], "controls": []}),  # id already a node
            ("node", {**members["node"], "version": "1:0", "label": "older"}),  # version went backwards
            ("node", {**members["node"], "label": "same version, other data"}),
            ("source", bump(members["source"], device_id=device(members["node"]["id"])["id"])),  # parent changes
            # #11: int() of these gave a 500 (Python stops at 4,300 digits)
            ("node", {**members["node"], "version": "1" * 5000 + ":0"}),
            ("node", {**members["node"], "version": "1:" + "1" * 5000}),
            ("node", {**members["node"], "version": "1:1000000000"}),
        ]
        for kind, data in cases:
            answer = await api.post("v1.3", kind, data)
            assert answer.code == 400, (kind, answer.body)
        assert await api.snapshot() == before

    async def test_unexpected_failure_is_a_json_500(self, api: Apis) -> None:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("disk on fire")

        self.patch(api.store, "register", broken)
        answer = await api.post("v1.3", "node", node())
        assert answer.code == 500 and "RuntimeError" in answer.body["debug"]
        assert b"Traceback" not in answer.raw and b"<html" not in answer.raw.lower()
        assert len(self.flushLoggedErrors(RuntimeError)) == 1  # and logged, once, with its traceback

    @cases("method,path,status", [
        ("GET", "/v1.3/resource", 405), ("PUT", "/v1.3/resource", 405), ("DELETE", "/v1.3/health/nodes/x", 405),
        ("PATCH", "/v1.3/", 405), ("GET", "/v1.3/nothing", 404), ("POST", "/v1.3/nothing", 404),
        ("GET", "/v1.3/resource/nodes", 404), ("GET", "/v1.3/resource/nodes/x/y", 404),
        ("PUT", "http://127.0.0.1:8235/x-nmos/", 405), ("GET", "http://127.0.0.1:8235/x-nmos/unknown/", 404),
        ("GET", "http://127.0.0.1:8235/favicon.ico", 404),
    ])
    async def test_no_html_anywhere(self, api: Apis, method: str, path: str, status: int) -> None:
        answer = await api.call(method, path)
        assert answer.code == status
        if status == 405:
            assert answer.headers["allow"]


class Preflight(Bodies):
    @cases("path,methods", [
        ("/v1.3/resource", {"POST"}),
        ("/v1.3/resource/nodes/3b8be755-08ff-452b-b217-c9151eb21193", {"GET", "DELETE"}),
        ("/v1.3/health/nodes/3b8be755-08ff-452b-b217-c9151eb21193", {"GET", "POST"}),
        ("/v1.3/", {"GET"}),
        ("/", {"GET"}),
    ])
    async def test_methods_of_each_path(self, api: Apis, path: str, methods: set[str]) -> None:
        answer = await api.call("OPTIONS", path, headers={"Access-Control-Request-Method": "POST"})
        assert answer.code == 200
        allowed = {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
        assert methods | {"OPTIONS"} <= allowed <= methods | {"OPTIONS", "HEAD"}
        assert "Content-Type" in answer.headers["access-control-allow-headers"]
        assert "Authorization" in answer.headers["access-control-allow-headers"]

    async def test_unknown_path(self, api: Apis) -> None:
        assert (await api.call("OPTIONS", "/v1.3/nothing/here")).code == 404

    async def test_echoes_requested_headers(self, api: Apis) -> None:
        answer = await api.call("OPTIONS", "/v1.3/resource", headers={"Access-Control-Request-Headers": "X-Custom"})
        assert answer.headers["access-control-allow-headers"] == "X-Custom"


class TestLargeDeleteOnMemory(OnMemory):
    """A Node with more than REMOVAL_STEP resources is deleted a step per reactor turn (a Cooperator on the clock):
    other Nodes' heartbeats are answered between the steps, and the 204 comes once everything has gone. (On etcd a
    Node's deletion is one lease revocation.)"""

    async def test_the_204_comes_after_the_last_step(self) -> None:
        api = self.api
        big = node("v1.3")
        other = node("v1.3")
        assert (await api.post("v1.3", "node", big)).code == 201 and (await api.post("v1.3", "node", other)).code == 201
        dev = device(big["id"], "v1.3")
        assert (await api.post("v1.3", "device", dev)).code == 201
        for _ in range(REMOVAL_STEP + 200):
            api.registry.register("source", source(dev["id"], "v1.3"), "v1.3", now=api.clock.seconds())
        steps: list[int] = []
        api.registry.feed.subscribe(lambda changes: steps.append(len(changes)))
        answers: list[Any] = []
        api.stub.request("DELETE", f"{BASE}/v1.3/resource/nodes/{big['id']}").addBoth(answers.append)
        api.stub.flush()
        assert answers == [] and steps == [REMOVAL_STEP]  # the first step, in the request's own turn
        assert api.registry.count("source") == 200 and api.registry.find(big["id"]) is not None
        beat = await api.call("POST", f"/v1.3/health/nodes/{other['id']}")  # between two steps
        assert beat.code == 200
        while not answers:
            api.clock.advance(0)
            api.stub.flush()
        assert answers[0].code == 204 and steps == [REMOVAL_STEP, 202]
        assert api.registry.find(big["id"]) is None and api.registry.count("source") == 0
        assert (await api.call("GET", f"/v1.3/resource/nodes/{big['id']}")).code == 404
        assert (await api.call("GET", f"/v1.3/resource/nodes/{other['id']}")).code == 200

    async def test_a_small_delete_answers_at_once(self) -> None:
        members = await registered(self.api, "v1.3")
        answer = await self.api.call("DELETE", f"/v1.3/resource/nodes/{members[0][1]['id']}")
        assert answer.code == 204 and self.api.registry.count("node") == 0


class NodeLogLines(Bodies):
    """issue 15: one info line when a Node registers for the first time or is deleted, with its id, label, the
    client's address, the API version and how many resources; nothing at info for an update, a heartbeat or another
    type (the hot path logs nothing more)."""

    def lines(self) -> list[dict[str, Any]]:
        from twisted.logger import LogLevel, globalLogPublisher

        seen: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "nmos_ref.api.registration" and event["log_level"] >= LogLevel.info:
                seen.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return seen

    async def test_register_and_delete(self, api: Apis) -> None:
        from twisted.logger import formatEvent

        seen = self.lines()
        members = await registered(api, "v1.3")  # a Node and one of everything below it
        node_data = members[0][1]
        assert len(seen) == 1, [formatEvent(e) for e in seen]
        registered_line = seen[0]
        assert (registered_line["id"], registered_line["label"], registered_line["version"]) == (
            node_data["id"], node_data["label"], "v1.3")
        assert registered_line["client"] and registered_line["nodes"] == 1 and registered_line["resources"] == 1
        assert formatEvent(registered_line) == (f"Node {node_data['id']} ({node_data['label']}) registered at v1.3 "
                                                f"from {registered_line['client']}; the registry holds 1 Nodes and 1 "
                                                f"resources")
        del seen[:]
        assert (await api.post("v1.3", "node", bump(node_data, label="renamed"))).code == 200  # an update
        assert (await api.call("POST", f"/v1.3/health/nodes/{node_data['id']}")).code == 200  # a heartbeat
        device_id = next(data["id"] for kind, data in members if kind == "device")
        assert (await api.call("DELETE", f"/v1.3/resource/devices/{device_id}")).code == 204  # not a Node
        assert seen == []
        left = sum(len(held) for _, held, _, _ in await api.snapshot())
        assert (await api.call("DELETE", f"/v1.3/resource/nodes/{node_data['id']}")).code == 204
        assert [formatEvent(e) for e in seen] == [
            (f"Node {node_data['id']} (renamed) deleted at v1.3 by {registered_line['client']}, and {left - 1} "
             f"resources below it")]


class TestListingsOnMemory(Listings, OnMemory):
    pass


class TestListingsOnEtcd(Listings, OnEtcd):
    pass


class TestRegisterOnMemory(Register, OnMemory):
    pass


class TestRegisterOnEtcd(Register, OnEtcd):
    pass


class TestReadAndDeleteOnMemory(ReadAndDelete, OnMemory):
    pass


class TestReadAndDeleteOnEtcd(ReadAndDelete, OnEtcd):
    pass


class TestHealthOnMemory(Health, OnMemory):
    pass


class TestHealthOnEtcd(Health, OnEtcd):
    pass


class TestBadInputOnMemory(BadInput, OnMemory):
    pass


class TestBadInputOnEtcd(BadInput, OnEtcd):
    pass


class TestPreflightOnMemory(Preflight, OnMemory):
    pass


class TestPreflightOnEtcd(Preflight, OnEtcd):
    pass


class TestNodeLogLinesOnMemory(NodeLogLines, OnMemory):
    pass


class TestNodeLogLinesOnEtcd(NodeLogLines, OnEtcd):
    pass
