"""Settings: defaults, then a JSON configuration file, then command-line flags. Every setting is checked on load,
so a typo or a wrong type stops the service at start with a message that names it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import asdict, define, field

from nmos_ref.model.versions import ALL_VERSIONS, sort_versions

DEFAULT_LISTEN = "tcp:8235:interface=127.0.0.1"
DEFAULT_NODE_LISTEN = "tcp:8236:interface=127.0.0.1"  # the Node's own port: it stands for another machine
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


class ConfigError(ValueError):
    """A setting that cannot be used; the message says which and why."""


@define
class Settings:
    listen: list[str] = field(factory=lambda: [DEFAULT_LISTEN])  # strports descriptions the APIs are served on
    registration_expiry_interval: float = 12.0  # seconds without a heartbeat before a Node is removed
    host_name: str | None = None  # the name put in hrefs; default: the host the client used, or the listen address
    log_level: str = "info"
    api_versions: list[str] = field(factory=lambda: list(ALL_VERSIONS))  # IS-04 versions served
    access_log: bool = False  # one log line per HTTP request
    # The Node (`nmos-ref node`, and the demo Node of plain `nmos-ref`)
    node_listen: list[str] = field(factory=lambda: [DEFAULT_NODE_LISTEN])  # where the Node API is served
    registries: list[str] = field(factory=list)  # Registration API URLs, in priority order (no DNS-SD)
    node_file: str | None = None  # JSON description of the Node (docs/node.md); default: the built-in demo
    node_seed: str | None = None  # what the Node's ids are made from; default: the host name
    heartbeat_interval: float = 5.0  # seconds between heartbeats (IS-04 default 5; IS-09 range 1-1000)
    registry_timeout: float = 4.0  # seconds to wait for a Registration API before moving to the next one

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check_listen(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise ConfigError("listen must be a non-empty list of strports descriptions, e.g. "
                          f'["{DEFAULT_LISTEN}"]')
    return value


def _check_expiry(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 3600:
        raise ConfigError(f"registration_expiry_interval must be a number of seconds from 1 to 3600, not {value!r}")
    return float(value)


def _check_node_listen(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise ConfigError("node_listen must be a non-empty list of strports descriptions, e.g. "
                          f'["{DEFAULT_NODE_LISTEN}"]')
    return value


def _check_registries(value: Any) -> list[str]:
    from nmos_ref.node.registration import parse_registry_url  # (imports this module)

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError("registries must be a list of Registration API URLs, e.g. [\"http://127.0.0.1:8235\"]")
    for index, url in enumerate(value):
        try:
            parse_registry_url(url, index)
        except ValueError as exc:
            raise ConfigError(f"registries: {exc}") from None
    return value


def _check_optional_text(name: str) -> Any:
    def check(value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{name} must be a non-empty string or null, not {value!r}")
        return value
    return check


def _check_seconds(name: str, low: float, high: float) -> Any:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{name} must be a number of seconds from {low:g} to {high:g}, not {value!r}")
        return float(value)
    return check


def _check_host_name(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or any(c.isspace() for c in value)):
        raise ConfigError(f"host_name must be a host name or address without spaces, not {value!r}")
    return value


def _check_log_level(value: Any) -> str:
    if value not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
    return value


def _check_versions(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value:
        raise ConfigError("api_versions must be a non-empty list such as [\"v1.2\", \"v1.3\"]")
    unknown = [v for v in value if v not in ALL_VERSIONS]
    if unknown:
        raise ConfigError(f"api_versions: {', '.join(map(str, unknown))} not supported; choose from "
                          f"{', '.join(ALL_VERSIONS)}")
    return sort_versions(list(dict.fromkeys(value)))


def _check_bool(name: str) -> Any:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
        return value
    return check


_CHECKS = {
    "listen": _check_listen,
    "registration_expiry_interval": _check_expiry,
    "host_name": _check_host_name,
    "log_level": _check_log_level,
    "api_versions": _check_versions,
    "access_log": _check_bool("access_log"),
    "node_listen": _check_node_listen,
    "registries": _check_registries,
    "node_file": _check_optional_text("node_file"),
    "node_seed": _check_optional_text("node_seed"),
    # IS-09 is04.heartbeat_interval: 1 to 1000 s; IS-04 default 5
    "heartbeat_interval": _check_seconds("heartbeat_interval", 1, 1000),
    "registry_timeout": _check_seconds("registry_timeout", 0.1, 60),
}


def apply(settings: Settings, values: Mapping[str, Any], source: str) -> Settings:
    """A copy of `settings` with `values` applied; ConfigError names `source` and the bad key."""
    changed = settings.to_json()
    for key, value in values.items():
        check = _CHECKS.get(key)
        if check is None:
            raise ConfigError(f"{source}: unknown setting {key!r}; known: {', '.join(sorted(_CHECKS))}")
        try:
            changed[key] = check(value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return Settings(**changed)


def load_file(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"configuration file {path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"configuration file {path} must hold a JSON object of settings")
    return values


