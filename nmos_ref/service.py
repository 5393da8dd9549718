"""`twistd nmos-ref`: the command line and the service tree. The only module that touches the global reactor.

It imports the rest of nmos-ref (and with it Twisted's TCP support) only once the settings are known, so that a
process that needs no TLS can be started without pyOpenSSL (`nmos_ref.wiring.footprint`)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import (
    Logger,
)
from twisted.python import usage

from nmos_ref.config import ConfigError, Settings, apply, load_file
from nmos_ref.wiring.footprint import without_tls

log = Logger()

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
        ["store", None, None, "The registry's store: memory (default) or etcd://HOST:PORT[,HOST:PORT...], the "
                              "etcd members a registry cluster shares (docs/cluster.md)"],
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
        for flag, key in (("dns-sd", "dns_sd"), ("dns-sd-domain", "dns_sd_domain"), ("store", "store")):
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
    node = options.subCommand != "registry"
    without_tls(settings, node=node)  # before anything imports the reactor or Twisted's endpoints
    from twisted.internet import reactor

    from nmos_ref.wiring.checks import check_settings

    try:
        check_settings(settings, reactor, node=node)
    except ConfigError as exc:
        raise usage.UsageError(str(exc)) from None
    return settings


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    from nmos_ref.wiring.tree import build_all

    return build_all(options["settings"], reactor, parts=options["parts"])
