"""Paging over HTTP (IS-04 v1.1+): the examples of "APIs - Query Parameters" replayed request by request, the edge
cases nmos-testing checks (IS-04-02 test_21_x), and Link headers that a client can follow; on both stores
(tests/support/backends.py), whose stamps are 0:1, 0:2, ... alike (each resource's stamp is the X-Paging-Timestamp
of its registration)."""

from __future__ import annotations

from typing import Any

from nmos_ref.model.query_params import Limits
from nmos_ref.model.tai import parse_tai
from tests.support.backends import Apis, Bodies, OnEtcd, OnMemory, Options
from tests.support.cases import cases
from tests.support.samples import Answer, Family, bump, node

DOC = "http://api.example.com/x-nmos/query"


def paging(answer: Answer) -> tuple[str, str, str]:
    return answer.headers["x-paging-since"], answer.headers["x-paging-until"], answer.headers["x-paging-limit"]


def updates(answer: Answer, harness: Apis) -> list[str]:
    """The update stamps of the resources returned, as the documentation lists them (each the X-Paging-Timestamp
    of its last registration)."""
    return [harness.stamps[item["id"]] for item in answer.body]


class Sample(Bodies):
    """Tests given `sample`: the documentation's sample, 20 Nodes updated at 0:1 ... 0:20, and a server whose default
    limit is 10."""

    options = Options(limits=Limits(default_limit=10))

    async def prepare(self) -> None:
        for _ in range(20):
            await self.api.register("node", node("v1.1"), "v1.1")
        self.sample = self.api


def stamps(*numbers: int) -> list[str]:
    return [f"0:{n}" for n in numbers]


class DocumentationExamples(Sample):
    async def test_example_1_initial_request(self, sample: Apis) -> None:
        answer = await sample.get("/v1.1/nodes/", base=DOC)
        assert updates(answer, sample) == stamps(*range(20, 10, -1))
        assert paging(answer) == ("0:10", "0:20", "10")
        links = answer.links()
        assert links["next"] == f"{DOC}/v1.1/nodes/?paging.since=0:20&paging.limit=10"
        assert links["prev"] == f"{DOC}/v1.1/nodes/?paging.until=0:10&paging.limit=10"
        assert links["first"] == f"{DOC}/v1.1/nodes/?paging.since=0:0&paging.limit=10"
        assert links["last"] == f"{DOC}/v1.1/nodes/?paging.limit=10"
        # "These parameters can be used to construct a URL which would return the same set of bounded data"
        again = await sample.get("/v1.1/nodes?paging.since=0:10&paging.until=0:20", base=DOC)
        assert again.body == answer.body

    async def test_example_2_custom_limit(self, sample: Apis) -> None:
        answer = await sample.get("/v1.1/nodes/?paging.limit=5", base=DOC)
        assert updates(answer, sample) == stamps(20, 19, 18, 17, 16)
        assert paging(answer) == ("0:15", "0:20", "5")
        assert answer.links()["next"] == f"{DOC}/v1.1/nodes/?paging.since=0:20&paging.limit=5"
        assert answer.links()["prev"] == f"{DOC}/v1.1/nodes/?paging.until=0:15&paging.limit=5"

    async def test_example_3_since(self, sample: Apis) -> None:
        answer = await sample.get("/v1.1/nodes/?paging.since=0:4", base=DOC)
        assert updates(answer, sample) == stamps(*range(14, 4, -1))
        assert paging(answer) == ("0:4", "0:14", "10")
        assert answer.links()["next"] == f"{DOC}/v1.1/nodes/?paging.since=0:14&paging.limit=10"
        assert answer.links()["prev"] == f"{DOC}/v1.1/nodes/?paging.until=0:4&paging.limit=10"

    async def test_example_4_until(self, sample: Apis) -> None:
        answer = await sample.get("/v1.1/nodes/?paging.until=0:16", base=DOC)
        assert updates(answer, sample) == stamps(*range(16, 6, -1))
        assert paging(answer) == ("0:6", "0:16", "10")
        assert answer.links()["next"] == f"{DOC}/v1.1/nodes/?paging.since=0:16&paging.limit=10"
        assert answer.links()["prev"] == f"{DOC}/v1.1/nodes/?paging.until=0:6&paging.limit=10"

    async def test_example_5_since_and_until(self, sample: Apis) -> None:
        answer = await sample.get("/v1.1/nodes/?paging.since=0:4&paging.until=0:16", base=DOC)
        assert updates(answer, sample) == stamps(*range(14, 4, -1))
        assert paging(answer) == ("0:4", "0:14", "10")  # "the since parameter takes precedence"
        assert answer.links()["next"] == f"{DOC}/v1.1/nodes/?paging.since=0:14&paging.limit=10"
        assert answer.links()["prev"] == f"{DOC}/v1.1/nodes/?paging.until=0:4&paging.limit=10"

    async def test_edge_case_2_end_of_the_data_set(self, sample: Apis) -> None:
        answer = await sample.get("/v1.1/nodes/?paging.since=0:20", base=DOC)
        assert answer.body == []
        assert paging(answer) == ("0:20", "0:20", "10")
        assert answer.links()["next"] == f"{DOC}/v1.1/nodes/?paging.since=0:20&paging.limit=10"
        assert answer.links()["prev"] == f"{DOC}/v1.1/nodes/?paging.until=0:20&paging.limit=10"

    async def test_edge_case_4_no_result(self, sample: Apis) -> None:
        answer = await sample.get("/v1.1/nodes/?label=My%20Invalid%20Node", base=DOC)
        assert answer.body == []
        assert paging(answer) == ("0:0", "0:20", "10")
        assert answer.links()["next"] == \
            f"{DOC}/v1.1/nodes/?label=My%20Invalid%20Node&paging.since=0:20&paging.limit=10"
        assert answer.links()["prev"] == f"{DOC}/v1.1/nodes/?label=My%20Invalid%20Node&paging.until=0:0&paging.limit=10"


class PagingChecks(Sample):
    async def test_empty_responses(self, sample: Apis) -> None:
        # nmos-testing test_21_4
        answer = await sample.get("/v1.3/nodes?query.downgrade=v1.1&paging.since=0:12&paging.until=0:12&paging.limit=10")
        assert answer.body == [] and paging(answer) == ("0:12", "0:12", "10")
        answer = await sample.get("/v1.1/nodes?paging.since=0:12&paging.limit=0")
        assert answer.body == [] and paging(answer) == ("0:12", "0:12", "0")
        assert answer.links()["next"].endswith("?paging.since=0:12&paging.limit=0")
        answer = await sample.get("/v1.1/nodes?paging.until=0:12&paging.limit=0")
        assert answer.body == [] and paging(answer) == ("0:12", "0:12", "0")
        # after the newest / before the oldest (test_21_3)
        answer = await sample.get("/v1.1/nodes?paging.since=0:25")
        assert answer.body == [] and paging(answer) == ("0:25", "0:25", "10")
        answer = await sample.get("/v1.1/nodes?paging.until=0:0")
        assert answer.body == [] and paging(answer) == ("0:0", "0:0", "10")

    async def test_since_after_until_is_a_bad_request(self, sample: Apis) -> None:
        # nmos-testing test_21_6
        assert (await sample.get("/v1.1/nodes?paging.since=0:13&paging.until=0:12")).code == 400

    @cases("cursor", ["9" * 5000 + ":0", "9" * 21 + ":0", "1:1234567890", "abc", "1:", ":1", "-1:0"],
           ids=["5000_digits", "21_digits", "ns_too_big", "abc", "no_nanoseconds", "no_seconds", "negative"])
    async def test_cursors_that_are_not_timestamps_are_bad_requests(self, sample: Apis, cursor: str) -> None:
        # #11: a 5,000-digit cursor was a 500 (int() stops at 4,300 digits)
        for key in ("paging.since", "paging.until"):
            answer = await sample.get(f"/v1.1/nodes?{key}={cursor}")
            assert answer.code == 400 and key in answer.body["error"]
        assert (await sample.get(f"/v1.3/subscriptions?paging.since={cursor}")).code == 400
        # an RQL comparison meeting a stored value that looks like a long timestamp is no error either
        await sample.register("node", node("v1.3", label="9" * 5000 + ":0"), "v1.3")
        assert (await sample.get("/v1.3/nodes?query.rql=lt(label,99:0)")).code == 200


class EdgeCases(Bodies):
    """The documentation's edge cases 1 and 3, on samples of their own (the server's default limit is 10)."""

    options = Options(limits=Limits(default_limit=10))

    async def test_edge_case_1_beginning_of_the_data_set(self) -> None:
        harness = self.api
        early = [await harness.register("node", node("v1.1"), "v1.1") for _ in range(20)]
        await harness.register("node", node("v1.1"), "v1.1")
        await harness.register("node", node("v1.1"), "v1.1")
        for data in early:
            await harness.delete("node", data["id"], "v1.1")  # "stored records for 0:21 and 0:22 but no earlier"
        answer = await harness.get("/v1.1/nodes/?paging.until=0:20", base=DOC)
        assert answer.body == []
        assert paging(answer) == ("0:0", "0:20", "10")
        assert answer.links()["next"] == f"{DOC}/v1.1/nodes/?paging.since=0:20&paging.limit=10"
        assert answer.links()["prev"] == f"{DOC}/v1.1/nodes/?paging.until=0:0&paging.limit=10"

    async def test_edge_case_3_one_result(self) -> None:
        harness = self.api
        for i in range(1, 21):
            await harness.register("node", node("v1.1", label="My Node" if i == 15 else "node"), "v1.1")
        answer = await harness.get("/v1.1/nodes/?label=My%20Node", base=DOC)
        assert updates(answer, harness) == stamps(15)
        assert paging(answer) == ("0:0", "0:20", "10")
        assert answer.links()["next"] == f"{DOC}/v1.1/nodes/?label=My%20Node&paging.since=0:20&paging.limit=10"
        assert answer.links()["prev"] == f"{DOC}/v1.1/nodes/?label=My%20Node&paging.until=0:0&paging.limit=10"


class PagingOwnResources(Bodies):
    """nmos-testing's paging checks on resources of their own."""

    async def test_discontiguous_filters(self) -> None:
        # nmos-testing test_21_5: Nodes labelled foo or bar, 20 in a row
        harness = self.api

        def foo(index: int) -> bool:
            return 3 > (index + 1) % 5

        for i in range(20):
            await harness.register("node", node("v1.1", label="foo" if foo(i) else "bar"), "v1.1")
        answer = await harness.get("/v1.1/nodes?label=foo&paging.limit=10")
        assert updates(answer, harness) == stamps(20, 17, 16, 15, 12, 11, 10, 7, 6, 5)
        assert paging(answer)[1:] == ("0:20", "10") and answer.headers["x-paging-since"] in stamps(2, 3, 4)
        answer = await harness.get("/v1.1/nodes?label=foo&paging.until=0:2&paging.limit=10")
        assert updates(answer, harness) == stamps(2, 1) and paging(answer) == ("0:0", "0:2", "10")
        answer = await harness.get("/v1.1/nodes?label=foo&paging.since=0:20&paging.limit=10")
        assert answer.body == [] and paging(answer) == ("0:20", "0:20", "10")
        answer = await harness.get("/v1.1/nodes?label=bar&paging.limit=10")
        assert updates(answer, harness) == stamps(19, 18, 14, 13, 9, 8, 4, 3) and paging(answer)[:2] == ("0:0", "0:20")
        answer = await harness.get("/v1.1/nodes?label=bar&paging.limit=3")
        assert updates(answer, harness) == stamps(19, 18, 14) and paging(answer)[:2] == ("0:13", "0:20")
        answer = await harness.get("/v1.1/nodes?label=bar&paging.until=0:13&paging.limit=3")
        assert updates(answer, harness) == stamps(13, 9, 8) and paging(answer)[:2] == ("0:4", "0:13")
        answer = await harness.get("/v1.1/nodes?label=bar&paging.since=0:5&paging.until=0:13&paging.limit=3")
        assert updates(answer, harness) == stamps(13, 9, 8) and paging(answer)[:2] == ("0:5", "0:13")
        answer = await harness.get("/v1.1/nodes?label=bar&paging.since=0:10&paging.until=0:13&paging.limit=3")
        assert updates(answer, harness) == stamps(13) and paging(answer)[:2] == ("0:10", "0:13")
        answer = await harness.get("/v1.1/nodes?label=bar&paging.since=0:10&paging.until=0:12&paging.limit=3")
        assert answer.body == [] and paging(answer)[:2] == ("0:10", "0:12")

    async def test_updates_move_resources_between_pages(self) -> None:
        # nmos-testing test_21_7, and creation order, which updates do not change
        harness = self.api
        first, second, third = [await harness.register("node", node("v1.1", description="test_21_7"), "v1.1")
                                for _ in range(3)]
        query = "/v1.1/nodes?description=test_21_7&paging.limit=3"
        answer = await harness.get(query)
        assert [item["id"] for item in answer.body] == [third["id"], second["id"], first["id"]]
        assert paging(answer) == ("0:0", "0:3", "3")
        assert (await harness.get(query + "&paging.since=0:3")).body == []
        await harness.register("node", bump(second), "v1.1")
        assert [item["id"] for item in (await harness.get(query + "&paging.since=0:3")).body] == [second["id"]]
        assert [item["id"] for item in (await harness.get(query + "&paging.until=0:3")).body] == [third["id"], first["id"]]
        await harness.register("node", bump(third), "v1.1")
        await harness.register("node", bump(first), "v1.1")
        assert (await harness.get(query + "&paging.until=0:3")).body == []
        assert [item["id"] for item in (await harness.get(query + "&paging.since=0:3")).body] == \
            [first["id"], third["id"], second["id"]]
        by_creation = await harness.get(query + "&paging.order=create")
        assert [item["id"] for item in by_creation.body] == [third["id"], second["id"], first["id"]]
        assert paging(by_creation) == ("0:0", "0:3", "3")
        assert (await harness.get(query + "&paging.order=create&paging.since=0:3")).body == []

    async def test_links_keep_other_parameters_encoded(self) -> None:
        # nmos-testing test_21_8: label=foo%26bar stays encoded; every other parameter is kept as it was sent
        harness = self.api
        await harness.register("node", node("v1.1", label="foo&bar"), "v1.1")
        answer = await harness.get("/v1.1/nodes?label=foo%26bar&paging.limit=5&tags.location=Salford")
        assert len(answer.body) == 1
        for rel, url in answer.links().items():
            assert "?label=foo%26bar&tags.location=Salford&" in url, rel
            assert "paging.limit=5" in url
        answer = await harness.get("/v1.1/nodes?paging.order=create&query.rql=and(eq(label,foo%2526bar),ne(a,%22x%22))")
        assert len(answer.body) == 1
        next_url = answer.links()["next"]
        assert "?paging.order=create&query.rql=and(eq(label%2Cfoo%2526bar)%2Cne(a%2C%22x%22))&paging.since=" in next_url
        path = next_url.split("/x-nmos/query")[1]
        assert (await harness.get(path.replace("paging.since=0:1", "paging.since=0:0"))).body == answer.body

    async def test_link_host_comes_from_the_request(self) -> None:
        # nmos-testing test_21_9 (the scheme: TestLinkSchemeOnMemory)
        harness = self.api
        answer = await harness.get("/v1.1/nodes", headers={"Host": "[2001:db8::1]:8235"})
        assert answer.links()["last"] == "http://[2001:db8::1]:8235/x-nmos/query/v1.1/nodes?paging.limit=100"
        named = await self.new_api(host_name="registry.example")
        assert (await named.get("/v1.1/nodes")).links()["last"] == \
            "http://registry.example:8235/x-nmos/query/v1.1/nodes?paging.limit=100"

    async def test_limits_configured_default_and_maximum(self) -> None:
        harness = await self.new_api(limits=Limits(default_limit=10, max_limit=100))
        family = await harness.register_family(Family.build("v1.3"))
        for _ in range(110):
            await harness.register("receiver", {**family.receiver, "id": node()["id"]}, "v1.3")
        assert len((await harness.get("/v1.3/receivers")).body) == 10
        answer = await harness.get("/v1.3/receivers?paging.limit=5000")
        assert len(answer.body) == 100 and answer.headers["x-paging-limit"] == "100"
        assert len((await harness.get("/v1.0/receivers")).body) == 111  # v1.0 is not paged: all of them, translated
        assert len((await harness.get("/v1.0/receivers?label=receiver")).body) == 111

    async def test_v1_0_is_not_paged(self) -> None:
        harness = self.api
        registered = [await harness.register("node", node("v1.0"), "v1.0") for _ in range(150)]
        answer = await harness.get("/v1.0/nodes")
        assert len(answer.body) == 150
        assert not any(name.startswith("x-paging") or name == "link" for name in answer.headers)
        assert [item["id"] for item in answer.body] == [data["id"] for data in registered]  # in creation order


async def follow(harness: Apis, url: str) -> Answer:
    return await harness.get(url.split("/x-nmos/query")[1])


class FollowingLinks(Bodies):
    @cases("label", ["common", "rare", None])
    @cases("order", ["update", "create"])
    async def test_walking_the_links_visits_every_match_once(self, label: str | None, order: str) -> None:
        """Small candidate sets are paged from a sorted list, large ones by walking the time index: the same pages."""
        harness = self.api
        expected: list[str] = []
        for i in range(120):
            data = await harness.register("node", node("v1.2", label="rare" if i % 20 == 0 else "common"), "v1.2")
            if i % 3 == 0:
                data = await harness.register("node", bump(data), "v1.2")  # updated: moves in update order only
            if label is None or data["label"] == label:
                expected.append(data["id"])
        query = f"/v1.2/nodes?paging.order={order}&paging.limit=7" + (f"&label={label}" if label else "")
        seen: list[str] = []
        answer = await harness.get(query)
        while answer.body:
            seen += [item["id"] for item in answer.body]
            answer = await follow(harness, answer.links()["prev"])
        assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
        held = harness.stamps if order == "update" else harness.created
        stamps_seen = [parse_tai(held[rid]) for rid in seen]
        assert stamps_seen == sorted(stamps_seen, reverse=True)
        forward: list[str] = []
        answer = await harness.get(query + "&paging.since=0:0")
        while answer.body:
            forward += [item["id"] for item in reversed(answer.body)]
            answer = await follow(harness, answer.links()["next"])
        assert forward == list(reversed(seen))

    async def test_paging_with_downgrade_and_versions(self) -> None:
        harness = self.api
        families: dict[str, Any] = {v: await harness.register_family(Family.build(v))
                                    for v in ("v1.1", "v1.2", "v1.3")}
        answer = await harness.get("/v1.2/senders?paging.limit=1")
        assert [item["id"] for item in answer.body] == [families["v1.3"].sender["id"]]
        answer = await follow(harness, answer.links()["prev"])
        assert [item["id"] for item in answer.body] == [families["v1.2"].sender["id"]]
        assert (await follow(harness, answer.links()["prev"])).body == []  # v1.1 only with query.downgrade
        answer = await harness.get("/v1.2/senders?paging.limit=2&query.downgrade=v1.1&paging.order=create")
        assert [item["id"] for item in answer.body] == [families[v].sender["id"] for v in ("v1.3", "v1.2")]
        assert [item["id"] for item in (await follow(harness, answer.links()["prev"])).body] == [families["v1.1"].sender["id"]]


class TestLinkSchemeOnMemory(OnMemory):
    """The scheme of the request (StubTreq's https): the etcd member in these tests listens for plain HTTP only."""

    async def test_link_scheme_comes_from_the_request(self) -> None:
        # nmos-testing test_21_9
        answer = await self.api.get("/v1.1/nodes", base="https://registry.example:8443/x-nmos/query")
        assert all(url.startswith("https://registry.example:8443/x-nmos/query/v1.1/nodes?")
                   for url in answer.links().values())


class TestDocumentationExamplesOnMemory(DocumentationExamples, OnMemory):
    pass


class TestDocumentationExamplesOnEtcd(DocumentationExamples, OnEtcd):
    pass


class TestPagingChecksOnMemory(PagingChecks, OnMemory):
    pass


class TestPagingChecksOnEtcd(PagingChecks, OnEtcd):
    pass


class TestEdgeCasesOnMemory(EdgeCases, OnMemory):
    pass


class TestEdgeCasesOnEtcd(EdgeCases, OnEtcd):
    pass


class TestPagingOwnResourcesOnMemory(PagingOwnResources, OnMemory):
    pass


class TestPagingOwnResourcesOnEtcd(PagingOwnResources, OnEtcd):
    pass


class TestFollowingLinksOnMemory(FollowingLinks, OnMemory):
    pass


class TestFollowingLinksOnEtcd(FollowingLinks, OnEtcd):
    pass


class TestDefaultLimitsOnMemory(OnMemory):
    """The default limits (100, at most 1000) over 1,101 resources, put in the registry directly: through the
    Registration API that is seconds per store (the limits themselves are `test_limits_configured_...`'s, on
    both)."""

    async def test_limits_default_and_maximum(self) -> None:
        harness = self.api
        family = await harness.register_family(Family.build("v1.3"))
        for _ in range(1100):
            harness.registry.register("receiver", {**family.receiver, "id": node()["id"]}, "v1.3", now=0)
        assert len((await harness.get("/v1.3/receivers")).body) == 100
        answer = await harness.get("/v1.3/receivers?paging.limit=5000")
        assert len(answer.body) == 1000 and answer.headers["x-paging-limit"] == "1000"
        assert len((await harness.get("/v1.0/receivers")).body) == 1101  # v1.0 is not paged: all of them, translated
        assert len((await harness.get("/v1.0/receivers?label=receiver")).body) == 1101
