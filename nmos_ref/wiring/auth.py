"""Putting the resource server together from the settings: the key cache, its HTTP client and its timers."""

from __future__ import annotations

import socket
from typing import Any

from attrs import define
from treq.client import HTTPClient
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from nmos_ref.auth.guard import ResourceServer
from nmos_ref.auth.keys import FetchJSON, KeyCache
from nmos_ref.config import Settings
from nmos_ref.discovery.auth_servers import AuthServerBrowser
from nmos_ref.model.jsontext import decode
from nmos_ref.tls.server import serves_tls
from nmos_ref.tls.trust import tls_policy
from nmos_ref.wiring.dnssd import DnsSd

log = Logger()

FETCH_TIMEOUT = 10.0  # seconds for one metadata or JWKS request


@define
class Authorization:
    """What a process with `auth` on shares between its APIs: the resource server, the services keeping its keys
    fresh and browsing for authorization servers, and that browse (whose servers the Node asks for tokens)."""

    server: ResourceServer
    services: MultiService
    found: AuthServerBrowser | None = None


def authorization(settings: Settings, reactor: Any, clock: IReactorTime, dns_sd: DnsSd,
                  fetch_json: FetchJSON | None = None) -> Authorization:
    """The resource server for `settings`, and (with DNS-SD) the browse for `_nmos-auth._tcp` (IS-10 "Discovery"),
    each server found added to the trusted issuers and its keys fetched."""
    server, keys = resource_server(settings, reactor, clock, fetch_json)
    services = MultiService()
    keys.setServiceParent(services)
    found = None
    browser = dns_sd.browser()
    if browser is not None:
        secure = serves_tls(settings.listen + settings.node_listen)
        found = AuthServerBrowser(browser, "https" if secure else "http", settings.max_registry_pri)
        found.added = server.keys.add_issuer
        found.setServiceParent(services)
    return Authorization(server, services, found)


class KeyCacheService(Service):
    """Starts the key cache's fetches with the service and stops its timers (and HTTP pool) with it."""

    def __init__(self, keys: KeyCache, pool: HTTPConnectionPool | None = None) -> None:
        self.keys = keys
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.keys.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.keys.stop()
        return self.pool.closeCachedConnections() if self.pool is not None else None


def json_fetcher(http: HTTPClient, clock: IReactorTime) -> FetchJSON:
    """GET a URL and parse its JSON body (non-2xx answers fail)."""
    async def fetch(url: str) -> Any:
        response = await http.get(url, headers={"Accept": ["application/json"]}, timeout=FETCH_TIMEOUT)
        body = await response.content()
        if not 200 <= response.code < 300:
            raise ValueError(f"GET {url} answered {response.code}")
        return decode(body)  # strict: what a peer sends is held to RFC 8259 like every body we read

    def start(url: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(fetch(url))
    return start


def resource_server(settings: Settings, reactor: Any, clock: IReactorTime,
                    fetch_json: FetchJSON | None = None) -> tuple[ResourceServer, KeyCacheService]:
    """The resource server for `settings` (auth on) and the service that keeps its keys fresh. The issuers are the
    configured ones; DNS-SD `_nmos-auth._tcp` discovery hands more to `KeyCache.add_issuer`."""
    pool = None
    if fetch_json is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        http = HTTPClient(Agent(reactor, contextFactory=tls_policy(settings.tls_ca), pool=pool,
                                connectTimeout=FETCH_TIMEOUT))
        fetch_json = json_fetcher(http, clock)
    keys = KeyCache(clock, fetch_json, list(settings.auth_issuers))
    if not settings.auth_issuers:
        log.warn("Authorization is on but no auth_issuers are configured: every token is refused until an "
                 "authorization server is added (DNS-SD discovery or auth_issuers)")
    names = [settings.auth_fqdn or socket.getfqdn()]
    return ResourceServer(keys, clock, names), KeyCacheService(keys, pool)



