"""Where the Node answers: its host name, the machine's addresses, its `api.endpoints`, and a registry of the same
process as a registration candidate.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import Any

import ifaddr

from nmos_ref.node.description import Endpoint
from nmos_ref.node.registries import Candidate

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"


_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def host_name() -> str | None:
    """The machine's host name, if it is a valid one (the node `hostname` has JSON Schema format "hostname")."""
    name = socket.gethostname()
    return name if len(name) <= 253 and _HOSTNAME.fullmatch(name) else None


def machine_addresses(ipv6: bool) -> list[str]:
    """The machine's addresses for a wildcard listener: IPv4 (and IPv6 when asked), loopback last, no link-local
    addresses (they need a zone, which `api.endpoints` cannot carry)."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if ip.is_IPv4 else ip.ip[0]
            if not ip.is_IPv4 and not ipv6:
                continue
            address = ipaddress.ip_address(text.split("%")[0])
            if address.is_link_local or text in found:
                continue
            found.append(text)
    return sorted(found, key=lambda text: ipaddress.ip_address(text).is_loopback)


def endpoints_for(addresses: Sequence[tuple[str, Any]], host_name: str | None,
                  authorization: bool = False) -> list[Endpoint]:
    """The Node's `api.endpoints` for where it listens: the configured host name, or each address (a wildcard
    listener answers on all of the machine's addresses); `authorization` when the Node API wants tokens."""
    found: list[Endpoint] = []
    for protocol, address in addresses:
        if host_name is not None:
            hosts = [host_name]
        elif address.host in ("0.0.0.0", "::", ""):
            hosts = machine_addresses(ipv6=address.host == "::")
        else:
            hosts = [address.host]
        for host in hosts:
            endpoint = Endpoint(host, address.port, protocol, authorization)
            if endpoint not in found:
                found.append(endpoint)
    return found


def registry_candidates(addresses: Sequence[tuple[str, Any]], authorization: bool = False,
                        host_name: str | None = None) -> list[Candidate]:
    """Candidates for a registry listening at these addresses in this process: reached over loopback when it
    listens on every address, or for HTTPS by `host_name` (which its certificate names); it uses authorization
    when this process does."""
    found = []
    for protocol, address in addresses:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)
        if protocol == "https" and host_name is not None:
            host = host_name
        shown = f"[{host}]" if ":" in host else host
        found.append(Candidate(f"{protocol}://{shown}:{address.port}", len(found), protocol,
                               authorization=authorization, origin="local"))
    return found
