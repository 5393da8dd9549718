"""Authorization end to end over loopback sockets: `build_all` with `auth` on and an authorization server of the
test's own. The Node registers itself with the authorization server, gets a token, registers with the registry
(which records its client_id), serves its Node API only to token holders and says so in `api.endpoints`, serves its
public keys, unregisters with tokens, and after a restart uses the same OAuth registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import treq
from attrs import evolve
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from tests.support.auth_server import FakeAuthServer
from tests.support.tokens import NOW, FakeFetch, Issuer
from nmos_ref.wiring.auth import authorization
from nmos_ref.config import Settings
from nmos_ref.discovery import Advert
from nmos_ref.discovery.auth_servers import AUTH
from nmos_ref.discovery.fake import FakeDnsSd
from nmos_ref.wiring.dnssd import DnsSd
from nmos_ref.wiring.node import build_node
from nmos_ref.wiring.tree import build_all
from tests.support.cases import SocketTest, UnitTest
from tests.support.official import assert_official

LOOPBACK = "tcp:0:interface=127.0.0.1"


class NodeKeys(dict):  # type: ignore[type-arg]
    """What the fake server "fetches" at a jwks_uri: the Node's own JWK Set (the HTTP route is checked apart)."""

    def __init__(self, top: Any) -> None:
        super().__init__()
        self.top = top

    def get(self, uri: str, default: Any = None) -> Any:
        node = self.top.node
        endpoint = node.model.endpoints[0] if node.model.endpoints else None
        if endpoint is not None and uri == f"{endpoint.base}x-authorization/jwks":
            return node.oauth.jwks()
        return default


async def read(http: Any, url: str, token: str | None = None) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = await http.get(url, headers=headers)
    return response.code, await response.json(), response.headers


async def run_once(settings: Settings, server: FakeAuthServer, http: Any) -> dict[str, Any]:
    top = build_all(settings, reactor)
    server.published = NodeKeys(top)
    top.startService()
    try:
        node = top.node
        await node.ready
        await node.client.synced()
        registry = node.client.current.candidate.url
        [endpoint] = node.model.endpoints
        node_id = node.model.node_id
        client_id = server.issued[-1]["client_id"]
        held = top.registry.get("node", node_id)
        assert held is not None and held.client_id == client_id  # BCP-003-02: the registry knows who registered it

        # The Node API wants a token now, and says so.
        code, body, headers = await read(http, f"{endpoint.base}x-nmos/node/v1.3/self")
        assert code == 401 and headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Bearer ")
        assert set(body) == {"code", "error", "debug"}
        controller = server.issue(["node", "query"], "controller-1")
        code, self_, _ = await read(http, f"{endpoint.base}x-nmos/node/v1.3/self", controller)
        assert code == 200
        assert_official("v1.3", "node", self_)
        assert [e["authorization"] for e in self_["api"]["endpoints"]] == [True]
        code, registered, _ = await read(http, f"{registry}/x-nmos/query/v1.3/nodes/{node_id}", controller)
        assert code == 200 and registered == self_
        code, _, _ = await read(http, f"{registry}/x-nmos/query/v1.3/nodes/{node_id}")
        assert code == 401

        # Its public keys are open to anyone (the authorization server fetches them without a token).
        code, jwks, headers = await read(http, f"{endpoint.base}x-authorization/jwks")
        assert code == 200 and jwks == node.oauth.jwks()
        assert headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert [key["kid"] for key in jwks["keys"]] and all("d" not in key for key in jwks["keys"])

        await top.stopService()
        assert top.registry.count("node") == 0 and top.registry.count("device") == 0  # DELETEs had tokens
        return {"client_id": client_id, "kid": jwks["keys"][0]["kid"], "port": endpoint.port}
    finally:
        if top.running:
            await top.stopService()


def auth_advert(host_port: str, pri: int = 0, proto: str = "http") -> Advert:
    address, port = host_port.rsplit(":", 1)
    return Advert(AUTH, f"auth {host_port}", int(port), (address,),
                  {"api_proto": proto, "api_ver": "v1.0", "pri": str(pri)})


class AuthorizationTests(SocketTest):
    """The Node, the registry and an authorization server, each on a port of 127.0.0.1."""

    async def test_node_and_registry_with_authorization(self, tmp_path: Path) -> None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        server = FakeAuthServer(reactor, "http://127.0.0.1")
        port = reactor.listenTCP(0, Site(server.app.resource()), interface="127.0.0.1")
        server.base = f"http://127.0.0.1:{port.getHost().port}"
        settings = Settings(listen=[LOOPBACK], node_listen=[LOOPBACK], dns_sd="off", auth=True,
                            auth_issuers=[server.base], auth_fqdn="nmos-ref.local", auth_state_dir=str(tmp_path))
        try:
            first = await run_once(settings, server, http)
            assert len(server.registration_requests) == 1
            assert server.registration_requests[0]["token_endpoint_auth_method"] == "private_key_jwt"
            assert server.refusals == []
            # A restart (on the same port, so the same jwks_uri) keeps the key and the client registration: no second
            # registration, the same client.
            again = evolve(settings, node_listen=[f"tcp:{first['port']}:interface=127.0.0.1"])
            second = await run_once(again, server, http)
            assert second == first and len(server.registration_requests) == 1
            assert server.refusals == []
        finally:
            await defer.maybeDeferred(port.stopListening)
            await pool.closeCachedConnections()


class AuthorizationDiscoveryTests(UnitTest):
    """The wiring of IS-10 discovery, with fake DNS-SD and a Clock."""

    def test_authorization_servers_found_by_dns_sd_are_trusted_and_asked_for_tokens(self, tmp_path: Path) -> None:
        """IS-10 "Discovery": `_nmos-auth._tcp` feeds the key cache (the registry's tokens) and the Node's OAuth
        client (its own tokens), after the configured servers, in one browse for the process."""
        clock = Clock()
        clock.advance(NOW)
        issuer = Issuer("http://192.0.2.50:5010")
        mdns = FakeDnsSd()
        dns_sd = DnsSd(multicast=mdns.endpoint("nmos-ref"), interfaces=["192.0.2.10"], host="nmos-ref")
        settings = Settings(listen=[LOOPBACK], node_listen=[LOOPBACK], dns_sd="multicast", auth=True,
                            auth_issuers=["http://192.0.2.60:5010"], auth_state_dir=str(tmp_path))
        found = authorization(settings, reactor, clock, dns_sd, fetch_json=FakeFetch(issuer))
        node = build_node(settings, reactor, clock, dns_sd=dns_sd, guard=found,
                          local_registries=lambda: defer.succeed([]))
        assert found.found is not None and found.found.changed == node.oauth.servers_changed
        assert node.oauth.recovered == node.client.retry_now  # a token again: the registration client retries at once
        found.services.startService()
        try:
            assert not found.server.keys.trusted(issuer.url)
            mdns.endpoint("tool").advertise(auth_advert("192.0.2.50:5010"))
            mdns.endpoint("tool").advertise(auth_advert("192.0.2.51:5010", pri=100))  # development: not used
            assert found.server.keys.trusted(issuer.url)
            assert not found.server.keys.trusted("http://192.0.2.51:5010")
            assert [key.key_id for key in found.server.keys.keys(issuer.url)] == ["rsa-1", "ec-1"]
            assert node.oauth.servers() == ["http://192.0.2.60:5010", "http://192.0.2.50:5010"]
        finally:
            found.services.stopService()
