"""The etcd client against real etcd servers: one shared single member, and three-member clusters of their own
where a member is killed. etcd keeps real time, so lease tests wait for real: a few seconds in all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from nmos_ref.cluster.etcd import (Compare, Delete, EtcdClient, EtcdError, EtcdUnavailable, Event, Get,
                                   LeaseNotFound, Put, RevisionCompacted, absent, member_urls, prefix_end,
                                   unchanged)
from tests.support.cases import SocketTest, UnitTest, cases
from tests.support.etcd import EtcdCluster, free_ports, shared_member, unique_prefix


async def eventually(check: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> Any:
    """Poll `check` (a function or a coroutine function) until it returns something true; that value."""
    waited = 0.0
    while True:
        value = check()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if waited >= timeout:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await deferLater(reactor, step, lambda: None)
        waited += step


class ParsingTests(UnitTest):
    @cases("store, urls", [
        ("etcd://127.0.0.1:2379", ["http://127.0.0.1:2379"]),
        ("etcd://a:1,b:2, c:3", ["http://a:1", "http://b:2", "http://c:3"]),
        (["etcd://a:1", "etcd://b:2"], ["http://a:1", "http://b:2"]),
        ("etcd://[::1]:2379", ["http://[::1]:2379"]),
    ], ids=["one", "three", "list", "ipv6"])
    def test_member_urls(self, store: Any, urls: list[str]) -> None:
        assert member_urls(store) == urls

    @cases("store", ["http://a:1", "etcd://a", "etcd://:1", "etcd://a:x", "etcd://a:1/path", "etcd://a:1,http://b:2",
                     ""])
    def test_bad_member_urls(self, store: str) -> None:
        with self.assertRaises(ValueError):
            member_urls(store)

    def test_prefix_end(self) -> None:
        assert prefix_end("/a/") == b"/a0"
        assert prefix_end("a\xff") == b"a\xc3\xc0"  # the UTF-8 bytes' last one incremented
        assert prefix_end("") == b"\0"

    def test_compare_encoding(self) -> None:
        assert absent("k").encode() == {"key": "aw==", "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        assert Compare("k", "value", "!=", b"v").encode() == {"key": "aw==", "target": "VALUE", "result": "NOT_EQUAL",
                                                             "value": "dg=="}


class EtcdTest(SocketTest):
    """A test with an HTTP client (its pool closed afterwards) and a key prefix of its own."""

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)
        self.prefix = unique_prefix()

    def client(self, urls: list[str], timeout: float = 2.0) -> EtcdClient:
        return EtcdClient(self.http, reactor, urls, timeout=timeout)

    def watch(self, client: EtcdClient, start: int) -> tuple[Any, list[tuple[int, list[Event]]], list[int]]:
        seen: list[tuple[int, list[Event]]] = []
        compacted: list[int] = []
        watch = client.watch(self.prefix, start, lambda events, revision: seen.append((revision, events)),
                             compacted.append)
        self.addCleanup(watch.stop)
        return watch, seen, compacted


def flat(seen: list[tuple[int, list[Event]]]) -> list[tuple[str, str, bytes]]:
    return [(event.type, event.kv.key, event.kv.value) for _, events in seen for event in events]


class SingleMemberTests(EtcdTest):
    def setUp(self) -> None:
        super().setUp()
        self.etcd = shared_member()

    async def test_put_range_delete(self) -> None:
        etcd, p = self.client(self.etcd.urls), self.prefix
        first = await etcd.put(p + "a", b"1")
        second = await etcd.put(p + "b", b"2", )
        assert second > first
        one = await etcd.range(p + "a")
        assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in one.kvs] == \
            [(p + "a", b"1", first, first, 1)]
        assert (await etcd.range(p + "missing")).kvs == ()
        third = await etcd.put(p + "a", b"3")
        everything = await etcd.range(p, prefix=True)
        assert [(kv.key, kv.value, kv.version) for kv in everything.kvs] == [(p + "a", b"3", 2), (p + "b", b"2", 1)]
        assert everything.revision == third
        old = await etcd.range(p, prefix=True, revision=second)
        assert [kv.value for kv in old.kvs] == [b"1", b"2"]
        paged = await etcd.range_all(p, page=1)
        assert [kv.key for kv in paged.kvs] == [p + "a", p + "b"] and paged.revision == third
        revision, deleted = await etcd.delete_range(p, prefix=True)
        assert deleted == 2 and revision == third + 1
        assert (await etcd.range(p, prefix=True)).kvs == ()

    async def test_txn_compares(self) -> None:
        etcd, key = self.client(self.etcd.urls), self.prefix + "id"
        created = await etcd.txn([absent(key)], [Put(key, b"first")], [Get(key)])
        assert created.succeeded and created.responses == (None,)
        lost = await etcd.txn([absent(key)], [Put(key, b"second")], [Get(key)])
        assert not lost.succeeded and lost.revision == created.revision
        (found,) = lost.responses
        assert [kv.value for kv in found.kvs] == [b"first"] and found.kvs[0].mod_revision == created.revision
        moved = await etcd.txn([unchanged(key, created.revision)], [Put(key, b"third")])
        assert moved.succeeded
        stale = await etcd.txn([unchanged(key, created.revision)], [Put(key, b"fourth")])
        assert not stale.succeeded and stale.responses == ()
        checks = [Compare(key, "version", "=", 2), Compare(key, "value", "=", b"third"),
                  Compare(key, "create_revision", "<", moved.revision)]
        assert (await etcd.txn(checks, [Put(self.prefix + "other", b"x"), Delete(key)])).succeeded
        assert (await etcd.txn([Compare(key, "value", "=", b"third")], [])).succeeded is False
        assert (await etcd.range(self.prefix, prefix=True)).kvs[0].key == self.prefix + "other"

    async def test_leases_expire_keys_and_keepalives_keep_them(self) -> None:
        etcd, p = self.client(self.etcd.urls), self.prefix
        short, kept = await etcd.lease_grant(1), await etcd.lease_grant(1)
        assert short.ttl == 1 and short.id != kept.id
        await etcd.put(p + "short", b"", lease=short.id)
        await etcd.put(p + "kept", b"", lease=kept.id)
        assert (await etcd.range(p + "short")).kvs[0].lease == short.id
        assert await etcd.lease_ttl(short.id) in (0, 1)

        async def renewing() -> bool:
            assert await etcd.lease_keepalive(kept.id) == 1
            return not (await etcd.range(p + "short")).kvs

        await eventually(renewing, timeout=5.0, step=0.3)  # etcd's leader checks leases every 0.5 s
        assert await etcd.lease_ttl(short.id) is None
        with self.assertRaises(LeaseNotFound):
            await etcd.lease_keepalive(short.id)
        assert (await etcd.range(p + "kept")).kvs  # kept alive all along
        await etcd.lease_revoke(kept.id)
        assert (await etcd.range(p + "kept")).kvs == ()
        with self.assertRaises(LeaseNotFound):
            await etcd.lease_revoke(kept.id)

    async def test_watch_delivers_each_revision_in_order(self) -> None:
        etcd, p = self.client(self.etcd.urls), self.prefix
        start = (await etcd.range(p)).revision + 1
        watch, seen, _ = self.watch(etcd, start)
        await eventually(lambda: watch.connected)
        await etcd.put(p + "a", b"1")
        await etcd.put("/elsewhere/" + p, b"not watched")
        await etcd.put(p + "b", b"2")
        await etcd.delete_range(p + "a")
        both = await etcd.txn([], [Put(p + "c", b"3"), Put(p + "b", b"4")])
        await eventually(lambda: seen and seen[-1][0] == both.revision)
        assert flat(seen) == [("put", p + "a", b"1"), ("put", p + "b", b"2"), ("delete", p + "a", b""),
                              ("put", p + "c", b"3"), ("put", p + "b", b"4")]
        revisions = [revision for revision, _ in seen]
        assert revisions == sorted(set(revisions)) and len(seen[-1][1]) == 2  # one call per revision
        assert watch.next_revision == both.revision + 1

    async def test_watch_resumes_from_a_revision(self) -> None:
        etcd, p = self.client(self.etcd.urls), self.prefix
        first = await etcd.put(p + "a", b"1")
        await etcd.put(p + "b", b"2")
        await etcd.put(p + "a", b"3")
        watch, seen, _ = self.watch(etcd, first + 1)  # history from the second put on
        await eventually(lambda: len(flat(seen)) == 2)
        assert flat(seen) == [("put", p + "b", b"2"), ("put", p + "a", b"3")]
        # The stream ends (say a proxy cut it): the watch opens another one from where it stopped.
        (stream,) = watch._streams
        stream.transport.stopProducing()
        await eventually(lambda: stream not in watch._streams)
        last = await etcd.put(p + "c", b"4")
        await eventually(lambda: seen[-1][0] == last)
        assert flat(seen)[2:] == [("put", p + "c", b"4")]

    async def test_compaction_tells_the_watcher_to_resync(self) -> None:
        etcd, p = self.client(self.etcd.urls), self.prefix
        first = await etcd.put(p + "a", b"1")
        last = await etcd.put(p + "a", b"2")
        await etcd.compact(last)
        with self.assertRaises(RevisionCompacted):
            await etcd.range(p, prefix=True, revision=first)
        watch, seen, compacted = self.watch(etcd, first)
        await eventually(lambda: compacted)
        assert compacted == [last] and seen == [] and not watch.connected
        assert watch._streams == set() or await watch.stop() is None

    async def test_etcd_refusals_are_errors(self) -> None:
        etcd = self.client(self.etcd.urls)
        with self.assertRaises(EtcdError) as raised:
            await etcd.call("/v3/kv/range", {"key": "not base64!"})
        assert not isinstance(raised.exception, EtcdUnavailable) and raised.exception.code == 3


class UnavailableTests(EtcdTest):
    async def test_no_member_answers(self) -> None:
        closed = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
        etcd = self.client(closed, timeout=1.0)
        with self.assertRaises(EtcdUnavailable) as raised:
            await etcd.put(self.prefix + "a", b"1")
        assert all(url in str(raised.exception) for url in closed)


class ThreeMemberTests(EtcdTest):
    def setUp(self) -> None:
        super().setUp()
        self.etcd = EtcdCluster.start(3)
        self.addCleanup(self.etcd.stop)

    async def test_one_member_of_three_killed(self) -> None:
        # (a member waits for a new leader before answering: on a busy machine an election may take seconds)
        etcd, p = self.client(self.etcd.urls, timeout=5.0), self.prefix
        start = await etcd.put(p + "before", b"0")
        watch, seen, _ = self.watch(etcd, start)
        await eventually(lambda: seen)
        assert etcd.member() == self.etcd.urls[0]
        self.etcd.members[0].kill()
        # The client fails over to a member that answers; the watch reopens there from where it stopped.
        written = [await etcd.put(p + f"k{i}", str(i).encode()) for i in range(3)]
        assert etcd.member() != self.etcd.urls[0]
        swapped = await etcd.txn([unchanged(p + "k0", written[0])], [Put(p + "k0", b"x")])
        assert swapped.succeeded
        await eventually(lambda: seen[-1][0] == swapped.revision)
        assert flat(seen) == [("put", p + "before", b"0"), ("put", p + "k0", b"0"), ("put", p + "k1", b"1"),
                              ("put", p + "k2", b"2"), ("put", p + "k0", b"x")]
        lease = await etcd.lease_grant(5)
        assert await etcd.lease_keepalive(lease.id) == 5
        await etcd.lease_revoke(lease.id)
