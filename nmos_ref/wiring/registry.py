"""The registry as a service: its store, Registration and Query APIs (with their WebSocket subscriptions),
listeners, adverts, expiry sweep and process tuning, built from the settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.server import Site

from nmos_ref.api.query import QueryAPI
from nmos_ref.api.registration import RegistrationAPI
from nmos_ref.api.subscription_service import SubscriptionService
from nmos_ref.config import Settings
from nmos_ref.discovery.registry_advert import RegistryAdvertiser
from nmos_ref.model.downgrade import Translations
from nmos_ref.model.query_params import Limits
from nmos_ref.model.store import REMOVAL_STEP, Change, Registry
from nmos_ref.tls.server import Listener, listen_service
from nmos_ref.validation import Schemas
from nmos_ref.web.metrics import CheckResource, Metrics, StoreCounts, operations, subscription_families
from nmos_ref.web.root import root_resource
from nmos_ref.web.server import make_site
from nmos_ref.web.ui_page import UiResource
from nmos_ref.wiring.dnssd import DnsSd, build_dns_sd
from nmos_ref.wiring.listeners import listening, ocsp_stapler
from nmos_ref.wiring.tuning import FreezeAfterFullCollection, LongestTurn
from nmos_ref.ws.connection import SubscriptionLimits
from nmos_ref.ws.subscriptions import SubscriptionManager

if TYPE_CHECKING:
    from nmos_ref.auth.keys import KeyCache
    from nmos_ref.tls.ocsp import OCSPStapler
    from nmos_ref.wiring.auth import Authorization

log = Logger()


def subscription_service(registry: Registry, translations: Translations, clock: IReactorTime, reactor: Any,
                         limits: SubscriptionLimits = SubscriptionLimits(),
                         source_id: str | None = None) -> SubscriptionService:
    """The WebSocket subscriptions of a Query API: the manager (`clock` for expiry and rate limits, `reactor` for
    the sockets and for yielding between slices of work) and the resource its routes hand sockets to; the service
    closes the sockets on stop."""
    manager = SubscriptionManager(registry, clock, translations, scheduler=reactor, source_id=source_id,
                                  limits=limits)
    return SubscriptionService(manager, reactor)  # Autobahn is imported when the first socket opens


GC_PERIOD = 0.5  # seconds between garbage collection sweeps: Nodes go at most this long after their expiry
LATE_TOLERANCE = 1.0  # seconds a sweep may run late before the lateness is counted as a stall


class ExpirySweep(TimerService):
    """Removes expired Nodes (and everything below them) from the registry every GC_PERIOD seconds.

    A sweep that runs much later than its period means the reactor (or the whole host) stalled: heartbeats that
    arrived meanwhile are still unread in the sockets, and the timers run before the sockets are read. Expiring
    Nodes then would remove a healthy facility because the registry stopped listening. So a sweep late by more than
    `tolerance` seconds first postpones every Node's expiry by its lateness (the time the registry was deaf, said
    in a warning), and then collects as usual: a Node silent for longer than the expiry while the registry was
    listening still goes now, and one whose heartbeat is waiting is read before its new deadline. The same covers
    the wall clock jumping forward (the reactor's time is the wall clock's).
    """

    def __init__(self, registry: Registry, clock: IReactorTime, period: float = GC_PERIOD,
                 tolerance: float = LATE_TOLERANCE, step: int = REMOVAL_STEP) -> None:
        super().__init__(period, self._sweep)
        self.clock = clock  # TimerService's LoopingCall reads it when the service starts
        self.registry = registry
        self.tolerance = tolerance
        self.removal_step = step  # resources removed per reactor turn when many expire at once
        self._last: float | None = None  # when the previous sweep ran
        self._more: IDelayedCall | None = None  # the next turn of a removal still under way
        self._stopping = False  # TimerService counts itself running until its current call has returned
        self._below = 0  # resources of the Node being expired removed so far (for its log line)

    def startService(self) -> None:
        self._last = None
        self._stopping = False
        super().startService()

    def stopService(self) -> Any:
        self._stopping = True
        if self._more is not None and self._more.active():
            self._more.cancel()
        self._more = None
        return super().stopService()

    def _sweep(self) -> None:
        now = self.clock.seconds()  # the time read once per tick
        last, self._last = self._last, now
        try:
            late = now - last - self.step if last is not None else 0.0
            if late > self.tolerance:
                log.warn("Expiry sweep ran {late:.1f} s late (the reactor or its host stalled): every Node's expiry "
                         "postponed by {late:.1f} s, since heartbeats sent meanwhile may still be unread",
                         late=late)
                self.registry.postpone_expiry(late, now)
            self._collect(now)
        except Exception:
            log.failure("Garbage collection failed; trying again in {period} s", period=self.step)

    def _collect(self, now: float) -> None:
        """Remove up to `removal_step` resources of expired Nodes; the rest in the next turns of the reactor, so that
        heartbeats are answered between them even when thousands of resources expire at once."""
        self._more = None
        removed = self.registry.collect_garbage(now, self.removal_step)
        if removed:
            self._log_expired(removed)
        if self.registry.collecting and not self._stopping:
            self._more = self.clock.callLater(0, self._continue)

    def _continue(self) -> None:
        try:
            self._collect(self.clock.seconds())
        except Exception:
            log.failure("Garbage collection failed; trying again in {period} s", period=self.step)


    def _log_expired(self, removed: list[Change]) -> None:
        """One line per expired Node, with how many resources went with it. The store removes one expired Node's
        tree at a time, leaves first and the Node last, over as many calls as it takes: the count goes on from one
        call to the next."""
        below = self._below
        for change in removed:
            if change.cause != "expire":
                below += 1
                continue
            label = change.pre.data.get("label") if change.pre is not None else None
            log.info("Node {id} ({label}) expired, and {below} resources below it", id=change.id, label=label,
                     below=below)
            below = 0
        self._below = below


def subscription_path(manager: SubscriptionManager, version: str, sid: str) -> str | None:
    """BCP-003-02: a subscription socket is judged by the subscription's resource_path."""
    subscription = manager.get(sid)
    return subscription.wanted.resource_path if subscription is not None else None


class RegistryService(MultiService):
    """The registry's service tree, with what tests and the process tree read of it; once every listener listens,
    it says where it serves (only then: a port that cannot be opened stops the start instead)."""

    def __init__(self, registry: Registry, site: Site, keys: KeyCache | None, listeners: list[Listener],
                 settings: Settings) -> None:
        super().__init__()
        self.registry = registry
        self.site = site
        self.keys = keys  # with authorization: the resource server's key cache
        self.listeners = listeners  # children too
        self.versions = settings.api_versions
        self.expiry = settings.registration_expiry_interval

    def startService(self) -> None:
        super().startService()
        listening(self.listeners).addCallbacks(self._serving, lambda _failure: None)

    def _serving(self, addresses: list[tuple[str, Any]]) -> None:
        log.info("nmos-ref: registry serving IS-04 {versions} at {urls}; Nodes expire after {expiry:g} s",
                 versions=", ".join(self.versions), urls=", ".join(base_url(protocol, address)
                                                                   for protocol, address in addresses),
                 expiry=self.expiry)


def not_listening(listeners: list[Any]) -> str | None:
    """For /ready: the listen descriptions not listening (yet, or any more), if any."""
    idle = [getattr(listener, "description", repr(listener)) for listener in listeners if not listener.running]
    return f"not listening on {', '.join(idle)}" if idle else None


def base_url(protocol: str, address: Any) -> str:
    """http://127.0.0.1:8235/ for a listening address ([::1] for IPv6; 0.0.0.0 and :: as they are)."""
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{protocol}://{host}:{address.port}/"


def compose_apis(registry: Registry, translations: Translations, subscriptions: SubscriptionService,
                 clock: IReactorTime, cooperator: Cooperator, versions: Sequence[str], shared: Any = None, *,
                 host_name: str | None = None, authorization: bool = False, limits: Limits = Limits(),
                 schemas: Schemas | None = None) -> dict[str, Any]:
    """The Registration and Query APIs over `registry`, by name. With `shared` (a cluster member's
    ClusterStoreService): the writes go to its store, every member's subscriptions are listed, and Query API
    answers say when the replica may be stale."""
    store: Any = registry if shared is None else shared.store  # what the Registration API writes to
    listed: Any = subscriptions.manager if shared is None else shared.subscriptions  # what /subscriptions lists
    schemas = schemas or Schemas()
    registration = RegistrationAPI(store, schemas, list(versions), clock, cooperator)
    query = QueryAPI(registry, versions, host_name=host_name, limits=limits, schemas=schemas,
                     authorization=authorization, translations=translations, subscriptions=listed,
                     websockets=subscriptions.resource, cooperator=cooperator)
    apis: dict[str, Any] = {"registration": registration.app.resource(), "query": query.app.resource()}
    if shared is not None:
        from nmos_ref.wiring.cluster import StaleMarker

        apis["query"] = StaleMarker(apis["query"], shared.store)
    return apis


def build_registry(settings: Settings, reactor: Any, clock: IReactorTime, dns_sd: DnsSd | None = None,
                   guard: Authorization | None = None, stapler: OCSPStapler | None = None,
                   metrics: Metrics | None = None) -> RegistryService:
    """The registry's service tree for `settings`, timed by `clock` (the reactor in service, a Clock in tests);
    `dns_sd` defaults to the DNS-SD of the settings (started and stopped here), `guard` (with auth) to a resource
    server made here, `stapler` (for ssl: listeners) to an OCSP stapler made here, `metrics` (the process's) to
    metrics of its own."""
    services: list[IService] = []
    metrics = metrics if metrics is not None else Metrics()
    if dns_sd is None:
        dns_sd = build_dns_sd(settings, reactor, clock, settings.listen, browse=settings.auth)
        if dns_sd.multicast is not None:
            services.append(dns_sd.multicast)
    registry = Registry(expiry=settings.registration_expiry_interval)
    translations = Translations()  # the served forms, shared by the Query API and its subscriptions
    registry.feed.subscribe(translations.changed)
    subscriptions = subscription_service(registry, translations, clock, reactor)
    # Long work (a big Node's DELETE, a v1.0 list of many resources, a cluster replica's big removal) in slices, one
    # per turn of the reactor.
    cooperator = Cooperator(scheduler=partial(reactor.callLater, 0))
    shared = None
    if settings.store != "memory":
        # A registry cluster (docs/cluster.md): writes go to etcd, `registry` is this member's replica of it and
        # etcd's leases expire the Nodes; every member's subscriptions are listed. treq and the etcd client only
        # then (idle footprint, issue 13).
        from nmos_ref.wiring.cluster import cluster_store

        shared = cluster_store(settings, reactor, clock, registry, subscriptions.manager, cooperator)
    apis = compose_apis(registry, translations, subscriptions, clock, cooperator, settings.api_versions, shared,
                        host_name=settings.host_name, authorization=settings.auth)
    listed: Any = subscriptions.manager if shared is None else shared.subscriptions
    keys = None
    if settings.auth:  # IS-10: every API behind the token check (docs/security.md)
        # pyjwt and the key fetcher's HTTP client only with auth on (idle footprint, issue 13)
        from nmos_ref.auth.guard import guard_apis
        from nmos_ref.wiring.auth import authorization

        if guard is None:
            guard = authorization(settings, reactor, clock, dns_sd)
            services.append(guard.services)
        apis = guard_apis(apis, guard.server, {"query": partial(subscription_path, listed)})
        keys = guard.server.keys
    counts = StoreCounts(registry)
    metrics.collect(counts.families)
    metrics.collect(partial(subscription_families, subscriptions.manager))
    ready = CheckResource()  # /ready: every listener listens, and in a cluster the replica is fed
    # The live registry page (an extension beside /x-nmos), linked from the page a browser gets for `/`.
    page = UiResource(settings.api_versions, settings.registration_expiry_interval, settings.auth)
    site = make_site(root_resource(apis, {"ui": page, **operations(metrics, ready)}, [("Live registry page", "/ui/")]),
                     settings.access_log, settings.hsts_max_age, metrics)
    if stapler is None:  # BCP-003-01: OCSP stapling for ssl: listeners (certificates naming an OCSP responder)
        stapler = ocsp_stapler(reactor, settings.listen, settings.tls_ca, clock)
        if stapler is not None:
            services.append(stapler)
    listeners = [listen_service(description, site, reactor, settings.tls_certificates, stapler)
                 for description in settings.listen]
    services += listeners
    ready.checks.append(partial(not_listening, listeners))
    if shared is not None:
        services.append(shared)
        cluster = shared.store
        ready.checks.append(lambda: None if cluster.current else "the etcd store is not reachable (the Query API "
                                                                  "answers from a replica that may be stale)")
    if dns_sd.multicast is not None:
        services.append(RegistryAdvertiser(dns_sd.multicast, partial(listening, listeners), settings.api_versions,
                                           settings.pri, settings.auth, dns_sd.host, dns_sd.interfaces))
    services.append(subscriptions)
    if shared is None:  # in a cluster, etcd's leases expire the Nodes
        services.append(ExpirySweep(registry, clock))
    services += [FreezeAfterFullCollection(clock),
                 LongestTurn(reactor)]  # the reactor's own turns, whatever clock drives the timers
    top = RegistryService(registry, site, keys, listeners, settings)
    for service in services:
        service.setServiceParent(top)
    return top
