"""The initial state of a subscription, encoded once and shared by its sockets.

Every socket of a subscription starts with the same sync events. A burst of clients connecting to one subscription
(a hundred monitors of /senders after a restart) would otherwise encode the same thousands of resources once per
socket, in the same reactor turns. A `Snapshot` holds the records as they were at one moment and encodes them once,
a slice per reactor turn, into chunks: the comma-joined events of one grain's `data`, as bytes. Each socket reads the
chunks at its own pace (the pace at which its client reads), so nothing of the initial state is ever queued in a
socket's backlog.

A socket may join a snapshot only while it is still the state now: the subscription's manager calls `stale` as soon
as a change reaches the subscription, and a socket that connects after that starts a new snapshot. Until then every
chunk built is kept for sockets yet to come; once stale, a chunk is released as soon as every socket reading it is
past it. Chunks are built only a few ahead of the fastest reader, so what a snapshot holds is bounded by the
subscription's initial state while it is current, and by the distance between its slowest and fastest readers once
it is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Generic, Protocol, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from nmos_ref.ws.limits import SubscriptionLimits

T = TypeVar("T")
AHEAD = 2  # chunks built beyond the fastest reader: the next grain is ready when its socket drains


class Reader(Protocol):
    """A socket's side of a snapshot."""

    def wake(self) -> None:
        """A chunk it waited for is ready (or the snapshot ended)."""


class Snapshot(Generic[T]):
    """`records` encoded by `encode` (an event, or None for a record that does not match), in chunks of at most
    `limits.grain_events` events and about `limits.grain_bytes` bytes, built `limits.sync_slice` records (or
    `limits.slice_seconds`, whichever comes first) per turn of `scheduler` while someone reads."""

    def __init__(self, records: Sequence[T], encode: Callable[[T], str | None], scheduler: IReactorTime,
                 limits: SubscriptionLimits, timer: Callable[[], float] = perf_counter) -> None:
        self._records: Sequence[T] | None = records if records else None  # None once every record is encoded
        self._encode = encode
        self._scheduler = scheduler
        self._limits = limits
        self._timer = timer
        self._position = 0  # next record to encode
        self._events: list[str] = []  # the chunk being built
        self._size = 0  # its characters
        self._chunks: list[bytes | None] = []  # None once every reader is past it
        self._released = 0  # chunks before this one are released
        self._readers: dict[Reader, int] = {}  # reader -> its next chunk
        self._waiting: set[Reader] = set()
        self._turn: IDelayedCall | None = None
        self.fresh = True  # still the subscription's state now
        self.encoded = 0  # records encoded so far (for tests and logs)

    @property
    def done(self) -> bool:
        return self._records is None

    @property
    def joinable(self) -> bool:
        """Whether a new socket may start from it: still the current state (nothing has been released then)."""
        return self.fresh

    def stale(self) -> None:
        """A change reached the subscription: new sockets need a newer snapshot."""
        self.fresh = False
        if self._readers:
            self._release()

    def join(self, reader: Reader) -> None:
        self._readers[reader] = 0
        self._schedule()

    def leave(self, reader: Reader) -> None:
        """The reader's socket closed, or it has read everything."""
        self._readers.pop(reader, None)
        self._waiting.discard(reader)
        if not self._readers:
            self.fresh = False  # what it built is about to go: nobody may start from it any more
            self._records = None
            self._events = []
            self._chunks.clear()
            if self._turn is not None and self._turn.active():
                self._turn.cancel()
            self._turn = None
        else:
            self._release()

    def take(self, reader: Reader) -> bytes | None:
        """The reader's next chunk; b"" if it is not built yet (the reader is woken when it is), None once the reader
        has had every chunk (it has then left)."""
        index = self._readers[reader]
        if index < len(self._chunks):
            chunk = self._chunks[index]
            assert chunk is not None
            self._readers[reader] = index + 1
            self._release()
            self._schedule()
            return chunk
        if self.done:
            self.leave(reader)
            return None
        self._waiting.add(reader)
        self._schedule()
        return b""

    def _release(self) -> None:
        if self.fresh:
            return  # kept for the sockets still to join
        lowest = min(self._readers.values())
        while self._released < lowest:
            self._chunks[self._released] = None
            self._released += 1

    def _schedule(self) -> None:
        if self._turn is not None or self.done or not self._readers:
            return
        if self._ahead():
            return
        self._turn = self._scheduler.callLater(0, self._build)

    def _ahead(self) -> bool:
        """Far enough ahead of every reader for now."""
        return not self._waiting and len(self._chunks) >= max(self._readers.values(), default=0) + AHEAD

    def _build(self) -> None:
        self._turn = None
        records = self._records
        if records is None:
            return
        limits, events, encode = self._limits, self._events, self._encode
        built = len(self._chunks)
        end = min(len(records), self._position + limits.sync_slice)
        deadline = self._timer() + limits.slice_seconds
        position = self._position
        while position < end:
            event = encode(records[position])
            position += 1
            if event is not None:
                events.append(event)
                self._size += len(event) + 1
                if len(events) >= limits.grain_events or self._size >= limits.grain_bytes:
                    self._close_chunk()
                    events = self._events
                    if self._ahead():
                        break
            if position % 32 == 0 and self._timer() > deadline:
                break
        self.encoded += position - self._position
        self._position = position
        if position >= len(records):
            if events:
                self._close_chunk()
            self._records = None
        if len(self._chunks) > built or self.done:
            waiting, self._waiting = self._waiting, set()
            for reader in waiting:
                reader.wake()
        self._schedule()

    def _close_chunk(self) -> None:
        self._chunks.append(",".join(self._events).encode("utf-8"))
        self._events = []
        self._size = 0
