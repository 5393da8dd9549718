"""The Registration APIs DNS-SD finds, as candidates for the registration client.

IS-04 "Discovery - Registered Operation" (v1.3), Client Interaction Procedure: browse `_nmos-register._tcp` ("Nodes
which support v1.2 and earlier versions MUST additionally browse for the deprecated service type
`_nmos-registration._tcp`"), order by TXT `pri`, "filtering out any APIs which do not support the desired API
version, protocol and authorization mode (TXT `api_ver`, `api_proto` and `api_auth`)"; "Upgrade Path": "De-duplication
SHOULD be performed against this returned list". The choice among what is left (highest common version, then
priority, at random among equals) is the registration client's.

Every instance seen, changed or gone is logged in one line that says whether it is used and, if not, why: the first
thing to read when a Node does not register.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from attrs import evolve
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from nmos_ref.discovery import REGISTER, REGISTRATION, Instance, txt_text, url_host
from nmos_ref.discovery.browse import UnicastFirst
from nmos_ref.model.versions import parse_version
from nmos_ref.node.registries import Candidate, unsuitable

log = Logger()

_VERSION = re.compile(r"v[0-9]+\.[0-9]+")


def browsed_types(versions: Sequence[str]) -> list[str]:
    """The service types a Node serving `versions` browses for."""
    legacy = any(parse_version(version) <= (1, 2) for version in versions)
    return [REGISTER, REGISTRATION] if legacy else [REGISTER]


def candidate_of(instance: Instance, max_pri: int) -> Candidate | str:
    """The registry an instance advertises, or why its records make it unusable."""
    txt = instance.txt
    # A v1.0 registry advertises only `pri`: api_proto, api_ver and api_auth came with v1.1 and v1.3. Without them
    # it speaks http, without authorization, and is asked for its versions.
    protocol = txt.get("api_proto", "http")
    if "pri" in txt:
        try:
            pri = int(txt["pri"])
        except ValueError:
            return f"its pri {txt['pri']!r} is not an integer"
    else:
        pri = instance.priority  # IS-04 allows the SRV priority to carry it too
    if pri < 0:
        return f"its pri {pri} is negative"
    if pri > max_pri:
        return (f"its pri {pri} is above {max_pri} (IS-04 reserves 100 and up for development; the setting "
                f"max_registry_pri changes the limit)")
    versions = None
    if "api_ver" in txt:
        versions = tuple(v.strip() for v in txt["api_ver"].split(",") if _VERSION.fullmatch(v.strip()))
    auth = txt.get("api_auth", "false")
    if auth not in ("true", "false"):
        return f"its api_auth {auth!r} is neither true nor false"
    host = url_host(instance, protocol)
    if host is None:
        return f"its host {instance.host} has no address"
    return Candidate(f"{protocol}://{host}:{instance.port}", pri, protocol, versions, auth == "true",
                     origin=instance.via, name=instance.name)


def merged(candidates: Sequence[Candidate]) -> list[Candidate]:
    """One candidate per URL (a registry is advertised under both types): the lowest pri, every version."""
    found: dict[str, Candidate] = {}
    for candidate in candidates:
        old = found.get(candidate.url)
        if old is None:
            found[candidate.url] = candidate
            continue
        versions = old.versions
        if candidate.versions is not None:
            versions = tuple(dict.fromkeys((versions or ()) + candidate.versions))
        found[candidate.url] = evolve(old, priority=min(old.priority, candidate.priority), versions=versions)
    return list(found.values())


class RegistryBrowser(Service):
    """Browses for Registration APIs; `candidates` is the registration client's source, `changed` its alarm."""

    def __init__(self, browser: UnicastFirst, versions: Sequence[str], protocol: str, authorization: bool,
                 max_pri: int, changed: Callable[[list[Candidate]], None] | None = None) -> None:
        self.browser = browser
        self.versions = list(versions)
        self.protocol = protocol
        self.authorization = authorization
        self.max_pri = max_pri
        self.changed = changed
        self.usable: dict[tuple[str, str, str], Candidate] = {}  # (via, type, name) -> candidate
        self._browsing: Any = None

    def startService(self) -> None:
        super().startService()
        types = browsed_types(self.versions)
        log.info("DNS-SD: browsing for Registration APIs ({types})", types=", ".join(types))
        self._browsing = self.browser.browse(types, self._seen, self._seen, self._gone)

    def stopService(self) -> None:
        super().stopService()
        if self._browsing is not None:
            self._browsing.stop()
            self._browsing = None

    def candidates(self) -> Deferred[list[Candidate]]:
        """The usable registries known, once the first answers are in (so the first choice sees them all)."""
        if self._browsing is None:
            return succeed([])
        if self._browsing.ready.called:
            return succeed(self.current())
        waiting: Deferred[list[Candidate]] = Deferred()

        def ready(result: Any) -> Any:
            waiting.callback(self.current())
            return result
        self._browsing.ready.addCallback(ready)
        return waiting

    def current(self) -> list[Candidate]:
        return merged(list(self.usable.values()))

    def _seen(self, instance: Instance) -> None:
        key = (instance.via, instance.service_type, instance.name)
        before = self.current()
        found = candidate_of(instance, self.max_pri)
        reason = found if isinstance(found, str) else unsuitable(found, self.versions, self.protocol,
                                                                  self.authorization)
        where = f"{instance.host}:{instance.port} ({', '.join(instance.addresses) or 'no address'})"
        if reason is None and isinstance(found, Candidate):
            self.usable[key] = found
            verdict = f"usable as {found.url}, priority {found.priority}" + (
                "" if found.versions is not None else "; its versions will be asked")
        else:
            self.usable.pop(key, None)
            verdict = f"not used: {reason}"
        log.info("DNS-SD: Registration API {name!r} ({type}, {via}) at {where} [{txt}]: {verdict}",
                 name=instance.name, type=instance.service_type, via=instance.via, where=where,
                 txt=txt_text(instance.txt), verdict=verdict)
        self._tell(before)

    def _gone(self, instance: Instance) -> None:
        before = self.current()
        self.usable.pop((instance.via, instance.service_type, instance.name), None)
        log.info("DNS-SD: Registration API {name!r} ({type}, {via}) is gone", name=instance.name,
                 type=instance.service_type, via=instance.via)
        self._tell(before)

    def _tell(self, before: list[Candidate]) -> None:
        now = self.current()
        if now != before and self.changed is not None and self._browsing is not None and self._browsing.ready.called:
            self.changed(now)
