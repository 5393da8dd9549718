"""The Query API's subscriptions shared by the members of a registry cluster (docs/cluster.md): every member lists
every member's subscriptions, and each serves the sockets of those made at it (its `SubscriptionManager`; their
`ws_href` names it).

Keys, under the store's prefix: `subscription/<id>` → the subscription (its attributes, `ws_href`, creation
stamp), put by the member that made it with that member's own lease, so a member that dies takes its
subscriptions with it. A DELETE at another member (persistent subscriptions only, as at the owner) marks the key
deleted, keeping the owner's lease; the owner sees the mark, removes the subscription and closes its sockets, then
deletes the key.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from attrs import asdict
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from nmos_ref.cluster.etcd import EtcdClient, LeaseNotFound
from nmos_ref.model.versions import ALL_VERSIONS
from nmos_ref.ws.subscriptions import (PersistenceRequired, Subscription, SubscriptionFilter, SubscriptionManager,
                                       Wanted)

log = Logger()

SUBSCRIPTION = "subscription/"
MEMBER_TTL = 10  # seconds a dead member's subscriptions stay listed
SYNC_PERIOD = 2.0  # seconds between renewals of the member's lease (and retries of what failed)


def encode_subscription(subscription: Subscription, member: str | None = None) -> bytes:
    """The value of `subscription/<id>`; `member` names the run of the member that made it."""
    return json.dumps({"wanted": asdict(subscription.wanted), "ws_href": subscription.ws_href,
                       "created": subscription.created, "member": member},
                      separators=(",", ":")).encode("utf-8")


def decode_subscription(sid: str, value: bytes) -> Subscription | None:
    """The subscription stored under `subscription/<sid>`, or None when it is marked deleted."""
    held = json.loads(value)
    if held.get("deleted"):
        return None
    wanted = Wanted(**held["wanted"])
    return Subscription(sid, wanted, SubscriptionFilter.of(wanted), held["ws_href"], held["created"])


class SubscriptionTable:
    """Every member's subscriptions as etcd holds them, kept by the store's watch (`nmos_ref.cluster.store`)."""

    def __init__(self) -> None:
        self.held: dict[str, Subscription] = {}
        self.members: dict[str, str] = {}  # subscription id -> the member (run) that made it, when the key says
        self._observers: list[Callable[[str], None]] = []

    def observe(self, callback: Callable[[str], None]) -> None:
        """Call `callback(sid)` when a subscription is marked deleted."""
        self._observers.append(callback)

    def put(self, sid: str, value: bytes) -> None:
        try:
            subscription = decode_subscription(sid, value)
        except Exception:
            log.failure("etcd store: subscription {id} cannot be read", id=sid)
            return
        if subscription is None:
            self.delete(sid)
            for callback in list(self._observers):
                callback(sid)
        else:
            self.held[sid] = subscription
            member = json.loads(value).get("member")
            if member is not None:
                self.members[sid] = member

    def delete(self, sid: str) -> None:
        self.held.pop(sid, None)
        self.members.pop(sid, None)

    def load(self, values: dict[str, bytes]) -> None:
        """Everything etcd holds now, in place of what was held."""
        self.held.clear()
        self.members.clear()
        for sid, value in values.items():
            self.put(sid, value)


class SharedSubscriptions:
    """What the Query API asks of its subscriptions (`subscribe`, `get`, `listing`, `delete`), at one member of a
    registry cluster: this member's own, from `manager`, and every other member's, from `table`. The table also
    holds this member's own (the watch brings back its puts) until etcd's deletion of one comes back too: the manager
    alone says which of its own still are."""

    def __init__(self, manager: SubscriptionManager, table: SubscriptionTable, etcd: EtcdClient, prefix: str,
                 clock: IReactorTime) -> None:
        self.manager = manager
        self.table = table
        self.etcd = etcd
        self.prefix = prefix
        self.clock = clock
        self.member = uuid.uuid4().hex  # this run of the member, named in the keys it puts
        self._lease = 0  # this member's lease, which its subscriptions' keys are put with
        self._published: set[str] = set()  # own subscriptions whose keys are in etcd
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._running: Deferred[Any] | None = None
        self._writes: set[Deferred[Any]] = set()  # writes in flight, waited for on stop
        table.observe(self._deleted_elsewhere)

    def _key(self, sid: str) -> str:
        return f"{self.prefix}{SUBSCRIPTION}{sid}"

    # For the Query API

    def subscribe(self, wanted: Wanted, view: SubscriptionFilter) -> tuple[Subscription, bool]:
        subscription, created = self.manager.subscribe(wanted, view)
        if created:
            self._publish(subscription)
        return subscription, created

    def _others(self, sid: str) -> bool:
        return self.table.members.get(sid) != self.member

    def get(self, sid: str) -> Subscription | None:
        own = self.manager.get(sid)
        if own is not None:
            return own
        return self.table.held.get(sid) if self._others(sid) else None  # one of its own that went here: gone

    def listing(self, version: str) -> list[Subscription]:
        """Every member's subscriptions made at `version`, oldest first."""
        own = self.manager.listing(version)
        mine = {subscription.id for subscription in own}
        others = [subscription for sid, subscription in self.table.held.items()
                  if sid not in mine and self._others(sid) and subscription.version == version]
        return sorted(own + others, key=lambda subscription: subscription.created)

    def delete(self, sid: str) -> None:
        if self.manager.get(sid) is not None:
            self.manager.delete(sid)
            self._unpublish(sid)
            return
        subscription = self.table.held[sid]
        if not subscription.wanted.persist:
            raise PersistenceRequired(f"subscription {sid} is not persistent: the Query API removes it once no "
                                      f"WebSocket uses it, and it cannot be deleted")
        # Marked, not deleted: its member closes its sockets, then deletes it; the key keeps that member's lease.
        del self.table.held[sid]
        self._background(self.etcd.put(self._key(sid), b'{"deleted":true}', keep_lease=True))

    # Keeping etcd in step

    def start(self) -> None:
        self._running = self._loop.start(SYNC_PERIOD, now=True)

    def stop(self) -> Deferred[None]:
        """Stop, and take this member's subscriptions off every member's list at once (its lease revoked)."""
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._running is not None:
            await self._running  # the sync in progress, if any
        for write in list(self._writes):
            await write
        lease, self._lease = self._lease, 0
        self._published.clear()
        if lease:
            try:
                await self.etcd.lease_revoke(lease)
            except Exception:
                pass  # it expires on its own

    def _tick(self) -> Deferred[None]:
        return ensureDeferred(self._sync()).addErrback(
            lambda failure: log.warn("etcd store: subscriptions not in step with etcd ({why}); trying again in "
                                     "{period} s", why=failure.getErrorMessage(), period=SYNC_PERIOD))

    async def _sync(self) -> None:
        """Renew this member's lease (a new one, and every key put again, if it was lost) and put or delete the
        keys whose subscriptions were made or went since."""
        if self._lease:
            try:
                await self.etcd.lease_keepalive(self._lease)
            except LeaseNotFound:
                log.warn("etcd store: this member's lease expired; its subscriptions are listed again")
                self._lease = 0
                self._published.clear()
        if not self._lease:
            self._lease = (await self.etcd.lease_grant(MEMBER_TTL)).id
        own = {subscription.id: subscription for version in ALL_VERSIONS
               for subscription in self.manager.listing(version)}
        for sid, subscription in own.items():
            if sid not in self._published:
                await self.etcd.put(self._key(sid), encode_subscription(subscription, self.member), self._lease)
                self._published.add(sid)
        for sid in self._published - own.keys():  # expired here (non-persistent, no socket left)
            await self.etcd.delete_range(self._key(sid))
            self._published.discard(sid)

    def _publish(self, subscription: Subscription) -> None:
        if self._lease:
            sid = subscription.id
            put = self.etcd.put(self._key(sid), encode_subscription(subscription, self.member), self._lease)
            self._background(put.addCallback(lambda _: self._published.add(sid)))

    def _unpublish(self, sid: str) -> None:
        if sid in self._published:
            self._published.discard(sid)
            self._background(self.etcd.delete_range(self._key(sid)))

    def _deleted_elsewhere(self, sid: str) -> None:
        if self.manager.get(sid) is not None:
            try:
                self.manager.delete(sid)
            except PersistenceRequired:
                return  # (another member refuses this too: never marked)
            log.info("Subscription {id} deleted at another member", id=sid)
        self._published.discard(sid)
        self._background(self.etcd.delete_range(self._key(sid)))

    def _background(self, call: Deferred[Any]) -> None:
        """A write whose failure the next sync repairs."""
        self._writes.add(call)
        call.addErrback(lambda failure: log.warn("etcd store: a subscription write failed ({why})",
                                                 why=failure.getErrorMessage()))
        call.addBoth(lambda _: self._writes.discard(call))
