"""Keeps Python's full garbage collections short while the registry holds a large store.

A full (generation 2) collection scans every tracked object. With 50,000 resources that is over a million objects
and a pause of 0.3-0.7 s on this project's machines, landing on whatever request is running: a heartbeat, a
registration, a query. The registry's data is acyclic and lives long, so after each full collection the survivors are
moved to the permanent generation (`gc.freeze`): later collections scan only what is newer, and frozen objects are
still freed by reference counting as soon as they are dropped (a deleted resource is freed at once). What freezing
gives up is the cycle collector for objects that were alive at a freeze and only later form unreachable cycles; in
this service those are a few objects per connection open at that moment.
"""

from __future__ import annotations

import gc
from types import ModuleType
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import (FilteringLogObserver, ILogObserver, Logger, LogLevel, LogLevelFilterPredicate,
                            globalLogPublisher)

from nmos_ref.web import logs

log = Logger()


class FreezeAfterFullCollection(TimerService):
    """Every `period` seconds: if a full collection ran since the last look, freeze what survived it."""

    def __init__(self, clock: IReactorTime, period: float = 1.0, collector: ModuleType | Any = gc) -> None:
        super().__init__(period, self._look)
        self.clock = clock
        self.collector = collector
        self._seen = collector.get_stats()[2]["collections"]

    def startService(self) -> None:
        # What start-up made (modules, schemas, the service tree) lives as long as the process: frozen at once,
        # it is never scanned again, instead of in every full collection until the first one has run.
        self.collector.collect()
        self.collector.freeze()
        super().startService()

    def _look(self) -> None:
        full = self.collector.get_stats()[2]["collections"]
        if full != self._seen:
            self._seen = full
            # The young generations hold what became garbage since that collection (finished requests are
            # reference cycles); frozen, it would never be freed. Collecting them first is cheap: they are small.
            self.collector.collect(1)
            self.collector.freeze()
            # No object count here: gc.get_freeze_count() walks the whole permanent generation (about 20 ms per
            # million objects), a stall the benchmark saw on every freeze even with debug logging off.
            log.debug("Froze the survivors of a full garbage collection")

    def stopService(self) -> Any:
        self.collector.unfreeze()
        return super().stopService()


class LogLevelService(Service):
    """Filters the log below the configured level. twistd starts its observers after `makeService` and offers no
    level setting, so on start each of them is wrapped in a filter (and unwrapped on stop). It also tells the
    project's `Logger` (nmos_ref.web.logs) whether debug events are wanted, so that those not wanted are not built."""

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
        logs.Logger.debug_wanted = self.level == LogLevel.debug  # (debug is the lowest level)

    def stopService(self) -> None:
        for observer, filtered in self._wrapped:
            globalLogPublisher.removeObserver(filtered)
            globalLogPublisher.addObserver(observer)
        self._wrapped.clear()
        logs.Logger.debug_wanted = True
        super().stopService()
