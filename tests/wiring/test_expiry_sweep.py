"""The expiry sweep (nmos_ref.wiring.registry.ExpirySweep): the store's garbage collection run on a clock, every
0.5 s, the time read once per tick. Driven by a Clock; the rules themselves are tests/model/test_store.py's."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from nmos_ref.model.store import Change, Registry
from nmos_ref.wiring.registry import ExpirySweep
from tests.model.test_store import START, StoreTest, assert_whole_tree, big_node, family, held


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

        def broken(now: float, limit: int | None = None) -> list[Change]:
            calls.append(1)
            raise RuntimeError("boom")

        registry.collect_garbage = broken  # type: ignore[method-assign]
        collector = run_collector(registry, clock)
        clock.advance(0.5)
        clock.advance(0.5)
        assert len(calls) == 3 and collector.running
        collector.stopService()
        assert len(self.flushLoggedErrors(RuntimeError)) == 3


    def test_a_mass_expiry_goes_a_step_per_turn(self, registry: Registry, clock: Clock,
                                                changes: list[Change]) -> None:
        """Thousands of resources expiring at once are removed `step` at a time, one step per reactor turn (a
        callLater(0)), so heartbeats are read between the steps; the store is a whole tree after each."""
        nodes = [big_node(registry, now=clock.seconds())["id"] for _ in range(2)]
        size = len(held(registry))
        batches: list[int] = []

        def published(batch: list[Change]) -> None:
            if batch:
                batches.append(len(batch))
                assert_whole_tree(registry)

        registry.feed.subscribe(published)
        turns: list[float] = []
        call_later = clock.callLater
        self.patch(clock, "callLater", lambda delay, *a, **kw: (turns.append(delay), call_later(delay, *a, **kw))[1])
        collector = ExpirySweep(registry, clock, step=10)
        collector.startService()
        del changes[:]
        for _ in range(30):  # 15 s of sweeps
            clock.advance(0.5)
        assert held(registry) == [] and len(changes) == size and not registry.collecting
        assert batches == [10] * (size // 10) + ([size % 10] if size % 10 else [])
        assert turns.count(0) == len(batches) - 1  # each step after the first in a turn of its own
        assert [change.id for change in changes if change.cause == "expire"] == nodes
        collector.stopService()

    def test_stopping_cancels_the_next_step(self, registry: Registry, clock: Clock) -> None:
        big_node(registry, now=clock.seconds())
        collector = ExpirySweep(registry, clock, step=10)
        batches: list[int] = []

        def published(batch: list[Change]) -> None:
            if batch:
                batches.append(len(batch))
                collector.stopService()  # while the first step's turn is running

        registry.feed.subscribe(published)
        collector.startService()
        for _ in range(30):
            clock.advance(0.5)
        assert batches == [10] and registry.collecting and clock.getDelayedCalls() == []


class StallTests(StoreTest):
    """A sweep that runs late (the reactor or its host stalled) postpones every expiry by its lateness first."""

    def setUp(self) -> None:
        super().setUp()
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_heartbeats_unread_during_a_stall_do_not_expire_their_nodes(self, registry: Registry,
                                                                       clock: Clock) -> None:
        start = clock.seconds()
        waiting = family(registry, now=start)["node"]["id"]  # heartbeats every 5 s, two unread during the stall
        silent = family(registry, now=start)["node"]["id"]  # stops after its heartbeat at 5 s
        collector = run_collector(registry, clock)
        for _ in range(10):
            clock.advance(0.5)
        registry.heartbeat(waiting, "v1.3", now=clock.seconds())
        registry.heartbeat(silent, "v1.3", now=clock.seconds())
        for _ in range(10):
            clock.advance(0.5)
        registry.heartbeat(waiting, "v1.3", now=clock.seconds())
        for _ in range(8):
            clock.advance(0.5)
        assert clock.seconds() == start + 14
        clock.advance(10)  # a 10 s stall: both Nodes' deadlines (17 s and 22 s) passed meanwhile
        assert registry.find(waiting) is not None and registry.find(silent) is not None
        (warning,) = [event for event in self.logged if "late" in event.get("log_format", "")]
        assert warning["late"] == 9.5 and "postponed by 9.5 s" in formatEvent(warning)
        # the heartbeats that came during the stall, read now that the reactor is back
        registry.heartbeat(waiting, "v1.3", now=clock.seconds())
        for _ in range(4):  # (a Clock runs what is due at the time it is advanced to: one step per period)
            clock.advance(0.5)
        assert registry.find(silent) is not None  # 9 s unheard before the stall, 2 s after
        clock.advance(0.5)
        assert registry.find(silent) is None  # really stopped: 12 s counted (9 before, 0.5 of the stall, 2.5 after)
        for second in range(1, 21):
            clock.advance(1)
            if second % 5 == 0:
                registry.heartbeat(waiting, "v1.3", now=clock.seconds())
        assert registry.find(waiting) is not None
        assert len([event for event in self.logged if "late" in event.get("log_format", "")]) == 1
        collector.stopService()

    def test_a_sweep_a_little_late_changes_nothing(self, registry: Registry, clock: Clock) -> None:
        node_id = family(registry, now=clock.seconds())["node"]["id"]
        collector = run_collector(registry, clock)
        for _ in range(8):
            clock.advance(1.4)  # 0.9 s late each time: within the tolerance
        assert registry.find(node_id) is not None and registry.last_seen(node_id) == START
        clock.advance(1.4)
        assert registry.find(node_id) is None  # 12.6 s
        assert not [event for event in self.logged if "late" in event.get("log_format", "")]
        collector.stopService()

    def test_postponing_never_counts_a_node_as_seen_in_the_future(self, registry: Registry, clock: Clock) -> None:
        old, recent = family(registry, now=START - 10)["node"]["id"], family(registry, now=START)["node"]["id"]
        registry.postpone_expiry(5, now=START + 2)
        assert (registry.last_seen(old), registry.last_seen(recent)) == (START - 5, START + 2)
        assert registry.collect_garbage(START + 6.9) == []
        assert {change.id for change in registry.collect_garbage(START + 7)} >= {old}
        assert registry.find(recent) is not None and registry.collect_garbage(START + 14) != []



class ExpiryLogTests(StoreTest):
    def test_one_line_per_expired_node_with_what_went_with_it(self, registry: Registry, clock: Clock) -> None:
        """issue 15: the expiry line says how many resources went with the Node."""
        one, two = family(registry, now=clock.seconds()), family(registry, now=clock.seconds())
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "nmos_ref.wiring.registry":
                lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        collector = run_collector(registry, clock)
        for _ in range(26):
            clock.advance(0.5)  # on time: no stall
        below = len(one) - 1
        assert sorted(lines) == sorted(f"Node {items['node']['id']} (x) expired, and {below} resources below it"
                                       for items in (one, two))
        collector.stopService()
