"""What a Query API request asks for, and the pure functions that answer it: matching, RQL, paging, ancestry.

Sources: IS-04 "APIs - Query Parameters" (v1.3), the QueryAPI.raml traits of v1.0-v1.3, "APIs - Common Keys" (tags)
and ../shared/docs/spec-notes.md §5. Nothing here knows about HTTP or the store: refusals are `BadQuery` (the client
asked for something malformed or too expensive: 400) and `UnsupportedQuery` (a query feature this server does not
implement: 501). docs/query.md describes the behaviour for users.

Matching in one paragraph: a query path ("tags.location", "subscription.sender_id") walks objects by key and steps
into every element of an array it meets, so it reaches a set of leaves; a term matches when *any* leaf matches.
Leaves are compared through "keys": a string is itself (simple-case-folded below `tags`), a number its canonical
text, booleans and null their JSON words. A query value has the keys of every reading of its text ("1920" is the
string and the number), so `frame_width=1920` and `label=1920` both work, as the spec asks of basic queries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote

from attrs import frozen

from nmos_ref.model.errors import ModelError
from nmos_ref.model.versions import parse_version

# Limits (documented in docs/query.md).
DEFAULT_PAGING_LIMIT = 100
MAX_PAGING_LIMIT = 1000
DEFAULT_GENERATIONS = 8
MAX_GENERATIONS = 64
MAX_BASIC_TERMS = 64
MAX_RQL_LENGTH = 4096  # characters of the decoded query.rql value
MAX_RQL_DEPTH = 16  # nested calls and arrays
MAX_RQL_NODES = 256  # calls, arrays and values
MAX_PATTERN_LENGTH = 256  # characters of a matches() pattern

ANCESTRY_COLLECTIONS = ("sources", "flows")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_TAI = re.compile(r"([0-9]{1,20}):([0-9]{1,9})")  # bounded: int() of a long digit run is slow or fails
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BadQuery(ModelError):
    """A malformed query, or one this server refuses as too expensive (400)."""


class UnsupportedQuery(ModelError):
    """A query feature this server does not implement (501: IS-04 v1.3 "APIs - Query Parameters")."""


# --- leaves and keys

Key = str | tuple[str, ...]
TRUE: Key = ("b", "true")
FALSE: Key = ("b", "false")
NULL: Key = ("z",)


def fold(text: str) -> str:
    """Unicode *simple* case folding, which IS-04 "Common Keys" asks for when comparing tag values: like
    `str.casefold` but never changing the length (so "ß" stays "ß", while "ẞ" becomes "ß")."""
    folded = text.casefold()
    if len(folded) == len(text):
        return folded
    out = []
    for char in text:
        single = char.casefold()
        if len(single) != 1:
            single = char.lower()
            if len(single) != 1:
                single = char
        out.append(single)
    return "".join(out)


def number_text(value: int | float) -> str:
    """The canonical text of a JSON number: 1920, 1920.0 and 1.92e3 are all "1920"."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 2 ** 63:
        return str(int(value))
    return repr(value)


def parse_number(text: str) -> int | float | None:
    """A JSON number written as text, or None."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    try:
        number: int | float = int(text) if match.group(1) is None and match.group(2) is None else float(text)
    except ValueError:  # more digits than Python converts
        return None
    if isinstance(number, float) and number in (float("inf"), float("-inf")):
        return None
    return number


def leaf_key(value: Any, folded: bool = False) -> Key | None:
    """How a leaf compares for equality; None for objects, which no value equals."""
    if isinstance(value, str):
        return fold(value) if folded else value
    if value is True:
        return TRUE
    if value is False:
        return FALSE
    if value is None:
        return NULL
    if isinstance(value, (int, float)):
        return ("n", number_text(value))
    return None


def text_keys(text: str, folded: bool = False) -> frozenset[Key]:
    """Every key a query value written as `text` can equal: the string, and the number, boolean or null it spells."""
    keys: set[Key] = {fold(text) if folded else text}
    number = parse_number(text)
    if number is not None:
        keys.add(("n", number_text(number)))
    if text in ("true", "false"):
        keys.add(("b", text))
    if text == "null":
        keys.add(NULL)
    return frozenset(keys)


def is_tags(path: Sequence[str]) -> bool:
    """Tag values compare case-insensitively (IS-04 "APIs - Common Keys")."""
    return len(path) >= 2 and path[0] == "tags"


_MISSING = object()


def any_leaf(value: Any, path: Sequence[str], test: Callable[[Any], bool], start: int = 0) -> bool:
    """Whether `test` holds for any leaf that `path` reaches in `value` (arrays are stepped into on the way and at
    the end). Iterative, so no depth of nested arrays can exhaust the stack (#11)."""
    i, end = start, len(path)
    while not isinstance(value, list):  # the common case, objects all the way: no stack needed
        if i == end:
            return test(value)
        if not isinstance(value, dict):
            return False
        value = value.get(path[i], _MISSING)
        if value is _MISSING:
            return False
        i += 1
    stack = [(value, i)]
    while stack:
        value, i = stack.pop()
        while True:
            if isinstance(value, list):
                if i == end:  # the leaves themselves (a tag's values, say): tested here, nested arrays later
                    for item in value:
                        if isinstance(item, list):
                            stack.append((item, i))
                        elif test(item):
                            return True
                else:
                    stack.extend((item, i) for item in value)
                break
            if i == end:
                if test(value):
                    return True
                break
            if not isinstance(value, dict):
                break
            value = value.get(path[i], _MISSING)
            if value is _MISSING:
                break
            i += 1
    return False


def leaves(value: Any, path: Sequence[str], start: int = 0) -> Iterator[Any]:
    """Every leaf `path` reaches in `value`, in document order (what `any_leaf` tests, and what indexes file).
    Iterative: a stack of (value, position in `path`) instead of recursion into nested arrays."""
    end = len(path)
    stack = [(value, start)]
    while stack:
        value, i = stack.pop()
        while True:
            if isinstance(value, list):
                stack.extend((item, i) for item in reversed(value))
                break
            if i == end:
                yield value
                break
            if not isinstance(value, dict):
                break
            value = value.get(path[i], _MISSING)
            if value is _MISSING:
                break
            i += 1


def split_path(text: str) -> tuple[str, ...]:
    """"subscription.sender_id" -> ("subscription", "sender_id"). Below `tags` the rest is one whole tag name,
    dots and all: every registered NMOS tag name has them ("urn:x-nmos:tag:grouphint/v1.0", BCP-002-01), and tag
    values are arrays of strings, so there is nothing deeper to reach (#11)."""
    if text.startswith("tags."):
        return ("tags", text[5:])
    return tuple(text.split("."))


# --- filter expressions (basic queries and compiled RQL)

Lookup = Callable[[tuple[str, ...], frozenset[Key]], "set[str] | None"]


class Expr(Protocol):
    def matches(self, data: Mapping[str, Any]) -> bool: ...

    def candidates(self, lookup: Lookup) -> set[str] | None:
        """Ids that can match, from indexes (a superset), or None when the indexes cannot narrow it down."""


@frozen
class Equals:
    """`key=value`, `eq()`, `in()`; with `negate`, `ne()` and `out()`: any leaf at `path` has one of `keys`."""

    path: tuple[str, ...]
    keys: frozenset[Key]
    negate: bool = False

    def matches(self, data: Mapping[str, Any]) -> bool:
        keys, folded = self.keys, is_tags(self.path)
        found = any_leaf(data, self.path, lambda leaf: leaf_key(leaf, folded) in keys)
        return found is not self.negate

    def candidates(self, lookup: Lookup) -> set[str] | None:
        return None if self.negate else lookup(self.path, self.keys)


@frozen
class Compare:
    """`lt()`, `le()`, `gt()`, `ge()`: numbers with numbers, TAI timestamps ("<s>:<ns>") with TAI timestamps, other
    strings with strings by code point."""

    path: tuple[str, ...]
    operator: str
    kind: str  # "number", "tai" or "string"
    value: Any

    def matches(self, data: Mapping[str, Any]) -> bool:
        return any_leaf(data, self.path, self._test)

    def _test(self, leaf: Any) -> bool:
        if self.kind == "number":
            if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
                return False
            ordered = leaf
        elif not isinstance(leaf, str):
            return False
        elif self.kind == "tai":
            match = _TAI.fullmatch(leaf)
            if match is None:
                return False
            ordered = (int(match.group(1)), int(match.group(2)))
        else:
            ordered = fold(leaf) if is_tags(self.path) else leaf
        operator, value = self.operator, self.value
        if operator == "lt":
            return ordered < value
        if operator == "le":
            return ordered <= value
        if operator == "gt":
            return ordered > value
        return ordered >= value

    def candidates(self, lookup: Lookup) -> set[str] | None:
        return None


@frozen
class Matches:
    """`matches(path,pattern)`: a string leaf matches a glob pattern (see `glob_match`), case-insensitively below
    `tags`."""

    path: tuple[str, ...]
    pattern: tuple[str, ...]

    def matches(self, data: Mapping[str, Any]) -> bool:
        pattern, folded = self.pattern, is_tags(self.path)
        return any_leaf(data, self.path,
                        lambda leaf: isinstance(leaf, str) and glob_match(pattern, fold(leaf) if folded else leaf))

    def candidates(self, lookup: Lookup) -> set[str] | None:
        return None


@frozen
class All:
    """`and()`, and the implicit AND of basic query terms."""

    parts: tuple[Expr, ...]

    def matches(self, data: Mapping[str, Any]) -> bool:
        return all(part.matches(data) for part in self.parts)

    def candidates(self, lookup: Lookup) -> set[str] | None:
        found = [ids for ids in (part.candidates(lookup) for part in self.parts) if ids is not None]
        if not found:
            return None
        found.sort(key=len)
        return found[0].intersection(*found[1:])


@frozen
class Any_:
    """`or()`."""

    parts: tuple[Expr, ...]

    def matches(self, data: Mapping[str, Any]) -> bool:
        return any(part.matches(data) for part in self.parts)

    def candidates(self, lookup: Lookup) -> set[str] | None:
        union: set[str] = set()
        for part in self.parts:
            ids = part.candidates(lookup)
            if ids is None:
                return None
            union |= ids
        return union


@frozen
class Not:
    """`not()`."""

    part: Expr

    def matches(self, data: Mapping[str, Any]) -> bool:
        return not self.part.matches(data)

    def candidates(self, lookup: Lookup) -> set[str] | None:
        return None


# --- glob patterns for matches()

STAR, ONE = ("*",), ("?",)  # pattern elements; any other element is a one-character string


def compile_glob(pattern: str, folded: bool = False) -> tuple[Any, ...]:
    """"foo*ba?" -> elements. `*` is any run of characters, `?` any one character, `\\` makes the next one literal.
    No other syntax, so no pattern can be slow: `glob_match` takes at most len(pattern) x len(text) steps."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise BadQuery(f"a matches() pattern is limited to {MAX_PATTERN_LENGTH} characters")
    elements: list[Any] = []
    escaped = False
    for char in pattern:
        if escaped:
            elements.append(fold(char) if folded else char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            if not elements or elements[-1] is not STAR:  # "**" is "*"
                elements.append(STAR)
        elif char == "?":
            elements.append(ONE)
        else:
            elements.append(fold(char) if folded else char)
    if escaped:
        raise BadQuery("a matches() pattern ends with an unfinished escape '\\'")
    return tuple(elements)


def glob_match(pattern: Sequence[Any], text: str) -> bool:
    """Whether all of `text` matches `pattern` (from `compile_glob`). Backtracks only to the last star, so it runs
    in O(len(pattern) x len(text)) whatever the input."""
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] is not STAR and (pattern[p] is ONE or pattern[p] == text[t]):
            p += 1
            t += 1
        elif p < len(pattern) and pattern[p] is STAR:
            star, mark = p, t
            p += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] is STAR:
        p += 1
    return p == len(pattern)


# --- RQL

@frozen
class Call:
    name: str
    args: tuple[Node, ...]


@frozen
class Array:
    items: tuple[Node, ...]


@frozen
class Token:
    raw: str  # still percent-encoded


Node = Call | Array | Token

LOGICAL = ("and", "or", "not")
COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")
SETS = ("in", "out")
SUPPORTED = (*LOGICAL, *COMPARISONS, *SETS, "matches")
# RQL's value converters: those not listed here (date, isodate, epoch, re, RE, glob) answer 501. Any other prefix
# before a ':' is part of the value, since NMOS values are full of colons (URNs, TAI timestamps).
CONVERTERS = ("auto", "string", "number", "boolean")
UNSUPPORTED_CONVERTERS = ("date", "isodate", "epoch", "re", "RE", "glob")


class _Parser:
    """Normalized RQL (`name(arg,...)`, arrays `(a,b)`, values) into a tree, within the length, depth and size
    limits."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.nodes = 0

    def parse(self) -> Node:
        if len(self.text) > MAX_RQL_LENGTH:
            raise BadQuery(f"query.rql is limited to {MAX_RQL_LENGTH} characters")
        node = self.arg(0)
        if self.pos != len(self.text):
            raise BadQuery(f"query.rql: unexpected {self.text[self.pos]!r} at character {self.pos + 1}; the query "
                           f"must be one normalized RQL call such as and(eq(a,1),eq(b,2))")
        if not isinstance(node, Call):
            raise BadQuery("query.rql must be an RQL call such as eq(label,foo)")
        return node

    def _open(self, depth: int) -> int:
        """Enter one more pair of parentheses."""
        if depth >= MAX_RQL_DEPTH:
            raise BadQuery(f"query.rql is too complex: at most {MAX_RQL_DEPTH} levels of nesting")
        self.pos += 1
        return depth + 1

    def arg(self, depth: int) -> Node:
        """One argument inside `depth` pairs of parentheses."""
        self.nodes += 1
        if self.nodes > MAX_RQL_NODES:
            raise BadQuery(f"query.rql is too complex: at most {MAX_RQL_NODES} calls and values")
        text = self.text
        if self.pos < len(text) and text[self.pos] == "(":
            return Array(self.args(self._open(depth)))
        start = self.pos
        while self.pos < len(text) and text[self.pos] not in "(),":
            self.pos += 1
        word = text[start:self.pos]
        if self.pos < len(text) and text[self.pos] == "(":
            if _NAME.fullmatch(word) is None:
                raise BadQuery(f"query.rql: {word!r} is not an operator name")
            return Call(word, self.args(self._open(depth)))
        return Token(word)

    def args(self, depth: int) -> tuple[Node, ...]:
        """Comma-separated arguments up to and including the closing parenthesis."""
        text = self.text
        items: list[Node] = []
        if self.pos < len(text) and text[self.pos] == ")":
            self.pos += 1
            return ()
        while True:
            items.append(self.arg(depth))
            if self.pos >= len(text):
                raise BadQuery("query.rql: missing ')'")
            if text[self.pos] == ")":
                self.pos += 1
                return tuple(items)
            if text[self.pos] != ",":
                raise BadQuery(f"query.rql: unexpected {text[self.pos]!r} at character {self.pos + 1}")
            self.pos += 1


def parse_rql(text: str) -> Node:
    """The tree of a normalized RQL query (`query.rql` after the query string's own decoding)."""
    return _Parser(text).parse()


def _decode(raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadQuery(f"query.rql: {raw!r} is not valid percent-encoded UTF-8") from None


def _property(node: Node) -> tuple[str, ...]:
    """A property: a dotted name, or RQL's array form (a,b) for a.b."""
    if isinstance(node, Token):
        path = split_path(_decode(node.raw))
    elif isinstance(node, Array) and node.items and all(isinstance(item, Token) for item in node.items):
        path = tuple(_decode(item.raw) for item in node.items)  # type: ignore[union-attr]
    else:
        raise BadQuery("query.rql: expected a property name")
    if not all(path):
        raise BadQuery(f"query.rql: {'.'.join(path)!r} is not a property name")
    return path


@frozen
class Value:
    """An RQL value: its decoded text and how it was typed ("auto" when untyped)."""

    text: str
    type: str

    def keys(self, folded: bool) -> frozenset[Key]:
        if self.type == "string":
            return frozenset({fold(self.text) if folded else self.text})
        if self.type == "number":
            return frozenset({("n", number_text(parse_number(self.text)))})  # type: ignore[arg-type]
        if self.type == "boolean":
            return frozenset({("b", self.text)})
        return text_keys(self.text, folded)


def _value(node: Node) -> Value:
    if not isinstance(node, Token):
        raise BadQuery("query.rql: expected a value, not " + ("an operator call" if isinstance(node, Call)
                                                              else "an array"))
    prefix, colon, rest = node.raw.partition(":")
    if colon and prefix in UNSUPPORTED_CONVERTERS:
        raise UnsupportedQuery(f"query.rql: the RQL value type {prefix}: is not supported (supported: "
                               f"{', '.join(c + ':' for c in CONVERTERS)})")
    if not colon or prefix not in CONVERTERS:
        return Value(_decode(node.raw), "auto")
    text = _decode(rest)
    if prefix == "number" and parse_number(text) is None:
        raise BadQuery(f"query.rql: number:{rest} is not a number")
    if prefix == "boolean" and text not in ("true", "false"):
        raise BadQuery(f"query.rql: boolean:{rest} must be boolean:true or boolean:false")
    return Value(text, "auto" if prefix == "auto" else prefix)


def _ordered(value: Value, folded: bool) -> tuple[str, Any] | None:
    """What a relational operator compares with: a number, a TAI timestamp or a string; None for a boolean or null,
    which have no order."""
    if value.type in ("number", "auto"):
        number = parse_number(value.text)
        if number is not None:
            return "number", number
        if value.type == "number":
            return None
    if value.type == "boolean" or (value.type == "auto" and value.text in ("true", "false", "null")):
        return None
    match = _TAI.fullmatch(value.text) if value.type == "auto" else None
    if match is not None:
        return "tai", (int(match.group(1)), int(match.group(2)))
    return "string", fold(value.text) if folded else value.text


def compile_rql(node: Node) -> Expr:
    """The filter an RQL tree describes. UnsupportedQuery (501) names operators outside `SUPPORTED`."""
    if not isinstance(node, Call):
        raise BadQuery("query.rql: expected an operator call such as eq(label,foo)")
    name, args = node.name, node.args
    if name not in SUPPORTED:
        raise UnsupportedQuery(f"query.rql: the RQL operator {name}() is not supported (supported: "
                               f"{', '.join(op + '()' for op in SUPPORTED)})")
    if name in ("and", "or"):
        if not args:
            raise BadQuery(f"query.rql: {name}() needs at least one query")
        parts = tuple(compile_rql(arg) for arg in args)
        return All(parts) if name == "and" else Any_(parts)
    if name == "not":
        if len(args) != 1:
            raise BadQuery("query.rql: not() takes exactly one query")
        return Not(compile_rql(args[0]))
    if len(args) != 2:
        raise BadQuery(f"query.rql: {name}() takes a property and a value")
    path = _property(args[0])
    folded = is_tags(path)
    if name in ("eq", "ne"):
        return Equals(path, _value(args[1]).keys(folded), negate=name == "ne")
    if name in SETS:
        items = args[1].items if isinstance(args[1], Array) else (args[1],)
        keys = frozenset().union(*(_value(item).keys(folded) for item in items))
        return Equals(path, keys, negate=name == "out")
    value = _value(args[1])
    if name == "matches":
        return Matches(path, compile_glob(value.text, folded))
    ordered = _ordered(value, folded)
    if ordered is None:
        return Nothing()
    return Compare(path, name, *ordered)


@frozen
class Nothing:
    """A comparison that can never hold (ordering by a boolean or null)."""

    def matches(self, data: Mapping[str, Any]) -> bool:
        return False

    def candidates(self, lookup: Lookup) -> set[str] | None:
        return set()


# --- the whole request

@frozen
class Paging:
    """The paging parameters of a request (IS-04 v1.1+ `paged` trait), in TAI nanoseconds."""

    since: int | None
    until: int | None
    limit: int
    order: str  # "update" or "create"


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
    match = _TAI.fullmatch(text)
    if match is None:
        raise BadQuery(f"{name} must be a TAI timestamp <seconds>:<nanoseconds> (at most 20 and 9 digits), "
                       f"not {text[:40]!r}")
    return int(match.group(1)) * 1_000_000_000 + int(match.group(2))


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


# --- paging

T = TypeVar("T")


class Timeline(Protocol[T]):
    """The matching items of one collection in stamp order (stamps unique)."""

    def newest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, T]]:
        """Items with since < stamp <= until, newest first."""

    def oldest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, T]]:
        """The same, oldest first."""


@frozen
class Page:
    items: list[Any]  # newest first
    since: int  # X-Paging-Since
    until: int  # X-Paging-Until
    limit: int  # X-Paging-Limit


def page(timeline: Timeline[T], newest: int, paging: Paging) -> Page:
    """One page of `timeline`, following IS-04 "APIs - Query Parameters" (its examples are tests):

    - no cursors: the newest `limit` items; Since is the stamp of the newest item left out (0:0 when none is), and
      Until the newest stamp of the whole collection (`newest`, "the most recently created or updated" resource);
    - `since` given (alone or with `until`): "the since value takes precedence" - the `limit` items just after it,
      and Until moves back to the last one returned when the limit cut the page short;
    - `until` alone: the newest `limit` items up to it;
    - a limit of 0 returns a window of zero width at the cursor given.
    """
    since, until, limit = paging.since, paging.until, paging.limit
    if since is not None:
        taken = _take(timeline.oldest_first(since, until), limit + 1)
        if len(taken) > limit:
            taken = taken[:limit]
            top = taken[-1][0] if taken else since
        else:
            top = until if until is not None else max(since, newest)
        taken.reverse()
        return Page([item for _, item in taken], since, top, limit)
    top = until if until is not None else newest
    taken = _take(timeline.newest_first(None, until), limit + 1)
    bottom = 0
    if len(taken) > limit:
        bottom = taken[limit][0] if limit else top
        taken = taken[:limit]
    return Page([item for _, item in taken], bottom, top, limit)


def _take(items: Iterator[T], count: int) -> list[T]:
    taken = []
    for item in items:
        taken.append(item)
        if len(taken) >= count:
            break
    return taken


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
