"""OCSP stapling (BCP-003-01 "Certificate Management"; RFC 6066 status_request, RFC 6960): the test CA's leaves name
an OCSP responder made per test; the stapler fetches, checks and refreshes each certificate's response on an
injected Clock, and a TLS handshake over loopback gets the response of the certificate it was served."""

from __future__ import annotations

import atexit
import datetime
import functools
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from OpenSSL import SSL
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from nmos_ref.web.root import root_resource
from nmos_ref.web.server import make_site
from nmos_ref.tls.ocsp import OCSPStapler, ocsp_url
from nmos_ref.tls.server import listen_service, server_context
from tests.support.cases import SocketTest, UnitTest, cases
from tests.support.node import Events
from tests.support.samples import port_of
from tests.support.pki import Pinned, Responder, delegated_responder, make_pki, pairs

START = 1_800_000_000.0  # the Clock's (and so the responder's) time when a test starts
URL = "http://ocsp.invalid:5008/"  # StubTreq routes every URL to the responder; nothing is resolved


class Top(random.Random):
    """Backoff always at the top of its range: 60 s, 120 s, 240 s ... 3600 s."""

    def uniform(self, a: float, b: float) -> float:
        return b


def leaf(chain: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(Path(chain).read_bytes())[0]


def serial_of(der: bytes) -> int:
    return ocsp.load_der_ocsp_response(der).serial_number


@functools.cache
def shared_pki() -> dict[str, str]:
    """One CA and its leaves for the tests that only read them (made once per process: key generation is slow)."""
    folder = tempfile.mkdtemp(prefix="nmos-ref-ocsp-pki-")
    atexit.register(shutil.rmtree, folder, True)
    return make_pki(Path(folder), ocsp_url=URL)


class Setup:
    """A stapler for the RSA and ECDSA chains, its responder behind StubTreq (no sockets), all on one Clock."""

    def __init__(self, pki: dict[str, str], validity: float | None = 7200.0, rng: random.Random | None = None):
        self.clock = Clock()
        self.clock.advance(START)
        self.responder = Responder(pki, self.clock, validity)
        self.stapler = OCSPStapler(StubTreq(self.responder), self.clock, [pki["rsa_cert"], pki["ec_cert"]],
                                   rng=rng or Top())
        self.rsa, self.ec = leaf(pki["rsa_cert"]), leaf(pki["ec_cert"])

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def stamp(self, der: bytes) -> float:
        """The response's thisUpdate, as clock seconds."""
        return ocsp.load_der_ocsp_response(der).this_update_utc.timestamp()


def other_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def signed_by_a_stranger(responder: Responder, pki: dict[str, str]) -> None:
    responder.signer = delegated_responder(pki, issuer_key=other_key())  # and not even included


def delegated_not_issued_by_the_ca(responder: Responder, pki: dict[str, str]) -> None:
    cert, key = delegated_responder(pki, issuer_key=other_key())
    responder.signer, responder.included = (cert, key), [cert]


def delegated_without_ocsp_signing(responder: Responder, pki: dict[str, str]) -> None:
    cert, key = delegated_responder(pki, usage=False)
    responder.signer, responder.included = (cert, key), [cert]


def unknown(responder: Responder, pki: dict[str, str]) -> None:
    for chain in (pki["rsa_cert"], pki["ec_cert"]):
        responder.statuses[leaf(chain).serial_number] = ocsp.OCSPCertStatus.UNKNOWN


def already_expired(responder: Responder, pki: dict[str, str]) -> None:
    responder.validity = -1.0


class Garbage(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        return b"<html>hello</html>"


def not_found(pki: dict[str, str], clock: Clock) -> Resource:
    responder = Responder(pki, clock)
    responder.code = 404
    return responder


class Served:
    """What the OCSP callback sees of a connection: the certificate it uses."""

    def __init__(self, certificate: x509.Certificate | None = None, broken: bool = False) -> None:
        self.certificate, self.broken = certificate, broken

    def get_certificate(self, as_cryptography: bool = False) -> x509.Certificate | None:
        if self.broken:
            raise SSL.Error("gone")
        return self.certificate


class Silent(Responder):
    """A responder that never answers."""

    def render_POST(self, request: Any) -> Any:
        self.content_types.append(request.getHeader(b"content-type").decode())
        return NOT_DONE_YET


class OCSPStaplerTests(UnitTest):
    """The stapler on a Clock, its responders behind StubTreq."""

    def setUp(self) -> None:
        self.pki = shared_pki()

    def test_fetches_checks_and_staples_each_certificate(self, pki: dict[str, str]) -> None:
        setup = Setup(pki)
        assert [entry.url for entry in setup.stapler.certificates] == [URL, URL]
        with Events("nmos_ref.tls.ocsp") as events:
            setup.stapler.startService()
        assert setup.responder.content_types == ["application/ocsp-request"] * 2
        assert {asked.serial_number for asked in setup.responder.asked} == {setup.rsa.serial_number,
                                                                            setup.ec.serial_number}
        assert all(asked.hash_algorithm.name == "sha1" for asked in setup.responder.asked)
        assert serial_of(setup.stapler.stapled(setup.rsa)) == setup.rsa.serial_number
        assert serial_of(setup.stapler.stapled(setup.ec)) == setup.ec.serial_number
        texts = events.texts()
        assert len(texts) == 2 and all("is GOOD according to http://ocsp.invalid:5008/" in text for text in texts)
        assert "asking again in 3600 s" in texts[0]
        setup.stapler.stopService()

    def test_refreshes_half_way_to_next_update(self, pki: dict[str, str]) -> None:
        setup = Setup(pki, validity=7200.0)
        setup.stapler.startService()
        first = setup.stapler.stapled(setup.rsa)
        setup.advance(3599)
        assert len(setup.responder.asked) == 2 and setup.stapler.stapled(setup.rsa) == first
        setup.advance(1)
        assert len(setup.responder.asked) == 4
        second = setup.stapler.stapled(setup.rsa)
        assert setup.stamp(second) == START + 3600 and setup.stamp(first) == START
        setup.advance(3600)  # half-way to the new nextUpdate (START + 3600 + 7200)
        assert len(setup.responder.asked) == 6 and setup.stamp(setup.stapler.stapled(setup.rsa)) == START + 7200
        setup.stapler.stopService()

    def test_without_next_update_refreshes_hourly(self, pki: dict[str, str]) -> None:
        setup = Setup(pki, validity=None)
        setup.stapler.startService()
        assert ocsp.load_der_ocsp_response(setup.stapler.stapled(setup.rsa)).next_update_utc is None
        setup.advance(3599)
        assert len(setup.responder.asked) == 2
        setup.advance(1)
        assert len(setup.responder.asked) == 4 and setup.stamp(setup.stapler.stapled(setup.ec)) == START + 3600
        setup.stapler.stopService()

    def test_responder_down_backs_off_keeps_the_valid_response_then_drops_it(self, pki: dict[str, str]) -> None:
        setup = Setup(pki, validity=7200.0)
        setup.stapler.startService()
        held = setup.stapler.stapled(setup.rsa)
        setup.responder.code = 503
        with Events("nmos_ref.tls.ocsp") as events:
            setup.advance(3600)  # the refresh fails: 1 min to the next try
            assert setup.stapler.stapled(setup.rsa) == held
            tries = [len(setup.responder.content_types)]
            for wait in (60, 120, 240, 480):  # 1 min doubling
                setup.advance(wait - 1)
                tries.append(len(setup.responder.content_types))
                setup.advance(1)
                tries.append(len(setup.responder.content_types))
            assert tries == [4, 4, 6, 6, 8, 8, 10, 10, 12]
            assert setup.stapler.stapled(setup.rsa) == held  # t = 3600 + 900: still before nextUpdate
            warnings = [text for text in events.texts() if "no usable status" in text]
            assert len(warnings) == 10  # one per fetch: 5 rounds of 2 certificates
            assert "answered HTTP 503" in warnings[0] and "still stapling the response held, until" in warnings[0]
            assert "trying again in 60 s" in warnings[0] and "trying again in 960 s" in warnings[-1]
            setup.advance(960)  # (Clock.advance moves time first, then runs what is due: one step per try)
            setup.advance(7200 - 5460 - 1)
            assert setup.stapler.stapled(setup.rsa) == held
            setup.advance(1)  # nextUpdate passed: dropped, though the next try is still to come
            assert setup.stapler.stapled(setup.rsa) == b"" and setup.stapler.stapled(setup.ec) == b""
            texts = events.texts()
            assert len(texts) == 14  # the 5460 s round (still held, next try at 7380 s), then the two drops
            assert all("still stapling" in text for text in texts[10:12])
            assert all("reached its end of validity" in text for text in texts[12:])
        setup.responder.code = 200
        setup.advance(180)  # the try at 7380 s finds it back
        assert serial_of(setup.stapler.stapled(setup.rsa)) == setup.rsa.serial_number
        assert [entry.failures for entry in setup.stapler.certificates] == [0, 0]
        setup.stapler.stopService()

    def test_backoff_is_randomised_and_capped_at_an_hour(self, pki: dict[str, str]) -> None:
        clock = Clock()
        responder = Responder(pki, clock)
        responder.code = 500
        stapler = OCSPStapler(StubTreq(responder), clock, [pki["rsa_cert"]], rng=random.Random(7))
        stapler.startService()
        delays = []
        for _ in range(10):
            [retry] = clock.getDelayedCalls()
            delays.append(retry.getTime() - clock.seconds())
            clock.advance(delays[-1])
        assert len(responder.content_types) == 11
        ceilings = [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600, 3600]
        assert all(max(60, ceiling / 2) <= delay <= ceiling for delay, ceiling in zip(delays, ceilings))
        assert delays[0] == 60 and len({round(delay, 6) for delay in delays[6:]}) == 4  # drawn, not fixed
        assert stapler.stapled(leaf(pki["rsa_cert"])) == b""
        stapler.stopService()
        assert clock.getDelayedCalls() == []

    def test_revoked_is_never_stapled(self, pki: dict[str, str]) -> None:
        setup = Setup(pki)
        setup.stapler.startService()
        assert setup.stapler.stapled(setup.rsa)
        setup.responder.statuses[setup.rsa.serial_number] = ocsp.OCSPCertStatus.REVOKED
        with Events("nmos_ref.tls.ocsp") as events:
            setup.advance(3600)
        assert setup.stapler.stapled(setup.rsa) == b""  # the GOOD one held is dropped at once
        assert serial_of(setup.stapler.stapled(setup.ec)) == setup.ec.serial_number
        [(event, text)] = [(event, text) for event, text in zip(events.events, events.texts()) if "REVOKED" in text]
        assert event["log_level"].name == "warn"
        assert "the certificate is REVOKED since" in text and "key_compromise" in text
        assert f"serial {setup.rsa.serial_number:x}" in text and "nothing is stapled for it" in text
        setup.stapler.stopService()

    @cases("spoil, why", [
        (signed_by_a_stranger, "signed neither by the issuer nor by a responder it authorised"),
        (delegated_not_issued_by_the_ca, "signed neither by the issuer nor by a responder it authorised"),
        (delegated_without_ocsp_signing, "signed neither by the issuer nor by a responder it authorised"),
        (unknown, "the certificate's status is UNKNOWN"),
        (already_expired, "it expired at its nextUpdate"),
    ], ids=["signed_by_a_stranger", "delegated_not_issued_by_the_ca", "delegated_without_ocsp_signing", "unknown",
            "already_expired"])
    def test_bad_responses_are_not_stapled(self, pki: dict[str, str], spoil: Any, why: str) -> None:
        setup = Setup(pki)
        spoil(setup.responder, pki)
        with Events("nmos_ref.tls.ocsp") as events:
            setup.stapler.startService()
        assert setup.stapler.stapled(setup.rsa) == b"" and setup.stapler.stapled(setup.ec) == b""
        texts = events.texts()
        assert len(texts) == 2 and all(why in text and "nothing is stapled for it" in text for text in texts)
        assert all(event["log_level"].name == "warn" for event in events.events)
        setup.stapler.stopService()

    def test_a_delegated_responder_the_ca_authorised_is_accepted(self, pki: dict[str, str]) -> None:
        setup = Setup(pki)
        cert, key = delegated_responder(pki)
        setup.responder.signer, setup.responder.included = (cert, key), [cert]
        setup.stapler.startService()
        assert serial_of(setup.stapler.stapled(setup.rsa)) == setup.rsa.serial_number
        setup.stapler.stopService()

    @cases("server, why", [(not_found, "answered HTTP 404"),
                           (lambda pki, clock: Garbage(), "the answer is not an OCSP response")],
           ids=["not_found", "garbage"])
    def test_answers_that_are_not_ocsp_responses(self, pki: dict[str, str], server: Any, why: str) -> None:
        clock = Clock()
        stapler = OCSPStapler(StubTreq(server(pki, clock)), clock, [pki["ec_cert"]], rng=Top())
        with Events("nmos_ref.tls.ocsp") as events:
            stapler.startService()
        [text] = events.texts()
        assert why in text and "trying again in 60 s" in text
        assert stapler.stapled(leaf(pki["ec_cert"])) == b""
        stapler.stopService()
        assert clock.getDelayedCalls() == []

    def test_certificates_without_a_responder_are_left_alone(self, tmp_path: Path) -> None:
        plain = make_pki(tmp_path / "plain")
        clock = Clock()
        responder = Responder(plain, clock)
        with Events("nmos_ref.tls.ocsp") as events:
            stapler = OCSPStapler(StubTreq(responder), clock, [plain["rsa_cert"], plain["ec_cert"]])
            stapler.startService()
        assert ocsp_url(leaf(plain["rsa_cert"])) is None
        assert stapler.certificates == [] and responder.content_types == [] and clock.getDelayedCalls() == []
        assert stapler.stapled(leaf(plain["rsa_cert"])) == b""
        texts = events.texts()
        assert len(texts) == 2 and all("names no OCSP responder" in text for text in texts)
        assert all(event["log_level"].name == "info" for event in events.events)
        stapler.stopService()

    def test_a_chain_without_its_issuer_is_not_stapled(self, pki: dict[str, str], tmp_path: Path) -> None:
        alone = tmp_path / "leaf-only.pem"
        text = Path(pki["rsa_cert"]).read_text()
        alone.write_text(text[:text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")])
        clock = Clock()
        with Events("nmos_ref.tls.ocsp") as events:
            stapler = OCSPStapler(StubTreq(Responder(pki, clock)), clock, [str(alone)])
        assert stapler.certificates == []
        [warning] = events.texts()
        assert "is not its issuer" in warning and str(alone) in warning

    def test_a_chain_added_twice_is_fetched_once(self, pki: dict[str, str]) -> None:
        setup = Setup(pki)
        assert setup.stapler.add(pki["rsa_cert"]) is setup.stapler.certificates[0]
        server_context([(pki["rsa_cert"], pki["rsa_key"]), (pki["ec_cert"], pki["ec_key"])], stapler=setup.stapler)
        setup.stapler.startService()
        assert len(setup.stapler.certificates) == 2 and len(setup.responder.asked) == 2
        setup.stapler.stopService()

    def test_the_callback_picks_by_certificate_and_never_raises(self, pki: dict[str, str], tmp_path: Path) -> None:
        setup = Setup(pki)
        setup.stapler.startService()
        assert serial_of(setup.stapler.staple(Served(setup.rsa), None)) == setup.rsa.serial_number
        assert serial_of(setup.stapler.staple(Served(setup.ec), None)) == setup.ec.serial_number
        assert setup.stapler.staple(Served(leaf(make_pki(tmp_path / "other")["ec_cert"])), None) == b""
        assert setup.stapler.staple(Served(None), None) == b""
        with Events("nmos_ref.tls.ocsp") as events:
            assert setup.stapler.staple(Served(broken=True), None) == b""
        assert "stapling nothing" in events.texts()[0]
        # logged (a failure under trial unless flushed), not raised
        assert [failure.value.args for failure in self.flushLoggedErrors(SSL.Error)] == [("gone",)]
        setup.stapler.stopService()

    def test_stop_leaves_nothing_behind(self, pki: dict[str, str]) -> None:
        setup = Setup(pki)
        setup.stapler.startService()
        setup.responder.code = 503
        setup.advance(3600)  # both failing now: a retry and an expiry timer each
        assert len(setup.clock.getDelayedCalls()) == 4
        with Events("nmos_ref.tls.ocsp") as events:
            setup.stapler.stopService()
        assert setup.clock.getDelayedCalls() == [] and events.texts() == []

        clock = Clock()
        stapler = OCSPStapler(StubTreq(Silent(pki, clock)), clock, [pki["rsa_cert"]])
        stapler.startService()
        assert [entry.pending is not None for entry in stapler.certificates] == [True]
        assert len(clock.getDelayedCalls()) == 1  # the request's time limit
        with Events("nmos_ref.tls.ocsp") as events:
            stapler.stopService()
        assert clock.getDelayedCalls() == [] and events.texts() == []
        assert [entry.pending for entry in stapler.certificates] == [None]

    def test_one_request_at_a_time_per_responder(self, pki: dict[str, str]) -> None:
        """nmos-testing's responder answers the wrong question when asked two at once: the second certificate's
        request waits for the first one's answer (or its time limit)."""
        clock = Clock()
        silent = Silent(pki, clock)
        stapler = OCSPStapler(StubTreq(silent), clock, [pki["rsa_cert"], pki["ec_cert"]], timeout=10.0, rng=Top())
        stapler.startService()
        assert len(silent.content_types) == 1  # the ECDSA certificate's request is queued
        clock.advance(10)  # the first times out; the second goes out
        assert len(silent.content_types) == 2
        stapler.stopService()  # cancels the one out
        assert clock.getDelayedCalls() == [] and [entry.pending for entry in stapler.certificates] == [None, None]

    def test_a_silent_responder_times_out(self, pki: dict[str, str]) -> None:
        clock = Clock()
        stapler = OCSPStapler(StubTreq(Silent(pki, clock)), clock, [pki["rsa_cert"]], timeout=10.0, rng=Top())
        stapler.startService()
        with Events("nmos_ref.tls.ocsp") as events:
            clock.advance(9.9)
            assert events.texts() == [] and len(clock.getDelayedCalls()) == 1
            clock.advance(0.1)
        [text] = events.texts()
        assert "no usable status" in text and "trying again in 60 s" in text
        assert [entry.pending for entry in stapler.certificates] == [None]
        [retry] = clock.getDelayedCalls()
        assert retry.getTime() == 10 + 60
        stapler.stopService()
        assert clock.getDelayedCalls() == []


class Late(Resource):
    """Hands requests to a responder set after the port is bound."""

    isLeaf = True
    target: Responder

    def render_POST(self, request: Any) -> bytes:
        return self.target.render_POST(request)


async def handshake(port: int, policy: Pinned) -> None:
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await HTTPClient(Agent(reactor, contextFactory=policy, pool=pool)).get(
            f"https://localhost:{port}/")
        await response.content()
        assert response.code == 200
    finally:
        await pool.closeCachedConnections()


class StapledHandshakeTests(SocketTest):
    """Over loopback: a real responder, a real listener with both certificates, a pyOpenSSL client asking for
    status."""

    async def setUp(self) -> None:
        clock = Clock()
        clock.advance(START)
        late = Late()  # the port is bound first: the certificates name its URL, and the responder needs the CA
        responder_port = reactor.listenTCP(0, Site(late), interface="127.0.0.1")
        url = f"http://127.0.0.1:{responder_port.getHost().port}/"
        keys = make_pki(self.tmp_path / "pki", ocsp_url=url)
        late.target = Responder(keys, clock)
        pool = HTTPConnectionPool(reactor, persistent=False)
        stapler = OCSPStapler(HTTPClient(Agent(reactor, pool=pool)), clock, pool=pool)
        service = listen_service("ssl:0:interface=127.0.0.1", make_site(root_resource({})), reactor, pairs(keys),
                                 stapler=stapler)
        stapler.startService()
        service.startService()

        async def stop() -> None:
            await service.stopService()
            await stapler.stopService()
            await responder_port.stopListening()
            assert clock.getDelayedCalls() == []

        self.addCleanup(stop)
        await stapler.settled()
        self.stapled_https = keys, stapler, await port_of(service)

    @cases("high, cipher, key_type", [
        (SSL.TLS1_2_VERSION, b"ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
        (SSL.TLS1_2_VERSION, b"ECDHE-ECDSA-AES128-GCM-SHA256", "ec"),
        (SSL.TLS1_3_VERSION, None, None),  # TLS 1.3: the status travels in the Certificate message
    ], ids=["tls1_2_rsa", "tls1_2_ec", "tls1_3"])
    async def test_handshake_gets_the_served_certificates_response(self, stapled_https: Any, high: int,
                                                                   cipher: bytes | None,
                                                                   key_type: str | None) -> None:
        keys, stapler, port = stapled_https
        staples: list[bytes] = []
        policy = Pinned(keys["ca"], SSL.TLS1_2_VERSION, high, cipher, staples=staples)
        await handshake(port, policy)
        served = policy.seen[0].get_peer_certificate(as_cryptography=True)
        if key_type is not None:
            assert isinstance(served.public_key(), rsa.RSAPublicKey if key_type == "rsa" else ec.EllipticCurvePublicKey)
            assert served == leaf(keys[f"{key_type}_cert"])
        assert len(staples) == 1 and staples[0] == stapler.stapled(served) != b""
        response = ocsp.load_der_ocsp_response(staples[0])
        assert response.serial_number == served.serial_number
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert response.this_update_utc == datetime.datetime.fromtimestamp(START, datetime.timezone.utc)

    async def test_handshake_without_a_response_staples_nothing(self, stapled_https: Any) -> None:
        keys, stapler, port = stapled_https
        for entry in stapler.certificates:  # as after a REVOKED answer
            entry.der = b""
        staples: list[bytes] = []
        await handshake(port, Pinned(keys["ca"], SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION,
                                     b"ECDHE-RSA-AES128-GCM-SHA256", staples=staples))
        assert staples == [b""]
