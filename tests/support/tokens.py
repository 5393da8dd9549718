"""A token issuer made per test run (RSA and EC keys generated here, never stored) and a fake HTTP fetcher that
serves its RFC 8414 metadata and JWK Set, answering at once or when the test says."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet.defer import Deferred, fail, succeed

from nmos_ref.auth.keys import metadata_url

NOW = 1_800_000_000.0  # the Clock's time in these tests (UTC seconds)
SERVER = "registry.studio.example.local"  # the name the resource server answers to


class Issuer:
    """An authorization server's keys and the tokens it signs."""

    def __init__(self, url: str = "https://auth.example.local") -> None:
        self.url = url
        self.keys: dict[str, Any] = {}
        self.add_key("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.add_key("ec-1", ec.generate_private_key(ec.SECP256R1()))

    def add_key(self, kid: str, key: Any) -> None:
        self.keys[kid] = key

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys.items():
            algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig")
            keys.append(jwk)
        return {"keys": keys}

    def claims(self, **changes: Any) -> dict[str, Any]:
        claims = {"iss": self.url, "sub": "node@studio", "aud": ["https://*.example.local"], "exp": NOW + 3600,
                  "iat": NOW - 10, "client_id": "client-a", "scope": "registration query node",
                  "x-nmos-registration": {"read": ["*"], "write": ["*"]},
                  "x-nmos-query": {"read": ["*"], "write": ["*"]}, "x-nmos-node": {"read": ["*"]},
                  "jti": str(uuid.uuid4())}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str = "rsa-1", algorithm: str | None = None, **changes: Any) -> str:
        key = self.keys[kid]
        algorithm = algorithm or ("RS512" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(self.claims(**changes), key, algorithm=algorithm, headers={"kid": kid})


class FakeFetch:
    """`fetch_json` for the key cache: the issuers' documents by URL; `hold()` makes answers wait for `release()`."""

    def __init__(self, *issuers: Issuer) -> None:
        self.issuers = {issuer.url: issuer for issuer in issuers}
        self.calls: list[str] = []
        self.held: list[tuple[str, Deferred[Any]]] | None = None
        self.down = False

    def __call__(self, url: str) -> Deferred[Any]:
        self.calls.append(url)
        if self.held is not None:
            deferred: Deferred[Any] = Deferred()
            self.held.append((url, deferred))
            return deferred
        return self._answer(url)

    def _answer(self, url: str) -> Deferred[Any]:
        if self.down:
            return fail(ConnectionRefusedError("down"))
        for base, issuer in self.issuers.items():
            if url == metadata_url(base):
                return succeed({"issuer": base, "jwks_uri": base + "/jwks", "token_endpoint": base + "/token"})
            if url == base + "/jwks":
                return succeed(issuer.jwks())
        return fail(ValueError(f"GET {url} answered 404"))

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for url, deferred in held:
            self._answer(url).chainDeferred(deferred)
