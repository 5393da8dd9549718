"""Which DNS-SD to browse, in IS-04's order.

IS-04 "Discovery" (v1.3), "Unicast vs. Multicast DNS-SD": with DNS servers and a search domain, "perform a unicast
DNS browse for services of the appropriate type via the search domain. If no unicast responses are received ...
perform a multicast DNS browse ... if a unicast response is received, multicast browsing SHOULD NOT be performed
even if the unicast-discovered API is unresponsive."

So mDNS is browsed only while the unicast browse has found nothing: from its first round if that finds nothing (or
there is no unicast domain), and again if every unicast instance goes away. Once unicast finds something, the mDNS
browse stops and its instances are reported removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from nmos_ref.discovery import Discovery, Found, Instance

log = Logger()


class UnicastFirst:
    """Browses unicast DNS-SD (if there is a domain) and mDNS (if enabled), unicast first."""

    def __init__(self, unicast: Discovery | None, multicast: Discovery | None) -> None:
        self.unicast = unicast
        self.multicast = multicast

    def browse(self, service_types: Sequence[str], added: Found, updated: Found, removed: Found) -> _Browsing:
        """Browse all `service_types` together: one unicast answer for any of them keeps mDNS off for all."""
        browsing = _Browsing(self, list(service_types), added, updated, removed)
        browsing.start()
        return browsing


class _Browsing:
    def __init__(self, owner: UnicastFirst, service_types: list[str], added: Found, updated: Found,
                 removed: Found) -> None:
        self.owner = owner
        self.service_types = service_types
        self.callbacks = (added, updated, removed)
        self.ready: Deferred[None] = Deferred()
        self.unicast_found: dict[tuple[str, str], Instance] = {}
        self.multicast_found: dict[tuple[str, str], Instance] = {}
        self._unicast: list[Any] = []
        self._multicast: list[Any] = []
        self.stopped = False

    def start(self) -> None:
        unicast = self.owner.unicast
        if unicast is None:
            self._start_multicast().addCallback(self._ready)
            return
        for service_type in self.service_types:
            self._unicast.append(unicast.browse(service_type, self._unicast_added, self._unicast_updated,
                                                self._unicast_removed))
        gatherResults([browsing.ready for browsing in self._unicast]).addCallback(self._first_unicast_round)

    def _first_unicast_round(self, _: Any) -> None:
        if self.stopped:
            return
        if self.unicast_found:
            self._ready(None)
        else:
            self._start_multicast().addCallback(self._ready)

    def _ready(self, _: Any) -> None:
        if not self.ready.called:
            self.ready.callback(None)

    def _start_multicast(self) -> Deferred[Any]:
        multicast = self.owner.multicast
        if multicast is None or self._multicast or self.stopped:
            return succeed(None)
        if self.owner.unicast is not None:
            log.info("DNS-SD: nothing found by unicast DNS for {types}; browsing mDNS", types=self._types())
        for service_type in self.service_types:
            self._multicast.append(multicast.browse(service_type, self._multicast_added, self._multicast_updated,
                                                    self._multicast_removed))
        return gatherResults([browsing.ready for browsing in self._multicast])

    def _stop_multicast(self) -> None:
        if not self._multicast:
            return
        log.info("DNS-SD: unicast DNS answers for {types}; not browsing mDNS", types=self._types())
        for browsing in self._multicast:
            browsing.stop()
        self._multicast = []
        found, self.multicast_found = self.multicast_found, {}
        for instance in found.values():
            self.callbacks[2](instance)

    def _types(self) -> str:
        return ", ".join(self.service_types)

    def stop(self) -> None:
        self.stopped = True
        for browsing in self._unicast + self._multicast:
            browsing.stop()
        self._unicast, self._multicast = [], []

    # --- events

    def _unicast_added(self, instance: Instance) -> None:
        self.unicast_found[(instance.service_type, instance.name)] = instance
        self._stop_multicast()
        self.callbacks[0](instance)

    def _unicast_updated(self, instance: Instance) -> None:
        self.unicast_found[(instance.service_type, instance.name)] = instance
        self.callbacks[1](instance)

    def _unicast_removed(self, instance: Instance) -> None:
        self.unicast_found.pop((instance.service_type, instance.name), None)
        self.callbacks[2](instance)
        if not self.unicast_found and not self.stopped:
            self._start_multicast()

    def _multicast_added(self, instance: Instance) -> None:
        self.multicast_found[(instance.service_type, instance.name)] = instance
        self.callbacks[0](instance)

    def _multicast_updated(self, instance: Instance) -> None:
        self.multicast_found[(instance.service_type, instance.name)] = instance
        self.callbacks[1](instance)

    def _multicast_removed(self, instance: Instance) -> None:
        if self.multicast_found.pop((instance.service_type, instance.name), None) is not None:
            self.callbacks[2](instance)

