"""The checks of settings that need the rest of the program (`nmos_ref.config` checks types and ranges only, and
imports nothing of ours): registry URLs and name servers as the Node and DNS-SD read them, listen descriptions as
the reactor would take them (certificates and keys included), the initial token file and the Node description. A
bad setting stops the start here with a message that names it, not at the first client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.endpoints import serverFromString

from nmos_ref.config import ConfigError, Settings, read_initial_token
from nmos_ref.node.registries import parse_registry_url
from nmos_ref.tls.server import check_pem_file

DNS_SERVER_EXAMPLE = '"192.0.2.53" or "[2001:db8::53]:5353"'


def check_settings(settings: Settings, reactor: Any, *, node: bool, names: Mapping[str, str] | None = None) -> None:
    """ConfigError for the first unusable setting, named by `names` (key: as the user wrote it, e.g. "--expiry" or
    "listen (in nmos.json)"; default: the key); `node`: the process runs a Node (its token and description files
    are read)."""
    def name(key: str) -> str:
        return (names or {}).get(key, key)

    for index, url in enumerate(settings.registries):
        try:
            parse_registry_url(url, index)
        except ValueError as exc:
            raise ConfigError(f"{name('registries')}: {exc}") from None
    if settings.dns_servers:  # twisted.names only when unicast DNS-SD is configured (idle footprint, issue 13)
        from nmos_ref.discovery.unicast import parse_server
    for server in settings.dns_servers or ():
        try:
            parse_server(server)
        except ValueError:
            raise ConfigError(f"{name('dns_servers')}: {server!r} is not an address such as {DNS_SERVER_EXAMPLE}") \
                from None
    # docs/configuration.md: the certificates are checked at start, whether an ssl: listener uses them yet or not.
    for pair in settings.tls_certificates:
        try:
            check_pem_file(pair["certificate"], "certificate chain")
            check_pem_file(pair["key"], "private key")
        except ConfigError as exc:
            raise ConfigError(f"{name('tls_certificates')}: {exc}") from None
    for key in ("listen", "node_listen"):
        for description in getattr(settings, key):
            _check_listener(reactor, name(key), description, settings)
    if settings.mdns_interfaces and settings.dns_sd in ("both", "multicast"):
        # Before anything listens: python-zeroconf would only fail once the APIs are up.
        own = machine_addresses()
        for address in settings.mdns_interfaces:
            if address.split("%")[0] not in own:
                raise ConfigError(f"{name('mdns_interfaces')}: {address} is not an address of this machine (it has "
                                  f"{', '.join(sorted(own))})")
    if node and settings.auth_initial_token_file is not None:
        read_initial_token(settings.auth_initial_token_file)
    if node and settings.node_file is not None:
        # the Node's stack only for a Node
        from nmos_ref.node.description import build, load_description

        try:  # a broken Node description stops the start here, with the reason
            build(load_description(settings.node_file), seed="check", stamp="0:0", hostname=None, endpoints=[],
                  versions=settings.api_versions)
        except ConfigError as exc:
            raise ConfigError(f"{name('node_file')} {settings.node_file}: {exc}") from None


def _check_listener(reactor: Any, flag: str, description: str, settings: Settings) -> None:
    try:
        if description.startswith("ssl:"):  # certificates and keys checked now, not at the first client
            # pyOpenSSL only with an ssl: listener
            from nmos_ref.tls.server import ssl_endpoint

            endpoint = ssl_endpoint(reactor, description, settings.tls_certificates)
        else:
            endpoint = serverFromString(reactor, description)
    except ConfigError as exc:
        raise ConfigError(f"{flag} {description!r}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{flag} {description!r} is not a strports description: {exc}") from None
    port = getattr(endpoint, "_port", None)  # TCP and SSL endpoints keep it there; the socket would overflow later
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ConfigError(f"{flag} {description!r}: port {port} is not from 0 to 65535")


def machine_addresses() -> set[str]:
    """Every address of this machine's interfaces, IPv6 ones without their zone."""
    import ifaddr  # only when mdns_interfaces are set

    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            found.add(str(ip.ip) if ip.is_IPv4 else ip.ip[0].split("%")[0])
    return found
