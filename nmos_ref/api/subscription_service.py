"""The WebSocket subscriptions of a Query API as a service, with Autobahn loaded only when the first socket opens.

Autobahn brings WAMP, cryptography, cffi and click with it: about 12 MiB of resident memory, a fifth of an empty
registry's (issue 13, idle footprint). A registry that nobody subscribes to never needs it; the first socket pays
the import once (about 0.1-0.2 s of that reactor turn), every later one finds it loaded. POST /subscriptions and
the listing need only the manager (nmos_ref.ws), which is always there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from nmos_ref.ws.subscriptions import SubscriptionManager

if TYPE_CHECKING:
    from nmos_ref.api.query_sockets import SubscriptionFactory


class SocketHandOver(Resource):
    """What the Query API's routes hand a subscription's WebSocket to: Autobahn's resource, made on first use."""

    isLeaf = True

    def __init__(self, service: SubscriptionService) -> None:
        super().__init__()
        self._service = service

    def render(self, request: IRequest) -> Any:
        return self._service.websockets().render(request)


class SubscriptionService(Service):
    """The WebSocket subscriptions of a Query API: the manager, the resource that takes sockets over (`resource`,
    for the Query API's routes), and, when the service stops, every socket closed and the expiry timers stopped."""

    def __init__(self, manager: SubscriptionManager, reactor: Any) -> None:
        self.manager = manager
        self.reactor = reactor
        self.resource = SocketHandOver(self)
        self._factory: SubscriptionFactory | None = None
        self._websockets: IResource | None = None

    @property
    def factory(self) -> SubscriptionFactory:
        """Autobahn's factory of the subscription sockets (which knows the open ones), made on first use."""
        self.websockets()
        assert self._factory is not None
        return self._factory

    def websockets(self) -> IResource:
        """Autobahn's WebSocketResource for the subscription sockets, made (and Autobahn imported) on first use."""
        if self._websockets is None:
            from autobahn.twisted.resource import WebSocketResource

            from nmos_ref.api.query_sockets import SubscriptionFactory

            self._factory = SubscriptionFactory(self.manager, self.reactor)
            self._websockets = WebSocketResource(self._factory)
        return self._websockets

    def startService(self) -> None:
        super().startService()
        self.manager.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        sockets = list(self._factory.sockets) if self._factory is not None else []
        closed = [socket.when_closed() for socket in sockets]
        self.manager.stop()
        for socket in sockets:
            if socket.connection is None:  # never attached, or already ending
                socket.sendClose(1000, "the Query API is shutting down")
        return gatherResults(closed)
