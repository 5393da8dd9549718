"""DNS-SD for nmos-ref: one small interface, `Discovery`, with three implementations.

- `nmos_ref.discovery.mdns.MulticastDiscovery`: multicast DNS through python-zeroconf, on its own thread;
- `nmos_ref.discovery.unicast.UnicastDiscovery`: unicast DNS-SD browsing through `twisted.names` (PTR, SRV, TXT,
  A and AAAA records in a domain); a registry cannot publish its own unicast records (they are zone records an
  operator provisions), so it only browses;
- `nmos_ref.discovery.fake.FakeDnsSd`: an in-memory network for unit tests.

`nmos_ref.discovery.browse.UnicastFirst` applies IS-04's order between the two ("Discovery": unicast in the search
domain first, mDNS only if that gives nothing), and `nmos_ref.discovery.setup` builds them from the settings.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from attrs import field, frozen
from twisted.internet.defer import Deferred

# IS-04 "Discovery": the service types. The legacy Registration API's `_nmos-registration` is 18 characters with its
# underscore, more than the 16 RFC 6763 §7.2 allows; IS-04 v1.3 still requires it of registries serving v1.2 and
# below and of Nodes browsing for them.
NODE = "_nmos-node._tcp"
REGISTER = "_nmos-register._tcp"
REGISTRATION = "_nmos-registration._tcp"
QUERY = "_nmos-query._tcp"
RESOLV_CONF = "/etc/resolv.conf"  # the resolver's name servers and search domain, for unicast DNS-SD

# The peer-to-peer TXT records of a Node ("Discovery - Peer to Peer Operation") and the kind of resource each counts.
PEER_TO_PEER_KEYS: dict[str, str] = {"node": "ver_slf", "source": "ver_src", "flow": "ver_flw", "device": "ver_dvc",
                                     "sender": "ver_snd", "receiver": "ver_rcv"}


def host_label(name: str | None = None) -> str:
    """This machine's name as one DNS label (the first label of the host name, other characters as "-")."""
    label = (name or socket.gethostname()).split(".", 1)[0]
    label = re.sub(r"[^A-Za-z0-9-]", "-", label).strip("-")[:63]
    return label or "nmos-ref"


def fits_rfc6763(service_type: str) -> bool:
    """Whether the service name (between the underscore and `._tcp`) is at most 15 bytes (RFC 6763 §7.2)."""
    name = service_type.split(".", 1)[0].lstrip("_")
    return len(name.encode()) <= 15


@frozen
class Advert:
    """A service to advertise: instance `name` of `service_type` at `port` on `addresses`, with TXT records."""

    service_type: str  # "_nmos-register._tcp"
    name: str  # the instance name, at most 63 bytes
    port: int
    addresses: tuple[str, ...]
    txt: Mapping[str, str] = field(converter=lambda txt: dict(txt))
    host: str | None = None  # the SRV target ("host.local"); default: the backend's own host name

    @property
    def key(self) -> tuple[str, str]:
        return self.service_type, self.name


@frozen(eq=True, hash=False)
class Instance:
    """A service instance found by browsing, resolved to its SRV, TXT and address records."""

    service_type: str  # "_nmos-register._tcp"
    name: str  # the instance name ("reg-api-2")
    domain: str  # "local" for mDNS, else the unicast domain
    host: str  # the SRV target, without the trailing dot
    port: int
    addresses: tuple[str, ...]
    txt: Mapping[str, str]  # keys in lower case (RFC 6763 §6.4: they are case-insensitive)
    via: str  # "mdns" or "unicast"
    priority: int = 0  # SRV priority and weight
    weight: int = 0

    @property
    def full_name(self) -> str:
        return f"{self.name}.{self.service_type}.{self.domain}"


def parse_txt(strings: list[bytes] | tuple[bytes, ...]) -> dict[str, str]:
    """TXT record strings ("key=value") as a dict: keys in lower case, the first of a repeated key kept, a key
    without "=" given the empty string (RFC 6763 §6.4, §6.5)."""
    found: dict[str, str] = {}
    for raw in strings:
        text = raw.decode("utf-8", "replace")
        key, _, value = text.partition("=")
        key = key.lower()
        if key and key not in found:
            found[key] = value
    return found


def txt_text(txt: Mapping[str, str]) -> str:
    """TXT records for one log line: "pri=10 api_ver=v1.3"."""
    return " ".join(f"{key}={value}" for key, value in txt.items()) or "no TXT records"


class Browsing(Protocol):
    """A browse in progress."""

    ready: Deferred[None]  # fires once the first answers are in (a unicast round done; mDNS: a short settle time)

    def stop(self) -> None:
        """Stop browsing; no further callbacks."""


Found = Callable[[Instance], None]


class Discovery(Protocol):
    """Advertise services and browse for them. Deferreds fire on the reactor thread, and so do the callbacks."""

    via: str  # "mdns" or "unicast"

    def advertise(self, advert: Advert) -> Deferred[None]:
        """Announce `advert` (after probing its name, for mDNS); fires once it is announced."""

    def update_txt(self, advert: Advert, txt: Mapping[str, str]) -> Deferred[None]:
        """Replace the TXT records of an advertised service (named as it was advertised)."""

    def withdraw(self, advert: Advert) -> Deferred[None]:
        """Withdraw an advertised service (mDNS: with goodbye packets)."""

    def browse(self, service_type: str, added: Found, updated: Found, removed: Found) -> Browsing:
        """Call `added`, `updated` (its records changed) and `removed` as instances of `service_type` come and go."""


class InterfaceUnusable(RuntimeError):
    """mDNS cannot use the interfaces it was given; the message says which and what setting to change."""


class Unsupported(Exception):
    """What this implementation cannot do (unicast DNS-SD cannot advertise)."""


WILDCARDS = ("", "0.0.0.0", "::")


def advertised_addresses(host: str, interfaces: Sequence[str]) -> list[str]:
    """The addresses to advertise for an API listening on `host`: that address, or for a wildcard the mDNS
    interface addresses (IPv4 ones for 0.0.0.0, all of them for ::)."""
    if host not in WILDCARDS:
        return [host]
    return [address for address in interfaces if host == "::" or ipaddress.ip_address(address).version == 4]


def adverts_for(service_type: str, listening: Sequence[tuple[str, Any]], txt: Callable[[str], Mapping[str, str]],
                host: str, interfaces: Sequence[str]) -> list[Advert]:
    """One advert of `service_type` per protocol and port an API listens on ("Multiple DNS-SD advertisements for
    the same API are permitted where the API is exposed via multiple ports and/or protocols"), each with every
    address it answers on; `txt(protocol)` gives its TXT records."""
    grouped: dict[tuple[str, int], list[str]] = {}
    for protocol, address in listening:
        found = grouped.setdefault((protocol, address.port), [])
        found.extend(a for a in advertised_addresses(address.host, interfaces) if a not in found)
    return [Advert(service_type, instance_name(host, port), port, tuple(addresses), txt(protocol))
            for (protocol, port), addresses in grouped.items() if addresses]


def instance_name(host: str, port: int) -> str:
    """"nmos-ref <host>:<port>", within the 63 bytes of a DNS label."""
    suffix = f":{port}"
    return "nmos-ref " + host.encode()[:63 - len("nmos-ref ") - len(suffix)].decode(errors="ignore") + suffix


def url_host(instance: Instance, protocol: str) -> str | None:
    """The host for the URL of an instance: its first IPv4 address, else its first IPv6 one; for HTTPS its host
    name, which the certificate names."""
    if protocol == "https" and instance.host:
        return instance.host
    addresses = sorted(instance.addresses, key=lambda text: ipaddress.ip_address(text.split("%")[0]).version)
    if not addresses:
        return None
    return f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
