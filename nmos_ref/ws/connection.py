"""One socket of a subscription without the socket itself: the initial state still to send (read from a shared
`Snapshot` as the socket drains), the events queued behind it, the rate limit between messages
(`max_update_rate_ms`), and the backlog a client that stopped reading may build before it is dropped. A socket is
anything with `send`, `close` and `drop`.
"""

from __future__ import annotations
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from nmos_ref.ws.limits import SubscriptionLimits
from nmos_ref.ws.snapshot import Snapshot

__all__ = ["Connection", "Socket", "SubscriptionLimits"]

log = Logger()


class Socket(Protocol):
    """What a connection needs of its WebSocket."""

    def send(self, payload: bytes) -> None:
        """Send one text message."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake."""

    def drop(self) -> None:
        """Close at once, without a handshake (the client is not reading)."""


class Connection:
    """One socket of a subscription: the initial state still to send, the events queued behind it, and the rate
    limit between its messages.

    QueryAPI.raml: `max_update_rate_ms` "Sets the minimum interval (in milliseconds) between consecutive WebSocket
    messages". A message goes out as soon as the interval since the previous one has passed (the first at once);
    everything that happens meanwhile waits and goes out together in the next grain, nothing is dropped. The
    initial state goes first: one grain per chunk of the subscription's shared `Snapshot`, each written only once the
    transport has drained the previous one, so a large initial state is sent at the pace the client reads and never
    sits in the backlog. A grain of changes holds at most one event per resource (the next event of a resource waits
    for the next grain), so no two of its events can be equal (the schema's `uniqueItems`) and each resource's
    events stay in order. While the transport is paused (its buffers are full because the client is not reading)
    nothing is sent; if the changes queued meanwhile then pass `backlog_bytes`, the socket is dropped.
    """

    def __init__(self, name: str, socket: Socket, clock: IReactorTime, scheduler: IReactorTime, interval: float,
                 make_grain: Callable[[bytes], bytes], snapshot: Snapshot[Any] | None,
                 limits: SubscriptionLimits) -> None:
        self.name = name  # for log lines: the subscription id
        self.socket = socket
        self.clock = clock
        self.scheduler = scheduler
        self.interval = interval
        self.make_grain = make_grain  # a grain around the comma-joined encoded events of its `data`
        self.limits = limits
        self._snapshot = snapshot  # the initial state, until every chunk of it has been sent
        self._syncing = False  # waiting for the snapshot to build the next chunk
        self._queue: deque[tuple[str, str]] = deque()  # (resource id, event) that happened since
        self.backlog = 0  # bytes in _queue
        self.overflowed = False  # dropped because the backlog passed limits.backlog_bytes
        self._last_sent: float | None = None
        self._paused = False
        self._closed = False
        self._window: IDelayedCall | None = None  # on `clock`: the rate limit's interval
        self._turn: IDelayedCall | None = None  # on `scheduler`: the next reactor turn

    @property
    def open(self) -> bool:
        return not self._closed

    @property
    def synced(self) -> bool:
        """Whether the whole initial state has been sent."""
        return self._snapshot is None

    def start(self) -> None:
        if self._snapshot is not None:
            self._snapshot.join(self)
        self._schedule()

    def push(self, events: Iterable[tuple[str, str]]) -> None:
        """Queue events (resource id, encoded event) to send after everything before them."""
        if self._closed:
            return
        for event in events:
            self._queue.append(event)
            self.backlog += len(event[1])
        if self._paused and self.backlog > self.limits.backlog_bytes:
            self.overflowed = True
            log.warn("Dropping a WebSocket of subscription {id}: its client stopped reading and {size} bytes of "
                     "events are waiting (limit {limit})", id=self.name, size=self.backlog,
                     limit=self.limits.backlog_bytes)
            self._stop()
            self.socket.drop()
            return
        self._schedule()

    def pause(self) -> None:
        """The transport's buffers are full: hold everything back."""
        self._paused = True

    def resume(self) -> None:
        """The transport has written everything it held. The next grain goes at once if it may (the rate limit
        allows it and it is ready), so that the transport can write it in this same reactor turn: on a busy
        registry a turn can be long, and an initial state sent a grain every other turn would take twice as many."""
        self._paused = False
        if self._turn is None and self._window is None and not self._syncing and not self._closed and \
                (self._last_sent is None or self._last_sent + self.interval <= self.clock.seconds()):
            self._flush()
        else:
            self._schedule()

    def wake(self) -> None:
        """The snapshot has built the chunk this socket waited for."""
        self._syncing = False
        self._schedule()

    def end(self, code: int, reason: str) -> None:
        """Stop sending and start the closing handshake."""
        if not self._closed:
            self._stop()
            self.socket.close(code, reason)

    def lost(self) -> None:
        """The socket has closed."""
        self._stop()

    def _stop(self) -> None:
        self._closed = True
        for call in (self._window, self._turn):
            if call is not None and call.active():
                call.cancel()
        self._window = self._turn = None
        if self._snapshot is not None:
            self._snapshot.leave(self)
            self._snapshot = None
        self._queue.clear()
        self.backlog = 0

    def _schedule(self) -> None:
        if self._closed or self._paused or self._syncing or self._window is not None or self._turn is not None:
            return
        if self._snapshot is None and not self._queue:
            return
        wait = 0.0 if self._last_sent is None else self._last_sent + self.interval - self.clock.seconds()
        if wait > 0:
            self._window = self.clock.callLater(wait, self._window_opened)
        else:
            # Next turn, not now: the change that got here is still inside a request, whose answer goes first, and
            # the other changes of this turn join the same grain.
            self._turn = self.scheduler.callLater(0, self._flush)

    def _window_opened(self) -> None:
        self._window = None
        self._flush()

    def _flush(self) -> None:
        self._turn = None
        if self._closed or self._paused or self._syncing:
            return
        data = b""
        if self._snapshot is not None:
            chunk = self._snapshot.take(self)
            if chunk is None:
                self._snapshot = None  # every chunk sent: the changes queued since follow
            elif not chunk:
                self._syncing = True  # woken when it is built
                return
            else:
                data = chunk
        if not data:
            events = self._take_queued()
            data = ",".join(events).encode("utf-8") if events else b""
        if data:
            self._last_sent = self.clock.seconds()
            self.socket.send(self.make_grain(data))
        self._schedule()

    def _take_queued(self) -> list[str]:
        queue, events, seen = self._queue, [], set()
        while queue and queue[0][0] not in seen:
            rid, event = queue.popleft()
            seen.add(rid)
            events.append(event)
            self.backlog -= len(event)
        return events
