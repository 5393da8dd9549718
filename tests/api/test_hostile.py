"""Hostile input at the HTTP boundary (issue #11): the real service on 127.0.0.1:0, sent malformed JSON, numbers and
text a peer cannot read, deep nesting, bad ids, bad query strings and subscriptions, bad WebSocket handshakes, broken
HTTP and slow or abandoned requests, each as raw bytes on its own loopback connection (tests/support/hostile.py).

Every answer must keep the rules of IS-04 "APIs" and docs/limits.md (no 5xx, no 3xx, CORS, errors as the NMOS error
JSON, strict JSON bodies), everything refused must leave the store as it was, and after each category every Query
API collection at every version must still answer 200 with strict JSON. The cases are seeded and bounded (about
1,500 requests in all); scripts/hostile_campaign.py runs many more of the same kinds.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from attrs import define, evolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.cases import SocketTest, UnitTest, cases
from tests.support.hostile import (CATEGORIES, GROUPHINT, MAX_INT, MIN_INT, TYPES, Case, LocalRegistry, NotStrict, Raw,
                             Reply, Target, collections_problems, exchange, fresh, judge, nest, parse_response, post,
                             quoted, registration, render, run_case, run_category, seed, store_change, strict_json,
                             summarise)
from tests.support.samples import VERSIONS, Family, sender

SEED = 11  # issue #11
SENT: Counter[str] = Counter()  # requests sent per category, for the summary at the end of the session


@define
class Served:
    """The registry on a loopback port, seeded through its APIs, and a treq client with its own pool."""

    local: LocalRegistry
    http: HTTPClient
    pool: HTTPConnectionPool
    target: Target

    @property
    def registry(self) -> Any:
        return self.local.registry

    def snapshot(self) -> list[tuple[Any, ...]]:
        return self.local.snapshot()


class SeededRegistryTest(SocketTest):
    """Each test has its own registry on a loopback port, seeded, as `served`: in memory, or (`store` "etcd", the
    classes named ...OnEtcd) a registry cluster member on the tests' shared etcd."""

    store = "memory"

    async def setUp(self) -> None:
        local = LocalRegistry(reactor, self.store)
        pool = HTTPConnectionPool(reactor, persistent=True)
        http = HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(local.stop)  # cleanups run last-added first: the pool's connections close, then the server
        self.addCleanup(pool.closeCachedConnections)
        port = await local.start()
        target = await seed(http, f"http://127.0.0.1:{port}/x-nmos", "127.0.0.1", port)
        self.served = Served(local, http, pool, target)


class _Totals:
    """Prints the requests sent per category at the end of the session (a pytest hook: under trial the counts are
    kept, each category test checks its own is above 0, and nothing is printed)."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if SENT:
            terminalreporter.write_sep("-", "hostile requests per category (tests/api/test_hostile.py)")
            for category, count in SENT.items():
                terminalreporter.write_line(f"{category:>14}: {count}")
            terminalreporter.write_line(f"{'total':>14}: {sum(SENT.values())}")


@pytest.fixture(scope="module", autouse=True)
def totals(request: pytest.FixtureRequest) -> Any:
    if not request.config.pluginmanager.has_plugin("hostile-totals"):
        request.config.pluginmanager.register(_Totals(), "hostile-totals")
    yield


class HostileRequestsTests(SeededRegistryTest):
    @cases("category", list(CATEGORIES))
    async def test_hostile_requests(self, served: Served, category: str) -> None:
        """Every case of one category keeps every rule; then every collection still serves strict JSON and the
        server has closed every connection."""
        cases = list(CATEGORIES[category](served.target, random.Random(f"{SEED}:{category}"), 1))
        sent, found = await run_category(reactor, served.target, category, cases, served.snapshot)
        SENT[category] += sent
        found += await collections_problems(served.http, served.target.base, category)
        await served.pool.closeCachedConnections()  # the pool's kept-alive connections are not the server's to close
        found += served.local.unservable(category)
        found += await served.local.settled(category)
        assert sent > 0
        assert not found, f"{len(found)} problems in {sent} {category} requests:\n{summarise(found)}"


class GeneratorsAndRulesTests(UnitTest):
    """The case generators and the judge, without a server."""

    def test_every_category_has_cases(self) -> None:
        """Each generator yields requests (counted without a server) and a generator is repeatable from its seed."""
        target = Target("127.0.0.1", 1, {version: Family.build(version) for version in VERSIONS}, Family.build("v1.3"),
                        "/x-nmos/query/v1.3/ws/00000000-0000-4000-8000-000000000000")
        for category, generate in CATEGORIES.items():
            first = [(case.name, case.data, case.pieces) for case in generate(target, random.Random(SEED), 1)]
            again = [(case.name, case.data, case.pieces) for case in generate(target, random.Random(SEED), 1)]
            assert first, category
            assert [name for name, _, _ in first] == [name for name, _, _ in again], category

    def test_the_rules_catch_broken_answers(self) -> None:
        """The judge itself: a test whose rules passed everything would prove nothing."""
        case = Case("self-test", "case", expect=frozenset({400}))
        error = Reply(400, {"content-type": ["application/json"], "access-control-allow-origin": ["*"]},
                      b'{"code":400,"error":"bad","debug":null}')

        def rules(reply: Reply, changed: str | None = None, answerless: bool = False) -> set[str]:
            return {problem.rule for problem in judge(evolve(case, answerless=answerless), reply, changed)}

        assert rules(error) == set()
        assert rules(evolve(error, status=500, body=b'{"code":500,"error":"x","debug":null}')) == {"5xx", "status"}
        assert rules(evolve(error, status=501, body=b'{"code":501,"error":"x","debug":null}')) == {"status"}
        assert rules(evolve(error, headers={**error.headers, "content-type": ["text/html"]})) == {"not-nmos-error"}
        assert rules(evolve(error, body=b'{"code":404,"error":"bad","debug":null}')) == {"not-nmos-error"}
        assert rules(evolve(error, body=b'{"code":400,"error":"bad"}')) == {"not-nmos-error"}
        assert rules(evolve(error, body=b'{"code":400,"error":"\\ud800","debug":null}')) == {"not-nmos-error"}
        assert rules(evolve(error, headers={"content-type": ["application/json"]})) == {"no-cors"}
        assert rules(evolve(error, status=301, body=b"")) == {"3xx", "status"}
        assert rules(error, changed="added: node x") == {"store-changed"}
        served = evolve(error, status=200, body=b'[{"a":NaN}]')
        assert rules(served) == {"not-strict-json", "status"}
        for body in (b'[1e400]', b'["\\udfff"]', b'[18446744073709551616]', b'["\xed\xa0\x80"]', b"[" * 5000):
            with pytest.raises(NotStrict):
                strict_json(body)
        assert strict_json(b'[18446744073709551615, -9223372036854775808, "\\ud83d\\ude00"]')
        assert rules(Reply(error="closed")) == {"no-answer"}
        assert rules(Reply(error="closed"), answerless=True) == set()
        assert rules(Reply(timed_out=True)) == {"stuck"}
        assert {p.rule for p in judge(evolve(case, must_close=True), error, None)} == {"kept-open"}
        assert judge(evolve(case, must_close=True), evolve(error, closed_by_server=True), None) == []
        assert store_change([("node", "a", 1)], [("node", "a", 2), ("device", "b", 1)]) == \
            "added: device b; changed: node a"
        assert store_change([("node", "a", 1), ("subscription", "s", "v1.3")], [("node", "a", 1)]) is None
        assert store_change([("node", "a", 1)], [("node", "a", 1), ("subscription", "s", "v1.3")]) == \
            "added: subscription s"

    def test_responses_are_read_as_they_are_framed(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        assert parse_response(head + b"Content-Length: 2\r\n\r\n[]").body == b"[]"
        assert parse_response(head + b"Content-Length: 3\r\n\r\n[]") is None
        assert parse_response(head + b"Content-Length: 3\r\n\r\n[]", closed=True).status is None
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n1\r\n[\r\n1\r\n]\r\n0\r\n\r\n"
        assert parse_response(chunked).body == b"[]"
        assert parse_response(chunked[:-4]) is None
        assert parse_response(b"HTTP/1.1 100 Continue\r\n\r\n" + head + b"Content-Length: 0\r\n\r\n").status == 200
        assert parse_response(head + b"\r\n[1]", closed=True).body == b"[1]"
        assert parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").status == 101
        assert parse_response(b"garbage\r\n\r\n").error is not None
        assert render({"a": Raw(b"NaN"), Raw(b'"\\ud800"'): [Raw(b"1e400")]}) == b'{"a":NaN,"\\ud800":[1e400]}'


class GrouphintTests(SeededRegistryTest):
    async def test_a_grouphint_tag_matches_its_basic_query(self, served: Served) -> None:
        """BCP-002-01 tags have names with ':' and '/' and values with spaces: `tags.<name>=<value>` finds them."""
        family = served.target.families["v1.3"]
        tagged = sender(family.device["id"], family.flow["id"], "v1.3", tags={GROUPHINT: ["SDI 1:Video"]})
        case = post(served.target, "positive", "a tagged sender", registration("sender", tagged), {201}, refused=False)
        assert await run_case(reactor, served.target, case, served.snapshot) == []
        for query, expected in ((f"tags.{GROUPHINT}=SDI%201:Video", [tagged["id"]]),
                                (f"tags.{GROUPHINT}=SDI+1:Video", [tagged["id"]]),
                                (f"tags.{GROUPHINT}=sdi%201:video", [tagged["id"]]),  # tags match case-insensitively
                                (f"tags.{GROUPHINT}=SDI%202:Video", []),
                                ("tags.urn%3Ax-nmos%3Atag%3Agrouphint%2Fv1.0=SDI%201%3AVideo", [tagged["id"]])):
            request = (f"GET /x-nmos/query/v1.3/senders?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Connection: close\r\n\r\n").encode()
            reply = await exchange(reactor, served.target.host, served.target.port, Case("positive", query, request))
            assert reply.status == 200, (query, reply.status, reply.body[:300])
            assert [item["id"] for item in strict_json(reply.body)] == expected, query


# --- never store what cannot be served

# Leaves a strict boundary keeps (most of them) and leaves it must refuse (one in eight), and keys that are mostly
# new (one in eight replaces a key of the resource), so that examples are stored about as often as refused.
_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_fine = (st.none() | st.booleans() | st.integers(MIN_INT, MAX_INT) | st.floats(allow_nan=False, allow_infinity=False) |
         st.text(max_size=8) | st.integers(1, 60).map(lambda depth: Raw(nest(depth, "array"))) |
         st.sampled_from([quoted(b"\\u0000"), quoted(b"\\ud83d\\ude00"), quoted("\u202e\uffff".encode()),
                          Raw(b"1e308"), Raw(b"-0"), Raw(b"5e-324")]))
_unservable = (st.integers(MAX_INT + 1, 2 ** 70) | st.integers(-(2 ** 70), MIN_INT - 1) |
               st.sampled_from([math.nan, math.inf, -math.inf]) | st.text(_surrogates, min_size=1, max_size=3) |
               st.integers(63, 2000).map(lambda depth: Raw(nest(depth, "array"))) |
               st.sampled_from([quoted(b"\xed\xa0\x80"), quoted(b"\xc0\xae"), quoted(b"\\udfff\\ud800"),
                                Raw(b"1e400"), Raw(b"-Infinity"), Raw(b"9" * 30)]))
_scalars = st.integers(0, 7).flatmap(lambda roll: _unservable if roll == 7 else _fine)
_keys = st.integers(0, 7).flatmap(lambda roll: st.text(_surrogates, min_size=1, max_size=2) if roll == 7 else
                                  st.sampled_from(["label", "tags", "description", "id"]) if roll == 6 else
                                  st.text(max_size=6))
_json_ish = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) |
                         st.dictionaries(_keys, inner, max_size=3), max_leaves=6)
_examples = itertools.count()


def in_a_thread(run: Callable[[], None]) -> Deferred[None]:
    """`run` in a thread of its own; the Deferred fires on the reactor when it returns (or raises).

    Hypothesis runs a test synchronously, example after example, and an example that waits for the reactor cannot
    run in the reactor's thread. So Hypothesis runs here, and each example on the reactor (blockingCallFromThread),
    one at a time. A daemon thread, not a pool to stop: one stuck after a timeout would hold the cleanup forever."""
    done: Deferred[None] = Deferred()

    def main() -> None:
        try:
            run()
        except BaseException:
            reactor.callFromThread(done.errback, Failure())
        else:
            reactor.callFromThread(done.callback, None)
    threading.Thread(target=main, name="hypothesis", daemon=True).start()
    return done


class NeverStoreTests(SeededRegistryTest):
    async def test_never_stores_what_cannot_be_served(self, served: Served) -> None:
        """A valid Node or Device with arbitrary extra keys and values (surrogates, NaN, infinities, big integers,
        deep nesting): whatever the answer, it keeps the rules, and every stored record encodes as strict JSON."""

        async def example(kind: str, version: str, extra: dict[Any, Any]) -> None:
            data = fresh(served.target, kind, random.Random(next(_examples)), version)  # a new id for every example
            data.update(extra)
            case = post(served.target, "property", f"{version} {kind} with {len(extra)} extra keys",
                        registration(kind, data), None, refused=False, version=version)
            found = await run_case(reactor, served.target, case, served.snapshot)
            SENT["property"] += 1
            assert not found, summarise(found)
            for each in TYPES:
                for record in served.registry.resources(each):
                    json.dumps(record.data, allow_nan=False, ensure_ascii=False).encode("utf-8")

        @settings(max_examples=150, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])
        @given(kind=st.sampled_from(["node", "device"]), version=st.sampled_from(VERSIONS),
               extra=st.dictionaries(_keys, _json_ish, min_size=1, max_size=3))
        def examples(kind: str, version: str, extra: dict[Any, Any]) -> None:  # in Hypothesis's thread
            blockingCallFromThread(reactor, lambda: Deferred.fromCoroutine(example(kind, version, extra)))

        await in_a_thread(examples)


# The same hostile requests, rules and checks against a member of a registry cluster on etcd (issue 14: the two
# stores pass the same tests): what etcd holds is the registry, so a refusal must not reach it either, and what it
# holds must be servable.


class HostileRequestsOnEtcdTests(HostileRequestsTests):
    store = "etcd"


class GrouphintOnEtcdTests(GrouphintTests):
    store = "etcd"


class NeverStoreOnEtcdTests(NeverStoreTests):
    store = "etcd"
