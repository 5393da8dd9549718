"""What a Query API list request asks for, read from its parameters: the filter (basic terms and RQL), paging
cursors, downgrade and ancestry, within the documented limits; and the ancestry search itself.

Sources: IS-04 "APIs - Query Parameters" (v1.3), the QueryAPI.raml traits of v1.0-v1.3, "APIs - Common Keys" (tags)
and ../shared/docs/spec-notes.md §5. Matching is `nmos_ref.model.matching`, RQL `nmos_ref.model.rql`, paging
`nmos_ref.model.paging`. Nothing here knows about HTTP or the store: refusals are `BadQuery` (the client asked for
something malformed or too expensive: 400) and `UnsupportedQuery` (a query feature this server does not implement:
501). docs/query.md describes the behaviour for users.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from attrs import frozen

from nmos_ref.model.errors import BadQuery, UnsupportedQuery
from nmos_ref.model.matching import All, Equals, Expr, is_tags, split_path, text_keys
from nmos_ref.model.paging import Paging
from nmos_ref.model.rql import compile_rql, parse_rql
from nmos_ref.model.tai import parse_tai
from nmos_ref.model.versions import parse_version

# Limits (documented in docs/query.md).
DEFAULT_PAGING_LIMIT = 100
MAX_PAGING_LIMIT = 1000
DEFAULT_GENERATIONS = 8
MAX_GENERATIONS = 64
MAX_BASIC_TERMS = 64

ANCESTRY_COLLECTIONS = ("sources", "flows")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# --- the whole request


@frozen
class Ancestry:
    id: str
    direction: str  # "parents" or "children"
    generations: int


@frozen
class Query:
    """Everything a list request asks for; `filter` is None when it asks for everything."""

    filter: Expr | None
    basic: tuple[Equals, ...]  # the basic query terms (also inside `filter`)
    has_rql: bool
    downgrade: str | None  # the lowest version to include, when below the request's version
    paging: Paging | None  # None at v1.0, which has no paging
    ancestry: Ancestry | None


@frozen
class Limits:
    default_limit: int = DEFAULT_PAGING_LIMIT
    max_limit: int = MAX_PAGING_LIMIT
    default_generations: int = DEFAULT_GENERATIONS
    max_generations: int = MAX_GENERATIONS


PAGING_KEYS = ("paging.since", "paging.until", "paging.limit", "paging.order")
QUERY_KEYS = ("query.downgrade", "query.rql", "query.ancestry_id", "query.ancestry_type", "query.ancestry_generations")


def parse_downgrade(text: str | None, version: str) -> str | None:
    """`query.downgrade`: the lowest version to include, or None for no change. IS-04 "APIs - Query Parameters":
    "Downgrades MUST only be performed between minor API versions" (400 otherwise)."""
    if text is None:
        return None
    try:
        major, minor = parse_version(text)
    except ValueError:
        raise BadQuery(f"query.downgrade must be an API version such as v1.0, not {text!r}") from None
    own_major, own_minor = parse_version(version)
    if major != own_major:
        raise BadQuery(f"query.downgrade={text}: downgrades never cross a major API version (this is {version})")
    if minor > own_minor:
        raise BadQuery(f"query.downgrade={text} is above the requested version {version}; it names the lowest "
                       f"version to include")
    return text if minor < own_minor else None


def _tai(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_tai(text)
    except ValueError:
        raise BadQuery(f"{name} must be a TAI timestamp <seconds>:<nanoseconds> (at most 20 and 9 digits), "
                       f"not {text[:40]!r}") from None


def _count(name: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadQuery(f"{name} must be a non-negative integer, not {text!r}")
    return int(text)


def parse_paging(values: Mapping[str, str], limits: Limits) -> Paging:
    since = _tai("paging.since", values.get("paging.since"))
    until = _tai("paging.until", values.get("paging.until"))
    if since is not None and until is not None and since > until:
        raise BadQuery("paging.since is later than paging.until")
    limit = limits.default_limit
    if "paging.limit" in values:
        # QueryAPI.raml: "Implementations may specify their own default and maximum for the limit"; a larger limit
        # is lowered to the maximum and X-Paging-Limit says so.
        limit = min(_count("paging.limit", values["paging.limit"]), limits.max_limit)
    order = values.get("paging.order", "update")
    if order not in ("update", "create"):
        raise BadQuery(f"paging.order must be create or update, not {order!r}")
    return Paging(since, until, limit, order)


def parse_ancestry(values: Mapping[str, str], collection: str, limits: Limits) -> Ancestry | None:
    given = [key for key in ("query.ancestry_id", "query.ancestry_type", "query.ancestry_generations")
             if key in values]
    if not given:
        return None
    if collection not in ANCESTRY_COLLECTIONS:
        raise BadQuery(f"ancestry queries apply to /sources and /flows only, not /{collection}")
    rid, direction = values.get("query.ancestry_id"), values.get("query.ancestry_type")
    if rid is None or direction is None:
        raise BadQuery("an ancestry query needs both query.ancestry_id and query.ancestry_type")
    if _UUID.fullmatch(rid) is None:
        raise BadQuery(f"query.ancestry_id must be a lower-case UUID, not {rid!r}")
    if direction not in ("parents", "children"):
        raise BadQuery(f"query.ancestry_type must be parents or children, not {direction!r}")
    generations = limits.default_generations
    if "query.ancestry_generations" in values:
        generations = _count("query.ancestry_generations", values["query.ancestry_generations"])
        if generations > limits.max_generations:
            raise BadQuery(f"query.ancestry_generations is limited to {limits.max_generations}")
    return Ancestry(rid, direction, generations)


def parse_query(params: Sequence[tuple[str, str]], version: str, collection: str,
                limits: Limits = Limits()) -> Query:
    """A list request's decoded query parameters, in order. Basic query keys are anything outside the reserved
    `paging.` and `query.` names; a key given twice is refused (its meaning "is not defined")."""
    seen: set[str] = set()
    reserved: dict[str, str] = {}
    basic: list[Equals] = []
    for key, value in params:
        if key in seen:
            raise BadQuery(f"the query parameter {key!r} is given more than once (use query.rql with in() or or() "
                           f"to match several values)")
        seen.add(key)
        if key.startswith(("paging.", "query.")):
            # Extension: RQL is served at v1.0 too (its RAML defines no query.* names, so no v1.0 client sends
            # one by accident); the AMWA suite asks v1.0 subscriptions for it (IS-04-02 test_24_1).
            if version == "v1.0" and key != "query.rql":
                raise UnsupportedQuery(f"{key}: IS-04 v1.0 has no paging, downgrade or ancestry queries "
                                       f"(they start at v1.1; RQL is served at v1.0 as an extension)")
            if key not in PAGING_KEYS and key not in QUERY_KEYS:
                raise UnsupportedQuery(f"the query parameter {key} is not supported")
            reserved[key] = value
            continue
        path = split_path(key)
        basic.append(Equals(path, text_keys(value, is_tags(path))))
    if len(basic) > MAX_BASIC_TERMS:
        raise BadQuery(f"at most {MAX_BASIC_TERMS} basic query parameters are allowed")
    rql = None
    if "query.rql" in reserved:
        rql = compile_rql(parse_rql(reserved["query.rql"]))
    parts: tuple[Expr, ...] = (*basic, *([rql] if rql is not None else []))
    return Query(
        filter=None if not parts else parts[0] if len(parts) == 1 else All(parts),
        basic=tuple(basic),
        has_rql=rql is not None,
        downgrade=parse_downgrade(reserved.get("query.downgrade"), version),
        paging=None if version == "v1.0" else parse_paging(reserved, limits),
        ancestry=parse_ancestry(reserved, collection, limits),
    )


# --- ancestry

def ancestry(start: str, direction: str, generations: int, parents: Callable[[str], Iterable[str]],
             children: Callable[[str], Iterable[str]]) -> set[str]:
    """Ids related to `start` through `parents` arrays within `generations` steps, `start` excluded (IS-04 "APIs -
    Query Parameters": "Responses do not include the Source with ID specified in the ancestry_id parameter")."""
    step = parents if direction == "parents" else children
    seen = {start}
    found: set[str] = set()
    frontier = [start]
    for _ in range(generations):
        following = []
        for rid in frontier:
            for related in step(rid):
                if isinstance(related, str) and related not in seen:
                    seen.add(related)
                    found.add(related)
                    following.append(related)
        if not following:
            break
        frontier = following
    return found
