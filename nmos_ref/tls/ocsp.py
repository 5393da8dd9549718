"""OCSP stapling for the TLS listeners: the status of each served certificate fetched from the OCSP responder its
Authority Information Access extension names (RFC 6960), checked, kept fresh, and handed to OpenSSL for every
handshake whose client asks for it (RFC 6066 "status_request"; TLS 1.3 carries it in the Certificate message).

BCP-003-01 "Certificate Management: Certification Authority": "The CA SHOULD support OCSP requests as per RFC 6960
and OCSP stapling ... so that Clients can check whether certificates are compromised", and "Client Behaviour":
"Client SHOULD use OCSP Stapling to identify revoked certificates." The AMWA testing tool (testssl.sh) reports a
server that staples nothing as Not Implemented.

A response is stapled only while it is good: SUCCESSFUL, about this certificate, GOOD, signed by the issuer (or by
a responder certificate the issuer delegated OCSP signing to), and current. Without an OCSP URL, or without the
issuer after the leaf in the chain file, nothing is fetched and nothing stapled.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrs import define, frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, SignatureAlgorithmOID
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from nmos_ref.config import ConfigError
from nmos_ref.web.backoff import Backoff
from nmos_ref.web.client import Reply, Unreachable, exchange

log = Logger()

FETCH_TIMEOUT = 10.0  # seconds for one OCSP request, connecting included
REFRESH_WITHOUT_NEXT_UPDATE = 3600.0  # RFC 6960 §4.2.2.1: no nextUpdate means "newer information all the time"
MIN_REFRESH = 60.0  # never ask one responder more often than this, whatever its nextUpdate says
# How long a response without nextUpdate is stapled: clients judge such a response by its age, and a day is what
# common ones (mozilla::pkix) accept.
MAX_AGE_WITHOUT_NEXT_UPDATE = 86400.0
CLOCK_SKEW = 300.0  # seconds a responder's thisUpdate may be ahead of our clock
RETRY = Backoff(minimum=60.0, factor=2.0, maximum=3600.0)  # 1 min doubling to 1 h, randomised (never above)


class Rejected(Exception):
    """An OCSP answer that must not be stapled; the message says why."""


class Revoked(Rejected):
    """The responder says the certificate is revoked (or the answer is otherwise authoritative that it is bad)."""


@frozen
class Good:
    """A checked response saying GOOD: its DER (what is stapled) and its validity."""

    der: bytes
    this_update: datetime.datetime
    next_update: datetime.datetime | None


def ocsp_url(certificate: x509.Certificate) -> str | None:
    """The first OCSP responder URL of the certificate's Authority Information Access extension, if any."""
    try:
        access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        location = description.access_location
        if (description.access_method == AuthorityInformationAccessOID.OCSP
                and isinstance(location, x509.UniformResourceIdentifier)):
            return str(location.value)
    return None


def ocsp_request(leaf: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPRequest:
    """The request for one certificate: a SHA-1 CertID (RFC 5019 §2.1.1: what lightweight responders expect) and no
    nonce, since one response is stapled for every client (RFC 5019 §2.1.2)."""
    return ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()


def _utc(single: Any, name: str) -> datetime.datetime | None:
    """`this_update_utc` and friends (cryptography 43+), else the naive UTC value made aware."""
    if hasattr(single, f"{name}_utc"):
        return getattr(single, f"{name}_utc")  # type: ignore[no-any-return]
    value = getattr(single, name)
    return value.replace(tzinfo=datetime.timezone.utc) if value is not None else None


def _signed_by(response: ocsp.OCSPResponse, key: Any) -> bool:
    data, signature = response.tbs_response_bytes, response.signature
    try:
        algorithm = response.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            if response.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
                key.verify(signature, data, padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO), algorithm)
            else:
                key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _delegated(candidate: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime) -> bool:
    """RFC 6960 §4.2.2.2: a responder certificate issued directly by the CA that issued the certificate in question,
    with id-kp-OCSPSigning in its extended key usage, and valid now."""
    try:
        candidate.verify_directly_issued_by(issuer)
        usage = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm, x509.ExtensionNotFound):
        return False
    return (ExtendedKeyUsageOID.OCSP_SIGNING in usage
            and candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc)


def check_response(der: bytes, request: ocsp.OCSPRequest, leaf: x509.Certificate, issuer: x509.Certificate,
                   now: datetime.datetime) -> Good:
    """The response if it may be stapled for `leaf`; Revoked when it is signed and says REVOKED, Rejected (saying
    why) for anything else that is not a good, current, properly signed answer about this certificate."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise Rejected(f"the answer is not an OCSP response ({exc})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise Rejected(f"the responder answered {response.response_status.name}")
    singles = list(getattr(response, "responses", [response]))  # cryptography < 43: the single-response view
    single = next((item for item in singles
                   if item.serial_number == request.serial_number
                   and item.issuer_name_hash == request.issuer_name_hash
                   and item.issuer_key_hash == request.issuer_key_hash
                   and item.hash_algorithm.name == request.hash_algorithm.name), None)
    if single is None:
        raise Rejected(f"the response is not about serial {leaf.serial_number:x} of this issuer")
    # Signed by the issuer itself, or by a delegated responder certificate included in the response.
    if not _signed_by(response, issuer.public_key()):
        if not any(_delegated(candidate, issuer, now) and _signed_by(response, candidate.public_key())
                   for candidate in response.certificates):
            raise Rejected("the response is signed neither by the issuer nor by a responder it authorised")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        when = _utc(single, "revocation_time")
        reason = single.revocation_reason.name if single.revocation_reason is not None else "no reason given"
        raise Revoked(f"the certificate is REVOKED since {when.isoformat() if when else '?'} ({reason})")
    if status != ocsp.OCSPCertStatus.GOOD:
        raise Rejected(f"the responder says the certificate's status is {status.name}")
    this_update, next_update = _utc(single, "this_update"), _utc(single, "next_update")
    if this_update is None:  # mandatory in a SingleResponse; the parser should never let one through without
        raise Rejected("it has no thisUpdate")
    if this_update > now + datetime.timedelta(seconds=CLOCK_SKEW):
        raise Rejected(f"its thisUpdate {this_update.isoformat()} is in the future")
    if next_update is not None and next_update <= now:
        raise Rejected(f"it expired at its nextUpdate {next_update.isoformat()}")
    if next_update is None and this_update + datetime.timedelta(seconds=MAX_AGE_WITHOUT_NEXT_UPDATE) <= now:
        raise Rejected(f"it has no nextUpdate and its thisUpdate {this_update.isoformat()} is over a day old")
    return Good(der, this_update, next_update)


@define(eq=False)
class Stapled:
    """One served certificate: where its status comes from, and the checked response stapled for it, if any."""

    chain: str
    leaf: x509.Certificate
    issuer: x509.Certificate
    url: str
    request: ocsp.OCSPRequest
    der: bytes = b""  # the response stapled now
    expires: float | None = None  # clock seconds at which `der` stops being stapled
    failures: int = 0  # fetches failed in a row
    refresh: IDelayedCall | None = None
    expiry: IDelayedCall | None = None
    pending: Deferred[Any] | None = None  # the fetch under way

    @property
    def name(self) -> str:
        return f"{self.leaf.subject.rfc4514_string()} (serial {self.leaf.serial_number:x}, {self.chain})"


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()


class OCSPStapler(Service):
    """Keeps a good OCSP response for every served certificate that names a responder, and staples it.

    Refreshes half-way to the response's nextUpdate (hourly without one); a failed fetch is retried with randomised
    backoff (1 min doubling to 1 h) while the response held stays stapled until its nextUpdate; a REVOKED answer
    stops stapling at once. `server_context(..., stapler=...)` adds its chains and installs `staple` as the
    context's OCSP callback."""

    def __init__(self, http: Any, clock: IReactorTime, chains: Sequence[str] = (), *,
                 timeout: float = FETCH_TIMEOUT, rng: random.Random | None = None,
                 pool: HTTPConnectionPool | None = None) -> None:
        self.http = http
        self.clock = clock
        self.timeout = timeout
        self.rng = rng or random.Random()
        self.pool = pool  # closed on stop, when the stapler owns its HTTP client
        self._served: dict[bytes, Stapled] = {}  # leaf DER -> its entry
        self._seen: set[bytes] = set()  # leaves already considered (with or without a responder)
        # One request at a time per responder: polite, and some responders (nmos-testing's, which runs
        # `openssl ocsp` on a shared file) answer the wrong question when asked two at once.
        self._responders: dict[str, DeferredLock] = {}
        for chain in chains:
            self.add(chain)

    @property
    def certificates(self) -> list[Stapled]:
        return list(self._served.values())

    def add(self, chain: str) -> Stapled | None:
        """Staple for the leaf of this chain file (PEM, leaf first, its issuer next) if it names an OCSP responder;
        the first fetch starts at once when the stapler is running. A leaf added twice is fetched once."""
        try:
            certificates = x509.load_pem_x509_certificates(Path(chain).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read the TLS certificate chain {chain}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"{chain} is not a PEM certificate chain: {exc}") from None
        if not certificates:
            raise ConfigError(f"{chain} holds no certificate")
        leaf = certificates[0]
        key = leaf.public_bytes(serialization.Encoding.DER)
        if key in self._seen:
            return self._served.get(key)
        self._seen.add(key)
        subject = leaf.subject.rfc4514_string()
        url = ocsp_url(leaf)
        if url is None:
            log.info("OCSP: {subject} ({chain}) names no OCSP responder (Authority Information Access); nothing "
                     "is stapled for it", subject=subject, chain=chain)
            return None
        issuer = certificates[1] if len(certificates) > 1 else None
        if issuer is None or issuer.subject != leaf.issuer or not self._issued(leaf, issuer):
            log.warn("OCSP: {subject} ({chain}) names the responder {url}, but the certificate after it in the "
                     "file is not its issuer; nothing is stapled for it (put the issuing CA's certificate second)",
                     subject=subject, chain=chain, url=url)
            return None
        entry = Stapled(chain, leaf, issuer, url, ocsp_request(leaf, issuer))
        self._served[key] = entry
        if self.running:
            self._fetch(entry)
        return entry

    @staticmethod
    def _issued(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
        try:
            leaf.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            return False
        return True

    def stapled(self, certificate: x509.Certificate) -> bytes:
        """The DER response stapled for this certificate now (b"" for none)."""
        entry = self._served.get(certificate.public_bytes(serialization.Encoding.DER))
        if entry is None or not entry.der:
            return b""
        if entry.expires is not None and self.clock.seconds() >= entry.expires:
            return b""  # the expiry timer drops it; never staple a stale one meanwhile
        return entry.der

    def staple(self, connection: Any, data: Any = None) -> bytes:
        """pyOpenSSL's OCSP server callback: the response for the certificate this handshake uses (OpenSSL has
        picked it, RSA or ECDSA, before asking), or b"" to staple nothing. Never raises: that would end the
        handshake."""
        try:
            served = connection.get_certificate(as_cryptography=True)
            return self.stapled(served) if served is not None else b""
        except Exception:
            log.failure("OCSP: choosing the response to staple failed; stapling nothing")
            return b""

    def settled(self) -> Deferred[Any]:
        """Fires once no fetch is under way (the ones running now have been answered, or failed)."""
        pending = [entry.pending for entry in self._served.values() if entry.pending is not None]
        return DeferredList(pending) if pending else succeed(None)

    def startService(self) -> None:
        super().startService()
        for entry in self._served.values():
            self._fetch(entry)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        for entry in self._served.values():
            for call in (entry.refresh, entry.expiry):
                if call is not None and call.active():
                    call.cancel()
            entry.refresh = entry.expiry = None
            if entry.pending is not None:
                entry.pending.cancel()
        return self.pool.closeCachedConnections() if self.pool is not None else None

    def _fetch(self, entry: Stapled) -> None:
        entry.refresh = None
        request = entry.request.public_bytes(serialization.Encoding.DER)
        lock = self._responders.setdefault(entry.url, DeferredLock())
        fetch = lock.run(exchange, self.http, self.clock, "POST", entry.url, timeout=self.timeout, data=request,
                         content_type="application/ocsp-request", accept="application/ocsp-response")
        entry.pending = fetch  # cleared by _answered, which may run at once
        fetch.addBoth(self._answered, entry)

    def _answered(self, result: Reply | Failure, entry: Stapled) -> None:
        entry.pending = None
        if not self.running:  # stopped meanwhile (the fetch was cancelled): nothing to log or schedule
            return
        now = self.clock.seconds()
        if isinstance(result, Failure):
            if result.check(Unreachable):
                self._failed(entry, str(result.value))
            else:
                self._failed(entry, "an unexpected error", result)
            return
        if result.code != 200:
            self._failed(entry, f"{entry.url} answered HTTP {result.code}")
            return
        moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        try:
            good = check_response(result.body, entry.request, entry.leaf, entry.issuer, moment)
        except Revoked as exc:
            self._revoked(entry, str(exc))
            return
        except Rejected as exc:
            self._failed(entry, str(exc))
            return
        entry.der, entry.failures = good.der, 0
        if good.next_update is not None:
            entry.expires = good.next_update.timestamp()
            delay = max(MIN_REFRESH, (entry.expires - now) / 2)  # half-way to nextUpdate
        else:
            entry.expires = good.this_update.timestamp() + MAX_AGE_WITHOUT_NEXT_UPDATE
            delay = REFRESH_WITHOUT_NEXT_UPDATE
        self._expire_at(entry, entry.expires)
        self._schedule(entry, delay)
        log.info("OCSP: {name} is GOOD according to {url}; stapling that response until {until}, asking again in "
                 "{delay:.0f} s", name=entry.name, url=entry.url, until=_when(entry.expires), delay=delay)

    def _failed(self, entry: Stapled, why: str, failure: Failure | None = None) -> None:
        delay = RETRY.delay(min(entry.failures, 16), self.rng)
        entry.failures += 1
        self._schedule(entry, delay)
        if entry.der and entry.expires is not None:
            keeping = f"still stapling the response held, until {_when(entry.expires)}"
        else:
            keeping = "nothing is stapled for it"
        text = "OCSP: no usable status for {name} from {url}: {why}; {keeping}; trying again in {delay:.0f} s"
        if failure is not None:
            log.failure(text, failure, name=entry.name, url=entry.url, why=why, keeping=keeping, delay=delay)
        else:
            log.warn(text, name=entry.name, url=entry.url, why=why, keeping=keeping, delay=delay)

    def _revoked(self, entry: Stapled, why: str) -> None:
        entry.der, entry.expires, entry.failures = b"", None, 0
        if entry.expiry is not None and entry.expiry.active():
            entry.expiry.cancel()
        entry.expiry = None
        self._schedule(entry, REFRESH_WITHOUT_NEXT_UPDATE)
        log.warn("OCSP: {name}: {why} according to {url}; nothing is stapled for it (replace the certificate); "
                 "asking again in {delay:.0f} s", name=entry.name, why=why, url=entry.url,
                 delay=REFRESH_WITHOUT_NEXT_UPDATE)

    def _schedule(self, entry: Stapled, delay: float) -> None:
        if entry.refresh is not None and entry.refresh.active():
            entry.refresh.cancel()
        entry.refresh = self.clock.callLater(delay, self._fetch, entry)

    def _expire_at(self, entry: Stapled, when: float) -> None:
        if entry.expiry is not None and entry.expiry.active():
            entry.expiry.cancel()
        entry.expiry = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._expired, entry)

    def _expired(self, entry: Stapled) -> None:
        entry.expiry = None
        if entry.der:
            log.warn("OCSP: the response for {name} reached its end of validity ({until}) before a new one could be "
                     "fetched; nothing is stapled for it until one is", name=entry.name,
                     until=_when(entry.expires) if entry.expires is not None else "?")
        entry.der, entry.expires = b"", None


