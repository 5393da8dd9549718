"""BCP-003-01 TLS over loopback: a CA made in the test signs an RSA and an ECDSA certificate for localhost; the
server offers both, only TLS 1.2 and 1.3, and sends HSTS; bad certificate files stop the start with a message."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions
from twisted.python import usage
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseNeverReceived

from zope.interface import implementer

from nmos_ref.api.common import make_site, root_resource
from nmos_ref.config import ConfigError
from nmos_ref.service import Options
from nmos_ref.tls import listen_service, server_context
from resources import port_of


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, str]:
    """A CA and two leaves (RSA, ECDSA) for localhost, written as PEM files; keys exist only for this run."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("nmos-ref test CA")).issuer_name(_name("nmos-ref test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files = {"ca": str(folder / "ca.pem")}
    Path(files["ca"]).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for kind, key in (("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      ("ec", ec.generate_private_key(ec.SECP256R1()))):
        leaf = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        files[f"{kind}_cert"] = str(folder / f"{kind}.pem")
        files[f"{kind}_key"] = str(folder / f"{kind}.key")
        Path(files[f"{kind}_cert"]).write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                                                + ca.public_bytes(serialization.Encoding.PEM))
        Path(files[f"{kind}_key"]).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


def pairs(pki: dict[str, str]) -> list[dict[str, str]]:
    return [{"certificate": pki["rsa_cert"], "key": pki["rsa_key"]},
            {"certificate": pki["ec_cert"], "key": pki["ec_key"]}]


def test_bad_files_are_config_errors(pki: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        server_context([(str(tmp_path / "missing.pem"), pki["rsa_key"])])
    with pytest.raises(ConfigError, match="cannot be used together"):
        server_context([(pki["rsa_cert"], pki["ec_key"])])
    with pytest.raises(ConfigError, match="same key type"):
        server_context([(pki["rsa_cert"], pki["rsa_key"]), (pki["rsa_cert"], pki["rsa_key"])])
    with pytest.raises(usage.UsageError, match="cannot be used together"):
        Options().parseOptions(["registry", "--listen",
                                f"ssl:0:interface=127.0.0.1:certKey={pki['ec_cert']}:privateKey={pki['rsa_key']}"])


@pytest_twisted.async_yield_fixture
async def https(pki: dict[str, str]) -> Any:
    site = make_site(root_resource({}))
    service = listen_service("ssl:0:interface=127.0.0.1", site, reactor, pairs(pki))
    service.startService()
    yield await port_of(service)
    await service.stopService()


async def get(port: int, options: Any) -> Any:
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        client = HTTPClient(Agent(reactor, contextFactory=options, pool=pool))
        response = await client.get(f"https://localhost:{port}/")
        await response.content()
        return response
    finally:
        await pool.closeCachedConnections()


class Pinned(BrowserLikePolicyForHTTPS):
    """Trusts the test CA, with a chosen TLS version range and TLS 1.2 cipher list."""

    def __init__(self, ca: str, low: int = SSL.TLS1_2_VERSION, high: int | None = None, ciphers: bytes | None = None):
        super().__init__()
        self.ca, self.low, self.high, self.ciphers = ca, low, high, ciphers
        self.seen: list[Any] = []

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        policy = self

        @implementer(IOpenSSLClientConnectionCreator)
        class Creator:
            def clientConnectionForTLS(self, protocol: Any) -> Any:
                options = CertificateOptions(trustRoot=Certificate.loadPEM(Path(policy.ca).read_bytes()))
                context = options.getContext()
                context.set_min_proto_version(policy.low)
                if policy.high is not None:
                    context.set_max_proto_version(policy.high)
                if policy.low < SSL.TLS1_2_VERSION:
                    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
                if policy.ciphers:
                    context.set_cipher_list(policy.ciphers)
                connection = SSL.Connection(context, None)
                connection.set_tlsext_host_name(hostname)
                connection.set_connect_state()
                policy.seen.append(connection)
                return connection
        return Creator()


async def test_https_with_hsts(https: int, pki: dict[str, str]) -> None:
    response = await get(https, BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(
        Path(pki["ca"]).read_bytes())))
    assert response.code == 200
    assert response.headers.getRawHeaders("strict-transport-security") == ["max-age=31536000"]


@pytest.mark.parametrize("cipher, key_type", [(b"ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
                                              (b"ECDHE-ECDSA-AES128-GCM-SHA256", "ec")])
async def test_both_certificates_offered(https: int, pki: dict[str, str], cipher: bytes, key_type: str) -> None:
    policy = Pinned(pki["ca"], SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, cipher)
    assert (await get(https, policy)).code == 200
    served = policy.seen[0].get_peer_certificate().to_cryptography().public_key()
    assert isinstance(served, rsa.RSAPublicKey if key_type == "rsa" else ec.EllipticCurvePublicKey)
    assert policy.seen[0].get_cipher_name() == cipher.decode()


async def test_old_tls_refused(https: int, pki: dict[str, str]) -> None:
    with pytest.raises(ResponseNeverReceived):
        await get(https, Pinned(pki["ca"], SSL.TLS1_VERSION, SSL.TLS1_1_VERSION))
    with pytest.raises(ResponseNeverReceived):  # TLS 1.2 without an ECDHE/DHE AEAD or SHA-2 suite
        await get(https, Pinned(pki["ca"], SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, b"AES128-SHA"))
