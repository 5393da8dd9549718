"""The registry as a service: its store, Registration and Query APIs (with their WebSocket subscriptions),
listeners, adverts, expiry sweep and process tuning, built from the settings.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nmos_ref.api.query import QueryAPI
from nmos_ref.api.query_sockets import SubscriptionFactory, SubscriptionService
from nmos_ref.api.registration import RegistrationAPI
from nmos_ref.auth.guard import guard_apis
from nmos_ref.config import Settings
from nmos_ref.discovery.registry import RegistryAdvertiser
from nmos_ref.model.store import Registry
from nmos_ref.tls.ocsp import OCSPStapler
from nmos_ref.tls.server import listen_service
from nmos_ref.validation import Schemas
from nmos_ref.web.root import root_resource
from nmos_ref.web.server import make_site
from nmos_ref.wiring.auth import Authorization, authorization
from nmos_ref.wiring.dnssd import DnsSd, build_dns_sd
from nmos_ref.wiring.listeners import listening, ocsp_stapler
from nmos_ref.wiring.tuning import FreezeAfterFullCollection, LogLevelService
from nmos_ref.ws.subscriptions import SubscriptionLimits, SubscriptionManager

log = Logger()


def serve_subscriptions(query: QueryAPI, registry: Registry, clock: IReactorTime, reactor: Any,
                        limits: SubscriptionLimits = SubscriptionLimits(),
                        source_id: str | None = None) -> SubscriptionService:
    """Give `query` its subscriptions: the manager (`clock` for expiry and rate limits, `reactor` for the sockets and
    for yielding between slices of work) and the WebSocket resource. The service closes the sockets on stop."""
    manager = SubscriptionManager(registry, clock, query.translations, scheduler=reactor, source_id=source_id,
                                  limits=limits)
    factory = SubscriptionFactory(manager, reactor)
    query.subscriptions = manager
    query.websockets = WebSocketResource(factory)
    return SubscriptionService(manager, factory)


GC_PERIOD = 0.5  # seconds between garbage collection sweeps: Nodes go at most this long after their expiry


class GarbageCollector(TimerService):
    """Sweeps expired Nodes out of the registry every GC_PERIOD seconds."""

    def __init__(self, registry: Registry, clock: IReactorTime, period: float = GC_PERIOD) -> None:
        super().__init__(period, self._sweep)
        self.clock = clock
        self.registry = registry

    def _sweep(self) -> None:
        try:
            self.registry.collect_garbage()
        except Exception:
            log.failure("Garbage collection failed; trying again in {period} s", period=self.step)


def _subscription_path(query: QueryAPI, version: str, sid: str) -> str | None:
    """BCP-003-02: a subscription socket is judged by the subscription's resource_path."""
    subscription = query.subscriptions.get(sid) if query.subscriptions is not None else None
    return subscription.wanted.resource_path if subscription is not None else None


def build(settings: Settings, reactor: Any, clock: IReactorTime | None = None,
          dns_sd: DnsSd | None = None, guard: Authorization | None = None,
          stapler: OCSPStapler | None = None) -> MultiService:
    """The whole service tree for `settings`; `clock` defaults to the reactor (tests pass a Clock), `dns_sd` to the
    DNS-SD of the settings (started and stopped here), `guard` (with auth) to a resource server made here, `stapler`
    (for ssl: listeners) to an OCSP stapler made here."""
    clock = clock or reactor
    top = MultiService()
    if dns_sd is None:
        dns_sd = build_dns_sd(settings, reactor, clock, settings.listen, browse=settings.auth)
        if dns_sd.multicast is not None:
            dns_sd.multicast.setServiceParent(top)
    registry = Registry(clock, expiry=settings.registration_expiry_interval)
    schemas = Schemas()
    registration = RegistrationAPI(registry, schemas, settings.api_versions)
    query = QueryAPI(registry, settings.api_versions, host_name=settings.host_name, authorization=settings.auth)
    apis = {"registration": registration.app.resource(), "query": query.app.resource()}
    if settings.auth:  # IS-10: every API behind the token check (docs/security.md)
        if guard is None:
            guard = authorization(settings, reactor, clock, dns_sd)
            guard.services.setServiceParent(top)
        apis = guard_apis(apis, guard.server, {"query": partial(_subscription_path, query)})
        top.keys = guard.server.keys  # type: ignore[attr-defined]
    site = make_site(root_resource(apis), settings.access_log, settings.hsts_max_age)
    if stapler is None:  # BCP-003-01: OCSP stapling for ssl: listeners (certificates naming an OCSP responder)
        stapler = ocsp_stapler(reactor, settings.listen, settings.tls_ca, clock)
        if stapler is not None:
            stapler.setServiceParent(top)
    for description in settings.listen:
        listener: IService = listen_service(description, site, reactor, settings.tls_certificates, stapler)
        listener.setServiceParent(top)
    if dns_sd.multicast is not None:
        listeners = [child for child in top if isinstance(child, StreamServerEndpointService)]
        RegistryAdvertiser(dns_sd.multicast, partial(listening, listeners), settings.api_versions, settings.pri,
                           settings.auth, dns_sd.host, dns_sd.interfaces).setServiceParent(top)
    serve_subscriptions(query, registry, clock, reactor).setServiceParent(top)
    collector = GarbageCollector(registry, clock)
    collector.clock = clock
    collector.setServiceParent(top)
    FreezeAfterFullCollection(clock).setServiceParent(top)
    LogLevelService(settings.log_level).setServiceParent(top)
    top.registry = registry  # type: ignore[attr-defined]  # for tests and later services
    top.site = site  # type: ignore[attr-defined]
    log.info("nmos-ref: registry serving IS-04 {versions} on {listen}; Nodes expire after {expiry} s",
             versions=", ".join(settings.api_versions), listen=", ".join(settings.listen),
             expiry=settings.registration_expiry_interval)
    return top
