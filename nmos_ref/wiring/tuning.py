"""Process tuning: Python's full garbage collections kept short while the registry holds a large store, the longest
reactor turn measured and logged, and whether debug events are built at all.

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
from collections.abc import Callable
from time import process_time
from types import ModuleType
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

from nmos_ref.web import logs

log = Logger()


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`): after start-up, what importing and
    building freed (about 0.6 MB of an idle registry, issue 13) stays resident otherwise. False where there is no
    glibc."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return False
    trim(0)
    return True


class FreezeAfterFullCollection(TimerService):
    """Every `period` seconds: if a full collection ran since the last look, freeze what survived it."""

    def __init__(self, clock: IReactorTime, period: float = 1.0, collector: ModuleType | Any = gc,
                 release: Callable[[], object] = release_free_heap) -> None:
        super().__init__(period, self._look)
        self.clock = clock
        self.collector = collector
        self.release = release  # gives the heap freed by start-up back to the system
        self._seen = collector.get_stats()[2]["collections"]

    def startService(self) -> None:
        # What start-up made (modules, schemas, the service tree) lives as long as the process: frozen at once,
        # it is never scanned again, instead of in every full collection until the first one has run.
        self.collector.collect()
        self.collector.freeze()
        self.release()
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


PROBE_INTERVAL = 0.02  # seconds between two probes of the reactor's lateness
LONG_TURN = 0.25  # seconds: a turn at least this long is logged as a warning when it happens
TURN_REPORT = 10.0  # seconds between two reports of the longest turn


class LongestTurn(Service):
    """Measures how long the reactor's turns are, cheaply: a probe due every `interval` seconds runs late by the
    length of whatever turn was running when it fell due (less at most `interval`). A probe later than `warn_after`
    is a warning at once; every `report_every` seconds, and when the service stops, the longest lateness seen since
    the last report is logged at info level in a fixed form that tools parse (benchmarks/ reads it from the log):

        reactor: longest turn 37.2 ms (cpu 36.9 ms) in the last 10 s

    and a long one as:

        reactor: a turn took 312.4 ms (cpu 20.1 ms; warning above 250 ms)

    `cpu` is the process's CPU time between the late probe and the one before it: close to the turn's length when
    the registry's own work held the reactor, much less when the host did not run the process (a busy machine, a
    stall of the VM). A probe costs about 10 us (mostly the reactor's wake-up): at 50 a second, 0.5% of one core on
    an idle registry, measured on the project's 2-core machines, and nothing noticeable next to real work.
    """

    def __init__(self, clock: IReactorTime, interval: float = PROBE_INTERVAL, warn_after: float = LONG_TURN,
                 report_every: float = TURN_REPORT, cpu: Callable[[], float] = process_time) -> None:
        self.clock = clock
        self.cpu = cpu
        self.interval = interval
        self.warn_after = warn_after
        self.report_every = report_every
        self.longest = 0.0  # seconds, since the last report
        self.longest_cpu = 0.0  # the process's CPU seconds around it
        self._cpu = 0.0  # the process's CPU time at the last probe
        self._since = 0.0  # when the last report was made
        self._due = 0.0  # when the next probe is due
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        now = self.clock.seconds()
        self._since, self.longest, self.longest_cpu = now, 0.0, 0.0
        self._cpu = self.cpu()
        self._next(now)

    def _next(self, now: float) -> None:
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._probe)

    def _probe(self) -> None:
        now, cpu = self.clock.seconds(), self.cpu()
        late, used, self._cpu = max(now - self._due, 0.0), cpu - self._cpu, cpu
        if late > self.longest:
            self.longest, self.longest_cpu = late, used
        if late >= self.warn_after:
            log.warn("reactor: a turn took {ms:.1f} ms (cpu {cpu:.1f} ms; warning above {limit:.0f} ms)",
                     ms=late * 1000, cpu=used * 1000, limit=self.warn_after * 1000)
        if now - self._since >= self.report_every:
            self.report(now)
        self._next(now)

    def report(self, now: float) -> None:
        """Log the longest turn since the last report, and start again."""
        log.info("reactor: longest turn {ms:.1f} ms (cpu {cpu:.1f} ms) in the last {seconds:.0f} s",
                 ms=self.longest * 1000, cpu=self.longest_cpu * 1000, seconds=now - self._since)
        self._since, self.longest, self.longest_cpu = now, 0.0, 0.0

    def stopService(self) -> Any:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.report(self.clock.seconds())
        return super().stopService()


class DebugEvents(Service):
    """Tells the project's `Logger` (nmos_ref.web.logs) whether debug events are wanted at the configured level,
    so that those not wanted are not even built. The level itself is applied by the process's log observer
    (nmos_ref.wiring.log_output), from the first line."""

    def __init__(self, level: str) -> None:
        self.level = LogLevel.levelWithName(level)

    def startService(self) -> None:
        super().startService()
        logs.Logger.debug_wanted = self.level == LogLevel.debug  # (debug is the lowest level)

    def stopService(self) -> None:
        logs.Logger.debug_wanted = True
        super().stopService()
