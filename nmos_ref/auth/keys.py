"""The public keys of the authorization servers, fetched through their RFC 8414 metadata and kept fresh.

IS-10 "Behaviour - Resource Servers", "Public keys": keep a cache; fetch at least hourly with 0-60 s of jitter; when
a server cannot be reached keep the keys held and back off randomly; re-fetch only when no cached key verifies a
token, through the token's `iss` (RFC 8414 §3); meanwhile answer 503 with Retry-After.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jwt import PyJWK
from jwt.exceptions import PyJWKError
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

REFRESH_PERIOD = 3600.0  # IS-10: "at least once every hour"
REFRESH_JITTER = 60.0  # "... altering their retrieval time by a value between 0-60 seconds"
# Seconds between fetches that tokens with unknown keys may cause, per issuer: no fetch storms from forged tokens,
# yet a server that rotates its key (nmos-testing's second mock makes a new one each time it starts, seconds
# apart) or that was down at the last try is asked again by the time the client comes back after Retry-After.
MIN_REFETCH = 1.0
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 600.0  # randomised back-off while a server cannot be reached
# IS-10 allows RSA and EC keys; "none" and HMAC are never accepted.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
ANY_ISSUER = "*"

FetchJSON = Callable[[str], Deferred[Any]]


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3: `/.well-known/oauth-authorization-server` goes between the host and any path of the issuer."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", ""))


def parse_jwks(document: Any) -> list[PyJWK]:
    """The usable keys of a JWK Set: RSA and EC signing keys; others are skipped with a log line."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError("the JWK Set has no 'keys' list")
    usable = []
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC") or entry.get("use", "sig") != "sig":
            continue
        try:
            usable.append(PyJWK(entry))
        except PyJWKError as exc:
            log.warn("Skipping a JWK ({kid}): {reason}", kid=entry.get("kid"), reason=str(exc))
    return usable


class IssuerKeys:
    """One authorization server's keys and its refresh timer."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.keys: list[PyJWK] = []
        self.tried_at: float | None = None  # last attempt
        self.fetching: list[Deferred[None]] | None = None  # waiting for the fetch under way
        self.timer: IDelayedCall | None = None
        self.backoff = BACKOFF_FIRST


class KeyCache:
    """Keys by issuer. `issuers` are trusted (and fetched on start and every hour); `*` among them trusts whatever
    issuer a token names (the letter of IS-10, but anyone can then mint tokens for their own server: see
    docs/security.md). `fetch_json` is the HTTP client (tests pass a fake); `clock` drives every timer."""

    def __init__(self, clock: IReactorTime, fetch_json: FetchJSON, issuers: list[str],
                 rng: random.Random | None = None) -> None:
        self.clock = clock
        self.fetch_json = fetch_json
        self.trust_any = ANY_ISSUER in issuers
        self.rng = rng or random.Random()
        self._issuers: dict[str, IssuerKeys] = {}
        self.generation = 0  # moves on whenever keys or issuers change: what was verified before may not hold
        self._running = False
        for issuer in issuers:
            if issuer != ANY_ISSUER:
                self._issuers[self._key(issuer)] = IssuerKeys(issuer.rstrip("/"))

    @staticmethod
    def _key(issuer: str) -> str:
        return issuer.rstrip("/")

    def trusted(self, issuer: str) -> bool:
        return self.trust_any or self._key(issuer) in self._issuers

    def add_issuer(self, issuer: str) -> None:
        """Trust another authorization server, e.g. one found by DNS-SD `_nmos-auth._tcp` (the discovery hook)."""
        key = self._key(issuer)
        if key not in self._issuers:
            log.info("Authorization server {issuer} added", issuer=issuer)
            self._issuers[key] = IssuerKeys(key)
            self.generation += 1
            if self._running:
                self.refresh(key)

    def keys(self, issuer: str) -> list[PyJWK]:
        entry = self._issuers.get(self._key(issuer))
        return entry.keys if entry is not None else []

    def start(self) -> None:
        """Fetch every configured issuer's keys now, and then on schedule."""
        self._running = True
        for key in list(self._issuers):
            self.refresh(key)

    def stop(self) -> None:
        self._running = False
        for entry in self._issuers.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
            entry.timer = None

    def may_refetch(self, issuer: str) -> bool:
        """Whether a token naming an unknown key may trigger a fetch now (not within MIN_REFETCH of the last)."""
        entry = self._issuers.get(self._key(issuer))
        if entry is None:
            return self.trust_any
        if entry.fetching is not None:
            return True
        return entry.tried_at is None or self.clock.seconds() - entry.tried_at >= MIN_REFETCH

    def refresh(self, issuer: str) -> Deferred[None]:
        """Fetch one issuer's metadata and keys (one fetch at a time); fires when done, never fails."""
        key = self._key(issuer)
        entry = self._issuers.get(key)
        if entry is None:
            if not self.trust_any:
                raise ValueError(f"{issuer} is not a trusted authorization server")
            entry = self._issuers[key] = IssuerKeys(key)
        done: Deferred[None] = Deferred()
        if entry.fetching is None:
            entry.tried_at = self.clock.seconds()
            entry.fetching = []
            ensureDeferred(self._fetch(entry))
        if entry.fetching is None:  # it finished at once
            done.callback(None)
        else:
            entry.fetching.append(done)
        return done

    async def _fetch(self, entry: IssuerKeys) -> None:
        try:
            metadata = await self.fetch_json(metadata_url(entry.issuer))
            jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
            if not isinstance(jwks_uri, str):
                raise ValueError("the metadata has no jwks_uri")
            keys = parse_jwks(await self.fetch_json(jwks_uri))
        except Exception as exc:
            delay = self.rng.uniform(entry.backoff / 2, entry.backoff)
            entry.backoff = min(entry.backoff * 2, BACKOFF_MAX)
            log.warn("Cannot fetch the keys of {issuer} ({reason}); keeping {count} held keys, trying again in "
                     "{delay:.0f} s", issuer=entry.issuer, reason=str(exc) or type(exc).__name__,
                     count=len(entry.keys), delay=delay)
        else:
            changed = {k.key_id for k in keys} != {k.key_id for k in entry.keys}
            entry.keys = keys
            self.generation += 1
            entry.backoff = BACKOFF_FIRST
            delay = REFRESH_PERIOD + self.rng.uniform(0, REFRESH_JITTER)
            (log.info if changed else log.debug)("Fetched {count} keys of {issuer} ({kids})", count=len(keys),
                                                 issuer=entry.issuer,
                                                 kids=", ".join(str(k.key_id) for k in keys))
        waiting, entry.fetching = entry.fetching or [], None
        for deferred in waiting:
            deferred.callback(None)
        if self._running:
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
            entry.timer = self.clock.callLater(delay, self.refresh, entry.issuer)
