"""The pure half of token checking: what a verified token's claims allow. No keys, no HTTP, "now" passed in.

IS-10 "Behaviour - Resource Servers" and "Behaviour - Access Tokens"; BCP-003-02 "Authorization Practice".
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from attrs import frozen

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # IS-10 "Access Tokens": read covers GET, HEAD and OPTIONS
LEEWAY = 5.0  # seconds of clock difference forgiven on exp, nbf and iat


@frozen
class Denial:
    """Why a request is refused: 401 + invalid_token, or 403 + insufficient_scope."""

    status: int
    error: str
    description: str


def invalid(description: str) -> Denial:
    return Denial(401, "invalid_token", description)


def insufficient(description: str) -> Denial:
    return Denial(403, "insufficient_scope", description)


def client_of(claims: Mapping[str, Any]) -> str | None:
    """BCP-003-02: the client a token was issued to, `client_id` or else `azp`."""
    value = claims.get("client_id", claims.get("azp"))
    return value if isinstance(value, str) and value else None


def check_times(claims: Mapping[str, Any], now: float, leeway: float = LEEWAY) -> Denial | None:
    """IS-10: reject when `exp` is past or `iat` is in the future; `nbf`, when present, must have come (UTC)."""
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
    for name, value in (("exp", exp), ("iat", iat), ("nbf", nbf)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return invalid(f"{name} is not a number")
    if exp is None:
        return invalid("the token has no exp")
    if exp + leeway < now:
        return invalid("the token has expired")
    if iat is not None and iat - leeway > now:
        return invalid("the token was issued in the future")
    if nbf is not None and nbf - leeway > now:
        return invalid("the token is not valid yet")
    return None


def check_required(claims: Mapping[str, Any]) -> Denial | None:
    """IS-10 "Access Tokens": iss, sub, aud and exp are required, and client_id (or azp, BCP-003-02)."""
    for name in ("iss", "sub", "aud", "exp"):
        if name not in claims:
            return invalid(f"the token has no {name}")
    if not isinstance(claims["iss"], str) or not isinstance(claims["sub"], str):
        return invalid("iss and sub must be strings")
    if client_of(claims) is None:
        return invalid("the token has neither client_id nor azp")
    return None


def _host_of(entry: str) -> str | None:
    """An audience entry without its scheme and trailing dot; None if it names a port or a path (not allowed)."""
    name = entry.split("://", 1)[1] if "://" in entry else entry
    name = name.rstrip("/").rstrip(".").lower()
    if not name or ":" in name or "/" in name:
        return None
    return name


def audience_matches(aud: Any, names: Iterable[str]) -> bool:
    """IS-10 "Access Tokens": `aud` names this server's fully resolved domain name, with or without a scheme, and
    may be wildcarded (RFC 4592: `*.example.com` stands for any name below example.com, however deep)."""
    entries = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    ours = [name.rstrip(".").lower() for name in names if name]
    for entry in entries:
        if not isinstance(entry, str):
            continue
        pattern = _host_of(entry)
        if pattern is None:
            continue
        for name in ours:
            if pattern == name:
                return True
            if pattern.startswith("*.") and name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                return True
    return False


@lru_cache(maxsize=1024)
def _path_pattern(pattern: str) -> re.Pattern[str]:
    # IS-10 "Access Tokens": '*' matches any run of characters, '/' included; everything else is literal.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def normalise(path: str) -> str:
    """A path relative to `/x-nmos/<api>/<version>/`, with `.` and `..` resolved and no leading slash, so
    `nodes/../subscriptions` cannot pass as `nodes/*`."""
    resolved = posixpath.normpath("/" + path)
    return resolved.lstrip("/") if resolved not in ("/", "//") else ""


def path_allowed(api_claim: Any, relative: str, write: bool) -> bool:
    """Whether an `x-nmos-<api>` claim grants read (or write) on `relative`. Write does not imply read."""
    if not isinstance(api_claim, Mapping):
        return False
    patterns = api_claim.get("write" if write else "read")
    if not isinstance(patterns, list):
        return False
    return any(isinstance(p, str) and _path_pattern(p).fullmatch(relative) is not None for p in patterns)


def check_access(claims: Mapping[str, Any], api: str, rest: str, method: str) -> Denial | None:
    """IS-10 "Path Validation" for `/x-nmos/<api>/<rest>`: the API and version listings need the API in `scope` or
    an `x-nmos-<api>` claim; anything deeper needs the claim to match the path for the method's kind of access."""
    parts = [part for part in rest.split("/") if part]
    api_claim = claims.get(f"x-nmos-{api}")
    if len(parts) <= 1:
        scope = claims.get("scope")
        scopes = scope.split() if isinstance(scope, str) else []
        if api in scopes or isinstance(api_claim, Mapping):
            return None
        return insufficient(f"the token grants neither scope {api} nor x-nmos-{api}")
    relative = normalise("/".join(parts[1:]) + ("/" if rest.endswith("/") else ""))
    write = method not in READ_METHODS
    if path_allowed(api_claim, relative, write) or path_allowed(api_claim, relative.rstrip("/"), write):
        return None
    return insufficient(f"x-nmos-{api} grants no {'write' if write else 'read'} access to {relative or '/'}")
