"""The registration client with authorization on (IS-10, BCP-003-02): a bearer token on every request to the
registry, one new token and one retry after a 401, and no token treated as an unusable registry."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from tests.support.cases import UnitTest
from tests.support.tokens import NOW, SERVER, FakeFetch, Issuer
from tests.support.node import SCHEMAS, START, Events, Rig
from nmos_ref.web.root import root_resource
from nmos_ref.api.registration import RegistrationAPI
from nmos_ref.auth.guard import ResourceServer, guard_apis
from nmos_ref.auth.keys import KeyCache
from nmos_ref.model.store import Registry
from nmos_ref.model.versions import ALL_VERSIONS
from nmos_ref.node.registries import Candidate


class FakeTokens:
    """The OAuth client as the registration client sees it: token() and rejected(token)."""

    def __init__(self, issuer: Issuer, clock: Any, client_id: str = "node-client") -> None:
        self.issuer = issuer
        self.clock = clock
        self.client_id = client_id
        self.issued: list[str] = []
        self.rejections: list[str] = []
        self.upcoming: list[dict[str, Any]] = []  # claim changes for the next tokens, in order
        self.broken: Exception | None = None

    def token(self) -> Deferred[str]:
        if self.broken is not None:
            return fail(self.broken)
        changes = self.upcoming.pop(0) if self.upcoming else {}
        claims = {"iat": self.clock.seconds() - 1, "exp": self.clock.seconds() + 60, "client_id": self.client_id,
                  **changes}
        token = self.issuer.token(**claims)
        self.issued.append(token)
        return succeed(token)

    def rejected(self, token: str) -> None:
        self.rejections.append(token)


class AuthRig(Rig):
    """Rig whose registry wants tokens from `issuer`, and whose client gets them from FakeTokens."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(names=(), candidates=[Candidate("http://reg-a:8235", 0, versions=tuple(ALL_VERSIONS),
                                                         authorization=True)], **kwargs)
        self.clock.advance(NOW - START)
        self.issuer = Issuer("http://auth.example.local")
        keys = KeyCache(self.clock, FakeFetch(self.issuer), [self.issuer.url])
        keys.start()
        self.server = ResourceServer(keys, self.clock, [SERVER])
        registry = self.registries["reg-a:8235"] = Registry()
        api = RegistrationAPI(registry, SCHEMAS, list(ALL_VERSIONS), self.clock)
        self.network.serve("reg-a:8235", root_resource(guard_apis({"registration": api.app.resource()},
                                                                  self.server)))
        self.tokens = FakeTokens(self.issuer, self.clock)
        self.client.tokens = self.tokens
        self.client.authorization = True


def bearer(seen: Any) -> str | None:
    value = seen.headers.get("authorization")
    return value[len("Bearer "):] if value is not None and value.startswith("Bearer ") else None


class RegistrationWithTokensTests(UnitTest):
    """The registration client against a registry that wants tokens."""

    def test_every_registration_heartbeat_and_delete_carries_a_token_the_registry_accepts(self) -> None:
        rig = AuthRig()
        rig.client.startService()
        rig.clock.advance(0)
        assert rig.client.state == "registered"
        assert rig.registered("reg-a:8235").keys() == rig.shown().keys()
        rig.clock.advance(5)
        rig.clock.advance(5)
        requests = rig.network.requests("reg-a:8235")
        assert len(rig.network.heartbeats("reg-a:8235")) == 2
        assert all(seen.answered for seen in requests)
        assert all(bearer(seen) in rig.tokens.issued for seen in requests if "/resource" in seen.path
                   or "/health/" in seen.path)
        # BCP-003-02: the registry noted which client registered the Node.
        node = rig.model.node["id"]
        assert rig.registries["reg-a:8235"].get("node", node).client_id == "node-client"
        rig.client.stopService()
        rig.clock.advance(0)
        deletes = rig.network.requests("reg-a:8235", "DELETE")
        assert deletes and all(bearer(seen) is not None for seen in deletes)
        assert not rig.registered("reg-a:8235")

    def test_a_401_gets_one_new_token_and_one_retry(self) -> None:
        rig = AuthRig()
        rig.tokens.upcoming = [{"exp": NOW - 600, "iat": NOW - 700}]  # the first token the client gets is stale
        with Events() as events:
            rig.client.startService()
            rig.clock.advance(0)
        assert rig.client.state == "registered"
        first = rig.network.requests("reg-a:8235", "POST", "/resource")[0]
        assert first.answered and bearer(first) == rig.tokens.issued[0]
        assert rig.tokens.rejections == [rig.tokens.issued[0]]
        retried = rig.network.requests("reg-a:8235", "POST", "/resource")[1]
        assert bearer(retried) == rig.tokens.issued[1]
        assert rig.registered("reg-a:8235").keys() == rig.shown().keys()
        assert any("answered 401" in text and "new access token" in text for text in events.texts())
        rig.client.stopService()
        rig.clock.advance(0)

    def test_a_second_401_is_not_retried_again(self) -> None:
        rig = AuthRig()
        stale = {"exp": NOW - 600, "iat": NOW - 700}
        rig.tokens.upcoming = [stale, stale]
        rig.client.startService()
        rig.clock.advance(0)
        posts = rig.network.requests("reg-a:8235", "POST", "/resource")
        assert len(posts) == 2  # the first try and one retry, then the client stops asking
        assert len(rig.tokens.rejections) == 1
        assert rig.client.state == "refused"
        assert not rig.registered("reg-a:8235")
        rig.client.stopService()
        rig.clock.advance(0)

    def test_no_token_counts_as_an_unusable_registry_and_backs_off(self) -> None:
        rig = AuthRig()
        rig.tokens.broken = RuntimeError("the authorization server at http://auth.example.local refused the client")
        with Events() as events:
            rig.client.startService()
            rig.clock.advance(0)
        assert rig.client.state == "backoff"
        assert not rig.network.requests("reg-a:8235", "POST")  # nothing sent without a token
        assert any("no access token" in text and "refused the client" in text for text in events.texts())
        rig.tokens.broken = None
        rig.client.retry_now()  # the OAuth client has a token again: no waiting out the backoff
        assert rig.client.state == "registered"
        rig.client.stopService()
        rig.clock.advance(0)
