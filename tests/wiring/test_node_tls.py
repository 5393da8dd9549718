"""The Node with BCP-003-01 TLS, over loopback: its Node API behind the same TLS context as the registry (both
certificates, TLS 1.2+), `https` in its endpoints, and a registration client that checks the registry's certificate
against `tls_ca` and will not register with a registry it cannot verify."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.ssl import Certificate
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Site

from nmos_ref.config import Settings
from nmos_ref.wiring.node import build_node
from nmos_ref.tls.ocsp import OCSPStapler
from nmos_ref.wiring.registry import build_registry
from nmos_ref.wiring.tree import build_all
from tests.support.cases import SocketTest
from tests.support.official import assert_official
from tests.support.samples import port_of
from tests.support.pki import Pinned, Responder, make_pki, pairs

TLS_LOOPBACK = "ssl:0:interface=127.0.0.1"


@functools.cache
def shared_pki() -> dict[str, str]:
    """One CA and its leaves for the tests that only read them (made once per process: key generation is slow)."""
    folder = tempfile.mkdtemp(prefix="nmos-ref-pki-")
    atexit.register(shutil.rmtree, folder, True)
    return make_pki(Path(folder))


async def fetch_with(url: str, policy: Any) -> tuple[int, Any, Any]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await HTTPClient(Agent(reactor, contextFactory=policy, pool=pool)).get(url)
        return response.code, await response.json(), response.headers
    finally:
        await pool.closeCachedConnections()


async def fetch(url: str, ca: str) -> tuple[int, Any, Any]:
    return await fetch_with(url, BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(Path(ca).read_bytes())))


def state_change(node: Any) -> Deferred[str]:
    changed: Deferred[str] = Deferred()

    def seen(state: str) -> None:
        if not changed.called:
            unsubscribe()
            changed.callback(state)

    unsubscribe = node.client.watch(seen)
    return changed


class LateResponder(Resource):
    """Hands OCSP requests to a responder made once its port (which the certificates name) is known."""

    isLeaf = True
    target: Responder

    def render_POST(self, request: Any) -> bytes:
        return self.target.render_POST(request)


async def staples_of(url: str, ca: str, cipher: bytes) -> bytes:
    staples: list[bytes] = []
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        policy = Pinned(ca, SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, cipher, staples=staples)
        response = await HTTPClient(Agent(reactor, contextFactory=policy, pool=pool)).get(url)
        await response.content()
    finally:
        await pool.closeCachedConnections()
    [staple] = staples
    return staple


class NodeTLSTests(SocketTest):
    """The Node and the registry with TLS listeners on 127.0.0.1."""

    def setUp(self) -> None:
        self.pki = shared_pki()

    async def test_node_and_registry_over_https(self, pki: dict[str, str]) -> None:
        settings = Settings(listen=[TLS_LOOPBACK], node_listen=[TLS_LOOPBACK], dns_sd="off", host_name="localhost",
                            tls_certificates=pairs(pki), tls_ca=pki["ca"])
        top = build_all(settings, reactor)
        top.startService()
        try:
            node = top.node
            await node.ready
            await node.client.synced()
            registry = node.client.current.candidate
            assert registry.url.startswith("https://localhost:") and registry.origin == "local"
            [endpoint] = node.model.endpoints
            assert (endpoint.protocol, endpoint.host, endpoint.authorization) == ("https", "localhost", False)
            code, data, headers = await fetch(f"{endpoint.base}x-nmos/node/v1.3/self", pki["ca"])
            assert code == 200 and headers.getRawHeaders(b"strict-transport-security") == [b"max-age=31536000"]
            assert_official("v1.3", "node", data)
            assert data["api"]["endpoints"] == [{"host": "localhost", "port": endpoint.port, "protocol": "https",
                                                 "authorization": False}]
            assert data["href"].startswith("https://localhost:")
            code, registered, _ = await fetch(f"{registry.url}/x-nmos/query/v1.3/nodes/{data['id']}", pki["ca"])
            assert code == 200 and registered == data
            # The Node API's listener has the BCP-003-01 context: TLS 1.1 is refused, the ECDSA certificate offered.
            with pytest.raises(ResponseNeverReceived):
                await fetch_with(f"{endpoint.base}x-nmos/node/",
                                 Pinned(pki["ca"], SSL.TLS1_VERSION, SSL.TLS1_1_VERSION))
            policy = Pinned(pki["ca"], SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, b"ECDHE-ECDSA-AES128-GCM-SHA256")
            assert (await fetch_with(f"{endpoint.base}x-nmos/node/", policy))[0] == 200
        finally:
            await top.stopService()
        assert top.registry.count("node") == 0  # unregistered over HTTPS before the registry stopped

    async def test_a_registry_whose_certificate_is_not_trusted_is_not_used(self, pki: dict[str, str],
                                                                             tmp_path: Path) -> None:
        other = make_pki(tmp_path / "other")  # a CA the registry's certificate does not come from
        registry_settings = Settings(listen=[TLS_LOOPBACK], dns_sd="off", tls_certificates=pairs(pki))
        registry = build_registry(registry_settings, reactor, reactor)
        registry.startService()
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace", "").startswith("nmos_ref.node"):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        try:
            [listener] = [child for child in registry if hasattr(child, "endpoint")]
            port = await port_of(listener)
            node = build_node(Settings(node_listen=[TLS_LOOPBACK], dns_sd="off", registries=[
                f"https://localhost:{port}/x-nmos/registration/v1.3"], tls_certificates=pairs(pki),
                tls_ca=other["ca"], registry_timeout=2.0), reactor, reactor)
            node.startService()
            await node.ready
            # Alone, the registry and the Node each staple (nothing to staple here: no responder named).
            assert [type(s) for s in registry if isinstance(s, OCSPStapler)] == [OCSPStapler]
            assert [type(s) for s in node if isinstance(s, OCSPStapler)] == [OCSPStapler]
            while node.client.state not in ("backoff", "registered"):
                await state_change(node).addTimeout(30, reactor)  # a failure, not a hang, if the client never decides
            assert node.client.state == "backoff"
            assert registry.registry.count("node") == 0
            assert any("certificate verify failed" in line or "SSL" in line for line in lines), lines
            await node.stopService()
        finally:
            globalLogPublisher.removeObserver(observe)
            await registry.stopService()

    async def test_registry_and_node_staple_ocsp_responses(self, tmp_path: Path) -> None:
        """BCP-003-01: with certificates that name an OCSP responder, both the registry's and the Node's listeners
        staple a GOOD response for the certificate they serve (RSA and ECDSA alike), from one stapler for the process
        that asks the responder once per certificate."""
        late = LateResponder()
        responder_port = reactor.listenTCP(0, Site(late), interface="127.0.0.1")
        keys = make_pki(tmp_path / "pki", ocsp_url=f"http://127.0.0.1:{responder_port.getHost().port}/")
        late.target = responder = Responder(keys, reactor)
        settings = Settings(listen=[TLS_LOOPBACK], node_listen=[TLS_LOOPBACK], dns_sd="off", host_name="localhost",
                            tls_certificates=pairs(keys), tls_ca=keys["ca"])
        top = build_all(settings, reactor)
        top.startService()
        try:
            await top.node.ready
            await top.node.client.synced()
            [stapler] = [service for service in top if isinstance(service, OCSPStapler)]
            assert not [child for service in top for child in getattr(service, "services", [])
                        if isinstance(child, OCSPStapler)]  # neither the registry nor the Node has one of its own
            await stapler.settled()
            assert sorted(asked.serial_number for asked in responder.asked) == sorted(
                x509.load_pem_x509_certificates(Path(keys[f"{kind}_cert"]).read_bytes())[0].serial_number
                for kind in ("rsa", "ec"))
            registry = top.node.client.current.candidate.url
            node = top.node.model.endpoints[0].base
            for base in (f"{registry}/", node):
                for cipher, kind in ((b"ECDHE-RSA-AES128-GCM-SHA256", "rsa"), (b"ECDHE-ECDSA-AES128-GCM-SHA256", "ec")):
                    staple = await staples_of(f"{base}x-nmos/", keys["ca"], cipher)
                    response = ocsp.load_der_ocsp_response(staple)
                    served = x509.load_pem_x509_certificates(Path(keys[f"{kind}_cert"]).read_bytes())[0]
                    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
                    assert response.serial_number == served.serial_number, (base, kind)
        finally:
            await top.stopService()
            await responder_port.stopListening()
