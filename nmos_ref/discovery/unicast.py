"""Unicast DNS-SD browsing through `twisted.names`: PTR, then SRV, TXT, A and AAAA records (RFC 6763 §4, §12).

A browse asks for `<type>.<domain>` PTR records, then for each instance its SRV and TXT records and the addresses of
the SRV target, and asks again when the answers' TTL runs out (at most every minute), or soon (1 s, doubling to 15 s)
while there is no answer: zone records may be provisioned at any time, and the AMWA tool provisions them only once
its tests start. A failed round keeps what the last one found (the DNS server may be briefly unreachable); only an
answer that lacks an instance removes it.

Unicast DNS-SD cannot advertise: IS-04's unicast records are zone records that an operator provisions (or sends as
RFC 2136 updates), so `advertise` and friends fail with `Unsupported`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import DNSNameError

from nmos_ref.discovery import (
    RESOLV_CONF,
    Advert,
    Found,
    Instance,
    Unsupported,
    parse_txt,
)

log = Logger()

QUERY_TIMEOUT = (1, 2)  # seconds: a query is sent again after 1 s, and given up after 3 s in all
REFRESH_MIN, REFRESH_MAX = 5.0, 60.0  # bounds on asking again after answers (their TTL)
RETRY_MIN, RETRY_MAX = 1.0, 15.0  # asking again while there is no answer: 1 s, doubling up to 15 s


def parse_resolv_conf(text: str) -> tuple[list[tuple[str, int]], str | None]:
    """The name servers and the search domain of a resolv.conf(5): the first domain of the last `search` or
    `domain` line (they are exclusive, and the last one wins)."""
    servers: list[tuple[str, int]] = []
    domain = None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            servers.append((words[1], dns.PORT))
        elif words[0] in ("search", "domain"):
            domain = words[1].rstrip(".") or None
    return servers, domain


def system_dns(path: str = RESOLV_CONF) -> tuple[list[tuple[str, int]], str | None]:
    """The host's name servers and search domain, from resolv.conf (none if it cannot be read)."""
    try:
        return parse_resolv_conf(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return [], None


def parse_server(text: str) -> tuple[str, int]:
    """"192.0.2.53", "192.0.2.53:5353", "::1" or "[::1]:5353" as (address, port); ValueError otherwise."""
    host, port = text, dns.PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not an address[:port]")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port


class QuietResolver(client.Resolver):
    """`twisted.names`' resolver with one UDP port for all its queries, as long as it is used, instead of one per
    query: Twisted logs every UDP port opened and closed, which would be four lines per DNS question. (Queries are
    still told apart by their random ids.)"""

    _shared: dict[str, dns.DNSDatagramProtocol]
    closed = False

    def _query(self, *args: Any) -> Deferred[dns.Message]:
        if self.closed:  # (also what ends the resends of questions that were out when it closed)
            return fail(ConnectionError("the DNS-SD resolver is closed"))
        family = "::" if ":" in args[0][0] else ""
        shared = self.__dict__.setdefault("_shared", {})
        protocol = shared.get(family)
        if protocol is None or protocol.transport is None:
            protocol = dns.DNSDatagramProtocol(self, reactor=self._reactor)
            protocol.noisy = False
            self._reactor.listenUDP(0, protocol, interface=family)
            shared[family] = protocol
        return protocol.query(*args)

    def close(self) -> None:
        """Stop listening, until `reopen`."""
        self.closed = True
        for protocol in self.__dict__.pop("_shared", {}).values():
            if protocol.transport is not None:
                protocol.transport.stopListening()

    def reopen(self) -> None:
        self.closed = False


def make_resolver(servers: Sequence[tuple[str, int]], reactor: Any) -> QuietResolver:
    """A `twisted.names` resolver asking exactly these servers, with short time limits and no cache."""
    return QuietResolver(servers=list(servers), timeout=QUERY_TIMEOUT, reactor=reactor)


class UnicastDiscovery:
    """Browses for services in one DNS domain through a `twisted.names` resolver."""

    via = "unicast"

    def __init__(self, resolver: Any, domain: str, clock: IReactorTime) -> None:
        self.resolver = resolver
        self.domain = domain.strip(".")
        self.clock = clock
        self.browsing: list[_Browsing] = []

    def advertise(self, advert: Advert) -> Deferred[None]:
        return fail(Unsupported("unicast DNS-SD records are provisioned in the zone, not advertised"))

    def update_txt(self, advert: Advert, txt: Mapping[str, str]) -> Deferred[None]:
        return self.advertise(advert)

    def withdraw(self, advert: Advert) -> Deferred[None]:
        return self.advertise(advert)

    def browse(self, service_type: str, added: Found, updated: Found, removed: Found) -> _Browsing:
        browsing = _Browsing(self, service_type, added, updated, removed)
        if not self.browsing and hasattr(self.resolver, "reopen"):
            self.resolver.reopen()
        self.browsing.append(browsing)
        browsing.start()
        return browsing

    def _stopped(self, browsing: _Browsing) -> None:
        if browsing in self.browsing:
            self.browsing.remove(browsing)
        if not self.browsing and hasattr(self.resolver, "close"):
            self.resolver.close()


class _Browsing:
    def __init__(self, owner: UnicastDiscovery, service_type: str, added: Found, updated: Found,
                 removed: Found) -> None:
        self.owner = owner
        self.service_type = service_type
        self.name = f"{service_type}.{owner.domain}"
        self.callbacks = (added, updated, removed)
        self.ready: Deferred[None] = Deferred()
        self.known: dict[str, Instance] = {}  # by full name, lower case
        self.stopped = False
        self._retry = RETRY_MIN
        self._next: IDelayedCall | None = None
        self._round: Deferred[None] | None = None

    def start(self) -> None:
        self._next = None
        self._round = ensureDeferred(self._ask())
        self._round.addErrback(lambda failure: log.failure("Unicast DNS-SD: browsing {name} failed", failure,
                                                           name=self.name))

    def stop(self) -> None:
        self.stopped = True
        if self._next is not None and self._next.active():
            self._next.cancel()
        # A round still out is left to end by itself (within the query time limit), its answers ignored: twisted.names
        # cannot cancel a question without its time limit failing it once more later.
        self.owner._stopped(self)

    def _again(self, delay: float) -> None:
        if not self.stopped:
            self._next = self.owner.clock.callLater(delay, self.start)

    async def _ask(self) -> None:
        resolver = self.owner.resolver
        try:
            answers, _, _ = await resolver.lookupPointer(self.name)
        except DNSNameError:
            answers = []  # NXDOMAIN: authoritatively nothing
        except Exception as exc:
            log.debug("Unicast DNS-SD: no answer for {name} PTR ({reason})", name=self.name, reason=_reason(exc))
            self._no_answer()
            return
        names = {str(rr.payload.name).rstrip("."): rr.ttl for rr in answers if rr.type == dns.PTR}
        found: dict[str, Instance] = {}
        results = await DeferredList([ensureDeferred(self._resolve(full)) for full in names], consumeErrors=True)
        for full, (ok, result) in zip(names, results):
            if ok and result is not None:
                found[full.lower()] = result
            elif full.lower() in self.known:
                found[full.lower()] = self.known[full.lower()]  # keep it until an answer says it is gone
            if not ok:
                log.info("Unicast DNS-SD: cannot resolve {name}: {reason}", name=full,
                         reason=_reason(result.value))
        if found:
            self._retry = RETRY_MIN
            self._again(min(max(min(names.values()), REFRESH_MIN), REFRESH_MAX))
            self._update(found)
            self._first_round_done()
        else:
            self._update(found)
            self._no_answer()

    def _no_answer(self) -> None:
        delay, self._retry = self._retry, min(self._retry * 2, RETRY_MAX)
        self._again(delay)
        self._first_round_done()

    def _first_round_done(self) -> None:
        if not self.ready.called:
            self.ready.callback(None)

    async def _resolve(self, full: str) -> Instance | None:
        resolver = self.owner.resolver
        srv_d = resolver.lookupService(full)
        txt_d = resolver.lookupText(full)
        txt_d.addErrback(lambda failure: ([], [], []))  # DNS-SD wants one, but an instance can do without
        srv_answers, _, _ = await srv_d
        srv = next((rr.payload for rr in srv_answers if rr.type == dns.SRV), None)
        if srv is None:
            log.info("Unicast DNS-SD: {name} has no SRV record", name=full)
            return None
        txt_answers, _, _ = await txt_d
        strings = [s for rr in txt_answers if rr.type == dns.TXT for s in rr.payload.data]
        host = str(srv.target).rstrip(".")
        addresses: list[str] = []
        for lookup, kind in ((resolver.lookupAddress, dns.A), (resolver.lookupIPV6Address, dns.AAAA)):
            try:
                records, _, _ = await lookup(host)
            except Exception:
                continue
            for rr in records:
                if rr.type == kind == dns.A:
                    addresses.append(rr.payload.dottedQuad())
                elif rr.type == kind == dns.AAAA:
                    addresses.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
        suffix = f".{self.service_type}.{self.owner.domain}"
        label = full[:-len(suffix)] if full.lower().endswith(suffix.lower()) else full
        return Instance(self.service_type, label, self.owner.domain, host, srv.port, tuple(addresses),
                        parse_txt(strings), "unicast", srv.priority, srv.weight)

    def _update(self, found: dict[str, Instance]) -> None:
        if self.stopped:
            return
        added, updated, removed = self.callbacks
        old, self.known = self.known, found
        for key, instance in found.items():
            if key not in old:
                added(instance)
            elif old[key] != instance:
                updated(instance)
        for key, instance in old.items():
            if key not in found:
                removed(instance)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
