"""The benchmark's HTTP/1.1 client: one keep-alive connection per thread with hand-built requests, what a thread
saw of its requests (Recorder), and the percentile of what it saw."""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


class ProtocolError(Exception):
    """The server's answer could not be parsed, or the connection closed in the middle of one."""


def build_request(method: str, path: str, host: str, body: bytes | None = None) -> bytes:
    """A complete HTTP/1.1 request as bytes.

    A POST without a body sends `Content-Length: 0`, as IS-04 heartbeats should."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    if body is not None or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body or b'')}\r\n"
    return (head + "\r\n").encode() + (body or b"")


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects after the server closes it or after an error."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.address, self.timeout = (host, port), timeout
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.connects = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, bytearray()

    def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Sends one request and reads the whole answer: (status, lower-cased headers, body)."""
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connects += 1
        try:
            self.sock.sendall(request)
            status, headers, body = self._read_response(request.startswith(b"HEAD "))
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ProtocolError("connection closed by the server")
        self.buf += data

    def _take_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[:end + 2]
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def _read_response(self, head_only: bool) -> tuple[int, dict[str, str], bytes]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"bad status line {lines[0]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_only or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self._take_line().split(b";")[0], 16):
                parts.append(self._take(size))
                self._take(2)
            while self._take_line():  # trailers, then the empty line
                pass
            return status, headers, b"".join(parts)
        if "content-length" in headers:
            return status, headers, self._take(int(headers["content-length"]))
        # Neither length nor chunking: the body ends when the server closes.
        while True:
            try:
                self._fill()
            except ProtocolError:
                break
        body = bytes(self.buf)
        self.close()
        return status, headers, body


@dataclass
class Recorder:
    """What one client thread saw for one kind of request: latencies, status codes, transport errors."""

    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    unexpected: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def call(self, conn: Connection, request: bytes, expect: int) -> tuple[int, dict[str, str], bytes] | None:
        """One timed request; a transport error or a status other than `expect` is counted, never raised.

        Returns (status, lower-cased headers, body), or None after a transport error."""
        start = time.perf_counter()
        try:
            status, headers, body = conn.exchange(request)
        except (OSError, ProtocolError, ValueError) as e:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{type(e).__name__}: {e}")
            return None
        self.latencies.append(time.perf_counter() - start)
        self.statuses[status] += 1
        if status != expect:
            self.unexpected += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"HTTP {status}: {body[:200]!r}")
        return status, headers, body

    def merge(self, other: Recorder) -> None:
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.unexpected += other.unexpected
        self.errors += other.errors
        self.error_samples += other.error_samples[:5 - len(self.error_samples)]


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, -(-int(fraction * 1000) * len(sorted_values) // 1000))  # ceil without float error
    return sorted_values[min(rank, len(sorted_values)) - 1]
