"""BCP-003-01 TLS over loopback: a CA made in the test signs an RSA and an ECDSA certificate for localhost; the
server offers both, only TLS 1.2 and 1.3, and sends HSTS; bad certificate files stop the start with a message."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.python import usage
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseNeverReceived

from nmos_ref.web.root import root_resource
from nmos_ref.web.server import make_site
from nmos_ref.config import ConfigError
from nmos_ref.service import Options
from nmos_ref.tls.server import listen_service, server_context
from tests.support.cases import SocketTest, UnitTest, cases
from tests.support.samples import OpenConnections, port_of
from tests.support.pki import Pinned, make_pki, pairs


@functools.cache
def shared_pki() -> dict[str, str]:
    """One CA and its leaves for every test here (made once per process: key generation is slow)."""
    folder = tempfile.mkdtemp(prefix="nmos-ref-pki-")
    atexit.register(shutil.rmtree, folder, True)
    return make_pki(Path(folder))


class BadFilesTests(UnitTest):
    """Certificate files that cannot be used stop the start with a message."""

    def setUp(self) -> None:
        self.pki = shared_pki()

    def test_bad_files_are_config_errors(self, pki: dict[str, str], tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            server_context([(str(tmp_path / "missing.pem"), pki["rsa_key"])])
        with pytest.raises(ConfigError, match="cannot be used together"):
            server_context([(pki["rsa_cert"], pki["ec_key"])])
        with pytest.raises(ConfigError, match="same key type"):
            server_context([(pki["rsa_cert"], pki["rsa_key"]), (pki["rsa_cert"], pki["rsa_key"])])
        with pytest.raises(usage.UsageError, match="cannot be used together"):
            Options().parse([
                "registry", "--listen",
                f"ssl:0:interface=127.0.0.1:certKey={pki['ec_cert']}:privateKey={pki['rsa_key']}"])


async def get(port: int, options: Any) -> Any:
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        client = HTTPClient(Agent(reactor, contextFactory=options, pool=pool))
        response = await client.get(f"https://localhost:{port}/")
        await response.content()
        return response
    finally:
        await pool.closeCachedConnections()


class HTTPSTests(SocketTest):
    """A listener with both certificates on 127.0.0.1, and clients that offer one protocol version and suite."""

    async def setUp(self) -> None:
        self.pki = pki = shared_pki()
        site = make_site(root_resource({}))
        connections = OpenConnections(site)
        service = listen_service("ssl:0:interface=127.0.0.1", site, reactor, pairs(pki))
        service.startService()

        async def stop() -> None:
            await service.stopService()
            await connections.closed()  # the clients have closed; the server side follows a turn or so later

        self.addCleanup(stop)
        self.https = await port_of(service)

    async def test_https_with_hsts(self, https: int, pki: dict[str, str]) -> None:
        response = await get(https, BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(
            Path(pki["ca"]).read_bytes())))
        assert response.code == 200
        assert response.headers.getRawHeaders("strict-transport-security") == ["max-age=31536000"]

    @cases("cipher, key_type", [(b"ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
                                (b"ECDHE-ECDSA-AES128-GCM-SHA256", "ec")], ids=["rsa", "ec"])
    async def test_both_certificates_offered(self, https: int, pki: dict[str, str], cipher: bytes,
                                             key_type: str) -> None:
        policy = Pinned(pki["ca"], SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, cipher)
        assert (await get(https, policy)).code == 200
        served = policy.seen[0].get_peer_certificate().to_cryptography().public_key()
        assert isinstance(served, rsa.RSAPublicKey if key_type == "rsa" else ec.EllipticCurvePublicKey)
        assert policy.seen[0].get_cipher_name() == cipher.decode()

    async def test_old_tls_refused(self, https: int, pki: dict[str, str]) -> None:
        with pytest.raises(ResponseNeverReceived):
            await get(https, Pinned(pki["ca"], SSL.TLS1_VERSION, SSL.TLS1_1_VERSION))
        with pytest.raises(ResponseNeverReceived):  # TLS 1.2 without an ECDHE/DHE AEAD or SHA-2 suite
            await get(https, Pinned(pki["ca"], SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, b"AES128-SHA"))
