#!/usr/bin/env python3
"""What IS-10 authorization costs the registry per request, in process (no sockets): the resource server's token
check, and a whole heartbeat through the guarded Registration API, without and with a token.

A Node heartbeats every 5 s with the same token for its lifetime (60 s to an hour), so the case that counts is a
token seen before: its signature check is remembered (`VERIFIED_TOKENS` in nmos_ref/auth/guard.py) and only the
times and the audience are checked again. "first sight" forces the signature check every time.

    python benchmarks/bench_auth.py [--rounds 5000] [--json FILE]

Prints one row per case: microseconds per call (median of 5 runs of --rounds calls, and the best run), CPU time.
Keys are made per run; nothing leaves the process.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyChannel

from nmos_ref.api.registration import RegistrationAPI
from nmos_ref.auth.guard import ResourceServer, guard_apis
from nmos_ref.auth.keys import KeyCache, metadata_url
from nmos_ref.model.store import Registry
from nmos_ref.validation import Schemas
from nmos_ref.web.root import root_resource

ISSUER = "https://auth.bench.local"
SERVER = "registry.bench.local"
NOW = time.time()


def keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1())}


def jwks(private: dict[str, Any]) -> dict[str, Any]:
    found = []
    for kid, key in private.items():
        jwk = json.loads((RSAAlgorithm if kid == "rsa" else ECAlgorithm).to_jwk(key.public_key()))
        jwk.update(kid=kid, use="sig")
        found.append(jwk)
    return {"keys": found}


def token(private: dict[str, Any], kid: str) -> str:
    claims = {"iss": ISSUER, "sub": "node@bench", "aud": ["https://*.bench.local"], "exp": NOW + 3600,
              "iat": NOW - 1, "client_id": "bench-node", "scope": "registration",
              "x-nmos-registration": {"read": ["*"], "write": ["*"]}, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, private[kid], algorithm="RS512" if kid == "rsa" else "ES256", headers={"kid": kid})


def timed(call: Callable[[], Any], rounds: int) -> dict[str, float]:
    runs = []
    cpu_start = time.process_time()
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            call()
        runs.append((time.perf_counter() - start) / rounds * 1e6)
    return {"median_us": statistics.median(runs), "best_us": min(runs),
            "cpu_s": time.process_time() - cpu_start}


class Heartbeat:
    """POST /x-nmos/registration/v1.3/health/nodes/<id> through the Site's resource tree, in process."""

    def __init__(self, guarded: bool, private: dict[str, Any], keys_cache: KeyCache, clock: Clock) -> None:
        registry = Registry()
        node_id = str(uuid.uuid4())
        node = {"id": node_id, "version": "1:0", "label": "bench", "description": "", "tags": {},
                "href": "http://192.0.2.1/", "hostname": "bench", "caps": {}, "api": {
                    "versions": ["v1.3"], "endpoints": [{"host": "192.0.2.1", "port": 80, "protocol": "http",
                                                         "authorization": False}]},
                "services": [], "clocks": [], "interfaces": []}
        registry.register("node", node, "v1.3", now=clock.seconds())
        apis = {"registration": RegistrationAPI(registry, Schemas(), ["v1.3"], clock).app.resource()}
        if guarded:
            apis = guard_apis(apis, ResourceServer(keys_cache, clock, [SERVER]))
        self.site = Site(root_resource(apis))
        self.path = f"/x-nmos/registration/v1.3/health/nodes/{node_id}".encode()
        self.private = private
        self.token: str | None = token(private, "rsa") if guarded else None
        self.fresh: Any = iter(())  # tokens for "new token each time", made beforehand (signing is not timed)

    def __call__(self, fresh_token: bool = False) -> None:
        request = Request(DummyChannel(), False)
        request.site = self.site
        request.sitepath = []
        request.prepath = []
        request.postpath = self.path.split(b"/")[1:]
        request.method = b"POST"
        request.uri = request.path = self.path
        request.clientproto = b"HTTP/1.1"
        request.requestHeaders.setRawHeaders(b"host", [SERVER.encode()])
        if self.token is not None:
            value = next(self.fresh) if fresh_token else self.token
            request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {value}".encode()])
        request.content = io.BytesIO(b"")
        request.render(self.site.getResourceFor(request))
        if request.code != 200:
            raise SystemExit(f"heartbeat answered {request.code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()

    private = keys()
    documents = {metadata_url(ISSUER): {"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"},
                 ISSUER + "/jwks": jwks(private)}
    clock = Clock()
    clock.advance(NOW)
    cache = KeyCache(clock, lambda url: succeed(documents[url]), [ISSUER])
    cache.start()
    server = ResourceServer(cache, clock, [SERVER])
    rows = []
    for kid, alg in (("rsa", "RS512"), ("ec", "ES256")):
        seen = token(private, kid)
        queue = iter([token(private, kid) for _ in range(args.rounds * 5)])  # each one new to the server
        rows.append({"case": f"verify, first sight ({alg})", **timed(lambda queue=queue: server.verify(next(queue)), args.rounds)})
        rows.append({"case": f"verify, seen before ({alg})", **timed(lambda seen=seen: server.verify(seen), args.rounds)})
    plain = Heartbeat(False, private, cache, clock)
    guarded = Heartbeat(True, private, cache, clock)
    rows.append({"case": "heartbeat, no authorization", **timed(plain, args.rounds)})
    rows.append({"case": "heartbeat, token seen before", **timed(guarded, args.rounds)})
    guarded.fresh = iter([token(private, "rsa") for _ in range(args.rounds)])
    rows.append({"case": "heartbeat, new token each time", **timed(lambda: guarded(True), args.rounds // 5)})
    width = max(len(row["case"]) for row in rows)
    print(f"{'case':<{width}}  median µs  best µs")
    for row in rows:
        print(f"{row['case']:<{width}}  {row['median_us']:9.1f}  {row['best_us']:7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
