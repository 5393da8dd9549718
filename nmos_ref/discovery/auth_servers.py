"""The authorization servers DNS-SD finds, for the registry's key cache and the Node's OAuth client.

IS-10 "Discovery": "The Authorization Server MUST advertise itself with the following service type:
`_nmos-auth._tcp`"; "Clients and Resource Servers MUST support discovering the Authorization Server through use of
unicast DNS-SD", so browsing goes through `UnicastFirst` (IS-04's order: mDNS only while unicast finds nothing).
TXT records: `api_proto` ("either `http` or `https`"), `api_ver` ("a comma-separated list of API versions"), `pri`
("MUST include a TXT record with key `pri` and an integer value ... Values 0 to 99 correspond to an active NMOS
Authorization API (zero being the highest priority). Values 100+ are reserved for development work") and
`api_selector` (MAY: "the path component of the issuer identifier ... with the initial '/' and any trailing '/'
omitted").

A server is usable when it speaks the wanted protocol, offers v1.0 and has a pri within `max_pri`. Its URL is the
issuer identifier: `<api_proto>://<host>:<port>`, followed by `/<api_selector>` when it has one, so that
`nmos_ref.auth.keys.metadata_url` finds its RFC 8414 metadata at
`<api_proto>://<host>:<port>/.well-known/oauth-authorization-server[/<api_selector>]` as IS-10 places it.

Every instance seen, changed or gone is logged in one line that says whether it is used and, if not, why.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.application.service import Service
from twisted.logger import Logger

from nmos_ref.discovery import Instance, txt_text, url_host
from nmos_ref.discovery.browse import UnicastFirst

log = Logger()

AUTH = "_nmos-auth._tcp"
VERSION = "v1.0"  # the IS-10 version this implementation speaks
PROTOCOLS = ("http", "https")

_INTEGER = re.compile(r"-?[0-9]+")


@frozen
class AuthServer:
    """A usable authorization server: its issuer URL and advertised priority (lower is better)."""

    url: str
    priority: int


def auth_server_of(instance: Instance, protocol: str, max_pri: int) -> AuthServer | str:
    """The authorization server an `_nmos-auth._tcp` instance advertises, or why its records make it unusable to a
    client speaking `protocol` that takes priorities up to `max_pri`."""
    txt = instance.txt
    # IS-10 "Discovery": pri "MUST" be in the TXT records (unlike IS-04 v1.0 registries, no SRV fallback).
    if "pri" not in txt:
        return "it has no pri TXT record (IS-10 requires one)"
    if not _INTEGER.fullmatch(txt["pri"]):
        return f"its pri {txt['pri']!r} is not an integer"
    pri = int(txt["pri"])
    if pri < 0:
        return f"its pri {pri} is negative"
    if "api_proto" not in txt:
        return "it has no api_proto TXT record (IS-10 requires one)"
    if txt["api_proto"] != protocol:
        return f"it speaks {txt['api_proto']} and {protocol} is wanted"
    if "api_ver" not in txt:
        return "it has no api_ver TXT record (IS-10 requires one)"
    versions = [version.strip() for version in txt["api_ver"].split(",")]
    if VERSION not in versions:
        return f"it does not offer IS-10 {VERSION} (its api_ver is {txt['api_ver']!r})"
    if pri > max_pri:
        return (f"its pri {pri} is above {max_pri} (IS-10 reserves 100 and up for development; the max_registry_pri "
                f"setting changes the limit)")
    host = url_host(instance, protocol)
    if host is None:
        return f"its host {instance.host} has no address"
    url = f"{protocol}://{host}:{instance.port}"
    selector = txt.get("api_selector", "").strip("/")
    if selector:
        url += "/" + selector
    return AuthServer(url, pri)


class AuthServerBrowser(Service):
    """Browses for authorization servers. `servers()` lists the usable ones; the owner sets `added` (called with the
    URL of each server as it becomes usable) and `changed` (called whenever `servers()` changes)."""

    def __init__(self, browser: UnicastFirst, protocol: str, max_pri: int = 99,
                 rng: random.Random | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be http or https, not {protocol!r}")
        self.browser = browser
        self.protocol = protocol
        self.max_pri = max_pri
        self.rng = rng or random.Random()
        self.added: Callable[[str], None] | None = None
        self.changed: Callable[[], None] | None = None
        self.usable: dict[tuple[str, str, str], AuthServer] = {}  # (via, type, name) -> server
        self._tiebreak: dict[str, float] = {}  # URL -> its random place among servers of equal pri
        self._browsing: Any = None

    def startService(self) -> None:
        super().startService()
        # What an earlier browse found may have gone meanwhile: start afresh.
        self.usable = {}
        self._tiebreak = {}
        log.info("DNS-SD: browsing for authorization servers ({type}, {protocol}, pri up to {max_pri})",
                 type=AUTH, protocol=self.protocol, max_pri=self.max_pri)
        self._browsing = self.browser.browse([AUTH], self._seen, self._seen, self._gone)

    def stopService(self) -> None:
        """Stop browsing; `servers()` keeps what was known then, and neither callback is called again."""
        super().stopService()
        if self._browsing is not None:
            self._browsing.stop()
            self._browsing = None

    def servers(self) -> list[str]:
        """The usable servers' URLs, once each: lowest pri first, in a random order among equal pri that stays the
        same while they stay usable."""
        best: dict[str, int] = {}
        for server in self.usable.values():
            best[server.url] = min(server.priority, best.get(server.url, server.priority))
        for url in best:
            if url not in self._tiebreak:
                self._tiebreak[url] = self.rng.random()
        for url in [url for url in self._tiebreak if url not in best]:
            del self._tiebreak[url]
        return sorted(best, key=lambda url: (best[url], self._tiebreak[url]))

    def _seen(self, instance: Instance) -> None:
        before = self.servers()
        key = (instance.via, instance.service_type, instance.name)
        found = auth_server_of(instance, self.protocol, self.max_pri)
        where = f"{instance.host}:{instance.port} ({', '.join(instance.addresses) or 'no address'})"
        if isinstance(found, AuthServer):
            self.usable[key] = found
            verdict = f"usable as {found.url}, priority {found.priority}"
        else:
            self.usable.pop(key, None)
            verdict = f"not used: {found}"
        log.info("DNS-SD: authorization server {name!r} ({type}, {via}) at {where} [{txt}]: {verdict}",
                 name=instance.name, type=instance.service_type, via=instance.via, where=where,
                 txt=txt_text(instance.txt), verdict=verdict)
        self._tell(before)

    def _gone(self, instance: Instance) -> None:
        before = self.servers()
        self.usable.pop((instance.via, instance.service_type, instance.name), None)
        log.info("DNS-SD: authorization server {name!r} ({type}, {via}) is gone", name=instance.name,
                 type=instance.service_type, via=instance.via)
        self._tell(before)

    def _tell(self, before: list[str]) -> None:
        """Call the owner's callbacks for a change; a failing callback is logged and never stops the browse."""
        now = self.servers()
        if now == before:
            return
        if self.added is not None:
            for url in now:
                if url not in before:
                    try:
                        self.added(url)
                    except Exception:
                        log.failure("Authorization server {url}: the added callback failed", url=url)
        if self.changed is not None:
            try:
                self.changed()
            except Exception:
                log.failure("Authorization servers: the changed callback failed")
