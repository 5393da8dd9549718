"""The garbage collection policy freezes the survivors of each full collection, and only then."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.internet.task import Clock

from nmos_ref.web.logs import Logger
from nmos_ref.wiring.tuning import FreezeAfterFullCollection, LogLevelService
from tests.support.cases import UnitTest


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
        policy = FreezeAfterFullCollection(clock, period=1.0, collector=collector)
        policy.startService()
        assert collector.calls == ["collect 2", "freeze"]  # what start-up made, once
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


class LogLevelServiceTests(UnitTest):
    """The configured level also decides whether the project's Logger builds debug events at all."""

    def test_debug_events_are_wanted_only_at_the_debug_level_and_again_once_stopped(self) -> None:
        self.patch(Logger, "debug_wanted", True)
        for level, wanted in (("info", False), ("warn", False), ("debug", True)):
            service = LogLevelService(level)
            service.startService()
            try:
                assert Logger.debug_wanted is wanted, level
            finally:
                service.stopService()
            assert Logger.debug_wanted is True
