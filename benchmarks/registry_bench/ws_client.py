"""The websocket phase's WebSocket client: kernel receive timestamps, an HTTP connection that keeps them, the
Subscriber (a hand-made RFC 6455 client that checks every grain), the Hub that reads every subscriber with epoll,
and the subscription POST."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import socket
import struct
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from .harness import Context
from .http import Connection, ProtocolError, build_request
from .query_api import QUERY
from .server import Server

# Every arrival time is the kernel's (SO_TIMESTAMPNS on each read), for the HTTP answers as for the grains, so this
# client's own delays (parsing one socket while another has data waiting) never count as the server's. The
# subscribers are plain sockets read by one epoll loop with a small RFC 6455 reader; the heartbeats come from a child
# process, so that parsing the initial state (up to a core's worth) cannot hold them back.

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the ancillary message has the same number
TIMESPEC_SPACE = socket.CMSG_SPACE(16)  # one struct timespec
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
KIND = {"nodes": "node", "devices": "device", "sources": "source", "flows": "flow", "senders": "sender",
        "receivers": "receiver"}
MAX_POLLS = 10_000_000  # a bound on every read loop, besides its time limit
DRAIN_LIMIT = 15.0  # seconds after the last change for every subscriber to have every notification


def enable_timestamps(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    """When the data of one recvmsg reached the kernel, as Unix time (the clock of time.time()); now if not given."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack_from("qq", data)
            return seconds + nanoseconds * 1e-9
    return time.time()


class TimedConnection(Connection):
    """A Connection that notes in `arrived` when the last bytes of each answer reached the kernel."""

    arrived: float = 0.0

    def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            enable_timestamps(self.sock)
            self.connects += 1
        return super().exchange(request)

    def _fill(self) -> None:
        data, ancillary, _, _ = self.sock.recvmsg(65536, TIMESPEC_SPACE)
        if not data:
            raise ProtocolError("connection closed by the server")
        self.arrived = kernel_time(ancillary)
        self.buf += data


class Subscriber:
    """One WebSocket client: a hand-made RFC 6455 handshake, then a reader of the server's (unmasked) frames that
    answers pings and keeps, for every event of every grain, what the phase checks.

    `expect` holds the ids the initial state must contain; `sync_done` is the kernel time of the grain that
    completed it. A change event is kept under (id, post's version), a removal under (id, "removed"): the first
    arrival of each, duplicates counted apart."""

    def __init__(self, index: int, collection: str, path: str, server: Server, expect: set[str],
                 timeout: float) -> None:
        self.index, self.collection, self.kind = index, collection, KIND[collection]
        self.topic = f"/{collection}/"
        self.missing = set(expect)
        self.expected_sync = len(expect)
        self.state = "handshake"  # then "open", "closing" (our close frame sent), "closed"
        self.buf = bytearray()
        self.fragments: list[bytes] = []
        self.opened: float | None = None
        self.sync_done: float | None = None
        self.first_grain: float | None = None
        self.last_grain: float | None = None
        self.closed: str | None = None  # why, once closed
        self.closed_by_server: str | None = None  # the code and reason of the server's close frame
        self.grains = self.events = self.sync_events = self.other_sync = self.duplicates = self.malformed = 0
        self.bytes = 0
        self.changes: dict[tuple[str, str], float] = {}
        self.read_lag = 0.0  # the longest time between the kernel's receipt of a grain and its parsing here
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.started = time.time()
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enable_timestamps(self.sock)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
                          f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.sock.setblocking(False)

    def read(self) -> None:
        """One read of what the socket holds (epoll said it has something)."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 20, TIMESPEC_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.lose(f"{type(e).__name__}: {e}")
            return
        if not data:
            self.lose("closed by us" if self.state == "closing" else "TCP closed by the server")
            return
        arrival = kernel_time(ancillary)
        self.bytes += len(data)
        self.buf += data
        if self.state == "handshake" and not self._handshake(arrival):
            return
        self._frames(arrival)

    def _handshake(self, arrival: float) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self.lose("no end to the handshake's headers")
            return False
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        headers = {name.strip().lower(): value.strip() for name, _, value in (l.partition(":") for l in lines[1:])}
        status = lines[0].split(" ", 2)[1] if len(lines[0].split(" ")) > 1 else lines[0]
        if status != "101" or headers.get("sec-websocket-accept") != self.accept:
            self.lose(f"handshake answered {lines[0]!r}")
            return False
        self.state, self.opened = "open", arrival
        if not self.missing:
            self.sync_done = arrival
        return True

    def _frames(self, arrival: float) -> None:
        buf = self.buf
        while len(buf) >= 2 and self.state != "closed":
            first, second = buf[0], buf[1]
            size, head = second & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, head = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, head = int.from_bytes(buf[2:10], "big"), 10
            if second & 0x80:
                self.lose("the server sent a masked frame")  # RFC 6455 §5.1: a client must close the connection
                return
            if len(buf) < head + size:
                return
            with memoryview(buf) as view:
                payload = bytes(view[head:head + size])
            del buf[:head + size]
            opcode, final = first & 0x0F, first & 0x80
            if opcode == 0x9:
                self._send(0xA, payload)  # pong: Autobahn pings every 30 s and drops a socket that does not answer
            elif opcode == 0x8:
                if self.state == "open":
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    self.closed_by_server = f"server closed with {code} {payload[2:].decode(errors='replace')!r}"
                    self._send(0x8, payload[:2])
                    self.state = "closing"
            elif opcode in (0x0, 0x1, 0x2):
                if opcode != 0x0:
                    self.fragments = []
                self.fragments.append(payload)
                if final:
                    message = self.fragments[0] if len(self.fragments) == 1 else b"".join(self.fragments)
                    self.fragments = []
                    self.on_grain(message, arrival)

    def on_grain(self, payload: bytes, arrival: float) -> None:
        self.grains += 1
        self.last_grain = arrival
        if self.first_grain is None:
            self.first_grain = arrival
        events = self._quick_events(payload)
        if events is None:
            try:
                grain = json.loads(payload)["grain"]
                events = grain["data"]
                if grain["topic"] != self.topic or not events:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                self.malformed += 1
                return
        missing, changes = self.missing, self.changes
        for event in events:
            self.events += 1
            if type(event) is bytes:  # a sync event, already recognised: its id
                rid, pre, post = event.decode(), None, None
            else:
                rid, pre, post = event.get("path"), event.get("pre"), event.get("post")
            if type(event) is bytes or (pre is not None and post is not None
                                        and pre.get("version") == post.get("version")):
                self.sync_events += 1  # a sync event: both there and equal (a change always moves the version)
                if rid in missing:
                    missing.discard(rid)
                    if not missing:
                        self.sync_done = arrival
                else:
                    self.other_sync += 1
                continue
            key = (rid, "removed" if post is None else post.get("version"))
            if key in changes:
                self.duplicates += 1
            else:
                changes[key] = arrival
        self.read_lag = max(self.read_lag, time.time() - arrival)

    def _quick_events(self, payload: bytes) -> list[bytes | dict] | None:
        """The events of a grain laid out as this registry writes it (`"topic":"/x/","data":[...]` last, each event
        `{"path":"<id>","pre":...,"post":...}`): the id of each sync event, whose `pre` and `post` are the same
        bytes, found without building its objects, and every other event parsed by json. None when the grain is not
        laid out so, or any of its events does not parse: the caller parses the whole grain then.

        Parsing 250,000 sync events of about 1 KB with json.loads costs this client about a core for the whole sync
        at 3,000 Nodes, more than the registry spends sending them; slowed down so, the client would throttle the
        registry through TCP flow control, and the scenario would stress it less than real subscribers do."""
        head = b'"topic":"' + self.topic.encode() + b'","data":[{"path":"'
        start = payload.find(head)
        if start < 0 or not payload.endswith(b"}]}}"):
            return None
        events: list[bytes | dict] = []
        for piece in payload[start + len(head):-4].split(b'},{"path":"'):
            # piece: <id>","pre":<T>,"post":<T> for a sync event
            body = piece[44:]
            half = (len(body) - 8) // 2
            if piece[36:44] == b'","pre":' and body[half:half + 8] == b',"post":' and body[:half] == body[half + 8:] \
                    and half > 0 and piece[8:9] == b"-":
                events.append(piece[:36])
                continue
            try:
                events.append(json.loads(b'{"path":"' + piece + b"}"))
            except ValueError:
                return None
        return events

    def _send(self, opcode: int, payload: bytes) -> None:
        """A control frame (at most 125 bytes), masked as RFC 6455 requires of clients."""
        mask = os.urandom(4)
        body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload[:125]))
        try:
            self.sock.send(bytes([0x80 | opcode, 0x80 | len(body)]) + mask + body)
        except OSError:
            pass

    def close(self) -> None:
        """Starts the closing handshake (code 1000)."""
        if self.state == "open":
            self.state = "closing"
            self._send(0x8, (1000).to_bytes(2, "big"))
        elif self.state == "handshake":
            self.lose("closed by us during the handshake")

    def lose(self, why: str) -> None:
        if self.state != "closed":
            self.state = "closed"
            self.closed = self.closed_by_server or why


class Hub:
    """Every subscriber, read from one thread with epoll."""

    def __init__(self) -> None:
        self.poller = select.epoll()
        self.by_fd: dict[int, Subscriber] = {}

    def add(self, subscriber: Subscriber) -> None:
        fd = subscriber.sock.fileno()
        self.by_fd[fd] = subscriber
        self.poller.register(fd, select.EPOLLIN)

    def poll(self, timeout: float) -> None:
        for fd, _ in self.poller.poll(timeout):
            subscriber = self.by_fd.get(fd)
            if subscriber is None:
                continue
            subscriber.read()
            if subscriber.state == "closed":
                self._forget(fd)

    def _forget(self, fd: int) -> None:
        self.poller.unregister(fd)
        self.by_fd.pop(fd).sock.close()

    def wait(self, done: Callable[[], bool], until: float) -> bool:
        """Reads until `done()` or the monotonic time `until`; whether it is done."""
        for _ in range(MAX_POLLS):
            if done():
                return True
            left = until - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(left, 0.05))
        return done()

    def close(self, limit: float = 3.0) -> None:
        """Closes every socket, with the closing handshake where it answers within `limit` s."""
        for subscriber in self.by_fd.values():
            subscriber.close()
        self.wait(lambda: not self.by_fd, time.monotonic() + limit)
        for fd in list(self.by_fd):
            self.by_fd[fd].lose("no close handshake in time")
            self._forget(fd)
        self.poller.close()


def subscribe(http: Connection, ctx: Context, collection: str) -> tuple[int, str]:
    """POSTs a non-persistent v1.3 subscription to `collection`; its status and ws_href's path.

    Without a filter, identical POSTs get the same subscription (the registry reuses one whose attributes all
    match); with --ws-distinct each gets a filter of its own that every resource matches (`ne(id,<new uuid>)`), so
    each is a subscription and a view of its own, and the registry builds each change's event once per subscriber."""
    params = {"query.rql": f"ne(id,{uuid.uuid4()})"} if ctx.ws.distinct else {}
    body = json.dumps({"max_update_rate_ms": ctx.ws.rate_ms, "resource_path": f"/{collection}", "params": params,
                       "persist": False, "secure": False}).encode()
    status, _, reply = http.exchange(build_request("POST", f"{QUERY}/v1.3/subscriptions", ctx.host_header, body))
    if status not in (200, 201):
        raise ProtocolError(f"POST {QUERY}/v1.3/subscriptions answered {status}: {reply[:200]!r}")
    href = urlsplit(json.loads(reply)["ws_href"])
    if href.scheme != "ws" or (href.hostname, href.port) != (ctx.server.host, ctx.server.port):
        # The machine's rule: benchmark traffic stays on loopback, at the registry under test.
        raise ProtocolError(f"ws_href {href.geturl()} is not the registry under test")
    return status, href.path
