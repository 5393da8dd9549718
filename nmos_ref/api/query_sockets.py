"""The sockets of Query API subscriptions: one Autobahn protocol per WebSocket, all served by one `WebSocketResource`
in the Query API's Klein tree (so on the API's own port and scheme). `nmos_ref.api.subscription_service` imports this
module (and Autobahn) when the first socket opens, and closes the sockets at shutdown.

`ws_href` is `ws[s]://<host the client used>/x-nmos/query/<version>/ws/<subscription id>`. The Query API's route
for that path checks the subscription and hands the request to the `WebSocketResource`, which takes the connection
over from twisted.web (../shared/docs/stack-notes.md §2); the protocol finds its subscription by the same path.
"""

from __future__ import annotations

import re
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from nmos_ref.web.errors import NmosError
from nmos_ref.web.server import error_answer
from nmos_ref.ws.connection import Connection
from nmos_ref.ws.subscriptions import SubscriptionManager

_PATH = re.compile(r"/x-nmos/query/(v[0-9]+\.[0-9]+)/ws/([^/]+)/?")
MAX_FRAME = 64 * 1024  # bytes of one incoming frame: clients have nothing to send but control frames
# A ping every PING_INTERVAL seconds, and the socket dropped if nothing comes back within PING_TIMEOUT: a client that
# vanished without closing (or stopped reading) does not keep its subscription alive for ever.
PING_INTERVAL = 30.0
PING_TIMEOUT = 30.0


@implementer(IPushProducer)
class SubscriptionProtocol(WebSocketServerProtocol):
    """One WebSocket: the socket its `Connection` writes to, and the producer its transport pauses when the client
    stops reading."""

    factory: SubscriptionFactory

    def __init__(self) -> None:
        super().__init__()
        self.connection: Connection | None = None
        self._sid: str | None = None
        self._waiting: list[Deferred[None]] = []

    def onConnect(self, request: ConnectionRequest) -> None:
        match = _PATH.fullmatch(request.path)
        subscription = self.factory.manager.get(match.group(2)) if match is not None else None
        if subscription is None or match is None or subscription.version != match.group(1):
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "No such subscription")
        self._sid = subscription.id

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: list[tuple[str, str]] | None = None) -> None:
        """A refused opening handshake answered with the NMOS error JSON (Autobahn's own answer is a bare status
        line), then the connection closed."""
        self.wasNotCleanReason = reason
        self.log.info("failing WebSocket opening handshake ('{reason}')", reason=reason)
        headers = {name: str(value) for name, value in responseHeaders or ()}
        self.sendData(error_answer(NmosError(code, reason, None, headers)))
        self.dropConnection(abort=False)

    def onOpen(self) -> None:
        # twisted.web's HTTPChannel registered itself as the transport's producer; the connection is ours now, and
        # its pauses tell the Connection that the client has stopped reading.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        self.factory.sockets.add(self)
        assert self._sid is not None
        self.connection = self.factory.manager.connect(self._sid, self)
        if self.connection is None:  # deleted or expired since the handshake began
            self.sendClose(1000, "subscription deleted")

    def onMessageFrameData(self, payload: bytes) -> None:
        """IS-04 defines no messages from clients: what they send is not even kept."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """See onMessageFrameData."""

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.connection is not None:
            self.factory.manager.disconnect(self.connection)
            self.connection = None
        self.factory.sockets.discard(self)
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.callback(None)

    def when_closed(self) -> Deferred[None]:
        """Fires once the socket has closed (for an orderly shutdown)."""
        deferred: Deferred[None] = Deferred()
        self._waiting.append(deferred)
        return deferred

    # IPushProducer, for the transport

    def pauseProducing(self) -> None:
        if self.connection is not None:
            self.connection.pause()

    def resumeProducing(self) -> None:
        if self.connection is not None:
            self.connection.resume()

    def stopProducing(self) -> None:
        """The connection is being lost; onClose follows."""

    # nmos_ref.ws.subscriptions.Socket, for the Connection

    def send(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:  # not once the closing handshake has begun (onClose ends the Connection)
            self.sendMessage(payload, isBinary=False)

    def close(self, code: int, reason: str) -> None:
        self.sendClose(code, reason)

    def drop(self) -> None:
        self.dropConnection(abort=True)


class SubscriptionFactory(WebSocketServerFactory):
    """Builds the protocol of every subscription socket, and knows which are open."""

    protocol = SubscriptionProtocol

    def __init__(self, manager: SubscriptionManager, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.manager = manager
        self.sockets: set[SubscriptionProtocol] = set()
        # (maxMessagePayloadSize would limit the grains sent too; onMessageFrameData keeps nothing instead)
        # (webStatus: no HTML status page for a handshake without Upgrade; failHandshake answers it instead)
        self.setProtocolOptions(maxFramePayloadSize=MAX_FRAME, autoPingInterval=PING_INTERVAL,
                                autoPingTimeout=PING_TIMEOUT, webStatus=False)

