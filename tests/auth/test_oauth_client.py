"""The Node's OAuth 2.0 client (IS-10 "Behaviour - Clients", BCP-003-02) on a Clock, against in-memory IS-10
authorization servers on the fake network: registration, both client authentication methods, refresh at half-life,
backoff, revocation, re-registration, failover, persistence and shutdown; then once over a loopback socket."""

from __future__ import annotations

import base64
import json
import os
import random
import stat
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import jwt
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from tests.support.cases import SocketTest, UnitTest, cases
from tests.support.auth_server import ASSERTION_TYPE, FakeAuthServer, assert_is10
from tests.support.fake_network import FakeNetwork
from nmos_ref.auth.credentials import KEY_FILE, STATE_FILE
from nmos_ref.auth.oauth_client import CLIENT_SECRET_BASIC, PRIVATE_KEY_JWT, NoToken, OAuthClient
from tests.support.node import Events

START = 1_800_000_000.0  # the Clock's time (UTC seconds)
A, B = "auth-a.example:8443", "auth-b.example:8443"
ISSUER_A, ISSUER_B = f"http://{A}", f"http://{B}"
JWKS_URI = "http://192.0.2.10:8236/x-manufacturer/oauth/jwks"
NAME = "ACME Widget 3000 serial 0042"
TIMEOUT = 10.0
NAMESPACE = "nmos_ref.auth.oauth_client"


class Rig:
    """Authorization servers on a fake network (`names`, best first) and an OAuth client for them, on a Clock."""

    def __init__(self, tmp_path: Path, names: tuple[str, ...] = (A,), *, method: str = PRIVATE_KEY_JWT,
                 scopes: tuple[str, ...] = ("registration",)) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.network = FakeNetwork(self.clock)
        self.servers: dict[str, FakeAuthServer] = {}
        self.names: list[str] = []
        for name in names:
            self.add_server(name)
        self.state_dir = str(tmp_path / "oauth")
        self.jwks_uri: str | None = JWKS_URI
        self.client = self.make_client(method, scopes)

    def add_server(self, name: str) -> FakeAuthServer:
        server = self.servers[name] = FakeAuthServer(self.clock, f"http://{name}")
        self.network.serve(name, server.on_network())
        self.names.append(name)
        return server

    def make_client(self, method: str = PRIVATE_KEY_JWT, scopes: tuple[str, ...] = ("registration",),
                    seed: int = 1, initial_token: str | None = None) -> OAuthClient:
        """A client on the rig's state_dir; its public keys are what the servers find at its jwks_uri."""
        client = OAuthClient(self.clock, self.network, servers=lambda: [f"http://{name}" for name in self.names],
                             state_dir=self.state_dir, client_name=NAME, scopes=scopes, method=method,
                             jwks_uri=lambda: self.jwks_uri, timeout=TIMEOUT, initial_token=initial_token,
                             rng=random.Random(seed))
        if method == PRIVATE_KEY_JWT:
            self.publish(client)
        return client

    def publish(self, client: OAuthClient) -> None:
        for server in self.servers.values():
            if self.jwks_uri is not None:
                server.publish(self.jwks_uri, client.jwks())

    def server(self, name: str = A) -> FakeAuthServer:
        return self.servers[name]

    def unanswered(self, name: str = A) -> list[float]:
        """When requests to `name` were attempted and got no answer."""
        return [seen.time for seen in self.network.requests(name) if not seen.answered]

    def state(self) -> Any:
        return json.loads(Path(self.state_dir, STATE_FILE).read_text(encoding="utf-8"))


def succeeded(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has no result yet"
    assert not isinstance(results[0], Failure), results[0].getTraceback()
    return results[0]


def failed(deferred: Deferred[Any], *kinds: type[BaseException]) -> BaseException:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has no result yet"
    assert isinstance(results[0], Failure), f"succeeded with {results[0]!r}"
    assert results[0].check(*kinds), results[0].getTraceback()
    return results[0].value


def no_result(deferred: Deferred[Any]) -> None:
    results: list[Any] = []

    def seen(result: Any) -> Any:
        results.append(result)
        return result  # left for the test to look at later
    deferred.addBoth(seen)
    assert not results, results


class OAuthClientTests(UnitTest):
    """The client on a Clock against FakeAuthServers on a FakeNetwork."""

    # --- registration and the two ways to authenticate

    def test_private_key_jwt_registers_and_gets_a_token(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        with Events(NAMESPACE) as events:
            rig.client.startService()  # the first token is fetched in the background
        # IS-10: the endpoints come from the RFC 8414 metadata (the fake's paths are not the usual ones)
        assert [(seen.method, seen.path) for seen in rig.network.seen] == [
            ("GET", "/.well-known/oauth-authorization-server"), ("POST", "/testregister"), ("POST", "/testtoken")]
        registering, asking = rig.network.seen[1:]
        assert registering.headers["content-type"] == "application/json"
        assert server.registration_requests == [{
            "client_name": NAME, "grant_types": ["client_credentials"], "response_types": ["none"],
            "scope": "registration", "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": JWKS_URI}]
        client_id = server.registration_answers[0]["client_id"]

        assert asking.headers["content-type"] == "application/x-www-form-urlencoded"
        assert "authorization" not in asking.headers  # one authentication method only (RFC 6749 §2.3)
        [form] = server.token_requests
        assert set(form) == {"grant_type", "scope", "client_id", "client_assertion_type", "client_assertion"}
        assert (form["grant_type"], form["scope"], form["client_id"]) == ("client_credentials", "registration",
                                                                          client_id)
        assert form["client_assertion_type"] == ASSERTION_TYPE

        # RFC 7523 §2.2, §3: signed with the key the Node publishes, about the client, for this token endpoint only
        [jwk] = rig.client.jwks()["keys"]
        assert set(jwk) == {"kty", "n", "e", "kid", "alg", "use"} and (jwk["kty"], jwk["use"]) == ("RSA", "sig")
        header = jwt.get_unverified_header(form["client_assertion"])
        assert (header["alg"], header["kid"]) == ("RS512", jwk["kid"])
        claims = jwt.decode(form["client_assertion"], jwt.PyJWK(jwk).key, algorithms=["RS512"],
                            audience=server.token_endpoint, options={"verify_exp": False, "verify_iat": False})
        assert claims["iss"] == claims["sub"] == client_id
        assert claims["iat"] == int(START) and 60 <= claims["exp"] - claims["iat"] <= 300
        assert uuid.UUID(claims["jti"]).version == 4

        token = succeeded(rig.client.token())
        assert token == server.token_answers[0]["access_token"]
        issued = server.verify(token)
        assert issued["client_id"] == client_id and issued["exp"] == START + 60
        assert issued["x-nmos-registration"] == {"read": ["*"], "write": ["*"]}
        assert succeeded(rig.client.token()) == token and len(server.token_requests) == 1  # held, not asked again

        texts = events.texts()
        assert any(f"Registered with {ISSUER_A} as client {client_id}" in text for text in texts), texts
        assert any("Access token from" in text and "expires in 60 s, refreshing in 30 s" in text for text in texts)
        assert not any(token in text or form["client_assertion"] in text for text in texts)  # never log a token

    def test_an_initial_access_token_is_sent_with_the_registration(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        server.initial_token = "let-me-in"
        rig.client.startService()  # no initial token: the server refuses the registration
        error = failed(rig.client.token(), NoToken)
        assert "registration refused" in str(error) and "401" in str(error)
        rig.client.stopService()
        client = rig.make_client(initial_token="let-me-in")
        client.startService()
        token = succeeded(client.token())
        registering = rig.network.requests(A, "POST", "/testregister")[-1]
        assert registering.headers["authorization"] == "Bearer let-me-in"
        assert server.verify(token)["client_id"] == server.registration_answers[-1]["client_id"]
        asking = rig.network.requests(A, "POST", "/testtoken")[-1]
        assert "let-me-in" not in asking.headers.get("authorization", "")  # only for the registration
        client.stopService()

    def test_client_secret_basic(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path, method=CLIENT_SECRET_BASIC)
        server = rig.server()
        server.token_type = "Bearer"  # IS-10: token_type is case-insensitive
        with Events(NAMESPACE) as events:
            rig.client.startService()
            token = succeeded(rig.client.token())
        [registration] = server.registration_requests
        assert registration["token_endpoint_auth_method"] == "client_secret_basic" and "jwks_uri" not in registration
        answer = server.registration_answers[0]
        client_id, secret = answer["client_id"], answer["client_secret"]
        assert " +:/%é" in secret  # characters the Basic credentials must encode (RFC 6749 §2.3.1)

        [asking] = rig.network.requests(A, "POST", "/testtoken")
        scheme, _, value = asking.headers["authorization"].partition(" ")
        assert scheme == "Basic"
        raw_id, raw_secret = base64.b64decode(value).decode("utf-8").split(":")  # the secret's ':' is encoded
        assert (unquote_plus(raw_id), unquote_plus(raw_secret)) == (client_id, secret) and raw_secret != secret
        [form] = server.token_requests
        assert form == {"grant_type": "client_credentials", "scope": "registration", "client_id": client_id}

        assert server.verify(token)["client_id"] == client_id
        assert rig.state()["registrations"][ISSUER_A]["client_secret"] == secret  # kept for restarts ...
        assert stat.S_IMODE(os.stat(Path(rig.state_dir, STATE_FILE)).st_mode) == 0o600  # ... readable by us only
        assert not any(secret in text or raw_secret in text or token in text for text in events.texts())

    @cases("method", [PRIVATE_KEY_JWT, CLIENT_SECRET_BASIC])
    def test_what_is_sent_and_answered_fits_the_official_is10_schemas(self, tmp_path: Path, method: str) -> None:
        rig = Rig(tmp_path, method=method)
        server = rig.server()
        rig.client.startService()
        succeeded(rig.client.token())
        assert_is10("register_client_request", server.registration_requests[0])
        assert_is10("register_client_response", server.registration_answers[0])
        assert_is10("token_response", server.token_answers[0])
        assert_is10("jwks_response", rig.client.jwks())
        # and the fake server is a fair one: its metadata is what IS-10 asks for
        assert_is10("auth_metadata", server.metadata_document())

    # --- refresh, backoff, expiry

    def test_refresh_at_half_life(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        rig.client.startService()
        first = succeeded(rig.client.token())
        rig.clock.advance(29.9)
        assert len(server.token_requests) == 1
        rig.clock.advance(0.1)  # 60 s tokens, as the AMWA mock issues: refreshed at 30 s
        assert len(server.token_requests) == 2
        second = succeeded(rig.client.token())
        assert second != first and second == server.token_answers[1]["access_token"]
        assert server.verify(second)["iat"] == START + 30
        rig.clock.advance(30)
        assert succeeded(rig.client.token()) == server.token_answers[2]["access_token"]
        assert [seen.time - START for seen in rig.network.requests(A, "POST", "/testtoken")] == [0, 30, 60]
        # registered once, metadata read once; each assertion is new (the server refuses a replayed jti)
        assert len(server.registration_requests) == 1
        assert len(rig.network.requests(A, "GET", "/.well-known")) == 1
        assert server.refusals == []

    def test_a_failed_refresh_keeps_the_valid_token_and_backs_off(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        rig.client.startService()
        first = succeeded(rig.client.token())
        rig.host = rig.network.hosts[A]
        rig.host.mode = "refuse"
        with Events(NAMESPACE) as events:
            rig.clock.advance(30)  # the refresh fails
            for _ in range(240):
                rig.clock.advance(0.1)
                if rig.clock.seconds() < START + 55:  # valid until exp less the 5 s margin
                    before = len(rig.network.seen)
                    assert succeeded(rig.client.token()) == first
                    assert len(rig.network.seen) == before  # handed out without asking
        assert any("Cannot refresh the access token" in text and "keeping the held one" in text
                   for text in events.texts()), events.texts()
        attempts = rig.unanswered()
        assert attempts[0] == START + 30
        # randomised backoff, doubling from 1 s: the n-th wait is within [2**n / 2, 2**n]
        gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
        assert len(gaps) >= 4
        for index, gap in enumerate(gaps):
            ceiling = min(60.0, 2.0 ** index)
            assert ceiling / 2 - 1e-6 <= gap <= ceiling + 0.1 + 1e-6, (index, gaps)  # +0.1: the test's steps
        # the server comes back: the next try gets a token (and says so), and refreshes go back to half-life
        recoveries: list[float] = []
        rig.client.recovered = lambda: recoveries.append(rig.clock.seconds())
        rig.host.up()
        next_try = min(call.getTime() for call in rig.clock.getDelayedCalls())
        rig.clock.advance(next_try - rig.clock.seconds())
        assert len(server.token_requests) == 2 and recoveries == [next_try]
        renewed = succeeded(rig.client.token())
        assert renewed != first and renewed == server.token_answers[1]["access_token"]
        assert [call.getTime() - rig.clock.seconds() for call in rig.clock.getDelayedCalls()] == [30.0]

    def test_after_expiry_with_the_server_down_there_is_no_token_and_no_tight_loop(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        rig.client.startService()
        succeeded(rig.client.token())
        rig.network.hosts[A].mode = "refuse"
        rig.clock.advance(55)  # the refresh at 30 s and the retries since failed; the token is no longer handed out
        asked = len(rig.unanswered())
        reason = failed(rig.client.token(), NoToken)
        assert len(rig.unanswered()) == asked + 1  # it was tried once more, at once
        assert ISSUER_A in str(reason) and "ConnectionRefusedError" in str(reason)
        for _ in range(6000):  # ten minutes in 0.1 s steps
            rig.clock.advance(0.1)
        attempts = rig.unanswered()[asked:]
        assert 6 <= len(attempts) <= 30  # backing off to a wait of 30-60 s, not a loop
        assert all(later - earlier >= 0.5 for earlier, later in zip(attempts, attempts[1:]))
        assert attempts[-1] - attempts[-2] >= 30
        assert len(rig.clock.getDelayedCalls()) == 1  # just the next try

    def test_rejected_token_is_replaced(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        rig.client.startService()
        first = succeeded(rig.client.token())
        rig.client.rejected("some-older-token")  # not the held one: nothing changes
        assert succeeded(rig.client.token()) == first and len(server.token_requests) == 1
        rig.client.rejected(first)
        second = succeeded(rig.client.token())
        assert second != first and len(server.token_requests) == 2
        assert server.verify(second)["client_id"] == server.verify(first)["client_id"]
        assert len(server.registration_requests) == 1
        assert [call.getTime() for call in rig.clock.getDelayedCalls()] == [START + 30]  # one refresh timer

    def test_invalid_client_registers_again_once(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        rig.client.startService()
        first = succeeded(rig.client.token())
        old_id = server.registration_answers[0]["client_id"]
        server.forget_clients()  # an administrator deregistered the Node
        rig.client.rejected(first)
        with Events(NAMESPACE) as events:
            second = succeeded(rig.client.token())
        assert [error for error, _ in server.refusals] == ["invalid_client"]
        new_id = server.registration_answers[1]["client_id"]
        assert new_id != old_id and server.verify(second)["client_id"] == new_id
        assert rig.state()["registrations"][ISSUER_A]["client_id"] == new_id
        assert any(f"no longer knows client {old_id}" in text for text in events.texts()), events.texts()
        # a server that never accepts the client: one more registration, then NoToken, not a loop
        server.always_invalid_client = True
        rig.client.rejected(second)
        asked = len(server.token_requests)
        reason = failed(rig.client.token(), NoToken)
        assert "invalid_client" in str(reason)
        assert len(server.registration_requests) == 3 and len(server.token_requests) == asked + 2

    # --- several servers

    @cases("trouble", ["refuse", "503", "hang", "bad metadata", "refuses registration"])
    def test_fails_over_to_the_next_server(self, tmp_path: Path, trouble: str) -> None:
        rig = Rig(tmp_path, (A, B))
        host = rig.network.hosts[A]
        expected = {"refuse": "ConnectionRefusedError", "503": "answered 503", "hang": "no answer within 10 s",
                    "bad metadata": "is not JSON", "refuses registration": "registration refused"}[trouble]
        if trouble == "refuse":
            host.mode = "refuse"
        elif trouble == "503":
            host.status = 503
        elif trouble == "hang":
            host.mode = "hang"
        elif trouble == "bad metadata":
            rig.server(A).metadata_broken = True
        else:
            host.answer = lambda method, path: 400 if path == "/testregister" else None
        with Events(NAMESPACE) as events:
            rig.client.startService()
            waiting = rig.client.token()
            if trouble == "hang":
                no_result(waiting)
                rig.clock.advance(TIMEOUT)
            token = succeeded(waiting)
        assert rig.server(B).verify(token)["iss"] == ISSUER_B
        assert rig.server(A).token_requests == []
        failures = [text for text in events.texts() if text.startswith(f"Authorization server {ISSUER_A} gave no")]
        assert len(failures) == 1 and expected in failures[0], events.texts()
        assert f"Using authorization server {ISSUER_B}" in events.texts()
        if trouble == "hang":
            assert len(rig.network.cancelled) == 1  # the request that timed out was cancelled

    def test_no_server_then_one_is_discovered(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path, ())
        rig.client.startService()
        reason = failed(rig.client.token(), NoToken)
        assert "no authorization server is configured or discovered" in str(reason)
        assert rig.network.seen == []
        server = rig.add_server(A)  # DNS-SD found one
        rig.publish(rig.client)
        rig.client.servers_changed()  # tried now, not at the end of the backoff
        assert len(server.token_requests) == 1
        token = succeeded(rig.client.token())
        assert server.verify(token)["iss"] == ISSUER_A
        rig.add_server(B)
        rig.client.servers_changed()  # a working server is held: nothing to do
        assert len(server.token_requests) == 1 and rig.server(B).token_requests == []

    def test_private_key_jwt_needs_a_jwks_uri(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        rig.jwks_uri = None  # the Node does not know where it serves its keys (yet)
        reason = failed(rig.client.token(), NoToken)
        assert "private_key_jwt needs the jwks_uri" in str(reason)
        assert rig.network.seen == []

    # --- state across restarts

    def test_a_restart_reuses_the_key_and_the_registration(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        rig.client.startService()
        succeeded(rig.client.token())
        client_id = server.registration_answers[0]["client_id"]
        kid = rig.client.jwks()["keys"][0]["kid"]
        rig.client.stopService()
        folder = Path(rig.state_dir)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / KEY_FILE).stat().st_mode) == 0o600
        assert stat.S_IMODE((folder / STATE_FILE).stat().st_mode) == 0o600
        assert rig.state() == {"registrations": {ISSUER_A: {"client_id": client_id, "method": "private_key_jwt",
                                                            "scope": "registration", "jwks_uri": JWKS_URI}}}
        assert sorted(path.name for path in folder.iterdir()) == sorted([KEY_FILE, STATE_FILE])  # no temporary left

        again = rig.make_client(seed=2)
        assert again.jwks() == rig.client.jwks() and again.jwks()["keys"][0]["kid"] == kid
        again.startService()
        token = succeeded(again.token())
        assert len(server.registration_requests) == 1  # no second registration
        assert server.token_requests[-1]["client_id"] == client_id and server.verify(token)["client_id"] == client_id
        assert len(server.token_requests) == 2 and server.refusals == []  # the assertion verified with the same key

    @cases("change", ["scopes", "jwks_uri", "method"])
    def test_a_changed_configuration_registers_again(self, tmp_path: Path, change: str) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        rig.client.startService()
        succeeded(rig.client.token())
        rig.client.stopService()
        if change == "jwks_uri":
            rig.jwks_uri = "http://192.0.2.10:8237/x-manufacturer/oauth/jwks"
        method = CLIENT_SECRET_BASIC if change == "method" else PRIVATE_KEY_JWT
        scopes = ("registration", "query") if change == "scopes" else ("registration",)
        again = rig.make_client(method, scopes)
        with Events(NAMESPACE) as events:
            again.startService()
        token = succeeded(again.token())
        assert len(server.registration_requests) == 2
        registered = server.registration_requests[1]
        assert (registered["scope"], registered["token_endpoint_auth_method"]) == (" ".join(scopes), method)
        assert registered.get("jwks_uri") == (rig.jwks_uri if method == PRIVATE_KEY_JWT else None)
        new_id = server.registration_answers[1]["client_id"]
        assert server.verify(token)["client_id"] == new_id
        assert rig.state()["registrations"][ISSUER_A]["client_id"] == new_id
        assert any("no longer fits" in text for text in events.texts()), events.texts()

    @cases("broken", [
        (STATE_FILE, b"{not json"), (STATE_FILE, b'{"registrations": {"http://x": {"client_id": 5}}}'),
        (STATE_FILE, b"[]"), (KEY_FILE, b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")],
        ids=["state_not_json", "state_wrong_types", "state_not_an_object", "key_not_a_key"])
    def test_a_corrupt_state_file_is_set_aside(self, tmp_path: Path, broken: tuple[str, bytes]) -> None:
        name, content = broken
        folder = tmp_path / "oauth"
        folder.mkdir(mode=0o700)
        (folder / name).write_bytes(content)
        with Events("nmos_ref.auth.credentials") as events:  # what is kept on disk, and how unusable files go
            rig = Rig(tmp_path)  # reads the key to publish it
            server = rig.server()
            rig.client.startService()
        token = succeeded(rig.client.token())  # no crash: a fresh start
        assert server.verify(token)["client_id"] == server.registration_answers[0]["client_id"]
        warnings = [text for text in events.texts() if text.startswith((
            f"The OAuth client state file {folder / name} is corrupt",
            f"Cannot use the private key in {folder / name}"))]
        assert len(warnings) == 1 and f"kept as {folder / name}.corrupt" in warnings[0], events.texts()
        assert (folder / (name + ".corrupt")).read_bytes() == content  # kept for someone to look at
        assert rig.state()["registrations"][ISSUER_A]["client_id"] == server.registration_answers[0]["client_id"]
        rig.client.stopService()
        again = rig.make_client()  # and what replaced it works after a restart
        again.startService()
        succeeded(again.token())
        assert len(server.registration_requests) == 1 and server.refusals == []

    # --- concurrency and shutdown

    def test_concurrent_calls_share_one_request(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        server = rig.server()
        host = rig.network.hosts[A]
        host.hold = lambda method, path: path == "/testtoken"
        first, second, third = rig.client.token(), rig.client.token(), rig.client.token()
        no_result(first)
        no_result(second)
        assert len(host.parked) == 1 and len(server.registration_requests) == 1
        third.cancel()  # one caller gives up: the others still wait on the same request
        failed(third, CancelledError)
        assert rig.network.cancelled == []
        host.hold = None
        host.release()
        token = succeeded(first)
        assert succeeded(second) == token and len(server.token_requests) == 1

    @cases("when", ["holding a token", "backing off", "request out"])
    def test_stop_cancels_every_timer_and_request(self, tmp_path: Path, when: str) -> None:
        rig = Rig(tmp_path)
        host = rig.network.hosts[A]
        if when == "backing off":
            host.mode = "refuse"
        elif when == "request out":
            host.mode = "hang"
        rig.client.startService()
        waiting = rig.client.token()
        assert rig.clock.getDelayedCalls() != []  # a refresh, a retry or a request's time limit
        rig.client.stopService()
        assert rig.clock.getDelayedCalls() == []
        if when == "request out":
            assert len(rig.network.cancelled) == 1
            assert "stopped" in str(failed(waiting, NoToken))
        elif when == "backing off":  # the refusal was the answer (and a Failure left unhandled fails a trial test)
            assert "ConnectionRefusedError" in str(failed(waiting, NoToken))
        seen = len(rig.network.seen)
        rig.clock.advance(3600)
        assert len(rig.network.seen) == seen  # nothing more is sent


class OAuthClientSocketTests(SocketTest):
    """The client against a FakeAuthServer behind a real Site on 127.0.0.1."""

    # --- over a real socket

    async def test_over_a_loopback_socket(self, tmp_path: Path) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        http = HTTPClient(Agent(reactor, pool=pool))
        server = FakeAuthServer(reactor, "http://127.0.0.1")
        port = reactor.listenTCP(0, Site(server.app.resource()), interface="127.0.0.1")
        server.base = f"http://127.0.0.1:{port.getHost().port}"
        client = OAuthClient(reactor, http, servers=lambda: [server.base], state_dir=str(tmp_path / "oauth"),
                             client_name=NAME, scopes=["registration"], jwks_uri=lambda: JWKS_URI, timeout=TIMEOUT)
        server.publish(JWKS_URI, client.jwks())
        client.startService()
        try:
            token = await client.token()
            client_id = server.registration_answers[0]["client_id"]
            assert server.verify(token)["client_id"] == client_id and server.refusals == []
            assert await client.token() == token  # held
            client.rejected(token)
            renewed = await client.token()
            assert renewed != token and server.verify(renewed)["client_id"] == client_id
            assert len(server.registration_requests) == 1 and len(server.token_requests) == 2
        finally:
            client.stopService()
            await defer.maybeDeferred(port.stopListening)
            await pool.closeCachedConnections()
