"""A v1.0 list, unpaged by definition, is made a slice at a time when the Query API has a cooperator: the same
answer as made in one go, the collection of one moment, and the reactor free between slices (issue 13, goal 5)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock, Cooperator
from treq.testing import StubTreq

from nmos_ref.api.query import LIST_SLICE, QueryAPI
from nmos_ref.model.store import Registry
from nmos_ref.web.root import root_resource
from tests.support.cases import UnitTest
from tests.support.samples import VERSIONS, Answer, QueryHarness, check, node

BASE = "http://api.example.com:8235/x-nmos/query"


class TestSlicedLists(UnitTest):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry()
        # One slice per reactor turn, each turn a Clock step: the test sees every turn.
        self.turns = 0

        def schedule(work: Any) -> Any:
            self.turns += 1
            return self.clock.callLater(0, work)

        cooperator = Cooperator(scheduler=schedule, terminationPredicateFactory=lambda: lambda: True)
        api = QueryAPI(self.registry, VERSIONS, cooperator=cooperator)
        self.stub = StubTreq(root_resource({"query": api.app.resource()}))
        self.whole = QueryHarness(clock=self.clock, registry=self.registry)  # no cooperator: one go
        self.nodes = [node("v1.3") for _ in range(2 * LIST_SLICE + 7)]
        for data in self.nodes:
            self.registry.register("node", data, "v1.3", now=0)

    def start(self, path: str) -> list[Any]:
        answers: list[Any] = []
        deferred = self.stub.request("GET", BASE + path, allow_redirects=False)
        deferred.addCallback(lambda r: r.content().addCallback(lambda content: answers.append((r, content))))
        deferred.addErrback(answers.append)
        self.stub.flush()
        return answers

    def finish(self, answers: list[Any]) -> tuple[Answer, int]:
        """Run the Clock's turns until the answer is complete; the answer and the turns the cooperator took."""
        for _ in range(100):
            if answers:
                break
            self.clock.advance(0)
            self.stub.flush()
        response, content = answers[0]
        headers = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
        return Answer(response.code, headers, content), self.turns

    def test_the_same_answer_as_in_one_go_over_several_turns(self) -> None:
        answer, turns = self.finish(self.start("/v1.0/nodes"))
        check("/v1.0/nodes", answer)
        assert answer.code == 200 and answer.headers["access-control-allow-origin"] == "*"
        assert answer.raw == self.whole.get("/v1.0/nodes").raw
        assert [item["id"] for item in answer.body] == [data["id"] for data in self.nodes]  # oldest first
        assert "tags" not in answer.body[0]  # translated to v1.0
        assert turns >= 3  # 1,007 Nodes, 500 a turn
        assert not self.clock.getDelayedCalls()

    def test_a_filter_is_applied_slice_by_slice(self) -> None:
        self.registry.register("node", {**self.nodes[600], "label": "wanted", "version": "9999999999:0"}, "v1.3", now=0)
        answer, _ = self.finish(self.start("/v1.0/nodes?hostname=node-1.example&label=wanted"))
        check("/v1.0/nodes", answer)
        assert [item["id"] for item in answer.body] == [self.nodes[600]["id"]]

    def test_the_collection_of_the_moment_of_the_request(self) -> None:
        answers = self.start("/v1.0/nodes")
        assert not answers  # the first slice is made; the rest waits for the next turns
        late = node("v1.3")
        self.registry.register("node", late, "v1.3", now=0)
        self.registry.delete("node", self.nodes[-1]["id"], "v1.3")
        answer, _ = self.finish(answers)
        ids = [item["id"] for item in answer.body]
        assert ids == [data["id"] for data in self.nodes]  # the deleted one still there, the late one not yet
        assert len(self.whole.get("/v1.0/nodes").body) == len(self.nodes)  # now: one gone, one new
