"""IS-10 / BCP-003-02 resource server: the claim rules, the key cache (with Clock) and every accept and reject case
through the real APIs in memory (StubTreq), with tokens from an issuer made in the test."""

from __future__ import annotations

import functools
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.web.test.requesthelper import DummyRequest

from tests.support.tokens import NOW, SERVER, FakeFetch, Issuer
from nmos_ref.web.root import root_resource
from nmos_ref.api.query import QueryAPI
from nmos_ref.api.registration import RegistrationAPI
from nmos_ref.auth import guard as guard_module
from nmos_ref.auth.claims import LEEWAY, audience_matches, check_access, normalise, path_allowed
from nmos_ref.auth.guard import Granted, ResourceServer, guard_apis
from nmos_ref.auth.keys import MIN_REFETCH, REFRESH_JITTER, REFRESH_PERIOD, KeyCache, metadata_url
from nmos_ref.model.store import Registry
from nmos_ref.validation import Schemas
from tests.support.node import Events
from tests.support.cases import UnitTest, cases
from tests.support.samples import device, node, stub_call

V = "/x-nmos/registration/v1.3"


# The pure rules

class ClaimRuleTests(UnitTest):
    """Audiences and paths, as the claims allow them."""

    @cases("aud, ok", [
        (SERVER, True), ([f"https://{SERVER}"], True), ([f"http://{SERVER}."], True), (["*.example.local"], True),
        (["https://*.local"], True), (["*.studio.example.local"], True), (["*.other.local"], False),
        ([f"https://{SERVER}:443"], False), ([f"https://{SERVER}/x-nmos"], False),
        (["https://*.nmos.example.com"], False), ([], False), (None, False), ([42], False), (["*"], False),
        (["example.local"], False),
    ])
    def test_audience(self, aud: Any, ok: bool) -> None:
        assert audience_matches(aud, [SERVER]) is ok

    def test_paths(self) -> None:
        claim = {"read": ["nodes/*", "subscriptions"], "write": ["resource*"]}
        assert path_allowed(claim, "nodes/abc/x", write=False)
        assert path_allowed(claim, "subscriptions", write=False)
        assert not path_allowed(claim, "subscriptions/1", write=False)
        assert path_allowed(claim, "resource/nodes/1", write=True)
        assert not path_allowed(claim, "resource/nodes/1", write=False)  # write does not imply read
        assert normalise("nodes/../subscriptions") == "subscriptions"
        assert normalise("../../x") == "x"
        granted = {"x-nmos-query": claim}
        assert check_access(granted, "query", "v1.3/nodes/../devices", "GET") is not None
        assert check_access({"scope": "query"}, "query", "v1.3/", "GET") is None
        assert check_access({"scope": "query"}, "query", "", "GET") is None
        assert check_access({"scope": "query"}, "query", "v1.3/nodes", "GET").status == 403
        assert check_access({"scope": "node"}, "query", "v1.3", "GET").status == 403


# The APIs behind the check

class Served:
    """Registration and Query APIs in memory behind the token check, on a Clock at NOW."""

    def __init__(self, issuers: list[str] | None = None, *others: Issuer) -> None:
        self.issuer = Issuer()
        self.fetch = FakeFetch(self.issuer, *others)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.keys = KeyCache(self.clock, self.fetch, issuers if issuers is not None else [self.issuer.url])
        self.keys.start()
        self.server = ResourceServer(self.keys, self.clock, [SERVER])
        self.registry = Registry()
        registration = RegistrationAPI(self.registry, Schemas(), ["v1.3"], self.clock)
        query = QueryAPI(self.registry, ["v1.3"], authorization=True)
        apis = guard_apis({"registration": registration.app.resource(), "query": query.app.resource()}, self.server)
        self.stub = StubTreq(root_resource(apis))

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        return stub_call(self.stub, method, "http://registry.studio.example.local" + path, data, headers)


def challenge(answer: Any) -> dict[str, str]:
    """WWW-Authenticate read the way nmos-testing reads it: 'Bearer ', then split on ',' and '='."""
    value = answer.headers["www-authenticate"]
    assert value.startswith("Bearer ")
    return dict(param.split("=", 1) for param in value[len("Bearer "):].split(","))


class ServedTest(UnitTest):
    """A test that asks for `served` gets a fresh Served (made only then: an Issuer makes an RSA key)."""

    @functools.cached_property
    def served(self) -> Served:
        return Served()


def unkeyed(issuer: Issuer, kid: str = "rsa-1", **changes: Any) -> str:
    """A token without a `kid` in its header, as nmos-testing's mock authorization servers make them."""
    return jwt.encode(issuer.claims(**changes), issuer.keys[kid], algorithm="RS512")


class SignatureChecks:
    """Counts the signature checks the resource server makes (jwt.decode with a key)."""

    def __init__(self, test: UnitTest) -> None:
        self.count = 0
        real = guard_module.jwt.decode

        def decode(token: str, key: Any = None, *args: Any, **kwargs: Any) -> Any:
            if key is not None:
                self.count += 1
            return real(token, key, *args, **kwargs)

        test.patch(guard_module.jwt, "decode", decode)


class ResourceServerTests(ServedTest):
    """Every accept and reject case of the token check, and the key cache behind it."""

    def test_open_paths_need_no_token(self, served: Served) -> None:
        assert served.call("GET", "/").code == 200
        assert served.call("GET", "/x-nmos").code == 200
        assert served.call("GET", "/x-nmos/").code == 200
        assert served.call("OPTIONS", V + "/resource").code == 200

    def test_missing_and_broken_tokens(self, served: Served) -> None:
        answer = served.call("GET", V)
        assert answer.code == 401 and challenge(answer)["realm"] == SERVER and "error" not in challenge(answer)
        assert answer.body["code"] == 401
        for token in ("4c1b5e2e-0e39-4c4b-9d8c-8b2f3b7e1c11", "a.b.c", ""):
            answer = served.call("GET", V, token)
            assert answer.code == 401 and challenge(answer)["error"] == "invalid_token", token
        answer = stub_call(served.stub, "GET", "http://x" + V, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert answer.code == 401
        assert served.server.refused == {401: 5}  # counted for /metrics (nmos_auth_refusals_total)

    @cases("changes", [
        {"exp": NOW - 3600}, {"exp": NOW - 6}, {"nbf": NOW + 60}, {"iat": NOW + 60}, {"exp": None}, {"sub": None},
        {"client_id": None}, {"iss": "https://elsewhere.example.local"}, {"exp": "soon"},
    ])
    def test_invalid_claims_are_401(self, served: Served, changes: dict[str, Any]) -> None:
        answer = served.call("GET", V, served.issuer.token(**changes))
        assert answer.code == 401 and challenge(answer)["error"] == "invalid_token"

    def test_leeway_and_azp(self, served: Served) -> None:
        assert served.call("GET", V, served.issuer.token(exp=NOW - 3, nbf=NOW + 3)).code == 200
        assert served.call("GET", V, served.issuer.token(client_id=None, azp="client-b")).code == 200

    @cases("kid, algorithm", [("rsa-1", "RS512"), ("rsa-1", "RS256"), ("rsa-1", "PS384"), ("ec-1", "ES256")])
    def test_rsa_and_ec_tokens(self, served: Served, kid: str, algorithm: str) -> None:
        answer = served.call("GET", V + "/resource/nodes/" + "0" * 8 + "-0000-4000-8000-" + "0" * 12,
                             served.issuer.token(kid, algorithm))
        assert answer.code == 404  # through the check, to the API

    def test_bad_signatures_and_algorithms(self, served: Served) -> None:
        forger = Issuer(served.issuer.url)  # same iss and kid, other keys
        answer = served.call("GET", V, forger.token("rsa-1"))
        assert answer.code == 401 and challenge(answer)["error"] == "invalid_token"
        hmac = jwt.encode(served.issuer.claims(), "s" * 32, algorithm="HS256", headers={"kid": "rsa-1"})
        assert served.call("GET", V, hmac).code == 401
        unsigned = jwt.encode(served.issuer.claims(), None, algorithm="none")
        assert served.call("GET", V, unsigned).code == 401
        ec_as_rsa = served.issuer.token("ec-1", "ES256")
        header, payload, signature = ec_as_rsa.split(".")
        assert served.call("GET", V, ".".join([header, payload, signature[:-4] + "AAAA"])).code == 401

    def test_not_granted_is_403(self, served: Served) -> None:
        cases = [
            {"aud": ["https://*.nmos.example.com"]},  # wrong audience: nmos-testing wants 403 insufficient_scope
            {"scope": "nonsense", "x-nmos-registration": None},
            {"scope": None, "x-nmos-registration": None, "x-nmos-nonsense": {"read": ["*"]}},
        ]
        for changes in cases:
            answer = served.call("GET", V, served.issuer.token(**changes))
            assert answer.code == 403 and challenge(answer)["error"] == "insufficient_scope", changes
        scope_only = served.issuer.token(**{"x-nmos-registration": None, "scope": "registration"})
        assert served.call("GET", V, scope_only).code == 200
        assert served.call("GET", "/x-nmos/registration", scope_only).code == 200
        assert served.call("GET", V + "/health/nodes/x", scope_only).code == 403
        read_only = served.issuer.token(**{"x-nmos-registration": {"read": ["*"]}})
        answer = served.call("POST", V + "/resource", read_only, {"type": "node", "data": node()})
        assert answer.code == 403
        assert served.call("GET", "/x-nmos/query/v1.3/nodes", read_only).code == 200

    def test_unknown_key_is_fetched_while_503(self, served: Served) -> None:
        served.issuer.add_key("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        served.clock.advance(MIN_REFETCH)
        served.fetch.hold()
        token = served.issuer.token("rsa-2")
        answer = served.call("GET", V, token)
        assert answer.code == 503 and answer.headers["retry-after"] == "1"
        assert served.call("GET", V, token).code == 503  # one fetch under way, not two
        assert served.fetch.calls[-1] == metadata_url(served.issuer.url)
        assert len(served.fetch.calls) == 3  # start: metadata + jwks; now: metadata
        served.fetch.release()
        assert served.call("GET", V, token).code == 200
        # Another unknown key right after a fetch: refused, and no fetch storm.
        served.issuer.add_key("rsa-3", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        calls = len(served.fetch.calls)
        assert served.call("GET", V, served.issuer.token("rsa-3")).code == 401
        assert len(served.fetch.calls) == calls
        served.clock.advance(MIN_REFETCH)
        assert served.call("GET", V, served.issuer.token("rsa-3")).code == 503
        assert served.call("GET", V, served.issuer.token("rsa-3")).code == 200

    def test_a_server_that_was_down_is_asked_again_when_its_token_comes(self, served: Served) -> None:
        """nmos-testing starts its authorization servers after the registry (and one only during a test): the keys
        could not be fetched, and a token without a kid must still get 503 and a fetch."""
        late = Issuer("http://127.0.0.1:5011")
        served.fetch.issuers[late.url] = late
        served.fetch.down = True
        served.keys.add_issuer(late.url)  # tried at once, and failed
        served.fetch.down = False
        token = unkeyed(late)
        assert served.call("GET", V, token).code == 401  # within a second of the failed try: no fetch storm
        served.clock.advance(MIN_REFETCH)
        answer = served.call("GET", V, token)
        assert answer.code == 503 and answer.headers["retry-after"] == "1"
        assert served.call("GET", V, token).code == 200

    def test_a_token_without_kid_that_no_held_key_verifies_makes_a_fetch(self, served: Served) -> None:
        served.clock.advance(MIN_REFETCH)
        served.issuer.keys = {"rsa-9": rsa.generate_private_key(public_exponent=65537, key_size=2048)}  # rotated
        token = unkeyed(served.issuer, "rsa-9")
        calls = len(served.fetch.calls)
        assert served.call("GET", V, token).code == 503
        assert len(served.fetch.calls) == calls + 2  # metadata and the JWK Set
        assert served.call("GET", V, token).code == 200
        forged = unkeyed(Issuer(served.issuer.url), "rsa-1")  # the right iss, nobody's key: no fetch storm
        assert served.call("GET", V, forged).code == 401
        assert len(served.fetch.calls) == calls + 2

    def test_a_token_signature_is_checked_once_and_its_times_every_time(self, served: Served) -> None:
        checks = SignatureChecks(self)
        token = served.issuer.token(exp=NOW + 60)
        for _ in range(5):  # a Node heartbeating with one token
            assert served.call("GET", V, token).code == 200
        assert checks.count == 1
        with Events("nmos_ref.auth.guard") as events:
            assert served.call("GET", V, served.issuer.token()).code == 200  # a new token: info
            assert served.call("GET", V, token).code == 200  # one seen before: debug
        assert [(event["log_level"], "token seen before" in text)
                for event, text in zip(events.events, events.texts())] == [(LogLevel.info, False),
                                                                            (LogLevel.debug, True)]
        served.clock.advance(60 + LEEWAY + 1)
        answer = served.call("GET", V, token)
        assert answer.code == 401 and "expired" in answer.body["debug"]  # remembered, but not past its exp
        wrong_audience = served.issuer.token(aud=["https://*.elsewhere.example"])
        assert served.call("GET", V, wrong_audience).code == 403
        assert served.call("GET", V, wrong_audience).code == 403  # the audience is checked on every request

    def test_new_keys_forget_what_was_verified(self, served: Served) -> None:
        checks = SignatureChecks(self)
        token = served.issuer.token(exp=NOW + 4 * REFRESH_PERIOD)
        assert served.call("GET", V, token).code == 200 and checks.count == 1
        served.clock.advance(REFRESH_PERIOD + REFRESH_JITTER)  # the hourly fetch: keys (maybe) changed
        assert served.call("GET", V, token).code == 200 and checks.count == 2

    def test_verified_tokens_are_bounded(self, served: Served) -> None:
        self.patch(guard_module, "VERIFIED_TOKENS", 2)
        checks = SignatureChecks(self)
        first, second, third = (served.issuer.token() for _ in range(3))
        for token in (first, second, third, third, second):
            assert served.call("GET", V, token).code == 200
        assert checks.count == 3  # third and second were remembered
        assert served.call("GET", V, first).code == 200 and checks.count == 4  # first had been let go

    def test_keys_removed_by_rotation_stop_working(self, served: Served) -> None:
        token = served.issuer.token("rsa-1")
        assert served.call("GET", V, token).code == 200
        del served.issuer.keys["rsa-1"]
        served.clock.advance(REFRESH_PERIOD + REFRESH_JITTER)
        assert served.call("GET", V, token).code == 401

    def test_scheduled_refresh_and_back_off(self) -> None:
        served = Served()
        assert len(served.fetch.calls) == 2
        served.clock.advance(REFRESH_PERIOD - 1)
        assert len(served.fetch.calls) == 2
        served.clock.advance(1 + REFRESH_JITTER)
        assert len(served.fetch.calls) == 4
        served.fetch.down = True
        served.clock.advance(REFRESH_PERIOD + REFRESH_JITTER)
        assert len(served.fetch.calls) == 5
        token = served.issuer.token(exp=NOW + 4 * REFRESH_PERIOD, iat=NOW)
        assert served.call("GET", V, token).code == 200  # IS-10: held keys stay valid meanwhile
        served.clock.advance(5)  # randomised back-off: within 2.5-5 s first
        assert len(served.fetch.calls) == 6
        served.fetch.down = False
        served.clock.advance(10)
        assert len(served.fetch.calls) == 8
        served.keys.stop()
        assert served.clock.getDelayedCalls() == []

    def test_issuers(self) -> None:
        other = Issuer("https://auth2.example.local")
        served = Served(["https://auth.example.local", "https://auth2.example.local/"], other)
        assert served.call("GET", V, other.token()).code == 200  # both fetched at start
        # Only the configured issuers are trusted ...
        rogue = Issuer("https://rogue.example.local")
        assert Served(None, rogue).call("GET", V, rogue.token()).code == 401
        # ... unless "*": then a token's iss is followed (RFC 8414 §3), with 503 + Retry-After meanwhile.
        anyone = Served(["*"], rogue)
        answer = anyone.call("GET", V, rogue.token())
        assert answer.code == 503 and answer.headers["retry-after"] == "1"
        assert anyone.call("GET", V, rogue.token()).code == 200
        # A server found later (the DNS-SD hook) is fetched at once.
        late = Issuer("https://auth3.example.local")
        served.fetch.issuers[late.url] = late
        served.keys.add_issuer(late.url)
        assert served.call("GET", V, late.token()).code == 200

    def test_websocket_token_in_query(self) -> None:
        served = Served()
        paths = {"s1": "/receivers"}
        request = DummyRequest([b"v1.3", b"ws", b"s1"])
        request.uri = b"/x-nmos/query/v1.3/ws/s1?access_token=" + served.issuer.token(
            **{"x-nmos-query": {"read": ["receivers*"]}}).encode()
        request.requestHeaders.setRawHeaders(b"upgrade", [b"websocket"])
        check = served.server.check(request, "query", "v1.3/ws/s1", lambda version, sid: paths.get(sid))
        assert isinstance(check, Granted) and check.client_id == "client-a"
        paths["s1"] = "/senders"  # the socket is judged by its subscription's resource_path
        assert served.server.check(request, "query", "v1.3/ws/s1", lambda v, sid: paths.get(sid)).status == 403
        plain = DummyRequest([b"v1.3", b"nodes"])
        plain.uri = b"/x-nmos/query/v1.3/nodes?access_token=" + served.issuer.token().encode()
        assert served.server.check(plain, "query", "v1.3/nodes").status == 401  # only a handshake may use the query


# BCP-003-02

class NodeOwnershipTests(ServedTest):
    """BCP-003-02: a Node stays with the client that registered it; the registry's --auth flag."""

    def test_registry_keeps_each_node_to_its_client(self, served: Served) -> None:
        a = served.issuer.token(client_id="client-a")
        b = served.issuer.token(client_id="client-b")
        b_azp = served.issuer.token(client_id=None, azp="client-b")
        a_azp = served.issuer.token(client_id=None, azp="client-a")
        data = node()
        assert served.call("POST", V + "/resource", a, {"type": "node", "data": data}).code == 201
        assert served.registry.get("node", data["id"]).client_id == "client-a"
        newer = dict(data, version="9999999999:0")
        for other in (b, b_azp):
            answer = served.call("POST", V + "/resource", other, {"type": "node", "data": newer})
            assert answer.code == 403 and challenge(answer)["error"] == "insufficient_scope"
            assert served.call("POST", V + f"/health/nodes/{data['id']}", other).code == 403
            assert served.call("POST", V + "/resource", other,
                               {"type": "device", "data": device(data["id"])}).code == 403
            assert served.call("DELETE", V + f"/resource/nodes/{data['id']}", other).code == 403
        assert served.call("POST", V + "/resource", a_azp, {"type": "node", "data": newer}).code == 200
        assert served.call("POST", V + f"/health/nodes/{data['id']}", a).code == 200
        child = device(data["id"])
        assert served.call("POST", V + "/resource", a, {"type": "device", "data": child}).code == 201
        assert served.registry.get("device", child["id"]).client_id == "client-a"
        assert served.call("DELETE", V + f"/resource/devices/{child['id']}", b).code == 403
        assert served.call("DELETE", V + f"/resource/nodes/{data['id']}", a).code == 204

    def test_service_with_auth_flag(self) -> None:
        from twisted.internet import reactor

        from nmos_ref.service import Options
        from nmos_ref.wiring.registry import build_registry

        options = Options()
        options.parseOptions(["registry", "--auth", "--auth-issuers", "http://127.0.0.1:5010", "--auth-fqdn", SERVER])
        settings = options["settings"]
        assert settings.auth and settings.auth_issuers == ["http://127.0.0.1:5010"] and settings.auth_fqdn == SERVER
        top = build_registry(settings, reactor, Clock())  # not started: nothing is fetched
        stub = StubTreq(top.site.resource)
        assert stub_call(stub, "GET", "http://x" + V).code == 401
        assert stub_call(stub, "GET", "http://x/x-nmos/query/v1.3/").code == 401
        assert stub_call(stub, "GET", "http://x/x-nmos/").code == 200
        assert top.keys.trusted("http://127.0.0.1:5010/")
        off = Options()
        off.parseOptions(["registry"])
        assert not off["settings"].auth
        site = build_registry(off["settings"], reactor, Clock()).site
        assert stub_call(StubTreq(site.resource), "GET", "http://x" + V).code == 200
