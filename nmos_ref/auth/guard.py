"""The resource server: checks the bearer token of every request to one API before the API sees it.

`ResourceServer.check` is the whole decision (signature, claims, path); `Guarded` wraps an API's resource with it, so
the three APIs and the Query API's WebSockets are covered by one check in one place. The token comes in the
`Authorization` header, or for a WebSocket handshake also as `?access_token=` (IS-10 "Operation with WebSocket").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import jwt
from attrs import frozen
from jwt.exceptions import InvalidTokenError, PyJWTError
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from nmos_ref.auth.claims import (LEEWAY, Denial, audience_matches, check_access, check_required, check_times,
                                  client_of, insufficient, invalid)
from nmos_ref.auth.keys import ALGORITHMS, KeyCache
from nmos_ref.web.errors import NmosError
from nmos_ref.web.logs import Logger
from nmos_ref.web.responses import render_error

log = Logger()

RETRY_AFTER = 1  # seconds a client waits after a 503 while keys are fetched (a fetch on the LAN takes milliseconds)
# Tokens whose signature has been checked, kept (least recently used out) so that a Node heartbeating every 5 s with
# one token does not cost a signature check each time; any change of keys or issuers empties it.
VERIFIED_TOKENS = 4096
CLIENT_ATTRIBUTE = "nmos_client_id"  # where the request keeps the client a valid token was issued to (BCP-003-02)

# For the Query API's sockets: (version, subscription id) -> the subscription's resource_path, or None.
SocketPath = Callable[[str, str], "str | None"]


@frozen
class Unavailable:
    """The token's keys are being fetched: 503 + Retry-After."""

    issuer: str


@frozen
class Granted:
    claims: Mapping[str, Any]
    first_use: bool = True  # the first request this server has seen with this token (its signature was checked)

    @property
    def client_id(self) -> str | None:
        return client_of(self.claims)


def challenge(realm: str, denial: Denial | None) -> str:
    """`WWW-Authenticate` (RFC 6750 §3). Parameters unquoted and without spaces after the commas, as nmos-testing
    splits the header on ',' and '=' and compares `error` literally (nmos-cpp sends the same form)."""
    value = f"Bearer realm={realm}"
    if denial is not None:
        value += f",error={denial.error},error_description={denial.description.replace(',', ';').replace('=', ':')}"
    return value


class ResourceServer:
    """Validates tokens against the keys in `keys` for a server known as `names` (the `aud` it answers to)."""

    def __init__(self, keys: KeyCache, clock: IReactorTime, names: list[str], leeway: float = LEEWAY) -> None:
        self.keys = keys
        self.clock = clock
        self.names = names
        self.realm = names[0] if names else "nmos"
        self.leeway = leeway
        self._verified: OrderedDict[str, Mapping[str, Any]] = OrderedDict()  # token -> its signed claims
        self._verified_at = keys.generation
        self.refused: dict[int, int] = {}  # requests refused, by status (401, 403), for /metrics

    def verify(self, token: str) -> Granted | Denial | Unavailable:
        """The token's claims, once signature, issuer, times and audience check out. The signature check is
        remembered for the token; the time and audience checks are made every time."""
        if self._verified_at != self.keys.generation:
            self._verified.clear()
            self._verified_at = self.keys.generation
        claims = self._verified.get(token)
        first_use = claims is None
        if claims is not None:
            self._verified.move_to_end(token)
        else:
            signed = self._check_signature(token)
            if not isinstance(signed, dict):
                return signed
            claims = signed
            self._verified[token] = claims
            if len(self._verified) > VERIFIED_TOKENS:
                self._verified.popitem(last=False)
        denial = check_required(claims) or check_times(claims, self.clock.seconds(), self.leeway)
        if denial is not None:
            return denial
        if not audience_matches(claims["aud"], self.names):
            return insufficient("the token is not meant for this server (aud)")
        return Granted(claims, first_use)

    def _check_signature(self, token: str) -> dict[str, Any] | Denial | Unavailable:
        """The token's claims if a key of a trusted issuer signed it."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except InvalidTokenError:
            return invalid("the token is not a JWT")
        if header.get("alg") not in ALGORITHMS:
            return invalid(f"alg {header.get('alg')} is not accepted")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not self.keys.trusted(issuer):
            return invalid("the token's issuer is not trusted")
        kid = header.get("kid")
        keys = self.keys.keys(issuer)
        # Keys of the alg's type only (an RSA alg with an EC key is a TypeError in PyJWT, not a bad signature).
        key_type = "EC" if header["alg"].startswith("ES") else "RSA"
        candidates = [key for key in keys if key.key_type == key_type and (kid is None or key.key_id in (kid, None))]
        claims = None
        for key in candidates:
            try:
                claims = jwt.decode(token, key.key, algorithms=[header["alg"]],
                                    options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                             "verify_iat": False, "verify_iss": False})
                break
            except (PyJWTError, TypeError, ValueError):  # wrong signature, or a key unfit for alg
                continue
        if claims is None:
            known = kid is not None and any(key.key_id == kid for key in keys)
            # No cached key matches: none held, the token's kid not among them, or (a token without a kid) none
            # verifies, as after a key rotation. IS-10: fetch through the token's iss and ask the client to come
            # back, at most once a MIN_REFETCH per issuer.
            if (not keys or kid is None or not known) and self.keys.may_refetch(issuer):
                self.keys.refresh(issuer)
                return Unavailable(issuer)
            return invalid("the token's signature does not verify")
        return claims

    def check(self, request: IRequest, api: str, rest: str,
              socket_path: SocketPath | None = None) -> Granted | Denial | Unavailable | None:
        """The verdict on one request to `/x-nmos/<api>/<rest>`; None when it needs no token."""
        method = request.method.decode("ascii", "replace")
        if method == "OPTIONS":
            return None  # IS-10: CORS pre-flights never carry a token
        token = self._token(request)
        if token is None:
            return Denial(401, "", "no bearer token")
        verdict = self.verify(token)
        if not isinstance(verdict, Granted):
            return verdict
        parts = [part for part in rest.split("/") if part]
        if socket_path is not None and len(parts) == 3 and parts[1] == "ws":
            # BCP-003-02: a socket needs read access to its subscription's resource_path, not to the ws_href path.
            path = socket_path(parts[0], parts[2])
            if path is not None:
                rest = f"{parts[0]}/{path.lstrip('/')}"
        denial = check_access(verdict.claims, api, rest, method)
        return denial or verdict

    @staticmethod
    def _token(request: IRequest) -> str | None:
        raw = request.getHeader(b"authorization")
        if raw is not None:
            scheme, _, value = raw.decode("latin-1").strip().partition(" ")
            return value.strip() if scheme.lower() == "bearer" else None
        if (request.getHeader(b"upgrade") or b"").lower() == b"websocket":
            query = request.uri.partition(b"?")[2].decode("latin-1")
            values = parse_qs(query).get("access_token")
            return values[0] if values else None
        return None


class Guarded(Resource):
    """An API's resource behind the token check. It stands where the API's Klein resource stood, as a leaf, so the
    API sees the same paths; a granted request carries its client on `request.nmos_client_id`."""

    isLeaf = True

    def __init__(self, api: str, inner: IResource, server: ResourceServer,
                 socket_path: SocketPath | None = None) -> None:
        super().__init__()
        self.api = api
        self.inner = inner
        self.server = server
        self.socket_path = socket_path

    def render(self, request: IRequest) -> Any:
        rest = "/".join(segment.decode("utf-8", "replace") for segment in request.postpath)
        try:
            verdict = self.server.check(request, self.api, rest, self.socket_path)
        except Exception:  # a bug here must not open the door
            log.failure("Checking the token of {method} {path} failed", method=request.method, path=request.path)
            verdict = invalid("the token could not be checked")
        if isinstance(verdict, Granted):
            setattr(request, CLIENT_ATTRIBUTE, verdict.client_id)
            # Each token's first request at info; its later ones (a Node's heartbeats, every 5 s) at debug.
            (log.info if verdict.first_use else log.debug)(
                "Authorized {method} {path} for client {client} (sub {sub}, iss {iss}{again})", method=request.method,
                path=request.path, client=verdict.client_id, sub=verdict.claims.get("sub"),
                iss=verdict.claims.get("iss"), again="" if verdict.first_use else ", token seen before")
        elif isinstance(verdict, Unavailable):
            log.info("Deferred {method} {path}: fetching the keys of {iss}", method=request.method, path=request.path,
                     iss=verdict.issuer)
            return render_error(request, NmosError(503, "The keys of the token's issuer are being fetched",
                                                   verdict.issuer, {"Retry-After": str(RETRY_AFTER)}))
        elif isinstance(verdict, Denial):
            # IS-10 "Audit": every refusal logged with the reason, never the token itself.
            log.info("Refused {method} {path}: {status} {reason}", method=request.method, path=request.path,
                     status=verdict.status, reason=verdict.description)
            refused = self.server.refused
            refused[verdict.status] = refused.get(verdict.status, 0) + 1
            denial = verdict if verdict.error else None
            return render_error(request, NmosError(verdict.status, "Unauthorized" if verdict.status == 401
                                                   else "Forbidden", verdict.description,
                                                   {"WWW-Authenticate": challenge(self.server.realm, denial)}))
        return self.inner.render(request)


def guard_apis(apis: dict[str, IResource], server: ResourceServer | None,
               socket_paths: dict[str, SocketPath] | None = None) -> dict[str, IResource]:
    """`apis` (name -> resource, as given to `root_resource`) each behind the token check; unchanged without one."""
    if server is None:
        return apis
    return {name: Guarded(name, resource, server, (socket_paths or {}).get(name)) for name, resource in apis.items()}
