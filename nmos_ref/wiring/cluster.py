"""A registry cluster's member as services (docs/cluster.md): the etcd store with its HTTP and etcd clients, the
replica it loads and watches and the subscriptions it lists while it runs, and the Query API's stale marker.
Imported only when the settings name an etcd store."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from nmos_ref.cluster.etcd import EtcdClient, member_urls
from nmos_ref.cluster.store import ClusterStore
from nmos_ref.cluster.subscriptions import SharedSubscriptions, SubscriptionTable
from nmos_ref.config import Settings
from nmos_ref.model.store import Registry
from nmos_ref.web.client import PlainHTTP, quiet_pool
from nmos_ref.ws.subscriptions import SubscriptionManager

log = Logger()

ETCD_TIMEOUT = 2.0  # seconds an etcd member has to answer before the next one is asked
ETCD_CONNECTIONS = 32  # idle connections kept to each etcd member


class ClusterStoreService(Service):
    """While running: the replica loaded from etcd and watched, this member's subscriptions listed in etcd; on
    stop, those taken off every member's list, the watch stopped and the client's connections closed, in turn."""

    def __init__(self, store: ClusterStore, subscriptions: SharedSubscriptions, pool: HTTPConnectionPool) -> None:
        self.store = store
        self.subscriptions = subscriptions
        self.pool = pool
        self.loaded: Deferred[None] = Deferred()  # fires once the replica holds what etcd held at the start

    def startService(self) -> None:
        super().startService()
        self.loaded = self.store.start()
        self.loaded.addErrback(lambda failure: log.failure("etcd store: start failed", failure))
        self.subscriptions.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.subscriptions.stop()
        await self.store.stop()
        await self.pool.closeCachedConnections()


STALE_HEADER = b"x-registry-stale"  # an extension: docs/cluster.md


class StaleMarker(Resource):
    """A cluster member's Query API: while the replica is not fed (etcd out of reach, the watch reopening), every
    answer says it may be stale with `X-Registry-Stale: true`; the answers themselves are the same."""

    isLeaf = True

    def __init__(self, api: IResource, store: ClusterStore) -> None:
        super().__init__()
        self.api = api
        self.store = store

    def render(self, request: IRequest) -> Any:
        if not self.store.current:
            request.setHeader(STALE_HEADER, b"true")
        return self.api.render(request)


def cluster_store(settings: Settings, reactor: Any, clock: IReactorTime, replica: Registry,
                  manager: SubscriptionManager, cooperator: Cooperator | None = None) -> ClusterStoreService:
    """The etcd store named by `settings.store`, feeding `replica` (a big removal in steps taken by `cooperator`),
    and the subscriptions of every member, this member's own being `manager`'s."""
    pool = quiet_pool(reactor)
    # Every write and heartbeat is a request to etcd, many at once: kept-alive connections for them all, not
    # Twisted's default of two (a new connection per request cost most of a heartbeat's CPU).
    pool.maxPersistentPerHost = ETCD_CONNECTIONS
    http = PlainHTTP(Agent(reactor, pool=pool, connectTimeout=ETCD_TIMEOUT))
    etcd = EtcdClient(http, clock, member_urls(settings.store), timeout=ETCD_TIMEOUT)
    log.info("nmos-ref: registry store on etcd at {members}, keys under {prefix}", members=", ".join(etcd.members),
             prefix=settings.store_prefix)
    table = SubscriptionTable()
    store = ClusterStore(etcd, replica, clock, settings.store_prefix, subscriptions=table, cooperator=cooperator)
    return ClusterStoreService(store, SharedSubscriptions(manager, table, etcd, settings.store_prefix, clock), pool)
