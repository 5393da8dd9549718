"""The Node as an OAuth 2.0 client (IS-10 "Behaviour - Clients", BCP-003-02): it registers itself with an
authorization server, gets access tokens with the client_credentials grant, refreshes them early and keeps its key
and registrations across restarts.

IS-10 "Behaviour - Clients":
- "When first contacting an Authorization Server, a Client MUST identify the location of API endpoints using the
  Authorization Server Metadata resource as specified in RFC 8414. Clients MUST NOT assume that every Authorization
  Server instance on a network uses the same endpoint locations."
- Registration is dynamic (RFC 7591): "Clients MUST include populated `client_name` and `scope` parameters".
- "Confidential Clients SHOULD support authentication using a digitally signed JSON Web Token ... Section 2.2 of
  RFC 7523 ... `private_key_jwt`", hosting their public keys at the registered `jwks_uri`; they "MAY support HTTP
  Basic Authentication ... `client_secret_basic`".
- "Client credentials SHOULD be stored by the client in a safe, permission-restricted, location in non-volatile
  memory in case of a device restart to prevent duplicate registrations."
- "it is RECOMMENDED to attempt a refresh at least 15 seconds before expiry (i.e the half-life of the shortest-lived
  token possible)": we refresh at half of `expires_in`.
IS-10 "Behaviour - Token Requests": "Clients MUST include the `scope` parameter in their token requests"; "The
`token_type` field value MUST be treated as case-insensitive".

An initial access token (RFC 7591 §3; IS-10 lists it as a choice a client MUST offer) is sent with the registration
request when one is configured. Not done here: RFC 7592 registration management. The private key and a client
secret are protected by file permissions (directory 0700, files 0600), not encrypted (IS-10: secrets "SHOULD be
encrypted before being stored").
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote_plus, urlsplit

import jwt
from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nmos_ref.auth.credentials import ASSERTION_ALGORITHM, ClientRegistration, CredentialStore
from nmos_ref.auth.keys import metadata_url
from nmos_ref.web.client import Reply, Unreachable, exchange

log = Logger()

PRIVATE_KEY_JWT, CLIENT_SECRET_BASIC = "private_key_jwt", "client_secret_basic"
METHODS = (PRIVATE_KEY_JWT, CLIENT_SECRET_BASIC)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 §2.2
ASSERTION_LIFETIME = 120  # seconds; RFC 7523 §3 wants an expiry, and a short one limits replay
EXPIRY_MARGIN = 5.0  # a token this close to its expiry is not handed out any more
MIN_REFRESH = 1.0  # seconds; even a very short-lived token is not refreshed in a tight loop
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0  # randomised, doubling waits between failed attempts


class NoToken(Exception):
    """No access token could be had (message says why: no server, server refused, unreachable)."""


class _ServerFailed(Exception):
    """This authorization server could not give a token (unreachable, 5xx, refused, a bad answer): try the next."""


class _InvalidClient(_ServerFailed):
    """The token endpoint does not know our client (any more)."""


class _Stopped(Exception):
    """The client stopped while a request was out."""


@frozen
class _Endpoints:
    token_endpoint: str
    registration_endpoint: str | None


@frozen
class _Held:
    token: str
    expires_at: float  # clock seconds
    refresh_in: float  # seconds after receipt
    issuer: str


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _oauth_error(reply: Reply) -> tuple[str | None, str]:
    """The RFC 6749 §5.2 `error` code of an answer, and a line saying what went wrong."""
    try:
        body = reply.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        return body["error"], body["error"] + (f" ({description})" if description else "")
    return None, reply.error_text() or "no error given"


class OAuthClient(Service):
    """Access tokens for the Node from the best authorization server that gives one: registers when needed, refreshes
    at half-life, backs off while servers fail. `servers()` lists issuer URLs, best first; `http` is a treq-like
    client; `clock` drives every timer and timeout; `state_dir` keeps the key and the registrations."""

    def __init__(self, clock: IReactorTime, http: Any, *, servers: Callable[[], list[str]], state_dir: str,
                 client_name: str, scopes: Sequence[str], method: str = PRIVATE_KEY_JWT,
                 jwks_uri: Callable[[], str | None] = lambda: None, timeout: float = 10.0,
                 initial_token: str | None = None, rng: random.Random | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"token endpoint auth method {method!r} is not one of {', '.join(METHODS)}")
        if not scopes or not all(isinstance(scope, str) and scope and " " not in scope for scope in scopes):
            raise ValueError("scopes must be one or more scope names, such as ['registration']")
        if not client_name:
            raise ValueError("IS-10: the client_name MUST be populated (and unique to this instance)")
        self.clock = clock
        self.http = http
        self.servers = servers
        self.state_dir = state_dir
        self.client_name = client_name
        self.scopes = tuple(scopes)
        self.scope = " ".join(self.scopes)
        self.method = method
        self.jwks_uri = jwks_uri
        self.timeout = timeout
        self.initial_token = initial_token  # RFC 7591 §3: sent as a bearer token with the registration request
        self.recovered: Callable[[], None] | None = None  # called when a token is had again after failures
        self.rng = rng or random.Random()
        self.credentials = CredentialStore(state_dir)  # the key and the registrations, kept across restarts
        self._endpoints: dict[str, _Endpoints] = {}  # metadata by issuer, dropped when that server fails
        self._held: _Held | None = None
        self._fetching: Deferred[_Held] | None = None
        self.fetches = {"ok": 0, "failed": 0}  # token requests answered, by outcome (for /metrics)
        self._waiting: list[Deferred[str]] = []
        self._timer: IDelayedCall | None = None  # the next refresh, or the next try after a failure
        self._failures = 0  # attempts failed in a row
        self._epoch = 0  # moves on at each stop, so the answers to requests of before are ignored
        self._using: str | None = None  # the server the held token came from

    # --- the public surface

    def startService(self) -> None:
        super().startService()
        stored = self.credentials.load(with_key=self.method == PRIVATE_KEY_JWT)
        log.info("OAuth client {name}: {method}, scope {scope!r}, {count} stored registrations in {folder}",
                 name=self.client_name, method=self.method, scope=self.scope, count=len(stored),
                 folder=self.state_dir)
        self._fetch()

    def stopService(self) -> None:
        super().stopService()
        self._epoch += 1
        self._cancel_timer()
        fetching, self._fetching = self._fetching, None
        if fetching is not None:
            fetching.cancel()
        self._fail_waiting(NoToken("the OAuth client stopped"))

    def token(self) -> Deferred[str]:
        """The held access token while it is valid (expiry less a margin), else a new one; fails with NoToken.
        Calls while a request is out share it; cancelling the Deferred returned leaves that request alone."""
        held = self._valid()
        if held is not None:
            return succeed(held.token)
        waiter: Deferred[str] = Deferred(self._give_up)
        self._waiting.append(waiter)
        self._fetch()
        return waiter

    def rejected(self, token: str) -> None:
        """A resource server answered 401 to `token`: drop it (if still held), so the next token() gets a new one.
        IS-10: "Clients MUST be capable of handling early revocation of tokens"."""
        if self._held is not None and self._held.token == token:
            log.info("A resource server refused the access token from {issuer}; the next request gets a new one",
                     issuer=self._held.issuer)
            self._held = None

    def servers_changed(self) -> None:
        """The servers() list changed: when no server is working for us, try again now rather than after backoff."""
        if not self.running or self._fetching is not None:
            return
        if self._failures == 0 and self._valid() is not None:
            return
        log.info("The authorization servers changed and none is working for this Node: trying again now")
        self._fetch()

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set of our private_key_jwt key, for the Node to serve at its jwks_uri."""
        self.credentials.private_key()
        assert self.credentials.jwk is not None
        return {"keys": [dict(self.credentials.jwk)]}

    # --- one attempt at a time, and what follows it

    def _valid(self) -> _Held | None:
        held = self._held
        if held is not None and self.clock.seconds() < held.expires_at - EXPIRY_MARGIN:
            return held
        return None

    def _fetch(self) -> None:
        """Start getting a token unless that is already under way."""
        if self._fetching is not None:
            return
        self._cancel_timer()
        epoch = self._epoch
        fetching = Deferred.fromCoroutine(self._obtain(epoch))
        self._fetching = fetching
        fetching.addBoth(self._fetched, epoch)  # may run at once, when every answer was already there

    def _fetched(self, result: _Held | Failure, epoch: int) -> None:
        if epoch != self._epoch:  # stopped meanwhile: stopService told the waiting already
            return None
        self._fetching = None
        self.fetches["failed" if isinstance(result, Failure) else "ok"] += 1
        if isinstance(result, Failure):
            if result.check(NoToken):
                error = result.value
            else:
                log.failure("Getting an access token failed unexpectedly", result)
                error = NoToken(f"getting an access token failed unexpectedly: {result.getErrorMessage()}")
            self._failures += 1
            delay = self._backoff()
            held = self._valid()
            if held is not None:
                log.warn("Cannot refresh the access token ({reason}); keeping the held one (valid for {left:.0f} s "
                         "more), trying again in {delay:.1f} s", reason=str(error),
                         left=held.expires_at - self.clock.seconds(), delay=delay)
            else:
                log.warn("No access token ({reason}); trying again in {delay:.1f} s", reason=str(error), delay=delay)
            self._schedule(delay)
            self._fail_waiting(error)
            return None
        recovered = self._failures > 0
        self._failures = 0
        self._held = result
        self._schedule(result.refresh_in)
        if recovered and self.recovered is not None:  # e.g. the registration client, backing off for want of one
            self.recovered()
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(result.token)
        return None

    def _fail_waiting(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(Failure(NoToken(str(error))))

    def _give_up(self, waiter: Deferred[str]) -> None:
        """A caller cancelled its token(): it stops waiting; the request goes on for the others (and the timer)."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    def _backoff(self) -> float:
        ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(self._failures - 1, 16))
        return self.rng.uniform(ceiling / 2, ceiling)

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        if self.running:
            self._timer = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self._fetch()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # --- talking to the authorization servers

    async def _obtain(self, epoch: int) -> _Held:
        """A token from the first server, best first, that gives one; NoToken saying why each failed."""
        self.credentials.load(with_key=self.method == PRIVATE_KEY_JWT)
        jwks_uri = self.jwks_uri() if self.method == PRIVATE_KEY_JWT else None
        if self.method == PRIVATE_KEY_JWT and not jwks_uri:
            raise NoToken("private_key_jwt needs the jwks_uri at which this Node serves its public key, and none is "
                          "known (yet)")
        servers = list(dict.fromkeys(server.rstrip("/") for server in self.servers()))
        if not servers:
            raise NoToken("no authorization server is configured or discovered")
        reasons = []
        for issuer in servers:
            try:
                held = await self._from_server(epoch, issuer, jwks_uri)
            except _ServerFailed as exc:
                self._endpoints.pop(issuer, None)  # read its metadata again next time
                log.warn("Authorization server {issuer} gave no access token: {reason}", issuer=issuer,
                         reason=str(exc))
                reasons.append(f"{issuer}: {exc}")
                continue
            if held.issuer != self._using:
                log.info("Using authorization server {issuer}", issuer=issuer)
                self._using = held.issuer
            return held
        raise NoToken("no authorization server gave an access token (" + "; ".join(reasons) + ")")

    async def _from_server(self, epoch: int, issuer: str, jwks_uri: str | None) -> _Held:
        endpoints = await self._metadata(epoch, issuer)
        registration = self._stored(issuer, jwks_uri)
        fresh = registration is None
        if registration is None:
            registration = await self._register(epoch, issuer, endpoints, jwks_uri)
        try:
            return await self._request_token(epoch, issuer, endpoints, registration)
        except _InvalidClient as exc:
            if fresh:
                raise
            # Registrations can be deleted on the server (IS-10: "Authorization Servers SHOULD support
            # deregistration of clients"); register once more, then give up on this server for now.
            log.warn("{issuer} no longer knows client {client_id} ({reason}); registering again", issuer=issuer,
                     client_id=registration.client_id, reason=str(exc))
            self.credentials.forget(issuer)
            registration = await self._register(epoch, issuer, endpoints, jwks_uri)
            return await self._request_token(epoch, issuer, endpoints, registration)

    async def _call(self, epoch: int, method: str, url: str, **options: Any) -> Reply:
        """One request: _Stopped if the client stopped meanwhile, _ServerFailed on no answer or a 5xx."""
        try:
            reply = await exchange(self.http, self.clock, method, url, timeout=self.timeout, **options)
        except Unreachable as exc:
            if epoch != self._epoch:
                raise _Stopped() from None
            raise _ServerFailed(f"{method} {url}: {exc}") from None
        if epoch != self._epoch:
            raise _Stopped()
        if reply.code >= 500:
            raise _ServerFailed(f"{method} {url} answered {reply.code}: {_oauth_error(reply)[1]}")
        return reply

    async def _metadata(self, epoch: int, issuer: str) -> _Endpoints:
        """RFC 8414 §3: the server's endpoints, from its metadata (kept while the server works)."""
        known = self._endpoints.get(issuer)
        if known is not None:
            return known
        url = metadata_url(issuer)
        reply = await self._call(epoch, "GET", url)
        if reply.code != 200:
            raise _ServerFailed(f"GET {url} answered {reply.code}: {_oauth_error(reply)[1]}")
        try:
            document = reply.json()
        except ValueError:
            raise _ServerFailed(f"the metadata at {url} is not JSON") from None
        if not isinstance(document, dict) or not _is_url(document.get("token_endpoint")):
            raise _ServerFailed(f"the metadata at {url} has no token_endpoint URL")
        registration = document.get("registration_endpoint")
        endpoints = _Endpoints(document["token_endpoint"], registration if _is_url(registration) else None)
        self._endpoints[issuer] = endpoints
        log.info("Authorization server {issuer}: token endpoint {token}, registration endpoint {registration}",
                 issuer=issuer, token=endpoints.token_endpoint, registration=endpoints.registration_endpoint)
        return endpoints

    def _stored(self, issuer: str, jwks_uri: str | None) -> ClientRegistration | None:
        """The stored registration with `issuer` if it is for what this client is now (method, scope, jwks_uri)."""
        stored = self.credentials.load(with_key=self.method == PRIVATE_KEY_JWT).get(issuer)
        if stored is None:
            return None
        changes = []
        if stored.method != self.method:
            changes.append(f"method {stored.method} -> {self.method}")
        if set(stored.scope.split()) != set(self.scopes):
            changes.append(f"scope {stored.scope!r} -> {self.scope!r}")
        if self.method == PRIVATE_KEY_JWT and stored.jwks_uri != jwks_uri:
            changes.append(f"jwks_uri {stored.jwks_uri} -> {jwks_uri}")
        if self.method == CLIENT_SECRET_BASIC and not stored.client_secret:
            changes.append("no client secret stored")
        if changes:
            log.info("The registration with {issuer} (client {client_id}) no longer fits ({changes}); registering "
                     "again", issuer=issuer, client_id=stored.client_id, changes=", ".join(changes))
            return None
        return stored

    async def _register(self, epoch: int, issuer: str, endpoints: _Endpoints,
                        jwks_uri: str | None) -> ClientRegistration:
        """RFC 7591 dynamic registration, for the client_credentials grant only."""
        if endpoints.registration_endpoint is None:
            raise _ServerFailed("its metadata has no registration_endpoint, and this Node is not registered with it")
        body: dict[str, Any] = {"client_name": self.client_name, "grant_types": ["client_credentials"],
                                "response_types": ["none"], "scope": self.scope,
                                "token_endpoint_auth_method": self.method}
        if jwks_uri is not None:
            body["jwks_uri"] = jwks_uri  # IS-10: "Clients MUST use the jwks_uri in preference to jwks"
        url = endpoints.registration_endpoint
        headers = {"Authorization": f"Bearer {self.initial_token}"} if self.initial_token else None
        reply = await self._call(epoch, "POST", url, json_body=body, headers=headers)
        if reply.code not in (200, 201):  # RFC 7591 §3.2.1 says 201; a 200 with the same body does no harm
            raise _ServerFailed(f"registration refused: POST {url} answered {reply.code}: {_oauth_error(reply)[1]}")
        try:
            answer = reply.json()
        except ValueError:
            raise _ServerFailed(f"the registration answer from {url} is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("client_id"), str) or not answer["client_id"]:
            raise _ServerFailed(f"the registration answer from {url} has no client_id")
        secret = answer.get("client_secret")
        if self.method == CLIENT_SECRET_BASIC and (not isinstance(secret, str) or not secret):
            raise _ServerFailed(f"the registration answer from {url} has no client_secret for client_secret_basic")
        if answer.get("token_endpoint_auth_method", self.method) != self.method:
            raise _ServerFailed(f"{url} registered the client for {answer['token_endpoint_auth_method']}, not "
                                f"{self.method}")
        registration = ClientRegistration(answer["client_id"], self.method, self.scope, jwks_uri,
                                    secret if self.method == CLIENT_SECRET_BASIC else None)
        self.credentials.keep(issuer, registration)
        log.info("Registered with {issuer} as client {client_id} ({method}, scope {scope!r})", issuer=issuer,
                 client_id=registration.client_id, method=self.method, scope=self.scope)
        return registration

    async def _request_token(self, epoch: int, issuer: str, endpoints: _Endpoints,
                             registration: ClientRegistration) -> _Held:
        """RFC 6749 §4.4: the client_credentials grant, authenticated as registered."""
        form = {"grant_type": "client_credentials", "scope": self.scope, "client_id": registration.client_id}
        headers = {}
        if registration.method == PRIVATE_KEY_JWT:
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self._assertion(registration.client_id, endpoints.token_endpoint)
        else:
            # RFC 6749 §2.3.1: each part form-urlencoded (Appendix B), then HTTP Basic.
            assert registration.client_secret is not None
            pair = f"{quote_plus(registration.client_id, safe='')}:{quote_plus(registration.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        url = endpoints.token_endpoint
        reply = await self._call(epoch, "POST", url, form=form, headers=headers)
        error, reason = _oauth_error(reply)
        if reply.code in (400, 401) and error == "invalid_client":
            raise _InvalidClient(f"POST {url} answered {reply.code}: {reason}")
        if reply.code != 200:
            raise _ServerFailed(f"token request refused: POST {url} answered {reply.code}: {reason}")
        try:
            answer = reply.json()
        except ValueError:
            raise _ServerFailed(f"the token answer from {url} is not JSON") from None
        if not isinstance(answer, dict):
            raise _ServerFailed(f"the token answer from {url} is not an object")
        token, kind, lifetime = answer.get("access_token"), answer.get("token_type"), answer.get("expires_in")
        if not isinstance(token, str) or not token:
            raise _ServerFailed(f"the token answer from {url} has no access_token")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise _ServerFailed(f"the token answer from {url} is not a bearer token (token_type {kind!r})")
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            raise _ServerFailed(f"the token answer from {url} has no positive expires_in")
        refresh_in = max(MIN_REFRESH, min(lifetime / 2, lifetime - EXPIRY_MARGIN))
        log.info("Access token from {issuer} for client {client_id} (scope {scope!r}): expires in {lifetime} s, "
                 "refreshing in {refresh:.0f} s", issuer=issuer, client_id=registration.client_id, scope=self.scope,
                 lifetime=lifetime, refresh=refresh_in)
        return _Held(token, self.clock.seconds() + lifetime, refresh_in, issuer)

    def _assertion(self, client_id: str, audience: str) -> str:
        """RFC 7523 §2.2 and §3: a JWT signed with our key, about ourselves, for this token endpoint only."""
        now = int(self.clock.seconds())
        claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + ASSERTION_LIFETIME,
                  "jti": str(uuid.uuid4())}
        key = self.credentials.private_key()
        assert self.credentials.jwk is not None
        return jwt.encode(claims, key, algorithm=ASSERTION_ALGORITHM, headers={"kid": self.credentials.jwk["kid"]})
