"""RQL (`query.rql`): the normalized RQL of IS-04 "APIs - Query Parameters" parsed within length, depth and size
limits, and compiled into the filter expressions of `nmos_ref.model.matching`; unsupported operators and value types
are `UnsupportedQuery` (501).
"""

from __future__ import annotations
import re
from typing import Any
from urllib.parse import unquote
from attrs import frozen
from nmos_ref.model.errors import BadQuery, UnsupportedQuery
from nmos_ref.model.matching import (All, Any_, Compare, Equals, Expr, Key, Matches, Not, Nothing, compile_glob, fold,
                                     is_tags, number_text, parse_number, split_path, text_keys)
from nmos_ref.model.tai import TAI_TEXT


MAX_RQL_LENGTH = 4096  # characters of the decoded query.rql value


MAX_RQL_DEPTH = 16  # nested calls and arrays


MAX_RQL_NODES = 256  # calls, arrays and values


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    match = TAI_TEXT.fullmatch(value.text) if value.type == "auto" else None
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
