"""An IS-10 authorization server in memory, for testing the Node's OAuth client: RFC 8414 metadata, RFC 7591
registration and the client_credentials grant, checking what a real server checks (content types, grant, scope, the
client's HTTP Basic credentials or its RFC 7523 assertion against the client's JWK Set), and issuing short-lived
RS512 tokens with IS-10 claims. Endpoint paths are the AMWA test tool's (`/testtoken`, `/testregister`,
`/testjwks`), so a client that assumed `/token` would fail.

It is a Klein app: serve it with `treq.testing.StubTreq` (or the tests' FakeNetwork) or a real `Site`. The client's
JWK Set is not fetched over HTTP: the test publishes it (`publish(jwks_uri, client.jwks())`) and the server looks it
up by the registered `jwks_uri`, as a real one would fetch it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import json
import uuid
from functools import cache
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jsonschema import Draft4Validator, FormatChecker
from jwt.algorithms import RSAAlgorithm
from klein import Klein
from referencing import Registry
from referencing import Resource as SchemaResource
from referencing.jsonschema import DRAFT4
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SkipTest
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from tests.support.official import AMWA

# The scopes the AMWA test tool's mock knows: registration and token requests need at least one of them.
KNOWN_SCOPES = ("connection", "node", "query", "registration", "events", "channelmapping")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
MAX_ASSERTION_LIFETIME = 300  # seconds between a client assertion's iat and exp
SKEW = 5  # seconds a client's clock may be ahead


class Refused(Exception):
    """An OAuth error answer (RFC 6749 §5.2, RFC 7591 §3.2.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class FakeAuthServer:
    """One authorization server at `base` (its issuer URL), on `clock`."""

    app = Klein()

    def __init__(self, clock: IReactorTime, base: str, *, lifetime: int = 60, token_type: str = "bearer",
                 secret_extra: str = " +:/%é") -> None:
        self.clock = clock
        self.base = base.rstrip("/")
        self.lifetime = lifetime
        self.token_type = token_type
        self.secret_extra = secret_extra  # characters that RFC 6749 §2.3.1 form-encoding must carry through Basic
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"fake-as-{uuid.uuid4().hex[:8]}"
        self.clients: dict[str, dict[str, Any]] = {}  # client_id -> what was registered (with the secret)
        self.published: dict[str, dict[str, Any]] = {}  # jwks_uri -> that client's JWK Set
        self.registration_requests: list[Any] = []
        self.registration_answers: list[Any] = []
        self.token_requests: list[dict[str, str]] = []
        self.token_answers: list[Any] = []
        self.issued: list[dict[str, Any]] = []  # the claims of every token issued
        self.refusals: list[tuple[str, str]] = []  # (error, description) of each refused request
        self.metadata_broken = False  # answer the metadata with something that is not JSON
        self.always_invalid_client = False  # refuse every token request as if no client were registered
        self.initial_token: str | None = None  # RFC 7591 §3: registration only with this bearer token
        self._jtis: set[str] = set()
        self._numbers = itertools.count(1)

    # --- what tests use

    @property
    def token_endpoint(self) -> str:
        return self.base + "/testtoken"

    def on_network(self) -> IResource:
        """The app for `fake_network.FakeNetwork`, whose recorder walks the first path segment before handing the
        request on: that segment is put back, so the Klein app sees the whole path as it does as a Site's root."""
        return _WholePath(self.app.resource())

    def publish(self, jwks_uri: str, jwks: dict[str, Any]) -> None:
        """Make `jwks` what fetching `jwks_uri` gives."""
        self.published[jwks_uri] = jwks

    def forget_clients(self) -> None:
        """Deregister every client (as an administrator might)."""
        self.clients.clear()

    def jwks(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="RS512")
        return {"keys": [jwk]}

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of an access token this server issued, its signature checked with its published key."""
        [jwk] = self.jwks()["keys"]
        key = jwt.PyJWK(jwk).key
        assert jwt.get_unverified_header(token)["kid"] == self.kid
        return jwt.decode(token, key, algorithms=["RS512"], options={"verify_exp": False, "verify_aud": False,
                                                                      "verify_iat": False})

    def issue(self, scopes: list[str], client_id: str) -> str:
        """An access token for `client_id`, as the token endpoint makes them (tests use it for clients of their
        own, such as a controller reading the Node API)."""
        now = int(self.clock.seconds())
        claims: dict[str, Any] = {
            "iss": self.base, "sub": client_id, "aud": ["https://*.example.local", "http://*.local"],
            "exp": now + self.lifetime, "iat": now, "client_id": client_id, "scope": " ".join(scopes),
            "jti": str(uuid.uuid4())}
        for api in scopes:
            claims[f"x-nmos-{api}"] = {"read": ["*"], "write": ["*"]}
        self.issued.append(claims)
        return jwt.encode(claims, self.key, algorithm="RS512", headers={"kid": self.kid})

    # --- the API

    @app.route("/.well-known/oauth-authorization-server", methods=["GET"], strict_slashes=False)
    def metadata(self, request: IRequest) -> bytes:
        if self.metadata_broken:
            request.setHeader("content-type", "text/html")
            return b"<html>not metadata</html>"
        return self._json(request, 200, self.metadata_document())

    def metadata_document(self) -> dict[str, Any]:
        """RFC 8414 metadata, with what IS-10 "APIs" requires (jwks_uri, registration_endpoint)."""
        return {
            "issuer": self.base, "authorization_endpoint": self.base + "/testauthorize",
            "token_endpoint": self.token_endpoint, "jwks_uri": self.base + "/testjwks",
            "registration_endpoint": self.base + "/testregister", "revocation_endpoint": self.base + "/testrevoke",
            "scopes_supported": list(KNOWN_SCOPES), "response_types_supported": ["code", "none"],
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "code_challenge_methods_supported": ["plain", "S256"]}

    @app.route("/testjwks", methods=["GET"], strict_slashes=False)
    def own_jwks(self, request: IRequest) -> bytes:
        return self._json(request, 200, self.jwks())

    @app.route("/testregister", methods=["POST"], strict_slashes=False)
    def register(self, request: IRequest) -> bytes:
        try:
            return self._register(request)
        except Refused as refused:
            return self._refuse(request, refused)

    @app.route("/testtoken", methods=["POST"], strict_slashes=False)
    def token(self, request: IRequest) -> bytes:
        request.setHeader("cache-control", "no-store")  # RFC 6749 §5.1
        request.setHeader("pragma", "no-cache")
        try:
            return self._token(request)
        except Refused as refused:
            if refused.status == 401:
                request.setHeader("www-authenticate", 'Basic realm="fake-as"')
            return self._refuse(request, refused)

    # --- registration (RFC 7591), with the AMWA mock's rules

    def _register(self, request: IRequest) -> bytes:
        if _media_type(request) != "application/json":
            raise Refused("invalid_request", f"Content-Type {request.getHeader('content-type')!r}, not JSON")
        try:
            body = json.loads(request.content.read())
        except ValueError:
            raise Refused("invalid_request", "the body is not JSON") from None
        self.registration_requests.append(body)
        if self.initial_token is not None and request.getHeader("authorization") != f"Bearer {self.initial_token}":
            raise Refused("invalid_token", "registration needs the initial access token", 401)
        if not isinstance(body, dict) or not isinstance(body.get("client_name"), str) or not body["client_name"]:
            raise Refused("invalid_client_metadata", "client_name is required")
        scope = body.get("scope")
        if not isinstance(scope, str) or not set(scope.split()) & set(KNOWN_SCOPES):
            raise Refused("invalid_scope", f"scope {scope!r} names no known scope")
        method = body.get("token_endpoint_auth_method", "client_secret_basic")
        if method not in ("client_secret_basic", "private_key_jwt"):
            raise Refused("invalid_client_metadata", f"token_endpoint_auth_method {method!r} is not supported")
        grant_types = body.get("grant_types", ["authorization_code"])
        if "authorization_code" in grant_types and not body.get("redirect_uris"):
            raise Refused("invalid_redirect_uri", "missing redirect_uris")
        jwks_uri = body.get("jwks_uri")
        if method == "private_key_jwt" and not isinstance(jwks_uri, str):
            raise Refused("invalid_client_metadata", "missing jwks_uri")
        client_id = f"client-{next(self._numbers)}-{uuid.uuid4().hex[:8]}"
        answer: dict[str, Any] = {
            "client_id": client_id, "client_id_issued_at": int(self.clock.seconds()), "client_secret_expires_at": 0,
            "client_name": body["client_name"], "grant_types": grant_types,
            "response_types": body.get("response_types", ["code"]), "scope": scope,
            "token_endpoint_auth_method": method}
        if jwks_uri is not None:
            answer["jwks_uri"] = jwks_uri
        if method == "client_secret_basic":
            answer["client_secret"] = uuid.uuid4().hex + self.secret_extra
        self.clients[client_id] = dict(answer)
        self.registration_answers.append(answer)
        return self._json(request, 201, answer)

    # --- the token endpoint (RFC 6749 §4.4, §2.3.1; RFC 7523 §2.2, §3)

    def _token(self, request: IRequest) -> bytes:
        if _media_type(request) != "application/x-www-form-urlencoded":
            raise Refused("invalid_request", f"Content-Type {request.getHeader('content-type')!r}, not a form")
        try:
            parsed = parse_qs(request.content.read().decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise Refused("invalid_request", "the body is not a form") from None
        if any(len(values) != 1 for values in parsed.values()):  # RFC 6749 §3.2: "MUST NOT be included more than once"
            raise Refused("invalid_request", "a parameter is repeated")
        form = {name: values[0] for name, values in parsed.items()}
        self.token_requests.append(form)
        if "grant_type" not in form:
            raise Refused("invalid_request", "missing grant_type")
        if form["grant_type"] != "client_credentials":
            raise Refused("unsupported_grant_type", f"grant_type {form['grant_type']!r}")
        scopes = form.get("scope", "").split()
        if not set(scopes) & set(KNOWN_SCOPES):
            raise Refused("invalid_scope", f"scope {form.get('scope')!r} names no known scope")
        client_id = self._authenticate(request, form)
        if "client_id" in form and form["client_id"] != client_id:
            raise Refused("invalid_client", "client_id is not the authenticated client")
        registered = set(self.clients[client_id]["scope"].split())
        if not set(scopes) <= registered:
            raise Refused("invalid_scope", f"{client_id} is registered for {sorted(registered)} only")
        token = self.issue(scopes, client_id)
        answer = {"access_token": token, "token_type": self.token_type, "expires_in": self.lifetime,
                  "scope": " ".join(scopes)}
        self.token_answers.append(answer)
        return self._json(request, 200, answer)

    def _authenticate(self, request: IRequest, form: dict[str, str]) -> str:
        """The client_id that authenticated, by exactly one method."""
        if self.always_invalid_client:
            raise Refused("invalid_client", "no such client", 401)
        header = request.getHeader("authorization")
        if header is not None and "client_assertion_type" in form:
            raise Refused("invalid_request", "more than one client authentication method")  # RFC 6749 §2.3
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                raise Refused("invalid_client", f"{scheme} authentication is not supported", 401)
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise Refused("invalid_client", "bad Basic credentials", 401) from None
            raw_id, colon, raw_secret = decoded.partition(":")
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            client = self.clients.get(client_id)
            if not colon or client is None or client["token_endpoint_auth_method"] != "client_secret_basic" or \
                    not hmac.compare_digest(secret.encode("utf-8"), client["client_secret"].encode("utf-8")):
                raise Refused("invalid_client", "unknown client or wrong secret", 401)
            return client_id
        if "client_assertion_type" in form:
            if form["client_assertion_type"] != ASSERTION_TYPE:
                raise Refused("invalid_client", f"client_assertion_type {form['client_assertion_type']!r}")
            if "client_assertion" not in form:
                raise Refused("invalid_request", "missing client_assertion")
            return self._check_assertion(form["client_assertion"])
        raise Refused("invalid_client", "no client authentication", 401)

    def _check_assertion(self, assertion: str) -> str:
        """RFC 7523 §3: signed by a key of the client's registered JWK Set; iss = sub = a registered client_id; aud
        this token endpoint; not expired, not too long-lived, not replayed."""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Refused("invalid_client", f"not a JWT: {exc}") from None
        client = self.clients.get(unverified.get("iss"))
        if client is None or client["token_endpoint_auth_method"] != "private_key_jwt":
            raise Refused("invalid_client", f"no private_key_jwt client {unverified.get('iss')!r}")
        jwks = self.published.get(client["jwks_uri"])
        if jwks is None:
            raise Refused("invalid_client", f"cannot fetch the client's JWK Set at {client['jwks_uri']}")
        keys = [jwk for jwk in jwt.PyJWKSet.from_dict(jwks).keys if jwk.key_id == header.get("kid")]
        if not keys:
            raise Refused("invalid_client", f"the client's JWK Set has no key {header.get('kid')!r}")
        try:
            # Times are checked below against the server's clock, not the machine's.
            claims = jwt.decode(assertion, keys[0].key, algorithms=ASSERTION_ALGORITHMS,
                                audience=self.token_endpoint, issuer=client["client_id"],
                                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"], "verify_exp": False,
                                         "verify_iat": False, "verify_nbf": False})
        except jwt.PyJWTError as exc:
            raise Refused("invalid_client", f"bad client assertion: {exc}") from None
        now = self.clock.seconds()
        if claims["sub"] != client["client_id"]:
            raise Refused("invalid_client", "sub is not the client")
        if claims["exp"] <= now or claims["iat"] > now + SKEW:
            raise Refused("invalid_client", "the client assertion is expired or not yet valid")
        if claims["exp"] - claims["iat"] > MAX_ASSERTION_LIFETIME:
            raise Refused("invalid_client", "the client assertion lives too long")
        if claims["jti"] in self._jtis:
            raise Refused("invalid_client", "the client assertion was used before")
        self._jtis.add(claims["jti"])
        return str(client["client_id"])

    # --- answers

    def _refuse(self, request: IRequest, refused: Refused) -> bytes:
        self.refusals.append((refused.error, refused.description))
        return self._json(request, refused.status, {"error": refused.error,
                                                    "error_description": refused.description})

    @staticmethod
    def _json(request: IRequest, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        return json.dumps(body).encode("utf-8")


class _WholePath(Resource):
    def __init__(self, app: IResource) -> None:
        super().__init__()
        self.app = app

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:  # noqa: N802 (twisted.web's name)
        request.postpath.insert(0, request.prepath.pop())
        return self.app

    def render(self, request: IRequest) -> bytes:
        return self.app.render(request)  # type: ignore[no-any-return]


def _media_type(request: IRequest) -> str:
    return (request.getHeader("content-type") or "").split(";")[0].strip().lower()


# --- the official IS-10 schemas in ../shared/amwa (read there, never copied)

IS10 = AMWA / "is-10" / "v1.0" / "APIs" / "schemas"
BASE = "https://official.amwa.invalid/is-10/v1.0/"


@cache
def _validator(name: str) -> Draft4Validator:
    if not IS10.is_dir():
        raise SkipTest(f"the official AMWA IS-10 schemas are not at {IS10} (../shared/amwa beside the repository)")
    registry: Registry = Registry().with_resources(
        (BASE + path.name, SchemaResource.from_contents(json.loads(path.read_text(encoding="utf-8")), DRAFT4))
        for path in IS10.glob("*.json"))
    registry.get_or_retrieve(BASE + name + ".json")  # fails clearly for an unknown name
    return Draft4Validator({"$ref": BASE + name + ".json"}, registry=registry, format_checker=FormatChecker())


def assert_is10(name: str, document: Any) -> None:
    """Fail unless `document` is valid against the official IS-10 v1.0 schema `name` (skip when it is absent)."""
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in _validator(name).iter_errors(document)]
    assert not errors, f"not a valid IS-10 {name}: {errors[:5]}\n{json.dumps(document)[:2000]}"
