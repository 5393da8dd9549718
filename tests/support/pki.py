"""A certificate authority made per test run, and certificates for localhost signed by it (BCP-003-01 tests)."""

from __future__ import annotations

import datetime
from pathlib import Path

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from zope.interface import implementer


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(folder: Path, ocsp_url: str | None = None) -> dict[str, str]:
    """A CA and two leaves (RSA, ECDSA) for localhost, written as PEM files in `folder`; keys exist only for this
    run. Keys of the dict: ca, ca_key, rsa_cert, rsa_key, ec_cert, ec_key. With `ocsp_url`, the leaves' Authority
    Information Access names it as their OCSP responder."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("nmos-ref test CA")).issuer_name(_name("nmos-ref test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files = {"ca": str(folder / "ca.pem"), "ca_key": str(folder / "ca.key")}
    Path(files["ca"]).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(files["ca_key"]).write_bytes(ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for kind, key in (("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      ("ec", ec.generate_private_key(ec.SECP256R1()))):
        builder = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False))
        if ocsp_url is not None:
            builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
        leaf = builder.sign(ca_key, hashes.SHA256())
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

    def __init__(self, ca: str, low: int = SSL.TLS1_2_VERSION, high: int | None = None, ciphers: bytes | None = None,
                 staples: list[bytes] | None = None):
        super().__init__()
        self.ca, self.low, self.high, self.ciphers = ca, low, high, ciphers
        self.staples = staples  # when given: ask for OCSP stapling, and collect what each handshake got (b"": none)
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
                if policy.staples is not None:
                    staples = policy.staples

                    def stapled(_connection: Any, response: bytes, _data: Any) -> bool:
                        staples.append(response)
                        return True
                    context.set_ocsp_client_callback(stapled)
                connection = SSL.Connection(context, None)
                if policy.staples is not None:
                    connection.request_ocsp()
                connection.set_tlsext_host_name(hostname)
                connection.set_connect_state()
                policy.seen.append(connection)
                return connection
        return Creator()


class Responder(Resource):
    """An OCSP responder for the test CA (RFC 6960 over HTTP POST), its answers signed by the CA (or by `signer`)
    and stamped with `clock`'s time: GOOD unless `statuses` says otherwise for a serial; `code` other than 200
    answers that HTTP status instead (the responder is "down")."""

    isLeaf = True

    def __init__(self, pki: dict[str, str], clock: Any, validity: float | None = 7200.0) -> None:
        super().__init__()
        self.ca = x509.load_pem_x509_certificate(Path(pki["ca"]).read_bytes())
        key = serialization.load_pem_private_key(Path(pki["ca_key"]).read_bytes(), None)
        self.signer: tuple[x509.Certificate, Any] = (self.ca, key)
        self.included: list[x509.Certificate] = []  # certificates sent with the response (a delegated responder)
        self.clock = clock
        self.validity = validity  # seconds from thisUpdate to nextUpdate; None: no nextUpdate
        self.statuses: dict[int, ocsp.OCSPCertStatus] = {}
        self.code = 200
        self.asked: list[ocsp.OCSPRequest] = []
        self.content_types: list[str] = []

    def render_POST(self, request: Any) -> bytes:
        self.content_types.append(request.getHeader(b"content-type").decode())
        if self.code != 200:
            request.setResponseCode(self.code)
            return b"down"
        asked = ocsp.load_der_ocsp_request(request.content.read())
        self.asked.append(asked)
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        status = self.statuses.get(asked.serial_number, ocsp.OCSPCertStatus.GOOD)
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        cert, key = self.signer
        answer = (ocsp.OCSPResponseBuilder()
                  .add_response_by_hash(asked.issuer_name_hash, asked.issuer_key_hash, asked.serial_number,
                                        asked.hash_algorithm, status, now,
                                        None if self.validity is None
                                        else now + datetime.timedelta(seconds=self.validity),
                                        now - datetime.timedelta(hours=1) if revoked else None,
                                        x509.ReasonFlags.key_compromise if revoked else None)
                  .responder_id(ocsp.OCSPResponderEncoding.HASH, cert))
        if self.included:
            answer = answer.certificates(self.included)
        request.setHeader(b"content-type", b"application/ocsp-response")
        return answer.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def delegated_responder(pki: dict[str, str], issuer_key: Any = None,
                        usage: bool = True) -> tuple[x509.Certificate, Any]:
    """A responder certificate (with id-kp-OCSPSigning unless `usage` is False) signed by the test CA, or by
    `issuer_key` to make one the CA did not issue, and its key."""
    ca = x509.load_pem_x509_certificate(Path(pki["ca"]).read_bytes())
    ca_key = issuer_key or serialization.load_pem_private_key(Path(pki["ca_key"]).read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name("nmos-ref test OCSP responder")).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=3650))
               .not_valid_after(now + datetime.timedelta(days=3650)))
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=True)
    return builder.sign(ca_key, hashes.SHA256()), key
