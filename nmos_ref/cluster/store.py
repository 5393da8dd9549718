"""The registry shared by several nmos-ref members through etcd: writes are etcd transactions that only the rules
let through, reads come from this member's replica (a `Registry` fed by one prefix watch). docs/cluster.md.

Keys, under a prefix (default `/nmos-ref/`):
- `resource/<id>` → the record as JSON (`encode_record`): kind, API version, TAI stamps, parent, Node, owner, the
  Node's lease and the resource's JSON text as registered. A Node and every resource below it are put with the
  Node's lease (TTL = the registration expiry), so etcd's expiry removes the whole subtree at once, and a
  heartbeat at any member is a renewal of that lease.
- `stamp` → the last TAI stamp handed out (19 decimal digits, so etcd's byte order is numeric order): every write
  puts its own stamp there in the same transaction, with a compare that the stamp held is lower, so stamps strictly
  increase in revision order across the cluster (paging gives the same pages at every member) while writes at
  different members only collide when a later stamp commits first.
- `subscription/<id>` → a Query API subscription, put by the member that made it (nmos_ref.cluster.subscriptions);
  the watch hands them to a `SubscriptionTable`.

A write is judged against the replica by `Registry.propose` (the in-memory store's own rules), then committed
with compares on what it was judged by: the resource's mod_revision (0: absent), its parent's, and the stamp. A
child's transaction also touches its parent (a put that keeps the value and the lease), so deleting the parent
(whose transaction compares every known descendant) cannot miss a child registered meanwhile at another member.
A lost compare means another member wrote first: wait until the replica has seen what won, judge again. A write
answers only once this member's replica has applied its revision (read-your-writes).

The replica applies the watch's revisions one after the other, in order. A revision that removes more than
`REMOVAL_STEP` resources (a big Node's lease revoked or expired) is applied in steps, one per turn of the shared
`Cooperator` (`Registry.replication`, leaves first, as the in-memory store's big removals), and the revisions that
arrive meanwhile wait behind it; the store's own bookkeeping (revisions, leases, `applied`) follows each revision
once the replica holds all of it.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import CooperativeTask, Cooperator, SchedulerStopped, TaskStopped, deferLater
from twisted.logger import Logger

from nmos_ref.cluster.etcd import (Compare, Delete, EtcdClient, EtcdUnavailable, Event, Get, LeaseNotFound, Put,
                                   RangeResult, Watch, unchanged)
from nmos_ref.cluster.subscriptions import SUBSCRIPTION, SubscriptionTable
from nmos_ref.model.errors import UnknownResource
from nmos_ref.model.store import REMOVAL_STEP, Proposal, Registry, RegisterOutcome, Replication, Resource
from nmos_ref.model.tai import unix_to_tai_ns
from nmos_ref.model.versions import TYPES
from nmos_ref.web.errors import NmosError

log = Logger()

DEFAULT_PREFIX = "/nmos-ref/"
RETRY_AFTER = 5  # seconds a client is told to wait when etcd cannot be reached


def encode_record(record: Resource, lease: int) -> bytes:
    return json.dumps({"kind": record.kind, "api_version": record.api_version, "created": record.created,
                       "updated": record.updated, "parent_id": record.parent_id, "node_id": record.node_id,
                       "client_id": record.client_id, "lease": lease, "json": record.json},
                      separators=(",", ":")).encode("utf-8")


def decode_record(rid: str, value: bytes) -> tuple[Resource, int]:
    """The record stored under `resource/<rid>`, and its Node's lease."""
    held = json.loads(value)
    return (Resource(held["kind"], rid, held["api_version"], held["created"], held["updated"], held["parent_id"],
                     held["node_id"], held["client_id"], held["json"]), int(held.get("lease") or 0))


class _Revision:
    """One revision of etcd (or a reload of everything) being applied to this member: the replica's part
    (`replication`), then, once that is done, the store's own (`settle`: revisions, leases, `applied`)."""

    __slots__ = ("replication", "revision", "settle")

    def __init__(self, revision: int, replication: Replication, settle: Callable[[], None]) -> None:
        self.revision = revision
        self.replication = replication
        self.settle = settle


class ClusterStore:
    """The Registration API's store on etcd (`register`, `delete`, `heartbeat`, `health`, `get` as the in-memory
    `Registry` has them, the writes answering Deferreds); `replica` is what the Query API and the subscriptions
    read."""

    def __init__(self, etcd: EtcdClient, replica: Registry, clock: IReactorTime, prefix: str = DEFAULT_PREFIX,
                 attempts: int = 8, apply_timeout: float = 5.0,
                 subscriptions: SubscriptionTable | None = None, cooperator: Cooperator | None = None,
                 step: int = REMOVAL_STEP) -> None:
        self.etcd = etcd
        self.replica = replica
        self.subscriptions = subscriptions if subscriptions is not None else SubscriptionTable()  # every member's
        self.clock = clock
        self.prefix = prefix
        self.attempts = attempts
        self.apply_timeout = apply_timeout  # how long a write waits for the replica to apply it
        self.applied = 0  # the etcd revision the replica reflects
        self._revisions: dict[str, int] = {}  # resource id -> mod_revision of its key
        self._leases: dict[str, int] = {}  # Node id -> its lease
        self._stamp = (0, 0)  # (the last stamp handed out, the stamp key's mod_revision)
        self._waiters: list[tuple[int, Deferred[None]]] = []
        # A big removal's steps, a turn of the reactor each (None: every revision applied at once), at most `step`
        # resources a turn; the revisions delivered meanwhile wait in `_behind`.
        self.cooperator = cooperator
        self.removal_step = step
        self._stepping: CooperativeTask[Any] | None = None
        self._behind: deque[tuple[list[Event], int]] = deque()
        self._watch: Watch | None = None
        self._pause: Deferred[None] | None = None  # the wait before reading etcd again
        self._stopped = False
        self._outage = False  # etcd could not be reached at the last write (logged once per outage)
        # This member's writes take turns: they all compare the stamp key, so two at once would only make one lose.
        self._turn = DeferredLock()

    # Keys

    def _key(self, rid: str) -> str:
        return f"{self.prefix}resource/{rid}"

    @property
    def _stamp_key(self) -> str:
        return self.prefix + "stamp"

    @property
    def _subscription_keys(self) -> str:
        return self.prefix + SUBSCRIPTION

    # The replica

    def start(self) -> Deferred[None]:
        """Load everything under the prefix into the replica, then watch for changes after it."""
        self._stopped = False
        return ensureDeferred(self._resync())

    def stop(self) -> Deferred[None]:
        self._stopped = True
        self._halt()
        watch, self._watch = self._watch, None
        for _, waiter in self._waiters:
            waiter.cancel()
        if self._pause is not None:
            self._pause.cancel()
        return watch.stop() if watch is not None else succeed(None)

    async def _resync(self) -> None:
        """Make the replica what etcd holds now (changes published for what differs), then watch from there."""
        while not self._stopped:
            try:
                snapshot = await self.etcd.range_all(self.prefix)
                break
            except EtcdUnavailable as exc:
                log.warn("etcd store: cannot read {prefix} ({why}); trying again in {delay} s", prefix=self.prefix,
                         why=exc, delay=RETRY_AFTER)
                self._pause = deferLater(self.clock, RETRY_AFTER, lambda: None)
                try:
                    await self._pause
                except CancelledError:
                    return  # stopped
                finally:
                    self._pause = None
        else:
            return
        self._load(snapshot)
        self._watch = self.etcd.watch(self.prefix, snapshot.revision + 1, self._events, self._compacted)

    def _load(self, snapshot: RangeResult) -> None:
        # What was being applied, and what waited behind it, came before the snapshot, which holds all of it: the
        # replica is made equal to the snapshot from wherever those left it (between two steps it is a whole tree).
        self._halt()
        records, seen, subscriptions = [], set(), {}
        revisions: dict[str, int] = {}
        leases: dict[str, int] = {}
        stamp = self._stamp
        for kv in snapshot.kvs:
            if kv.key == self._stamp_key:
                stamp = (int(kv.value), kv.mod_revision)
                continue
            if kv.key.startswith(self._subscription_keys):
                subscriptions[kv.key[len(self._subscription_keys):]] = kv.value
                continue
            rid = self._id(kv.key)
            if rid is None:
                continue
            record, lease = decode_record(rid, kv.value)
            records.append(record)
            seen.add(rid)
            revisions[rid] = kv.mod_revision
            if record.kind == "node":
                leases[rid] = lease
        gone = [record.id for kind in TYPES for record in self.replica.resources(kind) if record.id not in seen]
        records.sort(key=lambda record: record.updated)  # what is new is appended to the paging indexes in order

        def settle() -> None:
            self._revisions, self._leases, self._stamp = revisions, leases, stamp
            self.subscriptions.load(subscriptions)
            self._advance(snapshot.revision)
        self._begin(_Revision(snapshot.revision, self.replica.replication(records, gone), settle))

    def _compacted(self, revision: int) -> None:
        self._watch = None
        if not self._stopped:
            log.warn("etcd store: the watch fell behind etcd's history (compacted at {revision}): reloading",
                     revision=revision)
            ensureDeferred(self._resync()).addErrback(lambda f: log.failure("etcd store: reload failed", f))

    def _id(self, key: str) -> str | None:
        start = self.prefix + "resource/"
        return key[len(start):] if key.startswith(start) else None

    def _events(self, events: list[Event], revision: int) -> None:
        if self._stopped:
            return
        if self._stepping is not None:  # a big removal is under way: this revision waits behind it
            self._behind.append((events, revision))
            return
        self._begin(self._revision(events, revision))

    def _revision(self, events: list[Event], revision: int) -> _Revision:
        """The watch's `events` of `revision`, to apply to the replica as it is now (so: in revision order)."""
        records, removed, others = [], [], []
        revisions: dict[str, int] = {}
        leases: dict[str, int] = {}
        for event in events:
            rid = self._id(event.kv.key)
            if rid is None:
                others.append(event)
            elif event.type == "put":
                record, lease = decode_record(rid, event.kv.value)
                records.append(record)
                revisions[rid] = event.kv.mod_revision
                if record.kind == "node":
                    leases[rid] = lease
            else:
                removed.append(rid)

        def settle() -> None:
            for event in others:
                key = event.kv.key
                if key == self._stamp_key:
                    if event.type == "put" and event.kv.mod_revision > self._stamp[1]:
                        self._stamp = (int(event.kv.value), event.kv.mod_revision)
                elif key.startswith(self._subscription_keys):
                    sid = key[len(self._subscription_keys):]
                    if event.type == "put":
                        self.subscriptions.put(sid, event.kv.value)
                    else:
                        self.subscriptions.delete(sid)
            for rid, at in revisions.items():
                self._revisions[rid] = max(self._revisions.get(rid, 0), at)
            self._leases.update(leases)
            for rid in removed:
                self._revisions.pop(rid, None)
                self._leases.pop(rid, None)
            self._advance(revision)
        return _Revision(revision, self.replica.replication(records, removed), settle)

    def _begin(self, revision: _Revision) -> None:
        """Apply `revision` now, or its first step now and the rest through the cooperator."""
        if self.cooperator is None:
            self._step(revision, None)
            return
        self._step(revision, self.removal_step)
        if not revision.replication.done:
            self._cooperate(revision)

    def _cooperate(self, current: _Revision | None) -> None:
        assert self.cooperator is not None
        self._stepping = self.cooperator.cooperate(self._steps(current))
        self._stepping.whenDone().addErrback(self._steps_ended)

    def _steps(self, current: _Revision | None) -> Iterator[None]:
        """The rest of `current`, then the revisions delivered meanwhile, in order: at most `removal_step`
        resources changed per turn of the cooperator, then a yield."""
        while True:
            budget = self.removal_step
            while budget > 0:
                if current is None:
                    if not self._behind:
                        self._stepping = None  # what comes next is applied as it arrives
                        return
                    current = self._revision(*self._behind.popleft())
                budget -= self._step(current, budget)
                if current.replication.done:
                    current = None
            yield None

    def _step(self, revision: _Revision, limit: int | None) -> int:
        """One step of `revision` (at most `limit` resources); once it is all applied, the store's bookkeeping. How
        many changes the step made."""
        replication = revision.replication
        try:
            changes = len(replication.step(limit))
        except Exception:
            log.failure("etcd store: revision {revision} could not be applied to the replica",
                        revision=revision.revision)
            replication.done, changes = True, 0
        if replication.done:
            revision.settle()
        return changes

    def _steps_ended(self, failure: Any) -> None:
        if failure.check(TaskStopped, SchedulerStopped):  # stopped by `_halt`, or the whole cooperator stopped
            return
        log.failure("etcd store: applying the watch's revisions failed", failure)
        # Go on with those that wait (in order: nothing is applied before them while they do)
        self._stepping = None
        if self._behind:
            self._cooperate(None)

    def _halt(self) -> None:
        """Drop the removal under way and the revisions waiting behind it (stopping, or reloading everything)."""
        self._behind.clear()
        stepping, self._stepping = self._stepping, None
        if stepping is not None:
            stepping.stop()

    def _advance(self, revision: int) -> None:
        self.applied = max(self.applied, revision)
        if self._waiters:
            ready = [waiter for at, waiter in self._waiters if at <= self.applied]
            self._waiters = [(at, waiter) for at, waiter in self._waiters if at > self.applied]
            for waiter in ready:
                waiter.callback(None)

    async def _caught_up(self, revision: int) -> None:
        """Wait until the replica has applied `revision` (at most `apply_timeout` seconds: then it is late, and
        the caller answers from what it committed)."""
        if self.applied >= revision:
            return
        waiter: Deferred[None] = Deferred()
        self._waiters.append((revision, waiter))
        waiter.addTimeout(self.apply_timeout, self.clock)
        try:
            await waiter
        except Exception:
            self._waiters = [(at, other) for at, other in self._waiters if other is not waiter]
            log.warn("etcd store: the replica did not apply revision {revision} within {timeout} s",
                     revision=revision, timeout=self.apply_timeout)

    @property
    def current(self) -> bool:
        """The replica is being fed: the watch is open at an etcd member that has a leader."""
        return self._watch is not None and self._watch.connected

    # Reading (from the replica)

    def get(self, kind: str, rid: str) -> Resource | None:
        return self.replica.get(kind, rid)

    def health(self, node_id: str, api_version: str) -> Deferred[float]:
        """When the Node was last seen: its lease's renewal, read from etcd (heartbeats may go to any member)."""
        self.replica.heartbeat_target(node_id, api_version)

        async def seen() -> float:
            left = await self._etcd(self.etcd.lease_ttl(self._leases.get(node_id, 0)))
            if left is None:
                raise UnknownResource(f"no node {node_id} is registered (expired)")
            return self.clock.seconds() - max(0.0, self.replica.expiry - left)
        return ensureDeferred(seen())

    # Writing

    def register(self, kind: str, data: dict[str, Any], api_version: str, client_id: str | None = None, *,
                 now: float) -> Deferred[RegisterOutcome]:
        return ensureDeferred(self._register(kind, data, api_version, client_id, now))

    async def _register(self, kind: str, data: dict[str, Any], api_version: str, client_id: str | None,
                        now: float) -> RegisterOutcome:
        granted = 0  # a lease for a new Node, asked for before the turn (it takes a round trip of its own)
        if kind == "node" and self.replica.find(str(data.get("id"))) is None:
            granted = (await self._etcd(self.etcd.lease_grant(math.ceil(self.replica.expiry)))).id
        try:
            for _ in range(self.attempts):
                async with self._turn:
                    proposal = self.replica.propose(kind, data, api_version, client_id)
                    existing, rid = proposal.existing, proposal.id
                    if proposal.text is None:  # the same resource again: nothing to write
                        assert existing is not None
                        outcome = RegisterOutcome(False, existing)
                    else:
                        # Stamped with the time of this attempt, not of the request: a retry after losing to a later
                        # stamp takes a stamp later still, ahead of the writes that were under way meanwhile.
                        attempt = max(now, self.clock.seconds())
                        outcome, result, checked = await self._commit(proposal, attempt, granted)
                if proposal.text is None:
                    if kind == "node":
                        await self._renew(rid)  # a Node's re-registration is a sign of life
                    return outcome
                if result is not None and result.succeeded:
                    if kind == "node" and existing is None:
                        granted = 0  # in use
                    await self._caught_up(result.revision)
                    if kind == "node" and existing is not None:
                        await self._renew(rid)  # an update is a sign of life too
                    return RegisterOutcome(outcome.created, self.replica.find(rid) or outcome.resource)
                await self._after_conflict(result, checked)
            raise _contention(f"{kind} {data.get('id')}", self.attempts)
        finally:
            if granted:
                try:
                    await self.etcd.lease_revoke(granted)  # unused: let it go at once
                except Exception:
                    pass  # it expires on its own

    async def _commit(self, proposal: Proposal, now: float, granted: int) -> tuple[RegisterOutcome, Any, list[str]]:
        """Send the transaction that stores `proposal` (during this member's turn); the outcome it would be, the
        result (None: the Node's lease is gone) and the resources whose keys the failure branch reads."""
        existing, rid, kind = proposal.existing, proposal.id, proposal.kind
        key = self._key(rid)
        compares = [unchanged(key, self._revisions.get(rid, 0))]
        writes: list[Put | Get | Delete] = []
        checks: list[Put | Get | Delete] = [Get(self._stamp_key), Get(key)]
        checked = [rid]
        if kind == "node":
            lease = self._leases.get(rid, 0) if existing is not None else granted
        else:
            lease = self._leases.get(proposal.node_id, 0)
            parent_id = proposal.parent_id
            assert parent_id is not None
            parent_key = self._key(parent_id)
            compares.append(unchanged(parent_key, self._revisions.get(parent_id, -1)))
            # Touch the parent: a delete of it, at another member, then fails its compare and sees this child.
            writes.append(Put(parent_key, b"", keep=True))
            checks.append(Get(parent_key))
            checked.append(parent_id)
        last, stamp_revision = self._stamp
        record = proposal.record(max(unix_to_tai_ns(now), last + 1))
        stamp = stamp_text(record.updated)
        # The stamp held must be lower than this one (a write with a higher stamp committed meanwhile makes this one
        # fail and take a later stamp); while this member has seen no stamp, the key must not exist yet.
        compares.append(Compare(self._stamp_key, "value", "<", stamp) if stamp_revision
                        else unchanged(self._stamp_key, 0))
        writes += [Put(key, encode_record(record, lease), lease), Put(self._stamp_key, stamp)]
        try:
            result = await self._etcd(self.etcd.txn(compares, writes, checks))
        except LeaseNotFound:
            return RegisterOutcome(existing is None, record), None, checked  # the Node expired meanwhile
        if result.succeeded:
            # What this member's next write compares, known now: the watch brings the same a little later.
            self._stamp = max(self._stamp, (record.updated, result.revision), key=lambda held: held[1])
            if proposal.parent_id is not None:
                self._revisions[proposal.parent_id] = max(self._revisions.get(proposal.parent_id, 0),
                                                          result.revision)
        return RegisterOutcome(existing is None, record), result, checked

    async def _after_conflict(self, result: Any, checked: list[str]) -> None:
        """After a lost compare: take the stamp etcd has, and wait for the replica to see whatever else won (the
        failure branch read the stamp, then the keys of `checked`)."""
        if result is None:
            await deferLater(self.clock, 0.1, lambda: None)
            return
        stamp, *found = result.responses
        for kv in stamp.kvs:
            if kv.mod_revision > self._stamp[1]:
                self._stamp = (int(kv.value), kv.mod_revision)
        newest = 0
        for rid, held in zip(checked, found):
            if held.kvs:
                if self._revisions.get(rid) != held.kvs[0].mod_revision:
                    newest = max(newest, held.kvs[0].mod_revision)
            elif rid in self._revisions:
                newest = max(newest, result.revision)  # it went: wait for its deletion
        if newest:
            await self._caught_up(newest)

    def delete(self, kind: str, rid: str, api_version: str, client_id: str | None = None) -> Deferred[list[str]]:
        """Remove a resource and everything below it; the ids removed (leaves first)."""
        return ensureDeferred(self._delete(kind, rid, api_version, client_id))

    async def _delete(self, kind: str, rid: str, api_version: str, client_id: str | None) -> list[str]:
        for _ in range(self.attempts):
            root = self.replica.deletable(kind, rid, api_version, client_id)
            ids = [record.id for record in self.replica.subtree(root)]
            if kind == "node":
                # The Node's lease holds every resource below it, those this replica has not seen yet included.
                try:
                    revision = await self._etcd(self.etcd.lease_revoke(self._leases.get(root.id, 0)))
                except LeaseNotFound:
                    raise UnknownResource(f"no node {rid} is registered (it expired)") from None
                await self._caught_up(revision)
                return ids
            compares = [unchanged(self._key(each), self._revisions.get(each, -1)) for each in ids]
            async with self._turn:
                result = await self._etcd(self.etcd.txn(
                    compares, [Delete(self._key(each)) for each in ids],
                    [Get(self._stamp_key)] + [Get(self._key(each)) for each in ids]))
            if result.succeeded:
                await self._caught_up(result.revision)
                return ids
            await self._after_conflict(result, ids)
        raise _contention(f"{kind} {rid}", self.attempts)

    def heartbeat(self, node_id: str, api_version: str, client_id: str | None = None, *,
                  now: float) -> Deferred[float]:
        node = self.replica.heartbeat_target(node_id, api_version, client_id)

        async def renew() -> float:
            await self._renew(node.id)
            return now
        return ensureDeferred(renew())

    async def _renew(self, node_id: str) -> None:
        try:
            await self._etcd(self.etcd.lease_keepalive(self._leases.get(node_id, 0)))
        except LeaseNotFound:
            raise UnknownResource(f"no node {node_id} is registered (it expired)") from None

    async def _etcd(self, call: Deferred[Any]) -> Any:
        """The answer of one etcd call; etcd out of reach is a 503 with Retry-After, logged once per outage."""
        try:
            answer = await call
        except EtcdUnavailable as exc:
            if not self._outage:
                self._outage = True
                log.error("etcd store: etcd cannot be reached; the Registration API answers 503 until it can "
                          "({why})", why=exc)
            raise NmosError(503, "The registry's shared store (etcd) cannot be reached", str(exc),
                            {"Retry-After": str(RETRY_AFTER)}) from None
        if self._outage:
            self._outage = False
            log.info("etcd store: etcd answers again")
        return answer


def stamp_text(stamp: int) -> bytes:
    """A TAI stamp in nanoseconds as the `stamp` key holds it: 19 digits (TAI nanoseconds since 1970 have 19 digits
    from 2001 to 2286), so that etcd's comparison of values, byte by byte, orders stamps as numbers."""
    if not 0 <= stamp < 10**19:
        raise ValueError(f"stamp {stamp} does not fit 19 digits")
    return b"%019d" % stamp


def _contention(what: str, attempts: int) -> NmosError:
    """A write that lost its compares to other members `attempts` times: the client may try again soon."""
    return NmosError(503, f"{what} is being changed at other members of the registry cluster",
                     f"lost {attempts} times in a row", {"Retry-After": "1"})
