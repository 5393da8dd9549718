"""The Node as a service: its Node API on the configured ports, then, once it knows where it answers, its
registration client. `nmos_ref.wiring.tree` builds it for `nmos-ref node` and for the demo Node of plain
`nmos-ref`."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from attrs import evolve
from treq.client import HTTPClient
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from nmos_ref.api.node import ManifestAPI, NodeAPI
from nmos_ref.config import Settings, read_initial_token
from nmos_ref.model.tai import TAIClock, format_tai
from nmos_ref.node.addresses import endpoints_for, host_name, registry_candidates
from nmos_ref.node.advert import NodeAdvertiser
from nmos_ref.node.demo import demo_description
from nmos_ref.node.description import MANIFEST_ROOT, build, load_description
from nmos_ref.node.registration_client import RegistrationClient
from nmos_ref.node.registries import Candidate, parse_registry_url
from nmos_ref.node.registry_browser import RegistryBrowser
from nmos_ref.node.state import NodeModel
from nmos_ref.node.target import ReceiverTargets
from nmos_ref.tls.server import listen_service, serves_tls
from nmos_ref.tls.trust import tls_policy
from nmos_ref.validation import Schemas
from nmos_ref.web.client import quiet_pool
from nmos_ref.web.root import root_resource
from nmos_ref.web.metrics import CheckResource, Family, Metrics, operations
from nmos_ref.web.server import make_site
from nmos_ref.wiring.dnssd import DnsSd, build_dns_sd
from nmos_ref.wiring.listeners import listening, ocsp_stapler

if TYPE_CHECKING:
    from nmos_ref.auth.oauth_client import OAuthClient
    from nmos_ref.tls.ocsp import OCSPStapler
    from nmos_ref.wiring.auth import Authorization

log = Logger()


class NodeService(MultiService):
    """One Node: the Node API listeners (children), the model they serve and the registration client; with DNS-SD,
    the browse for registries (a child) and the Node's advert."""

    def __init__(self, model: NodeModel, site: Any, listen: Sequence[str], reactor: Any, client: RegistrationClient,
                 targets: ReceiverTargets, pool: HTTPConnectionPool, host_name: str | None, *,
                 registries: RegistryBrowser | None = None, advertiser: NodeAdvertiser | None = None,
                 own_discovery: IService | None = None, authorization: bool = False,
                 oauth: OAuthClient | None = None, auth_services: Sequence[IService] = (),
                 certificates: Sequence[dict[str, str]] = (), stapler: OCSPStapler | None = None) -> None:
        super().__init__()
        self.model = model
        self.site = site
        self.client = client
        self.targets = targets
        self.pool = pool
        self.host_name = host_name
        self.registries = registries
        self.advertiser = advertiser
        if own_discovery is not None:  # mDNS made for this Node alone: started first, stopped last
            own_discovery.setServiceParent(self)
        self.authorization = authorization
        self.oauth = oauth  # started once the Node knows its jwks_uri, stopped after the last DELETE
        for service in auth_services:  # the resource server's key cache, the browse for authorization servers
            service.setServiceParent(self)
        if registries is not None:
            registries.setServiceParent(self)
        self.listeners = [listen_service(description, site, reactor, certificates, stapler, setting="node_listen")
                          for description in listen]
        for listener in self.listeners:
            listener.setServiceParent(self)
        if stapler is not None and stapler.parent is None:  # made for this Node alone (else the process owns it)
            stapler.setServiceParent(self)
        self.ready: Deferred[None] = Deferred()  # fires once the Node API listens and registration started

    def startService(self) -> None:
        super().startService()
        listening(self.listeners).addCallback(self._listening).addErrback(self._not_listening)

    def _listening(self, addresses: list[tuple[str, Any]]) -> None:
        if not self.running:
            return
        self.model.set_endpoints(endpoints_for(addresses, self.host_name, self.authorization))
        for endpoint in self.model.endpoints:
            log.info("Node {id}: Node API at {url}x-nmos/node/ ({versions})", id=self.model.node_id,
                     url=endpoint.base, versions=", ".join(self.model.versions))
        if self.advertiser is not None:
            self.advertiser.listening(addresses)
            self.advertiser.startService()
        if self.oauth is not None:
            self.oauth.startService()
        self.client.startService()
        self.ready.callback(None)

    def _not_listening(self, failure: Any) -> None:
        log.failure("The Node API could not listen; the Node is not registered", failure)

    def stopService(self) -> Deferred[None]:
        """Unregister first (the registry must still be reachable), then stop listening and close connections."""
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.client.running:
            await self.client.stopService()
        if self.oauth is not None and self.oauth.running:
            self.oauth.stopService()  # synchronous: cancels its timers and requests
        if self.advertiser is not None and self.advertiser.running:
            await self.advertiser.stopService()
        self.targets.stop()
        await super().stopService()
        await self.pool.closeCachedConnections()


def default_state_dir() -> str:
    """~/.local/state/nmos-ref (or under $XDG_STATE_HOME): where a Node keeps its OAuth key and registration."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "nmos-ref")


def client_servers(settings: Settings) -> list[str]:
    """The configured authorization servers the Node gets tokens from (`auth_issuers`, "*" aside)."""
    from nmos_ref.auth.keys import ANY_ISSUER

    return [url.rstrip("/") for url in settings.auth_issuers if url != ANY_ISSUER]


REGISTRATION_STATES = ("idle", "choosing", "registering", "registered", "refused", "backoff", "no registry",
                       "stopped")


def node_families(client: RegistrationClient, oauth: Any) -> Iterable[Family]:
    """The Node's registration (its state, the registry in use, failovers) and, with IS-10, its token requests."""
    yield ("nmos_node_registration_state", "gauge", "The Node's registration state: 1 for the state it is in",
           [((("state", state),), int(client.state == state)) for state in REGISTRATION_STATES])
    current = client.current
    yield ("nmos_node_registry", "gauge", "The Registration API the Node uses (1), if any",
           [((("url", current.candidate.url),), 1)] if current is not None else [])
    yield ("nmos_node_registry_failovers_total", "counter", "Registries the Node gave up for the next one",
           [((), client.failovers)])
    if oauth is not None:
        yield ("nmos_node_token_requests_total", "counter", "Access tokens asked of authorization servers, by outcome",
               [((("outcome", outcome),), count) for outcome, count in sorted(oauth.fetches.items())])


def build_node(settings: Settings, reactor: Any, clock: IReactorTime, *,
               local_registries: Callable[[], Deferred[list[tuple[str, Any]]]] | None = None,
               http: Any = None, schemas: Schemas | None = None, dns_sd: DnsSd | None = None,
               guard: Authorization | None = None, stapler: OCSPStapler | None = None,
               metrics: Metrics | None = None) -> NodeService:
    """The Node of `settings`: its description (file or demo), model, APIs, listeners, registration client and
    DNS-SD. `local_registries` gives the addresses of a registry in this process, used first; `http` replaces the
    treq client (tests); `dns_sd` is the process's DNS-SD (default: made from the settings, for this Node alone).
    Registries are browsed for only when none is configured (and there is no registry in this process). With
    `auth`, the Node API wants tokens (checked by `guard`, the process's resource server, or one made here) and the
    Node gets its own from an authorization server (configured in `auth_issuers`, or found by DNS-SD)."""
    schemas = schemas or Schemas()
    tai = TAIClock(clock)
    seed = settings.node_seed or socket.gethostname()
    name = settings.host_name or host_name()
    description = load_description(settings.node_file) if settings.node_file else demo_description(seed, name)
    built = build(description, seed=seed, stamp=format_tai(tai.stamp()), hostname=name, endpoints=[],
                  versions=settings.api_versions, schemas=schemas)
    model = NodeModel(built, tai, settings.api_versions, schemas)
    timeout = min(settings.registry_timeout, settings.heartbeat_interval)
    pool = quiet_pool(reactor)  # no log line per connection to a registry
    if http is None:  # BCP-003-01: registries (and authorization servers) checked against tls_ca when given
        http = HTTPClient(Agent(reactor, contextFactory=tls_policy(settings.tls_ca), pool=pool,
                                connectTimeout=timeout))
    authorization = settings.auth
    targets = ReceiverTargets(model, http, clock, timeout)
    api = NodeAPI(model, targets, schemas)
    manifests = ManifestAPI(model)
    apis: dict[str, Any] = {"node": api.app.resource()}
    others: dict[str, Any] = {MANIFEST_ROOT: manifests.app.resource()}
    auth_services: list[IService] = []
    oauth = None
    protocol = "https" if serves_tls(settings.node_listen) else "http"
    browse = not settings.registries and local_registries is None
    own_discovery = None
    if dns_sd is None:
        dns_sd = build_dns_sd(settings, reactor, clock, settings.node_listen, browse=browse or authorization)
        own_discovery = dns_sd.multicast
    if authorization:
        # IS-10's stack (pyjwt, cryptography for the Node's key) only with auth on (idle footprint, issue 13)
        from nmos_ref.api.jwks import JWKSResource
        from nmos_ref.auth.guard import guard_apis
        from nmos_ref.auth.oauth_client import OAuthClient
        from nmos_ref.wiring.auth import authorization as make_authorization

        if guard is None:  # a Node alone: its own resource server and browse for authorization servers
            guard = make_authorization(settings, reactor, clock, dns_sd)
            auth_services.append(guard.services)
        apis = guard_apis(apis, guard.server)
        auth_browser = guard.found
        configured_servers = client_servers(settings)

        def servers() -> list[str]:
            discovered = auth_browser.servers() if auth_browser is not None else []
            return configured_servers + [url for url in discovered if url not in configured_servers]

        def jwks_uri() -> str | None:
            return f"{model.endpoints[0].base}x-authorization/jwks" if model.endpoints else None

        oauth = OAuthClient(clock, http, servers=servers,
                            state_dir=os.path.join(settings.auth_state_dir or default_state_dir(),
                                                   f"node-{model.node_id}"),
                            client_name=f"nmos-ref node {model.node['label']}"[:100], scopes=["registration"],
                            method=settings.auth_client_method, jwks_uri=jwks_uri, timeout=timeout,
                            initial_token=read_initial_token(settings.auth_initial_token_file)
                            if settings.auth_initial_token_file else None)
        if auth_browser is not None:  # IS-10 "Discovery": servers found by DNS-SD after the configured ones
            auth_browser.changed = oauth.servers_changed
        x_authorization = Resource()
        x_authorization.putChild(b"jwks", JWKSResource(oauth))
        others["x-authorization"] = x_authorization
    metrics = metrics if metrics is not None else Metrics()
    ready = CheckResource()  # /ready: the Node API listens (the Node serves whether or not a registry holds it)
    others.update(operations(metrics, ready))
    site = make_site(root_resource(apis, others), settings.access_log, settings.hsts_max_age, metrics)
    configured = [evolve(parse_registry_url(url, index), authorization=authorization)
                  for index, url in enumerate(settings.registries)]

    def configured_candidates() -> Deferred[list[Candidate]]:
        if local_registries is None:
            return succeed(configured)
        # The registry of this process first, then the configured ones.
        return local_registries().addCallback(
            lambda addresses: registry_candidates(addresses, authorization, settings.host_name) + [
                evolve(candidate, priority=candidate.priority + len(addresses)) for candidate in configured])

    browser = dns_sd.browser() if browse else None
    registries = None
    candidates: Callable[[], Deferred[list[Candidate]]] = configured_candidates
    if browser is not None:
        registries = RegistryBrowser(browser, model.versions, protocol, authorization, settings.max_registry_pri)
        candidates = registries.candidates
    client = RegistrationClient(model, http, clock, candidates, protocol=protocol, authorization=authorization,
                                tokens=oauth, interval=settings.heartbeat_interval, timeout=timeout)
    metrics.collect(partial(node_families, client, oauth))
    if registries is not None:
        registries.changed = client.registries_changed
    if oauth is not None:
        oauth.recovered = client.retry_now
    advertiser = None
    if dns_sd.multicast is not None:
        advertiser = NodeAdvertiser(dns_sd.multicast, model, client.watch, clock, peer_to_peer=settings.peer_to_peer,
                                    authorization=authorization, host=dns_sd.host,
                                    interfaces=dns_sd.interfaces)
    log.info("nmos-ref: Node {id} ({label}) with {devices} devices, {senders} senders and {receivers} receivers",
             id=model.node_id, label=model.node["label"], devices=len(model.all("device")),
             senders=len(model.all("sender")), receivers=len(model.all("receiver")))
    # api.endpoints name the configured host name, else the addresses listened on (not the machine's name, which
    # other hosts may not resolve).
    service = NodeService(model, site, settings.node_listen, reactor, client, targets, pool, settings.host_name,
                          registries=registries, advertiser=advertiser, own_discovery=own_discovery,
                          authorization=authorization, oauth=oauth, auth_services=auth_services,
                          certificates=settings.tls_certificates,
                          stapler=stapler or ocsp_stapler(reactor, settings.node_listen, settings.tls_ca, clock))
    ready.checks.append(lambda: None if service.ready.called else "the Node API is not listening yet")
    return service
