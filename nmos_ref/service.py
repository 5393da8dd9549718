"""`twistd nmos-ref`: the command line and the service tree. The only module that touches the global reactor.

It imports the rest of nmos-ref (and with it Twisted's TCP support) only once the settings are known, so that a
process that needs no TLS can be started without pyOpenSSL (`nmos_ref.wiring.footprint`)."""

from __future__ import annotations

import sys
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

# The flag that sets each setting, so that a bad value is named as the user typed it (docs/configuration.md has
# the keys of the file).
FLAGS = {
    "listen": "--listen", "registration_expiry_interval": "--expiry", "host_name": "--host-name",
    "log_level": "--log-level", "log_format": "--log-format", "api_versions": "--api-versions",
    "access_log": "--access-log",
    "mdns_interfaces": "--mdns-interface", "dns_servers": "--dns-server", "dns_sd": "--dns-sd",
    "dns_sd_domain": "--dns-sd-domain", "pri": "--pri", "auth": "--auth", "auth_issuers": "--auth-issuers",
    "auth_fqdn": "--auth-fqdn", "auth_client_method": "--auth-client-method", "auth_state_dir": "--auth-state-dir",
    "node_listen": "--node-listen", "registries": "--registry", "node_file": "--node-file", "node_seed": "--seed",
    "heartbeat_interval": "--heartbeat-interval", "store": "--store",
}


TWISTD_PIDFILE = "twistd.pid"  # twistd's default --pidfile
PIDFILES = {"registry": "nmos-ref-registry.pid", "node": "nmos-ref-node.pid"}  # plain nmos-ref: nmos-ref.pid


class UsageExit(SystemExit):
    """A usage error, already said on stderr; the process exits with status 2 (twistd would print its whole help
    before a UsageError's message)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def _number(text: str, flag: str, what: str) -> float:
    """A flag's number as typed (an integer stays one, so that a message shows `0`, not `0.0`)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise usage.UsageError(f"{flag} must be {what}, not {text!r}") from None


def version_text() -> str:
    """What `--version` shows: nmos-ref's version, the IS-04 versions it serves, and what it runs on."""
    import platform

    from twisted import version as twisted_version

    from nmos_ref import __version__
    from nmos_ref.model.versions import ALL_VERSIONS

    return (f"nmos-ref {__version__}: AMWA NMOS IS-04 {', '.join(ALL_VERSIONS)} (Registration, Query and Node "
            f"APIs)\nTwisted {twisted_version.short()}, Python {platform.python_version()}")


class CommonOptions(usage.Options):
    """What `nmos-ref`, `nmos-ref registry` and `nmos-ref node` all take."""

    optParameters = [
        ["config", "c", None, "JSON configuration file (settings as in docs/configuration.md); flags override it"],
        ["host-name", None, None, "Host name to put in hrefs (default: the host each client used; for a Node, the "
                                  "addresses it listens on)"],
        ["log-level", None, None, "debug, info, warn, error or critical (default info)"],
        ["log-format", None, None, "text, or json: one JSON object per line, for log collectors (default text)"],
        ["api-versions", None, None, "Comma-separated IS-04 versions to serve (default v1.0,v1.1,v1.2,v1.3)"],
        ["dns-sd", None, None, "DNS-SD: both (unicast in the search domain, else mDNS), multicast, unicast or off "
                               "(default both)"],
        ["dns-sd-domain", None, None, "The unicast DNS-SD domain (default: the resolver's search domain)"],
        ["auth-issuers", None, None, "Comma-separated issuer URLs of the trusted authorization servers"],
        ["auth-fqdn", None, None, "This server's fully qualified name, as tokens' aud must name it"],
    ]
    optFlags = [["access-log", None, "Log one line per HTTP request"],
                ["auth", None, "Require IS-10 bearer tokens on every API (docs/security.md)"]]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["mdns-interface"] = []
        self["dns-server"] = []

    def opt_version(self) -> None:
        """Show the versions of nmos-ref, of the IS-04 APIs it serves and of Twisted, and exit."""
        print(version_text())
        sys.exit(0)

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
        for flag, key in (("host-name", "host_name"), ("log-level", "log_level"), ("log-format", "log_format")):
            if self[flag] is not None:
                values[key] = self[flag]
        if self["api-versions"] is not None:
            values["api_versions"] = [version.strip() for version in self["api-versions"].split(",")
                                      if version.strip()]
        if self["access-log"]:
            values["access_log"] = True
        for flag, key in (("mdns-interface", "mdns_interfaces"), ("dns-server", "dns_servers")):
            if self[flag]:
                values[key] = list(self[flag])
        for flag, key in (("dns-sd", "dns_sd"), ("dns-sd-domain", "dns_sd_domain")):
            if self[flag] is not None:
                values[key] = self[flag]
        if self["auth"]:
            values["auth"] = True
        if self["auth-issuers"] is not None:
            values["auth_issuers"] = [url.strip() for url in self["auth-issuers"].split(",") if url.strip()]
        if self["auth-fqdn"] is not None:
            values["auth_fqdn"] = self["auth-fqdn"]
        return values


class RegistryFlags(usage.Options):
    """What only the registry takes: `nmos-ref registry`, and plain `nmos-ref`."""

    optParameters = [
        ["expiry", None, None, "Seconds without a heartbeat before a Node is removed (default 12)"],
        ["pri", None, None, "The pri the Registration and Query APIs advertise (default 10; 100+ is development)"],
        ["store", None, None, "The registry's store: memory (default) or etcd://HOST:PORT[,HOST:PORT...], the "
                              "etcd members a registry cluster shares (docs/cluster.md)"],
    ]

    def flag_values(self) -> dict[str, Any]:
        values: dict[str, Any] = super().flag_values()  # type: ignore[misc]
        if self["expiry"] is not None:
            values["registration_expiry_interval"] = _number(self["expiry"], "--expiry", "a number of seconds")
        if self["pri"] is not None:
            try:
                values["pri"] = int(self["pri"])
            except ValueError:
                raise usage.UsageError(f"--pri must be an integer, not {self['pri']!r}") from None
        if self["store"] is not None:
            values["store"] = self["store"]
        return values


class NodeFlags(usage.Options):
    """What only a Node takes: `nmos-ref node`, and the demo Node of plain `nmos-ref`."""

    optParameters = [
        ["node-file", None, None, "JSON description of the Node (docs/node.md; default: the built-in demo Node)"],
        ["seed", None, None, "What the Node's ids are made from, so they survive restarts (default: the host name)"],
        ["heartbeat-interval", None, None, "Seconds between the Node's heartbeats (default 5)"],
        ["auth-client-method", None, None, "How the Node authenticates to the authorization server: private_key_jwt "
                                           "(default) or client_secret_basic"],
        ["auth-state-dir", None, None, "Where the Node keeps its OAuth key and client registration (default "
                                       "~/.local/state/nmos-ref)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["registry"] = []

    def opt_registry(self, url: str) -> None:
        """A Registration API to register with, e.g. http://127.0.0.1:8235 (repeatable, in priority order)."""
        self["registry"].append(url)

    def flag_values(self) -> dict[str, Any]:
        values: dict[str, Any] = super().flag_values()  # type: ignore[misc]
        if self["registry"]:
            values["registries"] = list(self["registry"])
        for flag, key in (("node-file", "node_file"), ("seed", "node_seed"), ("auth-client-method",
                          "auth_client_method"), ("auth-state-dir", "auth_state_dir")):
            if self[flag] is not None:
                values[key] = self[flag]
        if self["heartbeat-interval"] is not None:
            values["heartbeat_interval"] = _number(self["heartbeat-interval"], "--heartbeat-interval",
                                                   "a number of seconds")
        return values


# Settings only one role uses, and the subcommand that runs without it: given as a flag before that subcommand,
# they are refused rather than ignored (`twistd nmos-ref --seed x registry`).
NODE_ONLY = ("node_listen", "registries", "node_file", "node_seed", "heartbeat_interval", "auth_client_method",
             "auth_state_dir")
REGISTRY_ONLY = ("registration_expiry_interval", "pri", "store")


class RegistryOptions(RegistryFlags, CommonOptions):
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


class Options(NodeFlags, RegistryFlags, CommonOptions):
    synopsis = "[--listen STRPORT ...] [--node-listen STRPORT ...] [--config FILE] [registry|node]"
    longdesc = ("Run the NMOS IS-04 registry (Registration and Query APIs on 127.0.0.1:8235) and a demo Node "
                "registered with it (Node API on 127.0.0.1:8236). The subcommand 'registry' runs the registry alone, "
                "'node' a Node alone; each has its own --help.")
    subCommands = [["registry", None, RegistryOptions, "Run the registry alone"],
                   ["node", None, NodeOptions, "Run a Node alone"]]

    def __init__(self) -> None:
        super().__init__()
        self["node-listen"] = []

    def opt_node_listen(self, description: str) -> None:
        """Serve the demo Node's Node API on this strports description (repeatable; default
        tcp:8236:interface=127.0.0.1)."""
        self["node-listen"].append(description)

    def flag_values(self) -> dict[str, Any]:
        values = super().flag_values()
        if self["node-listen"]:
            values["node_listen"] = list(self["node-listen"])
        return values

    def parse(self, argv: list[str]) -> None:
        """Parse `argv`; usage.UsageError says what is wrong (tests and embedders)."""
        usage.Options.parseOptions(self, argv)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """What twistd calls: a usage error is said in one line naming what the user typed, with a pointer to
        --help, and the process exits with status 2."""
        try:
            self.parse(options if options is not None else sys.argv[1:])
        except usage.UsageError as error:
            raise usage_exit(self, error) from None

    def postOptions(self) -> None:
        self["settings"] = settings_from(self)
        self["parts"] = {"registry": ("registry",), "node": ("node",)}.get(self.subCommand or "",
                                                                           ("registry", "node"))
        # twistd writes twistd.pid in the working folder unless told otherwise, so a registry and a Node started in
        # one folder clashed ("Another twistd server is running"). twistd's options are our parent's, read after we
        # are parsed: its default becomes one per role. --pidfile (another name, or none) still decides.
        twistd = getattr(self, "parent", None)
        if twistd is not None and twistd.get("pidfile") == TWISTD_PIDFILE:
            twistd["pidfile"] = PIDFILES.get(self.subCommand or "", "nmos-ref.pid")


def usage_exit(options: Options, error: Exception, stream: Any = None) -> UsageExit:
    """Say `error` on `stream` (stderr) as `twistd nmos-ref [registry|node]: <message>` and where the options are
    listed; the exception that ends the process."""
    command = "twistd nmos-ref" + (f" {options.subCommand}" if options.subCommand else "")
    message = f"{command}: {error}\nSee '{command} --help' for the options."
    print(message, file=stream if stream is not None else sys.stderr)
    return UsageExit(message)


def settings_from(options: Options) -> Settings:
    """Defaults, then the --config file, then flags; flags given before or after the subcommand both count. A bad
    setting is named as the user wrote it: the flag typed, or the key and its file."""
    sub = options.subOptions if options.subCommand else None
    layers = [options] + ([sub] if sub is not None else [])
    config_file = next((layer["config"] for layer in reversed(layers) if layer["config"]), None)
    names: dict[str, str] = {}  # how the user wrote each setting given
    try:
        settings = Settings()
        if config_file is not None:
            from_file = load_file(config_file)
            settings = apply(settings, from_file, config_file)
            names.update((key, f"{key} (in {config_file})") for key in from_file)
        flags: dict[str, Any] = {}
        for layer in layers:
            values = layer.flag_values()
            names.update((key, FLAGS[key]) for key in values)
            foreign = {"registry": NODE_ONLY, "node": REGISTRY_ONLY}.get(options.subCommand or "", ())
            for key in foreign:
                if key in values:
                    raise ConfigError(f"{FLAGS[key]} is not for '{options.subCommand}', which runs no "
                                      f"{'Node' if options.subCommand == 'registry' else 'registry'}")
            if options.subCommand == "node" and "listen" in values:
                # `nmos-ref node` serves only the Node API, so --listen is where it listens.
                values["node_listen"] = values.pop("listen") + values.get("node_listen", [])
                names["node_listen"] = "--listen"
            # Repeatable flags add up wherever they are given; other flags after the subcommand win.
            for key in ADDITIVE:
                values[key] = flags.get(key, []) + values.get(key, [])
            flags.update(values)
        for key in ADDITIVE:
            if not flags[key]:
                del flags[key]
        settings = apply(settings, flags, "command line", names)
    except ConfigError as exc:
        raise usage.UsageError(str(exc)) from None
    node = options.subCommand != "registry"
    without_tls(settings, node=node)  # before anything imports the reactor or Twisted's endpoints
    from twisted.internet import reactor

    from nmos_ref.wiring.checks import check_settings

    try:
        check_settings(settings, reactor, node=node, names=names)
    except ConfigError as exc:
        raise usage.UsageError(str(exc)) from None
    return settings


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    from nmos_ref.wiring.log_output import filtered, twistd_output
    from nmos_ref.wiring.tree import build_all

    settings: Settings = options["settings"]
    observer = None
    twistd = getattr(options, "parent", None)  # twistd's own options, when twistd runs us
    if twistd is not None:
        output = twistd_output(twistd, settings.log_format)
        observer = filtered(output, settings.log_level) if output is not None else None
    return build_all(settings, reactor, parts=options["parts"], log_observer=observer)
