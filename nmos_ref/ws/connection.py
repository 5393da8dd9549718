"""One socket of a subscription without the socket itself: the initial state still to send, the events queued
behind it, the rate limit between messages (`max_update_rate_ms`), and the backlog a client that stopped reading
may build before it is dropped. A socket is anything with `send`, `close` and `drop`.
"""

from __future__ import annotations
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol
from attrs import frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


@frozen
class SubscriptionLimits:
    """The numbers that bound what subscriptions cost (docs/subscriptions.md explains each)."""

    grace: float = 30.0  # seconds a non-persistent subscription outlives its last socket (or its creation)
    sync_slice: int = 256  # resources examined per reactor turn while sending the initial state
    grain_events: int = 1000  # most events in one grain of the initial state
    backlog_bytes: int = 8 << 20  # events held for a socket whose client stopped reading; beyond this it is closed


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
    initial state goes first, in grains of at most `grain_events` events, built `sync_slice` resources per reactor
    turn so that a large registry never holds the reactor for long. A grain holds at most one event per resource
    (the next event of a resource waits for the next grain), so no two of its events can be equal (the schema's
    `uniqueItems`) and each resource's events stay in order. While the transport is paused (its buffers are full
    because the client is not reading) nothing is sent; if the queue then grows beyond `backlog_bytes`, the socket is
    dropped.
    """

    def __init__(self, name: str, socket: Socket, clock: IReactorTime, scheduler: IReactorTime, interval: float,
                 make_grain: Callable[[list[str]], bytes], initial: Iterator[str | None],
                 limits: SubscriptionLimits) -> None:
        self.name = name  # for log lines: the subscription id
        self.socket = socket
        self.clock = clock
        self.scheduler = scheduler
        self.interval = interval
        self.make_grain = make_grain
        self.limits = limits
        self._initial: Iterator[str | None] | None = initial  # an event, or None for a resource that does not match
        self._ready: list[str] = []  # initial-state events built, not yet sent
        self._queue: deque[tuple[str, str]] = deque()  # (resource id, event) that happened since
        self.backlog = 0  # bytes in _queue
        self._last_sent: float | None = None
        self._paused = False
        self._closed = False
        self._window: IDelayedCall | None = None  # on `clock`: the rate limit's interval
        self._turn: IDelayedCall | None = None  # on `scheduler`: the next reactor turn

    @property
    def open(self) -> bool:
        return not self._closed

    def start(self) -> None:
        self._schedule()

    def push(self, events: Iterable[tuple[str, str]]) -> None:
        """Queue events (resource id, encoded event) to send after everything before them."""
        if self._closed:
            return
        for event in events:
            self._queue.append(event)
            self.backlog += len(event[1])
        if self._paused and self.backlog > self.limits.backlog_bytes:
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
        self._paused = False
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
        self._initial = None
        self._ready.clear()
        self._queue.clear()
        self.backlog = 0

    def _schedule(self) -> None:
        if self._closed or self._paused or self._window is not None or self._turn is not None:
            return
        if self._initial is None and not self._ready and not self._queue:
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
        if self._closed or self._paused:
            return
        if self._initial is not None:
            self._build_initial()
            if self._initial is not None and len(self._ready) < self.limits.grain_events:
                self._turn = self.scheduler.callLater(0, self._flush)  # yield to the reactor, then build more
                return
        if self._ready:
            events = self._ready[:self.limits.grain_events]
            del self._ready[:self.limits.grain_events]
        else:
            events = self._take_queued()
        if events:
            self._last_sent = self.clock.seconds()
            self.socket.send(self.make_grain(events))
        self._schedule()

    def _build_initial(self) -> None:
        initial, ready = self._initial, self._ready
        assert initial is not None
        for _ in range(self.limits.sync_slice):
            try:
                event = next(initial)
            except StopIteration:
                self._initial = None
                return
            if event is not None:
                ready.append(event)

    def _take_queued(self) -> list[str]:
        queue, events, seen = self._queue, [], set()
        while queue and queue[0][0] not in seen:
            rid, event = queue.popleft()
            seen.add(rid)
            events.append(event)
            self.backlog -= len(event)
        return events
