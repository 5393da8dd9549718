"""The etcd store of a registry cluster as a service (docs/cluster.md): its HTTP client, its etcd client, and the
replica it loads and watches while the service runs. Imported only when the settings name an etcd store."""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from nmos_ref.cluster.etcd import EtcdClient, member_urls
from nmos_ref.cluster.store import ClusterStore
from nmos_ref.config import Settings
from nmos_ref.model.store import Registry
from nmos_ref.web.client import quiet_pool

log = Logger()

ETCD_TIMEOUT = 2.0  # seconds an etcd member has to answer before the next one is asked


class ClusterStoreService(Service):
    """Loads the replica from etcd and keeps it watched while running; closes the client's connections on stop."""

    def __init__(self, store: ClusterStore, pool: HTTPConnectionPool) -> None:
        self.store = store
        self.pool = pool
        self.loaded: Deferred[None] = Deferred()  # fires once the replica holds what etcd held at the start

    def startService(self) -> None:
        super().startService()
        self.loaded = self.store.start()
        self.loaded.addErrback(lambda failure: log.failure("etcd store: start failed", failure))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.store.stop().addBoth(lambda _: self.pool.closeCachedConnections())


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


def cluster_store(settings: Settings, reactor: Any, clock: IReactorTime, replica: Registry) -> ClusterStoreService:
    """The etcd store named by `settings.store`, feeding `replica`."""
    pool = quiet_pool(reactor)
    http = HTTPClient(Agent(reactor, pool=pool, connectTimeout=ETCD_TIMEOUT))
    etcd = EtcdClient(http, clock, member_urls(settings.store), timeout=ETCD_TIMEOUT)
    log.info("nmos-ref: registry store on etcd at {members}, keys under {prefix}", members=", ".join(etcd.members),
             prefix=settings.store_prefix)
    return ClusterStoreService(ClusterStore(etcd, replica, clock, settings.store_prefix), pool)
