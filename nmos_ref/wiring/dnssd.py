"""The DNS-SD of one process, from the settings: mDNS on which interfaces, unicast DNS-SD in which domain.

python-zeroconf and twisted.names are imported only when the settings use them (idle footprint, issue 13)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nmos_ref.config import Settings
from nmos_ref.discovery import RESOLV_CONF, host_label
from nmos_ref.discovery.browse import UnicastFirst

if TYPE_CHECKING:
    from nmos_ref.discovery.mdns import MulticastDiscovery
    from nmos_ref.discovery.unicast import UnicastDiscovery


log = Logger()


@define
class DnsSd:
    """mDNS (a service: add it to the tree before whatever advertises or browses) and unicast DNS-SD (browsing only),
    either of them None when not used."""

    multicast: MulticastDiscovery | None = None
    unicast: UnicastDiscovery | None = None
    interfaces: list[str] = field(factory=list)  # the mDNS interface addresses
    host: str = field(factory=host_label)  # this machine, as a DNS label

    def browser(self) -> UnicastFirst | None:
        if self.multicast is None and self.unicast is None:
            return None
        return UnicastFirst(self.unicast, self.multicast)


def listen_host(description: str) -> str | None:
    """The address a strports description listens on ("" for every IPv4 address, "::" for every address), or None
    for one that is not TCP."""
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        if part.startswith("interface="):
            return part[len("interface="):].replace("\\:", ":").replace("\\\\", "\\")
    return "::" if parts[0] == "tcp6" else ""


def machine_interfaces(ipv6: bool) -> list[str]:
    """Every address of this machine for mDNS: IPv4 (link-local too), and IPv6 without link-local (zoned) ones."""
    import ifaddr  # only for mDNS on a wildcard listener

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4:
                text = str(ip.ip)
            elif ipv6 and not ipaddress.ip_address(ip.ip[0].split("%")[0]).is_link_local:
                text = ip.ip[0]
            else:
                continue
            if text not in found:
                found.append(text)
    return found


def interfaces_for(descriptions: Sequence[str]) -> list[str]:
    """The default mDNS interfaces: the addresses the APIs listen on, every address of the machine for a wildcard.
    python-zeroconf cannot use IPv6 loopback (::1), so that is left out."""
    found: list[str] = []
    for description in descriptions:
        host = listen_host(description)
        if host is None:
            continue
        if host in ("", "0.0.0.0", "::"):
            addresses = machine_interfaces(ipv6=host == "::")
        else:
            addresses = [host]
        for address in addresses:
            try:
                parsed = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                continue
            if parsed.version == 6 and parsed.is_loopback:
                log.info("mDNS: not on {address} (python-zeroconf cannot use IPv6 loopback)", address=address)
                continue
            if address not in found:
                found.append(address)
    return found


def build_dns_sd(settings: Settings, reactor: Any, clock: IReactorTime, descriptions: Sequence[str], *,
                 browse: bool, resolv_conf: str = RESOLV_CONF) -> DnsSd:
    """What `settings.dns_sd` asks for. mDNS runs on `mdns_interfaces`, by default on the interfaces of
    `descriptions` (where the APIs listen), so nothing goes beyond the networks served. Unicast DNS-SD is only
    for browsing (`browse`), in `dns_sd_domain` or the resolver's search domain, through `dns_servers` or the
    resolver's name servers."""
    host = host_label()
    found = DnsSd(host=host)
    if settings.dns_sd in ("both", "multicast"):
        interfaces = list(settings.mdns_interfaces or interfaces_for(descriptions))
        if interfaces:
            # python-zeroconf only with mDNS on
            from nmos_ref.discovery.mdns import MulticastDiscovery

            found.multicast = MulticastDiscovery(reactor, interfaces, host)
            found.interfaces = interfaces
        else:
            log.warn("mDNS is off: no interface to use (set mdns_interfaces)")
    if browse and settings.dns_sd in ("both", "unicast"):
        from nmos_ref.discovery.unicast import (
            UnicastDiscovery,
            make_resolver,
            parse_server,
            system_dns,
        )

        servers, domain = system_dns(resolv_conf)
        if settings.dns_servers:
            servers = [parse_server(text) for text in settings.dns_servers]
        domain = settings.dns_sd_domain or domain
        if domain is None or domain == "local":
            log.info("Unicast DNS-SD is off: no search domain in {path} and no dns_sd_domain set", path=resolv_conf)
        elif not servers:
            log.info("Unicast DNS-SD is off: no name server in {path} and no dns_servers set", path=resolv_conf)
        else:
            found.unicast = UnicastDiscovery(make_resolver(servers, reactor), domain, clock)
            log.info("Unicast DNS-SD: browsing in {domain} through {servers}", domain=domain,
                     servers=", ".join(f"{address}:{port}" for address, port in servers))
    return found
