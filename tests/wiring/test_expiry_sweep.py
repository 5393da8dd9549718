"""The expiry sweep (nmos_ref.wiring.registry.ExpirySweep): the store's garbage collection run on a clock, every
0.5 s, the time read once per tick. Driven by a Clock; the rules themselves are tests/model/test_store.py's."""

from __future__ import annotations

from twisted.internet.task import Clock

from nmos_ref.model.store import Change, Registry
from nmos_ref.wiring.registry import ExpirySweep
from tests.model.test_store import StoreTest, family


def run_collector(registry: Registry, clock: Clock) -> ExpirySweep:
    collector = ExpirySweep(registry, clock)
    collector.startService()
    return collector


class ExpirySweepTests(StoreTest):
    """From the store tests' start: a Clock at START, an empty registry, the changes it publishes."""

    def test_expires_between_12_and_13_seconds(self, registry: Registry, clock: Clock,
                                               changes: list[Change]) -> None:
        items = family(registry, now=self.clock.seconds())
        collector = run_collector(registry, clock)
        del changes[:]
        for _ in range(119):
            clock.advance(0.1)
        assert registry.get("node", items["node"]["id"]) is not None  # 11.9 s
        for _ in range(11):
            clock.advance(0.1)
        assert all(registry.find(d["id"]) is None for d in items.values())  # by 13 s
        assert {c.id for c in changes} == {d["id"] for d in items.values()}
        assert [c.cause for c in changes].count("expire") == 1 and changes[-1].cause == "expire"
        collector.stopService()

    def test_heartbeats_keep_nodes_alive(self, registry: Registry, clock: Clock) -> None:
        alive, silent = family(registry, now=self.clock.seconds()), family(registry, now=self.clock.seconds())
        collector = run_collector(registry, clock)
        for second in range(1, 61):
            clock.advance(1)
            if second % 5 == 0:
                registry.heartbeat(alive["node"]["id"], "v1.3", now=clock.seconds())
        assert all(registry.find(d["id"]) is not None for d in alive.values())
        assert all(registry.find(d["id"]) is None for d in silent.values())
        collector.stopService()

    def test_a_failing_sweep_is_logged_and_retried(self, registry: Registry, clock: Clock) -> None:
        calls = []

        def broken(now: float) -> list[Change]:
            calls.append(1)
            raise RuntimeError("boom")

        registry.collect_garbage = broken  # type: ignore[method-assign]
        collector = run_collector(registry, clock)
        clock.advance(0.5)
        clock.advance(0.5)
        assert len(calls) == 3 and collector.running
        collector.stopService()
        assert len(self.flushLoggedErrors(RuntimeError)) == 3
