"""JSON text at the process's edges, held to RFC 8259 both ways: what comes in is refused unless every part of it
can be stored and served back, and what goes out is always valid JSON in UTF-8.

Python's `json` module is lenient where a registry must not be: it reads `NaN`, `Infinity` and `1e400` (as inf)
and writes them back out (not JSON, RFC 8259 §6), decodes bytes with "surrogatepass" and `\\ud800` escapes to lone
surrogates (which then cannot be encoded as UTF-8, so every later answer that holds them fails), and recurses as
deep as the input goes. `decode` refuses all of these with one exception, `BadJSON`, whose text says what was
wrong; the API edge turns it into a 400 with the NMOS error JSON. docs/limits.md lists the limits.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_INT", "MIN_INT", "BadJSON", "compact", "decode", "servable"]

MAX_DEPTH = 64  # nested arrays and objects; IS-04 resources need fewer than 10
MIN_INT = -(2 ** 63)  # integers must fit a signed or an unsigned 64-bit integer, as C++ and JavaScript
MAX_INT = 2 ** 64 - 1  # peers (nmos-cpp, browsers' BigInt-free parsers aside) can read
_MAX_INT_DIGITS = 20  # len(str(MAX_INT)); longer digit strings are refused before int() sees them

# A lone surrogate can only come from a \uD800-\uDFFF escape once the bytes were strict UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB]")


class BadJSON(ValueError):
    """Text that is not JSON this registry can store and serve back; the message says why."""


def _refuse_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a JSON number (RFC 8259 §6)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(f"the number {_shown(text)} is out of range (it exceeds a 64-bit float)")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise BadJSON(f"the integer {_shown(text)} is out of range ({MIN_INT}..{MAX_INT})")
    value = int(text)
    if not MIN_INT <= value <= MAX_INT:
        raise BadJSON(f"the integer {_shown(text)} is out of range ({MIN_INT}..{MAX_INT})")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        keys = [key for key, _ in pairs]
        twice = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise BadJSON(f"the key {_shown(twice)} appears twice in one object (RFC 8259 §4: names SHOULD be "
                      f"unique, and parsers disagree on which value wins)")
    return found


def _shown(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


_decoder = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=_refuse_constant,
                            object_pairs_hook=_unique)


def decode(raw: bytes | str) -> Any:
    """The JSON value of `raw` (UTF-8 bytes, or text already decoded), or `BadJSON`: not UTF-8, a byte order mark,
    a lone surrogate, NaN or Infinity, a number out of range, a key twice in one object, nesting deeper than
    `MAX_DEPTH`, or simply not JSON."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode("utf-8")  # strict: refuses overlong forms and encoded surrogates (ED A0 80)
        except UnicodeDecodeError as exc:
            raise BadJSON(f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    else:
        text = raw
    if text.startswith("\ufeff"):
        raise BadJSON("the body starts with a byte order mark (RFC 8259 §8.1: JSON text must not)")
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise BadJSON(f"the body is nested more than {MAX_DEPTH} levels deep") from None
    except BadJSON:
        raise
    except ValueError as exc:
        raise BadJSON(f"the body is not valid JSON: {exc}") from None
    # Cheap tests first: fewer brackets than the limit cannot nest deeper, and no escape, no surrogate.
    if text.count("[") + text.count("{") > MAX_DEPTH:
        _check_depth(value)
    if _SURROGATE_ESCAPE.search(text) is not None:
        _check_strings(value)
    return value


def _check_depth(value: Any) -> None:
    """Iteratively, so no input can exhaust the stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise BadJSON(f"the body is nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _check_strings(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts: Any = (item,)
        elif isinstance(item, dict):
            texts = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in texts:
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise BadJSON(f"the string {_shown(text)} holds a lone surrogate (an unpaired \\uD800-\\uDFFF "
                                  f"escape), which is not a Unicode character") from None


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
compact = _encoder.encode  # the registry's one JSON encoder: compact, UTF-8 characters as they are, no NaN


def servable(value: Any) -> str:
    """`value` as compact JSON text that is certain to encode as UTF-8, or `BadJSON`: for what is about to be
    stored, so that nothing is kept that a later answer could not send."""
    try:
        text = compact(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise BadJSON(f"the value cannot be written as JSON: {exc}") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJSON("the value holds a lone surrogate, which UTF-8 cannot carry") from None
    return text
