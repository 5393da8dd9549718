"""`twistd nmos-ref`: the command line and the service tree. The only module that touches the global reactor."""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python import usage

from nmos_ref.api.query import QueryAPI
from nmos_ref.api.registration import RegistrationAPI
from nmos_ref.auth.guard import guard_apis
from nmos_ref.auth.service import Authorization, authorization
from nmos_ref.config import ConfigError, Settings, apply, load_file
from nmos_ref.discovery.registry import RegistryAdvertiser
from nmos_ref.discovery.setup import DnsSd, build_dns_sd
from nmos_ref.gc_policy import FreezeAfterFullCollection
from nmos_ref.model.store import Registry
from nmos_ref.node.service import build_node, listening
from nmos_ref.tls.ocsp import OCSPStapler, ocsp_stapler
from nmos_ref.tls.server import listen_service
from nmos_ref.validation import Schemas
from nmos_ref.web.root import root_resource
from nmos_ref.web.server import make_site
from nmos_ref.wiring.checks import check_settings
from nmos_ref.ws.protocol import serve_subscriptions

log = Logger()

GC_PERIOD = 0.5  # seconds between garbage collection sweeps: Nodes go at most this long after their expiry
# repeatable flags, added up across the subcommand
ADDITIVE = ("listen", "node_listen", "registries", "mdns_interfaces", "dns_servers")


class CommonOptions(usage.Options):
    """What `nmos-ref`, `nmos-ref registry` and `nmos-ref node` all take."""

    optParameters = [
        ["config", "c", None, "JSON configuration file (settings as in docs/configuration.md); flags override it"],
        ["expiry", None, None, "Seconds without a heartbeat before a Node is removed (default 12)"],
        ["host-name", None, None, "Host name to put in hrefs (default: the host each client used; for a Node, the "
                                  "addresses it listens on)"],
        ["log-level", None, None, "debug, info, warn, error or critical (default info)"],
        ["api-versions", None, None, "Comma-separated IS-04 versions to serve (default v1.0,v1.1,v1.2,v1.3)"],
        ["dns-sd", None, None, "DNS-SD: both (unicast in the search domain, else mDNS), multicast, unicast or off "
                               "(default both)"],
        ["dns-sd-domain", None, None, "The unicast DNS-SD domain (default: the resolver's search domain)"],
        ["pri", None, None, "The pri the Registration and Query APIs advertise (default 10; 100+ is development)"],
        ["auth-issuers", None, None, "Comma-separated issuer URLs of the trusted authorization servers"],
        ["auth-fqdn", None, None, "This server's fully qualified name, as tokens' aud must name it"],
        ["auth-client-method", None, None, "How the Node authenticates to the authorization server: private_key_jwt "
                                           "(default) or client_secret_basic"],
        ["auth-state-dir", None, None, "Where the Node keeps its OAuth key and client registration (default "
                                       "~/.local/state/nmos-ref)"],
    ]
    optFlags = [["access-log", None, "Log one line per HTTP request"],
                ["auth", None, "Require IS-10 bearer tokens on every API (docs/security.md)"]]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["mdns-interface"] = []
        self["dns-server"] = []

    def opt_mdns_interface(self, address: str) -> None:
        """An address whose interface mDNS uses (repeatable; default: those the APIs listen on)."""
        self["mdns-interface"].append(address)

    def opt_dns_server(self, server: str) -> None:
        """A name server for unicast DNS-SD, ADDRESS[:PORT] (repeatable; default: the resolver's)."""
        self["dns-server"].append(server)

    def opt_listen(self, description: str) -> None:
        """Serve the APIs on this strports description (repeatable; default tcp:8235:interface=127.0.0.1)."""
        self["listen"].append(description)

    def flag_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self["listen"]:
            values["listen"] = list(self["listen"])
        if self["expiry"] is not None:
            try:
                values["registration_expiry_interval"] = float(self["expiry"])
            except ValueError:
                raise usage.UsageError(f"--expiry must be a number of seconds, not {self['expiry']!r}") from None
        for flag, key in (("host-name", "host_name"), ("log-level", "log_level"), ("api-versions", "api_versions")):
            if self[flag] is not None:
                values[key] = self[flag]
        if self["access-log"]:
            values["access_log"] = True
        for flag, key in (("mdns-interface", "mdns_interfaces"), ("dns-server", "dns_servers")):
            if self[flag]:
                values[key] = list(self[flag])
        for flag, key in (("dns-sd", "dns_sd"), ("dns-sd-domain", "dns_sd_domain")):
            if self[flag] is not None:
                values[key] = self[flag]
        if self["pri"] is not None:
            try:
                values["pri"] = int(self["pri"])
            except ValueError:
                raise usage.UsageError(f"--pri must be an integer, not {self['pri']!r}") from None
        if self["auth"]:
            values["auth"] = True
        if self["auth-issuers"] is not None:
            values["auth_issuers"] = [url.strip() for url in self["auth-issuers"].split(",") if url.strip()]
        for flag, key in (("auth-fqdn", "auth_fqdn"), ("auth-client-method", "auth_client_method"),
                          ("auth-state-dir", "auth_state_dir")):
            if self[flag] is not None:
                values[key] = self[flag]
        return values


class NodeFlags(usage.Options):
    """What configures a Node: `nmos-ref node`, and the demo Node of plain `nmos-ref`."""

    optParameters = [
        ["node-file", None, None, "JSON description of the Node (docs/node.md; default: the built-in demo Node)"],
        ["seed", None, None, "What the Node's ids are made from, so they survive restarts (default: the host name)"],
        ["heartbeat-interval", None, None, "Seconds between the Node's heartbeats (default 5)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["node-listen"] = []
        self["registry"] = []

    def opt_node_listen(self, description: str) -> None:
        """Serve the Node API on this strports description (repeatable; default tcp:8236:interface=127.0.0.1)."""
        self["node-listen"].append(description)

    def opt_registry(self, url: str) -> None:
        """A Registration API to register with, e.g. http://127.0.0.1:8235 (repeatable, in priority order)."""
        self["registry"].append(url)

    def flag_values(self) -> dict[str, Any]:
        values: dict[str, Any] = super().flag_values()  # type: ignore[misc]
        if self["node-listen"]:
            values["node_listen"] = list(self["node-listen"])
        if self["registry"]:
            values["registries"] = list(self["registry"])
        for flag, key in (("node-file", "node_file"), ("seed", "node_seed")):
            if self[flag] is not None:
                values[key] = self[flag]
        if self["heartbeat-interval"] is not None:
            try:
                values["heartbeat_interval"] = float(self["heartbeat-interval"])
            except ValueError:
                raise usage.UsageError(f"--heartbeat-interval must be a number of seconds, not "
                                       f"{self['heartbeat-interval']!r}") from None
        return values


class RegistryOptions(CommonOptions):
    synopsis = "[--listen STRPORT ...] [--config FILE]"
    longdesc = "Run the registry alone: the Registration and Query APIs, on the same listen ports."


class NodeOptions(NodeFlags, CommonOptions):
    synopsis = "[--listen STRPORT ...] [--config FILE] [--registry URL ...] [--node-file FILE]"
    longdesc = ("Run a Node alone: its Node API on the listen ports (here --listen means the Node API's; default "
                "tcp:8236:interface=127.0.0.1), registered with the Registration APIs given by --registry, in "
                "priority order. Without --node-file it is the built-in demo Node.")

    def opt_listen(self, description: str) -> None:
        """Serve the Node API on this strports description (repeatable; default tcp:8236:interface=127.0.0.1)."""
        self["listen"].append(description)


class Options(NodeFlags, CommonOptions):
    synopsis = "[--listen STRPORT ...] [--node-listen STRPORT ...] [--config FILE] [registry|node]"
    longdesc = ("Run the NMOS IS-04 registry (Registration and Query APIs on 127.0.0.1:8235) and a demo Node "
                "registered with it (Node API on 127.0.0.1:8236). The subcommand 'registry' runs the registry alone, "
                "'node' a Node alone.")
    subCommands = [["registry", None, RegistryOptions, "Run the registry alone"],
                   ["node", None, NodeOptions, "Run a Node alone"]]

    def postOptions(self) -> None:
        self["settings"] = settings_from(self)
        self["parts"] = {"registry": ("registry",), "node": ("node",)}.get(self.subCommand or "",
                                                                           ("registry", "node"))


def settings_from(options: Options) -> Settings:
    """Defaults, then the --config file, then flags; flags given before or after the subcommand both count."""
    sub = options.subOptions if options.subCommand else None
    layers = [options] + ([sub] if sub is not None else [])
    config_file = next((layer["config"] for layer in reversed(layers) if layer["config"]), None)
    try:
        settings = Settings()
        if config_file is not None:
            settings = apply(settings, load_file(config_file), config_file)
        flags: dict[str, Any] = {}
        for layer in layers:
            values = layer.flag_values()
            if options.subCommand == "node" and "listen" in values:
                # `nmos-ref node` serves only the Node API, so --listen is where it listens.
                values["node_listen"] = values.pop("listen") + values.get("node_listen", [])
            # Repeatable flags add up wherever they are given; other flags after the subcommand win.
            for key in ADDITIVE:
                values[key] = flags.get(key, []) + values.get(key, [])
            flags.update(values)
        for key in ADDITIVE:
            if not flags[key]:
                del flags[key]
        settings = apply(settings, flags, "command line")
    except ConfigError as exc:
        raise usage.UsageError(str(exc)) from None
    from twisted.internet import reactor

    try:
        check_settings(settings, reactor, node=options.subCommand != "registry")
    except ConfigError as exc:
        raise usage.UsageError(str(exc)) from None
    return settings


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


class LogLevelService(Service):
    """Filters the log below the configured level. twistd starts its observers after `makeService` and offers no
    level setting, so on start each of them is wrapped in a filter (and unwrapped on stop)."""

    def __init__(self, level: str) -> None:
        self.level = LogLevel.levelWithName(level)
        self._wrapped: list[tuple[ILogObserver, ILogObserver]] = []

    def startService(self) -> None:
        super().startService()
        predicate = LogLevelFilterPredicate(defaultLogLevel=self.level)
        for observer in list(getattr(globalLogPublisher, "_observers", [])):
            filtered = FilteringLogObserver(observer, [predicate])
            globalLogPublisher.removeObserver(observer)
            globalLogPublisher.addObserver(filtered)
            self._wrapped.append((observer, filtered))

    def stopService(self) -> None:
        for observer, filtered in self._wrapped:
            globalLogPublisher.removeObserver(filtered)
            globalLogPublisher.addObserver(observer)
        self._wrapped.clear()
        super().stopService()


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


def build_all(settings: Settings, reactor: Any, clock: IReactorTime | None = None,
              parts: tuple[str, ...] = ("registry", "node")) -> MultiService:
    """What `twistd nmos-ref` runs: the registry, a Node, or both, the Node then registered with this registry."""
    top = StopInOrder()
    local = None
    # One DNS-SD for the process, stopped last (after the adverts are withdrawn); the Node browses only without
    # the registry of this process.
    served = (settings.listen if "registry" in parts else []) + (settings.node_listen if "node" in parts else [])
    dns_sd = build_dns_sd(settings, reactor, clock or reactor, served,
                          browse=("registry" not in parts and not settings.registries) or settings.auth)
    if dns_sd.multicast is not None:
        dns_sd.multicast.setServiceParent(top)
    stapler = ocsp_stapler(reactor, served, settings.tls_ca, clock)  # one OCSP stapler for every listener
    if stapler is not None:
        stapler.setServiceParent(top)
    guard = None
    if settings.auth:  # one resource server (one key cache) for every API of the process
        guard = authorization(settings, reactor, clock or reactor, dns_sd)
        guard.services.setServiceParent(top)
    if "registry" in parts:
        registry = build(settings, reactor, clock, dns_sd, guard, stapler)
        registry.setServiceParent(top)
        top.registry = registry.registry  # type: ignore[attr-defined]
        listeners = [child for child in registry if isinstance(child, StreamServerEndpointService)]
        local = partial(listening, listeners)
    if "node" in parts:
        node = build_node(settings, reactor, clock, local_registries=local, dns_sd=dns_sd, guard=guard,
                          stapler=stapler)
        node.setServiceParent(top)
        top.node = node  # type: ignore[attr-defined]
    return top


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    return build_all(options["settings"], reactor, parts=options["parts"])
