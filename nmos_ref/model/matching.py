"""How a filter matches a resource: paths through objects and arrays to leaves, the keys leaves compare by, the
filter expressions (basic query terms and compiled RQL) and glob patterns.

Matching in one paragraph: a query path ("tags.location", "subscription.sender_id") walks objects by key and steps
into every element of an array it meets, so it reaches a set of leaves; a term matches when *any* leaf matches.
Leaves are compared through "keys": a string is itself (simple-case-folded below `tags`), a number its canonical
text, booleans and null their JSON words. A query value has the keys of every reading of its text ("1920" is the
string and the number), so `frame_width=1920` and `label=1920` both work, as the spec asks of basic queries.
"""

from __future__ import annotations
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from attrs import frozen
from nmos_ref.model.errors import BadQuery
from nmos_ref.model.tai import TAI_TEXT


MAX_PATTERN_LENGTH = 256  # characters of a matches() pattern




_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


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
            match = TAI_TEXT.fullmatch(leaf)
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


@frozen
class Nothing:
    """A comparison that can never hold (ordering by a boolean or null)."""

    def matches(self, data: Mapping[str, Any]) -> bool:
        return False

    def candidates(self, lookup: Lookup) -> set[str] | None:
        return set()
