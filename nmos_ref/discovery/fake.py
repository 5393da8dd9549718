"""An in-memory DNS-SD network for unit tests: `Discovery` without sockets, threads or time.

Every `FakeDiscovery` of one `FakeDnsSd` sees the services the others advertise (and its own, as with mDNS), at
once: Deferreds fire before they are returned and browse callbacks run inside `advertise`, `update_txt` and
`withdraw`. A unicast network (`via="unicast"`) cannot be advertised to, like the real one: tests put zone records
in with `publish` and take them out with `unpublish`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from nmos_ref.discovery import Advert, Found, Instance, Unsupported


class FakeDnsSd:
    """One network (mDNS, or one unicast domain) and what is advertised on it."""

    def __init__(self, via: str = "mdns", domain: str = "local") -> None:
        self.via = via
        self.domain = domain
        self.services: dict[tuple[str, str], Instance] = {}
        self._browsing: list[_Browsing] = []

    def endpoint(self, host: str = "fake-host") -> FakeDiscovery:
        """A `Discovery` on this network, for a machine called `host`."""
        return FakeDiscovery(self, host)

    def instance(self, advert: Advert, host: str = "fake-host") -> Instance:
        return Instance(advert.service_type, advert.name, self.domain, advert.host or host, advert.port,
                        tuple(advert.addresses), dict(advert.txt), self.via)

    def publish(self, instance: Instance) -> None:
        """Add or change a service instance, telling every browser of its type."""
        key = (instance.service_type, instance.name)
        old = self.services.get(key)
        self.services[key] = instance
        for browsing in list(self._browsing):
            if browsing.service_type == instance.service_type:
                (browsing.added if old is None else browsing.updated)(instance)

    def unpublish(self, service_type: str, name: str) -> None:
        instance = self.services.pop((service_type, name), None)
        if instance is None:
            return
        for browsing in list(self._browsing):
            if browsing.service_type == service_type:
                browsing.removed(instance)

    def find(self, service_type: str) -> list[Instance]:
        return [instance for (kind, _), instance in sorted(self.services.items()) if kind == service_type]


class FakeDiscovery:
    """`Discovery` on a `FakeDnsSd`; `advertised` holds what this one advertised, by (type, name)."""

    def __init__(self, network: FakeDnsSd, host: str) -> None:
        self.network = network
        self.host = host
        self.via = network.via
        self.advertised: dict[tuple[str, str], Advert] = {}
        self.calls: list[tuple[str, str, str]] = []  # (operation, type, name), in order

    def _check(self, operation: str, advert: Advert) -> Deferred[None] | None:
        self.calls.append((operation, advert.service_type, advert.name))
        if self.via == "unicast":
            return fail(Unsupported("unicast DNS-SD records are provisioned in the zone, not advertised"))
        if operation != "advertise" and advert.key not in self.advertised:
            return fail(KeyError(f"{advert.name} ({advert.service_type}) is not advertised"))
        return None

    def advertise(self, advert: Advert) -> Deferred[None]:
        refused = self._check("advertise", advert)
        if refused is not None:
            return refused
        self.advertised[advert.key] = advert
        self.network.publish(self.network.instance(advert, self.host))
        return succeed(None)

    def update_txt(self, advert: Advert, txt: Mapping[str, str]) -> Deferred[None]:
        refused = self._check("update", advert)
        if refused is not None:
            return refused
        changed = Advert(advert.service_type, advert.name, advert.port, advert.addresses, txt, advert.host)
        self.advertised[advert.key] = changed
        self.network.publish(self.network.instance(changed, self.host))
        return succeed(None)

    def withdraw(self, advert: Advert) -> Deferred[None]:
        refused = self._check("withdraw", advert)
        if refused is not None:
            return refused
        del self.advertised[advert.key]
        self.network.unpublish(advert.service_type, advert.name)
        return succeed(None)

    def browse(self, service_type: str, added: Found, updated: Found, removed: Found) -> _Browsing:
        browsing = _Browsing(self.network, service_type, added, updated, removed)
        self.network._browsing.append(browsing)
        for instance in self.network.find(service_type):
            added(instance)
        browsing.ready.callback(None)
        return browsing

    def txt(self, service_type: str) -> dict[str, str] | None:
        """The TXT records of this one's advert of `service_type` (None if it has none)."""
        adverts = [advert for (kind, _), advert in self.advertised.items() if kind == service_type]
        return dict(adverts[0].txt) if adverts else None


class _Browsing:
    def __init__(self, network: FakeDnsSd, service_type: str, added: Found, updated: Found, removed: Found) -> None:
        self.network = network
        self.service_type = service_type
        self.added, self.updated, self.removed = added, updated, removed
        self.ready: Deferred[Any] = Deferred()

    def stop(self) -> None:
        if self in self.network._browsing:
            self.network._browsing.remove(self)
