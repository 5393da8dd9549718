"""What the registry advertises over mDNS: its Registration and Query APIs, where they really listen.

IS-04 "Discovery - Registered Operation" (v1.3): the Registration API is advertised as `_nmos-register._tcp`, and
"Registration APIs supporting versions v1.2 and below MUST additionally be capable of producing an mDNS
advertisement of type `_nmos-registration._tcp`"; the Query API as `_nmos-query._tcp`. Each with the TXT records
`api_proto`, `api_ver` ("a comma separated list of API versions supported ... in ascending order"), `api_auth` and
`pri` ("Values 0 to 99 correspond to an active NMOS Registration API ... 100+ are reserved for development").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from nmos_ref.discovery import QUERY, REGISTER, REGISTRATION, Advert, Discovery, adverts_for, txt_text
from nmos_ref.model.versions import parse_version, sort_versions

log = Logger()


def registry_types(versions: Sequence[str]) -> list[str]:
    """The service types for a registry serving `versions`."""
    types = []
    if any(parse_version(version) >= (1, 3) for version in versions):
        types.append(REGISTER)
    if any(parse_version(version) <= (1, 2) for version in versions):
        types.append(REGISTRATION)
    return types + [QUERY]


def registry_adverts(listening: Sequence[tuple[str, Any]], versions: Sequence[str], pri: int, authorization: bool,
                     host: str, interfaces: Sequence[str]) -> list[Advert]:
    """Every advert of the registry listening at `listening` ((protocol, address) pairs)."""
    def txt(protocol: str) -> dict[str, str]:
        return {"api_proto": protocol, "api_ver": ",".join(sort_versions(list(versions))),
                "api_auth": "true" if authorization else "false", "pri": str(pri)}
    return [advert for service_type in registry_types(versions)
            for advert in adverts_for(service_type, listening, txt, host, interfaces)]


class RegistryAdvertiser(Service):
    """Advertises the registry once it listens; withdraws the adverts when stopped."""

    def __init__(self, discovery: Discovery, where: Callable[[], Deferred[list[tuple[str, Any]]]],
                 versions: Sequence[str], pri: int, authorization: bool, host: str,
                 interfaces: Sequence[str]) -> None:
        self.discovery = discovery
        self.where = where
        self.versions = list(versions)
        self.pri = pri
        self.authorization = authorization
        self.host = host
        self.interfaces = list(interfaces)
        self.advertised: list[Advert] = []
        self.ready: Deferred[None] = Deferred()  # fires once every advert is out (or failed)

    def startService(self) -> None:
        super().startService()
        if self.pri >= 100:
            log.warn("DNS-SD: advertising pri {pri}: IS-04 reserves 100 and up for development, and Nodes of a live "
                     "system ignore such registries", pri=self.pri)
        self.where().addCallback(self._advertise).addErrback(
            lambda failure: log.failure("DNS-SD: the registry cannot be advertised", failure))

    def _advertise(self, listening: list[tuple[str, Any]]) -> Deferred[Any]:
        if not self.running:
            return succeed(None)
        adverts = registry_adverts(listening, self.versions, self.pri, self.authorization, self.host,
                                   self.interfaces)

        def one(advert: Advert) -> Deferred[None]:
            def done(_: None) -> None:
                self.advertised.append(advert)
                log.info("DNS-SD: advertising {type} {name!r} at {addresses} port {port} ({txt})",
                         type=advert.service_type, name=advert.name, addresses=", ".join(advert.addresses),
                         port=advert.port, txt=txt_text(advert.txt))

            def failed(failure: Any) -> None:
                log.failure("DNS-SD: cannot advertise {type} {name!r}", failure, type=advert.service_type,
                            name=advert.name)
            return self.discovery.advertise(advert).addCallbacks(done, failed)
        return DeferredList([one(advert) for advert in adverts]).addCallback(
            lambda _: self.ready.callback(None) if not self.ready.called else None)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        adverts, self.advertised = self.advertised, []
        return DeferredList([self.discovery.withdraw(advert) for advert in adverts], consumeErrors=True)
