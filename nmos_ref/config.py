"""Settings: defaults, then a JSON configuration file, then command-line flags. Every setting is checked on load,
so a typo or a wrong type stops the service at start with a message that names it."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrs import asdict, define, field

from nmos_ref.model.versions import ALL_VERSIONS, sort_versions

DEFAULT_LISTEN = "tcp:8235:interface=127.0.0.1"
DEFAULT_NODE_LISTEN = "tcp:8236:interface=127.0.0.1"  # the Node's own port: it stands for another machine
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")  # twistd's text lines, or one JSON object per line for log collectors
DNS_SD_MODES = ("both", "multicast", "unicast", "off")


class ConfigError(ValueError):
    """A setting that cannot be used; the message says which and why."""


@define
class Settings:
    listen: list[str] = field(factory=lambda: [DEFAULT_LISTEN])  # strports descriptions the APIs are served on
    registration_expiry_interval: float = 12.0  # seconds without a heartbeat before a Node is removed
    host_name: str | None = None  # the name put in hrefs; default: the host the client used, or the listen address
    log_level: str = "info"  # the lowest level logged, from the process's first line
    log_format: str = "text"  # "json": one JSON object per line (twisted.logger's eventAsJSON), for log collectors
    api_versions: list[str] = field(factory=lambda: list(ALL_VERSIONS))  # IS-04 versions served
    access_log: bool = False  # one log line per HTTP request
    # The Node (`nmos-ref node`, and the demo Node of plain `nmos-ref`)
    node_listen: list[str] = field(factory=lambda: [DEFAULT_NODE_LISTEN])  # where the Node API is served
    registries: list[str] = field(factory=list)  # Registration API URLs, in priority order (no DNS-SD)
    node_file: str | None = None  # JSON description of the Node (docs/node.md); default: the built-in demo
    node_seed: str | None = None  # what the Node's ids are made from; default: the host name
    heartbeat_interval: float = 5.0  # seconds between heartbeats (IS-04 default 5; IS-09 range 1-1000)
    registry_timeout: float = 4.0  # seconds to wait for a Registration API before moving to the next one
    # DNS-SD (docs/configuration.md, "Discovery")
    dns_sd: str = "both"  # both (unicast, then mDNS), multicast, unicast or off
    mdns_interfaces: list[str] | None = None  # addresses; default: those the APIs listen on (all for a wildcard)
    dns_sd_domain: str | None = None  # the unicast DNS-SD domain; default: the resolver's search domain
    dns_servers: list[str] | None = None  # "address[:port]"; default: the resolver's name servers
    pri: int = 10  # the `pri` the Registration and Query APIs advertise (0-99: live, 100+: development)
    peer_to_peer: bool = True  # the Node advertises ver_* while it has no registry
    max_registry_pri: int = 99  # registries and auth servers advertising a higher pri are ignored (100+: development)
    # Security (docs/security.md): IS-10 / BCP-003-02 authorization and BCP-003-01 TLS
    auth: bool = False  # require bearer tokens on every API (IS-10 resource server)
    auth_issuers: list[str] = field(factory=list)  # trusted authorization servers (issuer URLs); "*": any token iss
    auth_fqdn: str | None = None  # this server's fully qualified name, matched against `aud`; default: the machine's
    auth_client_method: str = "private_key_jwt"  # the Node at the token endpoint; or client_secret_basic
    auth_initial_token_file: str | None = None  # RFC 7591 initial access token for the Node's registration
    auth_state_dir: str | None = None  # the Node's OAuth key and client_id; default ~/.local/state/nmos-ref
    tls_certificates: list[dict[str, str]] = field(factory=list)  # [{"certificate": chain PEM, "key": key PEM}, ...]
    tls_ca: str | None = None  # PEM of the CA(s) the Node and the key fetcher trust; default: the system's
    hsts_max_age: int = 31536000  # Strict-Transport-Security max-age on HTTPS answers; 0: no header
    # The registry's store (docs/cluster.md): "memory", or "etcd://HOST:PORT[,HOST:PORT...]", an etcd cluster's
    # members, shared with the other members of a registry cluster
    store: str = "memory"
    store_prefix: str = "/nmos-ref/"  # the etcd keys of this registry cluster (several clusters can share etcd)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Each check returns the value to keep or raises ConfigError with a message that starts where the setting's name
# ends ("must be ...", ": 'x' is not ..."): `apply` puts in front of it the name the user wrote, the key of a file
# or the flag typed.
# A list setting takes a JSON list only, even for one item: a string is refused everywhere (`_check_list`), so that
# "listen": "tcp:8235" and "api_versions": "v1.3" meet the same rule (docs/configuration.md).


def _check_list(value: Any, example: str, *, empty: bool = False) -> list[Any]:
    if isinstance(value, str):
        raise ConfigError(f"must be a list, even of one item: [{json.dumps(value)}], not the string "
                          f"{json.dumps(value)}")
    if not isinstance(value, list) or (not value and not empty):
        raise ConfigError(f"must be a {'' if empty else 'non-empty '}list such as {example}, not {value!r}")
    return value


def _check_strports(example: str) -> Callable[[Any], list[str]]:
    def check(value: Any) -> list[str]:
        value = _check_list(value, f'["{example}"]')
        if not all(isinstance(item, str) and item for item in value):
            raise ConfigError(f'must be a list of strports descriptions such as ["{example}"], not {value!r}')
        return value
    return check


def _check_registries(value: Any) -> list[str]:
    """Strings here; whether each is a usable Registration API URL is checked where the Node's rules live
    (`nmos_ref.wiring.checks`), so this module stays a leaf."""
    value = _check_list(value, '["http://127.0.0.1:8235"]', empty=True)
    if not all(isinstance(item, str) for item in value):
        raise ConfigError(f'must be a list of Registration API URLs such as ["http://127.0.0.1:8235"], not {value!r}')
    return value


def _check_optional_text(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"must be a non-empty string or null, not {value!r}")
    return value


def _check_seconds(low: float, high: float) -> Any:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"must be a number of seconds from {low:g} to {high:g}, not {value!r}")
        return float(value)
    return check


def _check_host_name(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or any(c.isspace() for c in value)):
        raise ConfigError(f"must be a host name or address without spaces, not {value!r}")
    return value


def _check_choice(choices: tuple[str, ...]) -> Any:
    def check(value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)
    return check


def _check_versions(value: Any) -> list[str]:
    value = _check_list(value, '["v1.2", "v1.3"]')
    unknown = [v for v in value if v not in ALL_VERSIONS]
    if unknown:
        raise ConfigError(f"has {', '.join(map(str, unknown))}, which {'is' if len(unknown) == 1 else 'are'} not "
                          f"supported; choose from {', '.join(ALL_VERSIONS)}")
    return sort_versions(list(dict.fromkeys(value)))


def _check_issuers(value: Any) -> list[str]:
    value = _check_list(value, '["https://auth.example.com"]', empty=True)
    if not all(isinstance(item, str) and (item == "*" or item.startswith(("http://", "https://")))
               for item in value):
        raise ConfigError(f'must be a list of issuer URLs such as ["https://auth.example.com"] (or "*"), '
                          f'not {value!r}')
    return value


AUTH_CLIENT_METHODS = ("private_key_jwt", "client_secret_basic")


def _check_certificates(value: Any) -> list[dict[str, str]]:
    value = _check_list(value, '[{"certificate": "chain.pem", "key": "key.pem"}]', empty=True)
    if not all(isinstance(item, dict) and set(item) == {"certificate", "key"} and all(
            isinstance(v, str) and v for v in item.values()) for item in value):
        raise ConfigError('must be a list of {"certificate": "chain.pem", "key": "key.pem"}')
    return value


def _check_max_age(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"must be a whole number of seconds (0: no header), not {value!r}")
    return value


_ETCD_MEMBER = r"(?:[^,/:\s]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}"
_ETCD_STORE = re.compile(rf"etcd://{_ETCD_MEMBER}(?:,\s*{_ETCD_MEMBER})*")


def _check_store(value: Any) -> str:
    if value != "memory" and not (isinstance(value, str) and _ETCD_STORE.fullmatch(value)):
        raise ConfigError(f"must be \"memory\" or \"etcd://HOST:PORT[,HOST:PORT...]\", not {value!r}")
    return value


def _check_store_prefix(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/") or len(value) < 2:
        raise ConfigError(f"must be a key prefix such as \"/nmos-ref/\" (starting and ending with "
                          f"\"/\"), not {value!r}")
    return value


def _check_addresses(parse: Any, example: str) -> Any:
    def check(value: Any) -> list[str] | None:
        if value is None:
            return None
        value = _check_list(value, f"[{example}]")
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(f"must be a non-empty list of addresses such as [{example}], or null")
        for item in value:
            try:
                parse(item)
            except ValueError:
                raise ConfigError(f": {item!r} is not an address such as {example}") from None
        return value
    return check


def _check_domain(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip(".") or " " in value):
        raise ConfigError(f"must be a DNS domain such as \"example.com\", or null, not {value!r}")
    return value.strip(".") if value is not None else None


def _check_int(low: int, high: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"must be an integer from {low} to {high}, not {value!r}")
        return value
    return check


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, not {value!r}")
    return value


_CHECKS = {
    "listen": _check_strports(DEFAULT_LISTEN),
    "registration_expiry_interval": _check_seconds(1, 3600),
    "host_name": _check_host_name,
    "log_level": _check_choice(LOG_LEVELS),
    "log_format": _check_choice(LOG_FORMATS),
    "api_versions": _check_versions,
    "access_log": _check_bool,
    "node_listen": _check_strports(DEFAULT_NODE_LISTEN),
    "registries": _check_registries,
    "node_file": _check_optional_text,
    "node_seed": _check_optional_text,
    # IS-09 is04.heartbeat_interval: 1 to 1000 s; IS-04 default 5
    "heartbeat_interval": _check_seconds(1, 1000),
    "registry_timeout": _check_seconds(0.1, 60),
    "dns_sd": _check_choice(DNS_SD_MODES),
    "mdns_interfaces": _check_addresses(ipaddress.ip_address, '"192.0.2.10"'),
    "dns_sd_domain": _check_domain,
    "dns_servers": _check_addresses(str, '"192.0.2.53" or "[2001:db8::53]:5353"'),  # deep: wiring
    "pri": _check_int(0, 2**31 - 1),
    "peer_to_peer": _check_bool,
    "max_registry_pri": _check_int(0, 2**31 - 1),
    "auth": _check_bool,
    "auth_issuers": _check_issuers,
    "auth_fqdn": _check_host_name,
    "auth_client_method": _check_choice(AUTH_CLIENT_METHODS),
    "auth_state_dir": _check_optional_text,
    "auth_initial_token_file": _check_optional_text,
    "tls_certificates": _check_certificates,
    "tls_ca": _check_optional_text,
    "hsts_max_age": _check_max_age,
    "store": _check_store,
    "store_prefix": _check_store_prefix,
}


def apply(settings: Settings, values: Mapping[str, Any], source: str,
          names: Mapping[str, str] | None = None) -> Settings:
    """A copy of `settings` with `values` applied. A ConfigError names the bad setting as the user wrote it:
    `names` maps a key to that (a flag such as "--expiry"); without one the message is "<source>: <key> ..."."""
    changed = settings.to_json()
    for key, value in values.items():
        check = _CHECKS.get(key)
        if check is None:
            raise ConfigError(f"{source}: unknown setting {key!r}; known: {', '.join(sorted(_CHECKS))}")
        try:
            changed[key] = check(value)
        except ConfigError as exc:
            named = names.get(key) if names is not None else None
            text = str(exc) if str(exc).startswith(":") else f" {exc}"
            raise ConfigError(f"{named}{text}" if named else f"{source}: {key}{text}") from None
    return Settings(**changed)


def read_initial_token(path: str) -> str:
    """The initial access token in `path` (surrounding white space ignored); ConfigError if there is none."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the initial access token file {path}: {exc}") from None
    if not token or any(character.isspace() for character in token):
        raise ConfigError(f"the initial access token file {path} must hold one token")
    return token


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from a file; ConfigError names the file, what it is for and what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"the {what} {path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"the {what} {path} must be a JSON object")
    return values


def load_file(path: str | Path) -> dict[str, Any]:
    """A configuration file's settings (checked by `apply`)."""
    return read_json_object(path, "configuration file")


