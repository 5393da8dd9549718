"""The garbage collection policy freezes the survivors of each full collection, and only then; the reactor probe
reports the longest turn."""

from __future__ import annotations

import gc
import re
import sys
import weakref
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from nmos_ref.web.logs import Logger
from nmos_ref.wiring.tuning import DebugEvents, FreezeAfterFullCollection, LongestTurn, release_free_heap
from tests.support.cases import SkipTest, UnitTest


class FakeCollector:
    def __init__(self) -> None:
        self.full = 0
        self.frozen = 0
        self.unfrozen = 0
        self.calls = []

    def get_stats(self) -> list[dict[str, Any]]:
        return [{"collections": 0}, {"collections": 0}, {"collections": self.full}]

        self.calls: list[str] = []

    def collect(self, generation: int = 2) -> int:
        self.calls.append(f"collect {generation}")
        return 0

    def freeze(self) -> None:
        self.frozen += 1
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.unfrozen += 1


class FreezeAfterFullCollectionTests(UnitTest):
    """The policy on a Clock, with a fake collector and with the real one."""

    def test_freezes_once_per_full_collection(self) -> None:
        clock, collector = Clock(), FakeCollector()
        collector.full = 3  # collections before the service started are not its business
        policy = FreezeAfterFullCollection(clock, period=1.0, collector=collector,
                                           release=lambda: collector.calls.append("release"))
        policy.startService()
        assert collector.calls == ["collect 2", "freeze", "release"]  # what start-up made, once; then the heap
        clock.advance(1)
        assert collector.frozen == 1
        collector.full += 1
        clock.advance(1)
        assert collector.frozen == 2
        assert collector.calls[-2:] == ["collect 1", "freeze"]  # young garbage collected first, never frozen
        clock.advance(5)
        assert collector.frozen == 2
        collector.full += 2
        clock.advance(1)
        assert collector.frozen == 3
        policy.stopService()
        assert collector.unfrozen == 1

    def test_the_heap_is_released_with_glibc(self) -> None:
        if not sys.platform.startswith("linux"):
            raise SkipTest("malloc_trim is glibc's")
        assert release_free_heap() is True

    def test_with_the_real_collector(self) -> None:
        clock = Clock()
        policy = FreezeAfterFullCollection(clock)
        policy.startService()
        try:
            gc.collect()
            clock.advance(1)
            assert gc.get_freeze_count() > 0
        finally:
            policy.stopService()
        assert gc.get_freeze_count() == 0

    def test_garbage_made_after_a_full_collection_is_freed_not_frozen(self) -> None:
        clock = Clock()
        policy = FreezeAfterFullCollection(clock)
        gc.disable()  # no automatic collection may free the cycle before the policy looks
        try:
            policy.startService()
            gc.collect()
            cycle = Cycle()
            cycle.me = cycle
            ref = weakref.ref(cycle)
            del cycle
            clock.advance(1)
            assert gc.get_freeze_count() > 0
            assert ref() is None
        finally:
            policy.stopService()
            gc.enable()


class Cycle:
    me: Cycle | None = None


class DebugEventsTests(UnitTest):
    """The configured level also decides whether the project's Logger builds debug events at all."""

    def test_debug_events_are_wanted_only_at_the_debug_level_and_again_once_stopped(self) -> None:
        self.patch(Logger, "debug_wanted", True)
        for level, wanted in (("info", False), ("warn", False), ("debug", True)):
            service = DebugEvents(level)
            service.startService()
            try:
                assert Logger.debug_wanted is wanted, level
            finally:
                service.stopService()
            assert Logger.debug_wanted is True

REPORT = re.compile(r"reactor: longest turn (\d+\.\d) ms \(cpu (\d+\.\d) ms\) in the last (\d+) s")


class FakeCPU:
    """The process's CPU time: `spent` more at each reading."""

    def __init__(self) -> None:
        self.now = 0.0
        self.spent = 0.0

    def __call__(self) -> float:
        self.now += self.spent
        return self.now


class LongestTurnTests(UnitTest):
    """The reactor probe on a Clock: advancing the Clock past a probe's due time is a turn that long."""

    def setUp(self) -> None:
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "nmos_ref.wiring.tuning":
                self.logged.append(f"{event['log_level'].name} {formatEvent(event)}")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_the_longest_turn_is_reported_in_a_fixed_form(self) -> None:
        clock, cpu = Clock(), FakeCPU()
        probe = LongestTurn(clock, interval=0.02, warn_after=0.25, report_every=10, cpu=cpu)
        probe.startService()
        for _ in range(100):
            clock.advance(0.02)  # on time
        cpu.spent = 0.0571
        clock.advance(0.02 + 0.0372)  # a turn of 37.2 ms held the probe back, the process busy all along
        cpu.spent = 0.001
        for _ in range(10):
            clock.advance(0.02)
        assert probe.longest == pytest.approx(0.0372) and self.logged == []
        while not self.logged:
            clock.advance(0.02)
        assert self.logged == ["info reactor: longest turn 37.2 ms (cpu 57.1 ms) in the last 10 s"]
        assert REPORT.fullmatch(self.logged[0][len("info "):])
        assert probe.longest == 0  # a new window
        probe.stopService()
        assert not clock.calls and REPORT.fullmatch(self.logged[-1][len("info "):])

    def test_a_long_turn_is_a_warning_at_once(self) -> None:
        clock, cpu = Clock(), FakeCPU()
        probe = LongestTurn(clock, interval=0.02, warn_after=0.25, report_every=60, cpu=cpu)
        probe.startService()
        clock.advance(0.02 + 0.2)
        assert self.logged == []
        cpu.spent = 0.0201  # the host did not run the process for most of it
        clock.advance(0.02 + 0.3124)
        assert self.logged == ["warn reactor: a turn took 312.4 ms (cpu 20.1 ms; warning above 250 ms)"]
        probe.stopService()
        assert self.logged[-1] == "info reactor: longest turn 312.4 ms (cpu 20.1 ms) in the last 1 s"
        assert not clock.calls

    def test_it_probes_fifty_times_a_second(self) -> None:
        clock = Clock()
        probe = LongestTurn(clock)
        probe.startService()
        probes = 0
        while clock.seconds() < 1.0 - 1e-9:
            (call,) = clock.calls
            clock.advance(call.getTime() - clock.seconds())
            probes += 1
        assert probes == 50
        probe.stopService()
