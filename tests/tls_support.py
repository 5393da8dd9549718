"""A certificate authority made per test run, and certificates for localhost signed by it (BCP-003-01 tests)."""

from __future__ import annotations

import datetime
from pathlib import Path

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions
from twisted.web.client import BrowserLikePolicyForHTTPS
from zope.interface import implementer


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(folder: Path) -> dict[str, str]:
    """A CA and two leaves (RSA, ECDSA) for localhost, written as PEM files in `folder`; keys exist only for this
    run. Keys of the dict: ca, rsa_cert, rsa_key, ec_cert, ec_key."""
    folder.mkdir(parents=True, exist_ok=True)
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
