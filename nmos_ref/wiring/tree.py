"""What `twistd nmos-ref` runs: the registry, a Node, or both, with the one DNS-SD, OCSP stapler and resource
server of the process; the only place that decides the clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from nmos_ref.config import ConfigError, Settings
from nmos_ref.discovery import InterfaceUnusable
from nmos_ref.model.store import Registry
from nmos_ref.web.metrics import Family, Metrics
from nmos_ref.wiring.dnssd import build_dns_sd
from nmos_ref.wiring.listeners import listening, ocsp_stapler
from nmos_ref.wiring.registry import build_registry
from nmos_ref.wiring.tuning import DebugEvents

if TYPE_CHECKING:
    from nmos_ref.wiring.node import NodeService

log = Logger()


class StopInOrder(MultiService):
    """Stops its children one at a time, the last added first: the Node unregisters before the registry it
    registered with stops listening."""

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return ensureDeferred(self._stop_all())

    async def _stop_all(self) -> None:
        for service in reversed(list(self)):
            try:
                await maybeDeferred(service.stopService)
            except Exception:
                log.failure("Stopping {service} failed", service=service)


class CannotStart(SystemExit, Exception):
    """The process cannot start, for the reason already logged in one critical line. An Exception, so that twistd
    cleans up as after any failed start (removes its pid file, tells the parent of a daemon); a SystemExit with
    status 1, so that the interpreter then exits without printing a traceback."""

    def __init__(self, reason: str) -> None:
        super().__init__(1)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ProcessTree(StopInOrder):
    """What one `twistd nmos-ref` process runs, with its registry's store and its Node when it has them. A setting
    that turns out unusable while starting (a port in use, an mDNS interface that cannot be joined) stops the start
    with one line naming it (CannotStart)."""

    def __init__(self, services: list[IService], registry: Registry | None, node: NodeService | None,
                 log_observer: ILogObserver | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.node = node
        self.log_observer = log_observer
        for service in services:  # in start order; StopInOrder stops them the other way round
            service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        """Added to twistd's application: offer it the process's log observer, which twistd then uses instead of
        its own from the first line (nmos_ref.wiring.log_output)."""
        super().setServiceParent(parent)
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # the listeners listen here
        except (ConfigError, InterfaceUnusable) as exc:
            raise cannot_start(exc) from None

    def startService(self) -> None:
        try:
            super().startService()
        except (ConfigError, InterfaceUnusable) as exc:
            raise cannot_start(exc) from None


def cannot_start(reason: Exception) -> CannotStart:
    log.critical("nmos-ref cannot start: {reason}", reason=str(reason))
    return CannotStart(str(reason))


def refusal_families(server: Any) -> Iterable[Family]:
    """IS-10: requests refused for their token (a `nmos_ref.auth.guard.ResourceServer`'s count), by status."""
    yield ("nmos_auth_refusals_total", "counter", "Requests refused for their bearer token, by status",
           [((("code", str(code)),), server.refused.get(code, 0)) for code in (401, 403)])


def build_all(settings: Settings, reactor: Any, clock: IReactorTime | None = None,
              parts: tuple[str, ...] = ("registry", "node"), log_observer: ILogObserver | None = None) -> ProcessTree:
    """What `twistd nmos-ref` runs: the registry, a Node, or both, the Node then registered with this registry.
    The one place that decides the clock: the reactor, unless a test passes a Clock; everything below is given it.
    `log_observer`: the process's log output (twistd's application is offered it)."""
    clock = reactor if clock is None else clock
    services: list[IService] = [DebugEvents(settings.log_level)]
    metrics = Metrics()  # one for the process: /metrics on every port it serves
    # One DNS-SD for the process, stopped last (after the adverts are withdrawn); the Node browses only without
    # the registry of this process.
    served = (settings.listen if "registry" in parts else []) + (settings.node_listen if "node" in parts else [])
    dns_sd = build_dns_sd(settings, reactor, clock, served,
                          browse=("registry" not in parts and not settings.registries) or settings.auth)
    if dns_sd.multicast is not None:
        services.append(dns_sd.multicast)
    stapler = ocsp_stapler(reactor, served, settings.tls_ca, clock)  # one OCSP stapler for every listener
    if stapler is not None:
        services.append(stapler)
    guard = None
    if settings.auth:  # one resource server (one key cache) for every API of the process
        # IS-10's stack only with auth on (idle footprint, issue 13)
        from nmos_ref.wiring.auth import authorization

        guard = authorization(settings, reactor, clock, dns_sd)
        services.append(guard.services)
        metrics.collect(partial(refusal_families, guard.server))
    registry, local, node = None, None, None
    if "registry" in parts:
        registry = build_registry(settings, reactor, clock, dns_sd, guard, stapler, metrics)
        services.append(registry)
        listeners = [child for child in registry if isinstance(child, StreamServerEndpointService)]
        local = partial(listening, listeners)
    if "node" in parts:
        # the Node's APIs and HTTP client only with a Node
        from nmos_ref.wiring.node import build_node

        node = build_node(settings, reactor, clock, local_registries=local, dns_sd=dns_sd, guard=guard,
                          stapler=stapler, metrics=metrics)
        services.append(node)
    return ProcessTree(services, registry.registry if registry is not None else None, node, log_observer)
