"""DNS-SD for tests: a unicast DNS server on loopback serving a zone the test changes, and a Node whose registration
client and advert use the in-memory discovery fake (on a Clock, with registries on a FakeNetwork)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.names import authority, common, dns, server

from nmos_ref.discovery import NODE, REGISTER, Advert, Instance
from nmos_ref.discovery.browse import UnicastFirst
from nmos_ref.discovery.fake import FakeDnsSd
from nmos_ref.model.versions import ALL_VERSIONS
from nmos_ref.node.advert import NodeAdvertiser
from nmos_ref.node.registry_browser import RegistryBrowser
from nmos_ref.node.registration_client import RegistrationClient
from nmos_ref.web.backoff import Backoff
from tests.support.node import Rig

DOMAIN = "example.test"


# --- a unicast DNS server


class Zone(authority.FileAuthority):
    """An authoritative zone held in memory: `records` maps lower-case names (bytes) to records."""

    def __init__(self, domain: str = DOMAIN) -> None:
        common.ResolverBase.__init__(self)
        self._cache: dict[Any, Any] = {}
        self.domain = domain
        self.soa = (domain.encode(), dns.Record_SOA(mname=b"ns." + domain.encode(), rname=b"admin." + domain.encode(),
                                                    serial=1, refresh=60, retry=60, expire=600, minimum=60, ttl=60))
        self.records: dict[bytes, list[Any]] = {domain.encode(): [self.soa[1]]}

    def loadFile(self, filename: Any) -> None:  # (nothing to load)
        return None

    def add(self, name: str, *records: Any) -> None:
        self.records.setdefault(name.lower().encode(), []).extend(records)

    def remove(self, name: str) -> None:
        self.records.pop(name.lower().encode(), None)

    def service(self, service_type: str, instance: str, port: int, txt: dict[str, str], host: str = "host",
                address: str = "127.0.0.1", ttl: int = 60) -> None:
        """PTR, SRV, TXT and A records of one instance (host under the zone's domain)."""
        full = f"{instance}.{service_type}.{self.domain}"
        target = f"{host}.{self.domain}"
        self.remove(full)
        self.add(f"{service_type}.{self.domain}", dns.Record_PTR(full.encode(), ttl=ttl))
        self.add(full, dns.Record_SRV(0, 0, port, target.encode(), ttl=ttl),
                 dns.Record_TXT(*[f"{key}={value}".encode() for key, value in txt.items()], ttl=ttl))
        if not self.records.get(target.encode()):
            self.add(target, dns.Record_A(address, ttl=ttl))

    def withdraw(self, service_type: str, instance: str) -> None:
        full = f"{instance}.{service_type}.{self.domain}".encode()
        ptr = f"{service_type}.{self.domain}".lower().encode()
        self.records[ptr] = [r for r in self.records.get(ptr, []) if r.name.name.lower() != full.lower()]
        if not self.records[ptr]:
            del self.records[ptr]
        self.remove(full.decode())


def serve_zone(zone: Zone, reactor: Any) -> Any:
    """A DNS server for `zone` on 127.0.0.1 (UDP, a free port); returns the listening port."""
    factory = server.DNSServerFactory(authorities=[zone])
    factory.noisy = False
    protocol = dns.DNSDatagramProtocol(controller=factory)
    protocol.noisy = False
    return reactor.listenUDP(0, protocol, interface="127.0.0.1")


# --- a Node with fake DNS-SD


def registry_advert(host_port: str, pri: int = 0, *, versions: str = "v1.0,v1.1,v1.2,v1.3", proto: str = "http",
                    auth: str = "false", service_type: str = REGISTER, name: str | None = None,
                    **txt: str) -> Advert:
    address, port = host_port.rsplit(":", 1)
    records = {"api_proto": proto, "api_ver": versions, "api_auth": auth, "pri": str(pri), **txt}
    return Advert(service_type, name or f"registry {host_port} {proto} {versions}", int(port), (address,), records)


class DiscoveryRig(Rig):
    """A demo Node that finds its registries by (fake) DNS-SD and advertises itself there; registries named
    "192.0.2.x:port" serve on the FakeNetwork, and `tool` advertises them."""

    def __init__(self, names: Sequence[str] = (), *, shared: Sequence[str] = (),
                 node_versions: Sequence[str] = ALL_VERSIONS, unicast: FakeDnsSd | None = None,
                 peer_to_peer: bool = True, max_pri: int = 99, seed: int = 1) -> None:
        super().__init__(names, shared=shared, node_versions=node_versions, candidates=[], seed=seed)
        self.mdns = FakeDnsSd()
        self.tool = self.mdns.endpoint("tool")
        self.node_mdns = self.mdns.endpoint("node-1")
        self.unicast = unicast
        browser = UnicastFirst(unicast.endpoint() if unicast is not None else None, self.node_mdns)
        self.found = RegistryBrowser(browser, self.model.versions, "http", False, max_pri)
        self.client = RegistrationClient(self.model, self.network, self.clock, self.found.candidates,
                                         rng=self.client.rng, backoff=Backoff())
        self.found.changed = self.client.registries_changed
        self.advertiser = NodeAdvertiser(self.node_mdns, self.model, self.client.watch, self.clock,
                                         peer_to_peer=peer_to_peer,
                                         authorization=False, host="node-1", interfaces=["192.0.2.10"])
        self.advertiser.listening([("http", IPv4Address("TCP", "192.0.2.10", 8236))])

    def start(self) -> None:
        self.found.startService()
        self.advertiser.startService()
        self.client.startService()

    def node_txt(self) -> dict[str, str] | None:
        """The TXT records of the Node's `_nmos-node._tcp` advert, as a browser sees them (None: not advertised)."""
        found = self.mdns.find(NODE)
        return dict(found[0].txt) if found else None

    def unicast_registry(self, host_port: str, pri: int = 0, versions: str = "v1.3") -> Instance:
        assert self.unicast is not None
        advert = registry_advert(host_port, pri, versions=versions)
        return self.unicast.instance(advert)
