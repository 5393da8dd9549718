"""The pure parts of the Query API: matching, RQL, paging windows, ancestry and the downgrade tables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nmos_ref.model.downgrade import ADDED_IN, affects, downgrade, stripped_paths
from nmos_ref.model.errors import BadQuery, UnsupportedQuery
from nmos_ref.model.matching import (Equals, compile_glob, fold, glob_match, leaf_key, number_text, parse_number,
                                     text_keys)
from nmos_ref.model.paging import Paging, page
from nmos_ref.model.query_params import Ancestry, Limits, ancestry, parse_query
from nmos_ref.model.rql import MAX_RQL_DEPTH, MAX_RQL_LENGTH, MAX_RQL_NODES, compile_rql, parse_rql
from tests.support.cases import UnitTest, cases
from tests.support.official import assert_official
from tests.support.samples import VERSIONS, Family, at_least, flow, node, receiver, sender, source

SENDER = {
    "id": "171d5c80-7fff-4c23-9383-46503eb1c63e", "label": "Camera 1", "description": "100% camera",
    "transport": "urn:x-nmos:transport:rtp.mcast", "flow_id": None, "version": "1441723958:235623703",
    "tags": {"location": ["Salford", "Media City"], "Studio": ["HQ1"]},
    "subscription": {"receiver_id": None, "active": True}, "interface_bindings": ["eth0", "eth1"],
    "caps": {"constraint_sets": [{"urn:x-nmos:cap:format:frame_width": {"enum": [1920, 1280]}}]},
    "frame_width": 1920, "rate": 59.94, "services": [{"type": "urn:x-a:service:tally", "port": 80},
                                                      {"type": "urn:x-a:service:status", "port": 8080}],
}


def rql(text: str, data: dict[str, Any] = SENDER) -> bool:
    return compile_rql(parse_rql(text)).matches(data)


def basic(key: str, value: str, data: dict[str, Any] = SENDER) -> bool:
    query = parse_query([(key, value)], "v1.3", "senders")
    assert query.filter is not None
    return query.filter.matches(data)


# --- leaves, keys and basic queries

class MatchingTests(UnitTest):
    def test_simple_case_folding(self) -> None:
        assert fold("HQ1") == "hq1"
        assert fold("ΣΑΣ") == fold("σας") == "σασ"
        assert fold("ß") == "ß"  # full folding would make it "ss"
        assert fold("ẞ") == "ß"  # capital sharp s folds to sharp s
        assert fold("İ") == "İ"  # only a full (or Turkic) folding exists: kept
        assert fold("Straße") == "straße"

    @cases("text, number", [("1920", 1920), ("-3", -3), ("59.94", 59.94), ("1e3", 1000.0),
                            ("0", 0), ("01", None), ("1.", None), ("+1", None), ("0x10", None),
                            ("1" * 5000, None), ("1e999", None), ("", None), ("NaN", None)])
    def test_parse_number(self, text: str, number: Any) -> None:
        assert parse_number(text) == number

    def test_number_text_is_canonical(self) -> None:
        assert number_text(1920) == number_text(1920.0) == number_text(1.92e3) == "1920"
        assert number_text(59.94) == "59.94"
        assert number_text(2 ** 70) == str(2 ** 70)

    def test_keys_of_leaves_and_values(self) -> None:
        assert leaf_key(True) != leaf_key(1) and leaf_key(1) == ("n", "1")
        assert leaf_key(None) == ("z",) and leaf_key({}) is None
        assert text_keys("1920") == {"1920", ("n", "1920")}
        assert text_keys("true") == {"true", ("b", "true")}
        assert text_keys("null") == {"null", ("z",)}
        assert text_keys("Salford", True) == {"salford"}

    @cases("key, value, expected", [
        ("label", "Camera 1", True),
        ("label", "camera 1", False),  # only tags compare case-insensitively
        ("id", SENDER["id"], True),
        ("tags.location", "salford", True),  # any value of the tag, case-insensitively
        ("tags.location", "MEDIA CITY", True),
        ("tags.location", "HQ1", False),
        ("tags.studio", "HQ1", False),  # tag names are exact
        ("tags.Studio", "hq1", True),
        ("subscription.active", "true", True),
        ("subscription.active", "false", False),
        ("subscription.receiver_id", "null", True),
        ("flow_id", "null", True),
        ("frame_width", "1920", True),
        ("frame_width", "1920.0", True),
        ("rate", "59.94", True),
        ("interface_bindings", "eth1", True),  # arrays: any element
        ("services.type", "urn:x-a:service:status", True),  # objects within arrays
        ("services.port", "8080", True),
        ("caps.constraint_sets.urn:x-nmos:cap:format:frame_width.enum", "1280", True),
        ("no_such_key", "x", False),  # unknown keys match nothing
        ("subscription", "x", False),  # an object equals no value
        ("label.length", "8", False),
        ("", "x", False),
    ])
    def test_basic_query_terms(self, key: str, value: str, expected: bool) -> None:
        assert basic(key, value) is expected


# --- RQL

class RqlTests(UnitTest):
    @cases("text, expected", [
        ("eq(label,Camera%201)", True),
        ("eq(label,Camera 1)", True),
        ("eq(transport,urn:x-nmos:transport:rtp.mcast)", True),  # ':' after an unknown prefix is part of the value
        ("eq(transport,urn%3Ax-nmos%3Atransport%3Artp.mcast)", True),  # RQL's own percent-encoding
        ("eq(description,100%25 camera)", True),
        ("eq(description,100% camera)", True),  # a '%' that starts no escape is itself
        ("eq(frame_width,1920)", True),
        ("eq(frame_width,string:1920)", False),  # typed: the string "1920" only
        ("eq(frame_width,number:1920)", True),
        ("eq(label,number:1)", False),
        ("eq(subscription.active,boolean:true)", True),
        ("eq(subscription.active,true)", True),
        ("eq(flow_id,null)", True),
        ("eq(tags.location,SALFORD)", True),
        ("eq((tags,location),salford)", True),  # RQL's array form of a nested property
        ("ne(label,Camera 1)", False),
        ("ne(label,Camera 2)", True),
        ("ne(no_such_key,1)", True),  # ne is not(eq)
        ("in(tags.location,(London,Salford))", True),
        ("in(tags.location,(London,Paris))", False),
        ("in(tags.location,salford)", True),
        ("in(label,())", False),
        ("out(tags.location,(London,Paris))", True),
        ("out(interface_bindings,(eth1))", False),
        ("lt(frame_width,2000)", True),
        ("le(frame_width,1920)", True),
        ("gt(frame_width,1920)", False),
        ("ge(rate,59.94)", True),
        ("gt(label,Camera 0)", True),  # strings by code point
        ("lt(label,Camera 0)", False),
        ("gt(frame_width,abc)", False),  # a string never orders against a number
        ("gt(version,1441723958:99)", True),  # TAI timestamps in time order, not text order
        ("lt(version,1441723958:235623704)", True),
        ("gt(subscription.active,false)", False),  # booleans have no order
        ("gt(tags.location,m)", True),
        ("matches(label,Cam*)", True),
        ("matches(label,cam*)", False),
        ("matches(label,*era ?)", True),
        ("matches(label,Camera\\*)", False),
        ("matches(tags.location,media*)", True),  # tags case-insensitively
        ("matches(frame_width,19*)", False),  # strings only
        ("and(eq(label,Camera 1),eq(frame_width,1920))", True),
        ("and(eq(label,Camera 1),eq(frame_width,1280))", False),
        ("or(eq(label,x),eq(frame_width,1920))", True),
        ("or(eq(label,x),eq(frame_width,1))", False),
        ("not(eq(label,x))", True),
        ("and(not(or(eq(label,x),eq(label,y))),in(services.port,(80,81)))", True),
    ])
    def test_rql(self, text: str, expected: bool) -> None:
        assert rql(text) is expected

    @cases("text", [
        "", "eq", "eq(", "eq(label,x", "eq(label,x))", "eq(label,x)eq(a,b)", "eq(label,x)&eq(a,b)", "label=x",
        "eq(label)", "eq(label,x,y)", "eq(,x)", "eq(a..b,x)", "eq(label,eq(a,b))", "eq(label,(a,b))", "and()",
        "and(x)", "and(eq(a,1),x)", "not(eq(a,1),eq(b,2))", "not()", "(eq(a,1))", "x y(a)",
        "eq(label,%ff)", "eq(frame_width,number:abc)", "eq(a,boolean:yes)", "matches(label,abc\\)", "in(a,(b,eq(c,d)))",
        "lt(a,(1,2))", "matches(label," + "a" * 257 + ")",
    ])
    def test_malformed_rql_is_a_bad_query(self, text: str) -> None:
        with pytest.raises(BadQuery):
            compile_rql(parse_rql(text))

    @cases("text", ["sort(+label)", "limit(10)", "select(id,label)", "contains(tags,x)",
                    "and(eq(a,1),count())", "eq(created,date:2020-01-01)", "eq(label,re:^Cam)",
                    "matches(label,glob:Cam*)"])
    def test_unsupported_rql_is_not_implemented(self, text: str) -> None:
        with pytest.raises(UnsupportedQuery):
            compile_rql(parse_rql(text))

    def test_rql_limits(self) -> None:
        nested = "not(" * (MAX_RQL_DEPTH - 1) + "eq(a,1)" + ")" * (MAX_RQL_DEPTH - 1)
        assert compile_rql(parse_rql(nested)).matches({"a": 1}) is (MAX_RQL_DEPTH % 2 == 1)
        with pytest.raises(BadQuery, match="nesting"):
            parse_rql("not(" + nested + ")")
        wide = "or(" + ",".join(["eq(a,1)"] * ((MAX_RQL_NODES - 1) // 3)) + ")"
        assert rql(wide, {"a": 1})
        with pytest.raises(BadQuery, match="complex"):
            parse_rql("or(" + ",".join(["eq(a,1)"] * (MAX_RQL_NODES // 3 + 1)) + ")")
        with pytest.raises(BadQuery, match="limited"):
            parse_rql("eq(label," + "x" * MAX_RQL_LENGTH + ")")

    @cases("pattern, text, expected", [
        ("*", "", True), ("", "", True), ("", "a", False), ("a*", "abc", True), ("*c", "abc", True),
        ("a?c", "abc", True), ("a?c", "ac", False), ("*b*", "abc", True), ("a*b*c", "aXbYc", True),
        ("a*b*c", "aXbY", False), ("\\*", "*", True), ("\\*", "a", False), ("\\?x", "?x", True),
        ("**a", "ba", True), ("a*a*a*a*b", "a" * 2000, False), ("*a*a*a*a*", "a" * 2000, True),
    ])
    def test_glob(self, pattern: str, text: str, expected: bool) -> None:
        assert glob_match(compile_glob(pattern), text) is expected


# --- parsing a request

class ParseQueryTests(UnitTest):
    def test_parse_query_splits_reserved_and_basic_parameters(self) -> None:
        query = parse_query([("label", "x"), ("paging.limit", "5"), ("paging.order", "create"),
                             ("query.downgrade", "v1.1"), ("query.rql", "eq(a,1)")], "v1.3", "nodes")
        assert [term.path for term in query.basic] == [("label",)]
        assert query.has_rql and query.downgrade == "v1.1"
        assert query.paging == Paging(None, None, 5, "create")
        assert query.filter is not None and query.filter.matches({"label": "x", "a": 1})
        assert not query.filter.matches({"label": "x", "a": 2})
        everything = parse_query([], "v1.1", "nodes")
        assert everything.filter is None and everything.paging == Paging(None, None, 100, "update")
        assert parse_query([], "v1.0", "nodes").paging is None

    @cases("params", [
        [("label", "a"), ("label", "b")], [("paging.limit", "1"), ("paging.limit", "2")],
        [("paging.since", "1")], [("paging.since", "1:1234567890")], [("paging.until", "x:1")],
        [("paging.since", "0:2"), ("paging.until", "0:1")], [("paging.limit", "-1")], [("paging.limit", "ten")],
        [("paging.limit", "1" * 40)], [("paging.limit", "٣")], [("paging.order", "name")],
        [("query.downgrade", "1.0")], [("query.downgrade", "v2.0")], [("query.downgrade", "v0.9")],
        [("query.downgrade", "v1.4")], [("query.rql", "eq(")], [(f"k{i}", "v") for i in range(65)],
    ])
    def test_bad_requests(self, params: list[tuple[str, str]]) -> None:
        with pytest.raises(BadQuery):
            parse_query(params, "v1.3", "nodes")

    @cases("key", ["paging.limit", "paging.since", "query.downgrade", "query.ancestry_id"])
    def test_v1_0_has_no_paging_or_advanced_queries(self, key: str) -> None:
        with pytest.raises(UnsupportedQuery, match="v1.0"):
            parse_query([(key, "x")], "v1.0", "sources")

    def test_v1_0_serves_rql_as_an_extension(self) -> None:
        query = parse_query([("query.rql", "eq(label,x)")], "v1.0", "sources")
        assert query.has_rql and query.paging is None

    @cases("key", ["query.sort", "paging.offset", "query."])
    def test_unknown_reserved_parameters_are_not_implemented(self, key: str) -> None:
        with pytest.raises(UnsupportedQuery):
            parse_query([(key, "x")], "v1.3", "nodes")

    def test_limits(self) -> None:
        assert parse_query([("paging.limit", "100000")], "v1.1", "nodes").paging.limit == 1000  # type: ignore[union-attr]
        small = Limits(default_limit=10, max_limit=20)
        assert parse_query([], "v1.1", "nodes", small).paging.limit == 10  # type: ignore[union-attr]
        assert parse_query([("paging.limit", "0")], "v1.1", "nodes", small).paging.limit == 0  # type: ignore[union-attr]
        assert parse_query([("paging.limit", "21")], "v1.1", "nodes", small).paging.limit == 20  # type: ignore[union-attr]

    def test_downgrade_parameter(self) -> None:
        assert parse_query([("query.downgrade", "v1.0")], "v1.3", "nodes").downgrade == "v1.0"
        assert parse_query([("query.downgrade", "v1.3")], "v1.3", "nodes").downgrade is None  # no change

    def test_ancestry_parameters(self) -> None:
        rid = "c1398579-15bc-468e-91ec-df5bbefe1cd3"
        query = parse_query([("query.ancestry_id", rid), ("query.ancestry_type", "children")], "v1.1", "sources")
        assert query.ancestry == Ancestry(rid, "children", 8)
        query = parse_query([("query.ancestry_id", rid), ("query.ancestry_type", "parents"),
                             ("query.ancestry_generations", "64")], "v1.1", "flows")
        assert query.ancestry == Ancestry(rid, "parents", 64)
        for params, collection in [
            ([("query.ancestry_id", rid), ("query.ancestry_type", "children")], "nodes"),
            ([("query.ancestry_id", rid)], "sources"),
            ([("query.ancestry_type", "children")], "sources"),
            ([("query.ancestry_id", rid.upper()), ("query.ancestry_type", "children")], "sources"),
            ([("query.ancestry_id", rid), ("query.ancestry_type", "siblings")], "sources"),
            ([("query.ancestry_id", rid), ("query.ancestry_type", "children"), ("query.ancestry_generations", "65")],
             "sources"),
            ([("query.ancestry_id", rid), ("query.ancestry_type", "children"), ("query.ancestry_generations", "x")],
             "flows"),
        ]:
            with pytest.raises(BadQuery):
                parse_query(params, "v1.1", collection)


# --- paging windows: IS-04 "APIs - Query Parameters" (v1.3), every example

class Stamps:
    """A timeline whose items are their own stamps."""

    def __init__(self, stamps: list[int]) -> None:
        self.stamps = sorted(stamps)

    def newest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, int]]:
        return ((s, s) for s in reversed(self.stamps) if (since is None or s > since) and (until is None or s <= until))

    def oldest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, int]]:
        return ((s, s) for s in self.stamps if (since is None or s > since) and (until is None or s <= until))


SAMPLE = Stamps(list(range(1, 21)))  # the documentation's Nodes, updated at 0:1 ... 0:20


def window(timeline: Stamps, since: int | None = None, until: int | None = None, limit: int = 10,
           newest: int = 20) -> tuple[list[int], int, int]:
    result = page(timeline, newest, Paging(since, until, limit, "update"))
    assert result.limit == limit
    return result.items, result.since, result.until


class PagingTests(UnitTest):
    def test_example_1_initial_request(self) -> None:
        assert window(SAMPLE) == (list(range(20, 10, -1)), 10, 20)

    def test_example_2_custom_limit(self) -> None:
        assert window(SAMPLE, limit=5) == ([20, 19, 18, 17, 16], 15, 20)

    def test_example_3_since(self) -> None:
        assert window(SAMPLE, since=4) == (list(range(14, 4, -1)), 4, 14)

    def test_example_4_until(self) -> None:
        assert window(SAMPLE, until=16) == (list(range(16, 6, -1)), 6, 16)

    def test_example_5_since_wins(self) -> None:
        assert window(SAMPLE, since=4, until=16) == (list(range(14, 4, -1)), 4, 14)

    def test_edge_case_1_before_the_beginning(self) -> None:
        assert window(Stamps([21, 22]), until=20, newest=22) == ([], 0, 20)

    def test_edge_case_2_at_the_end(self) -> None:
        assert window(Stamps([19, 20]), since=20) == ([], 20, 20)

    def test_edge_case_3_filter_with_one_result(self) -> None:
        assert window(Stamps([15]), newest=20) == ([15], 0, 20)

    def test_edge_case_4_filter_with_no_result(self) -> None:
        assert window(Stamps([]), newest=20) == ([], 0, 20)

    def test_since_equal_to_until_is_empty(self) -> None:
        assert window(SAMPLE, since=13, until=13) == ([], 13, 13)

    def test_limit_zero_is_a_window_of_no_width_at_the_cursor(self) -> None:
        assert window(SAMPLE, since=13, limit=0) == ([], 13, 13)
        assert window(SAMPLE, until=13, limit=0) == ([], 13, 13)
        assert window(SAMPLE, limit=0) == ([], 20, 20)

    def test_since_after_the_newest(self) -> None:
        assert window(SAMPLE, since=25) == ([], 25, 25)

    def test_since_with_fewer_results_than_the_limit_ends_at_the_newest(self) -> None:
        assert window(SAMPLE, since=15) == ([20, 19, 18, 17, 16], 15, 20)
        assert window(SAMPLE, since=15, until=18) == ([18, 17, 16], 15, 18)

    def test_discontiguous_filters(self) -> None:
        # nmos-testing test_21_5: "foo" on indexes 0, 1, 4, 5, 6, 9, ... of 20 Nodes (stamps 1 ... 20)
        foo = Stamps([i + 1 for i in range(20) if 3 > (i + 1) % 5])
        bar = Stamps([i + 1 for i in range(20) if not 3 > (i + 1) % 5])
        items, since, until = window(foo)
        assert items == [20, 17, 16, 15, 12, 11, 10, 7, 6, 5] and 2 <= since <= 5 and until == 20
        assert window(foo, until=2) == ([2, 1], 0, 2)
        assert window(bar) == ([19, 18, 14, 13, 9, 8, 4, 3], 0, 20)
        items, since, until = window(bar, limit=3)
        assert items == [19, 18, 14] and 13 <= since < 14 and until == 20
        assert window(bar, since=5, until=13, limit=3) == ([13, 9, 8], 5, 13)
        assert window(bar, since=10, until=13, limit=3) == ([13], 10, 13)
        assert window(bar, since=10, until=12, limit=3) == ([], 10, 12)

    def test_walking_back_and_forth_visits_everything_once(self) -> None:
        stamps = Stamps([3 * i for i in range(1, 51)])
        seen: list[int] = []
        items, since, until = window(stamps, limit=7, newest=150)
        seen += items
        while items:
            items, since, _ = window(stamps, until=since, limit=7, newest=150)
            seen += items
        assert seen == sorted(stamps.stamps, reverse=True)
        forward: list[int] = []
        cursor = 0
        while True:
            items, _, cursor = window(stamps, since=cursor, limit=7, newest=150)
            if not items:
                break
            forward += reversed(items)
        assert forward == stamps.stamps


# --- ancestry

class AncestryTests(UnitTest):
    def test_ancestry_follows_parents_both_ways(self) -> None:
        parents = {"b": ["a"], "c": ["b"], "d": ["c", "a"], "e": ["d"], "x": ["x"]}
        children: dict[str, list[str]] = {}
        for child, listed in parents.items():
            for parent in listed:
                children.setdefault(parent, []).append(child)

        def find(start: str, direction: str, generations: int) -> set[str]:
            return ancestry(start, direction, generations, lambda r: parents.get(r, []), lambda r: children.get(r, []))

        assert find("a", "children", 1) == {"b", "d"}
        assert find("a", "children", 2) == {"b", "c", "d", "e"}
        assert find("e", "parents", 1) == {"d"}
        assert find("e", "parents", 2) == {"c", "d", "a"}
        assert find("e", "parents", 64) == {"a", "b", "c", "d"}
        assert find("e", "parents", 0) == set()
        assert find("x", "parents", 5) == set()  # never itself, even in a loop
        assert find("nobody", "children", 5) == set()


# --- downgrade tables: IS-04 "Upgrade Path", Version Translations, key by key

UPGRADE_PATH = {  # (from, to): {type: keys listed in the document}
    ("v1.3", "v1.2"): {"node": {"interfaces.attached_network_device", "api.endpoints.authorization",
                                "services.authorization"},
                       "device": {"controls.authorization"}, "source": {"event_type"}, "flow": {"event_type"}},
    ("v1.2", "v1.1"): {"node": {"interfaces"}, "sender": {"caps", "interface_bindings", "subscription"},
                       "receiver": {"interface_bindings", "subscription.active"}},
    ("v1.1", "v1.0"): {"node": {"api", "clocks", "description", "tags"},
                       "device": {"controls", "description", "tags"},
                       "source": {"channels", "clock_name", "grain_rate"},
                       "flow": {"bit_depth", "colorspace", "components", "device_id", "DID_SDID", "frame_height",
                                "frame_width", "grain_rate", "interlace_mode", "media_type", "sample_rate",
                                "transfer_characteristic"}},
}


def _strip_by_hand(kind: str, data: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    out = dict(data)
    for key in keys:
        head, _, tail = key.partition(".")
        if head not in out:
            continue
        if not tail:
            del out[head]
        elif isinstance(out[head], list):
            out[head] = [{k: v for k, v in item.items() if k != tail} for item in out[head]]
        elif "." in tail:  # api.endpoints.authorization
            inner, _, leaf = tail.partition(".")
            out[head] = {**out[head], inner: [{k: v for k, v in item.items() if k != leaf}
                                              for item in out[head][inner]]}
        else:
            out[head] = {k: v for k, v in out[head].items() if k != tail}
    return out


class DowngradeTests(UnitTest):
    def test_tables_are_the_upgrade_path_lists(self) -> None:
        for (higher, lower), kinds in UPGRADE_PATH.items():
            for kind in ("node", "device", "source", "flow", "sender", "receiver"):
                paths = {".".join(s for s in path if s != "[]") for path in stripped_paths(kind, higher, lower)}
                assert paths == kinds.get(kind, set()), (higher, kind)
        assert set(ADDED_IN) == {"v1.1", "v1.2", "v1.3"}
        assert stripped_paths("node", "v1.3", "v1.3") == ()
        assert stripped_paths("node", "v1.1", "v1.3") == ()  # nothing is added going up
        assert len(stripped_paths("flow", "v1.3", "v1.0")) == 13
        assert stripped_paths("node", "v2.1", "v2.0") == ()  # other majors: no table

    @cases("held", VERSIONS)
    def test_downgrade_matches_the_document_and_the_older_schema(self, held: str) -> None:
        family = Family.build(held)
        extra = [("source", source(family.device["id"], held, format="urn:x-nmos:format:audio")),
                 ("source", source(family.device["id"], held, format="urn:x-nmos:format:data"))]
        if at_least(held, "v1.3"):
            extra.append(("flow", flow(family.source["id"], family.device["id"], held, format="urn:x-nmos:format:data")))
        for kind, data in family.members() + extra:
            frozen_copy = repr(data)
            expected = data
            for served in reversed(VERSIONS[:VERSIONS.index(held) + 1]):
                if served != held:
                    step = VERSIONS[VERSIONS.index(served) + 1]
                    expected = _strip_by_hand(kind, expected, UPGRADE_PATH[(step, served)].get(kind, set()))
                got = downgrade(kind, data, held, served)
                assert got == expected, (kind, held, served)
                if got == data:
                    assert got is data  # nothing copied when nothing is stripped
                assert_official(served, kind, got)
            assert repr(data) == frozen_copy  # the registered data is never changed

    def test_affects(self) -> None:
        paths = stripped_paths("node", "v1.3", "v1.0")
        assert affects(paths, ("tags", "location"))
        assert affects(paths, ("api",))
        assert affects(paths, ("services", "authorization"))
        assert affects(paths, ("services",))
        assert not affects(paths, ("services", "type"))
        assert not affects(paths, ("label",))
        assert not affects(stripped_paths("sender", "v1.3", "v1.2"), ("label",))

    def test_resources_module_builds_what_the_tables_strip(self) -> None:
        # The factories carry every key of the tables, so the downgrade tests above strip something at each step.
        assert "attached_network_device" in node("v1.3")["interfaces"][0]
        assert "subscription" in sender("d", "f", "v1.2") and "active" in receiver("d", "v1.2")["subscription"]
        assert "device_id" in flow("s", "d", "v1.1") and "channels" in source("d", "v1.1",
                                                                             format="urn:x-nmos:format:audio")

    def test_equals_is_hashable_and_comparable(self) -> None:
        assert Equals(("a",), frozenset({"1"})) == Equals(("a",), frozenset({"1"}))
