"""The websocket phase's heartbeats: a spawned child process that heartbeats every Node at a fixed rate, each Node on
a connection of its own, so that the WebSocket reader's parsing never holds them back; and the figures of a window
of its heartbeats."""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import math
import multiprocessing
import os
import re
import resource
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from .harness import HEARTBEAT_INTERVAL, Context, figures
from .http import Recorder, build_request
from .server import API
from .ws_client import (
    DRAIN_LIMIT,
    MAX_POLLS,
    TIMESPEC_SPACE,
    enable_timestamps,
    kernel_time,
)

HEARTBEAT_WAIT_LIMIT_MS = 1000.0  # issue 4: at 3,000 Nodes x 50 subscribers "no heartbeat waits more than 1 s"
CONNECTS_IN_FLIGHT = 32  # the heartbeat process's connects under way at once, before its first heartbeat
PRECONNECT_LIMIT = 240.0  # seconds it may take to open them; the rest are opened at their first heartbeat
HEARTBEAT_LATE_MS = 100.0  # a heartbeat sent this late by the heartbeat process makes its figures the client's


class _Link:
    """One keep-alive connection of the heartbeat process: non-blocking, one request at a time, a queue behind it."""

    __slots__ = ("buf", "connecting", "inflight", "queue", "sock")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.connecting = False
        self.buf = bytearray()
        self.queue: collections.deque[tuple[float, int]] = collections.deque()  # (due, node index)
        self.inflight: tuple[float, float, int] | None = None  # (due, sent, node index)


def heartbeat_child(pipe: Any, host: str, port: int, node_ids: list[str], interval: float, connections: int,
                    deadline: float, request_timeout: float) -> None:
    """Heartbeats every Node of `node_ids` every `interval` s at a fixed rate (Node i first at i/N of the interval)
    until told "stop" or the monotonic `deadline`; then sends back each heartbeat as (due, sent, answered, status,
    node index), status -1 for a transport error or a timeout. A Node answered 404 (it expired) is heartbeated no
    more.

    Like real Nodes, each Node has its own keep-alive connection (`connections` 0), so a heartbeat is sent when it
    is due even while the registry is slow to answer the others; with fewer connections, Node i uses connection
    i % connections and waits behind it. The connections are opened first, at most CONNECTS_IN_FLIGHT at a time
    (thousands of SYNs at once would overflow the registry's listen queue, Twisted's backlog of 50, and each
    connect that met a full queue would wait for a SYN retransmit, 1 s or more). A Node is heartbeated as soon as
    its connection is open, then at its slots: Node i at i/N of the interval. Once every connection is open (or
    PRECONNECT_LIMIT has passed; the rest open at their Nodes' first slot) the process says "started": from then
    on it alone keeps the Nodes alive. A connection lost later is opened again at its Node's next heartbeat. One thread,
    epoll, nothing blocking: a connect waits in epoll too (a blocking one, held up by a full accept queue, would hold
    every other heartbeat back). A heartbeat's `sent` is when it was started, any connect included. Answers are
    timed by the kernel's receipt (SO_TIMESTAMPNS). Monotonic times are the machine's, so the parent can compare
    them."""
    parent = os.getppid()
    nodes = len(node_ids)
    count = max(1, min(connections or nodes, nodes))
    requests = [build_request("POST", f"{API}/health/nodes/{nid}", f"{host}:{port}") for nid in node_ids]
    links = [_Link() for _ in range(count)]
    by_fd: dict[int, _Link] = {}
    poller = select.epoll()
    samples: list[tuple[float, float, float, int, int]] = []
    errors: list[str] = []

    def note(error: str) -> None:
        if len(errors) < 5:
            errors.append(error)

    def finish(link: _Link, status: int, answered: float) -> None:
        assert link.inflight is not None
        when, sent, index = link.inflight
        link.inflight = None
        samples.append((when, sent, answered, status, index))
        if status != 404:
            heapq.heappush(due, (slot(index, when + 1e-6), index))

    def drop(link: _Link, why: str) -> None:
        if link.sock is not None:
            by_fd.pop(link.sock.fileno(), None)
            poller.unregister(link.sock)
            link.sock.close()
        link.sock, link.buf, link.connecting = None, bytearray(), False
        if link.inflight is not None:
            note(why)
            finish(link, -1, time.monotonic())

    def slot(index: int, after: float) -> float:
        """Node `index`'s first heartbeat time at or after `after`: its slots are i/N of the interval apart from
        the next Node's, so that the heartbeats go out at a fixed rate."""
        offset = base + interval * index / max(1, nodes)
        return offset + interval * max(0, math.ceil((after - offset) / interval))

    def open_link(link: _Link) -> bool:
        """Starts the link's connect; whether it is under way (or done)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enable_timestamps(sock)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            drop(link, f"connect: {os.strerror(code)}")
            return False
        link.sock, link.connecting = sock, code != 0
        by_fd[sock.fileno()] = link
        poller.register(sock, select.EPOLLIN | (select.EPOLLOUT if link.connecting else 0))
        return True

    def send_next(link: _Link) -> None:
        while link.inflight is None and link.queue:
            when, index = link.queue.popleft()
            link.inflight = (when, time.monotonic(), index)
            if link.sock is None:
                if not open_link(link):
                    continue
                if link.connecting:
                    return  # sent once connected (`connected`)
            write(link)

    def write(link: _Link) -> None:
        assert link.sock is not None and link.inflight is not None
        try:
            link.sock.send(requests[link.inflight[2]])  # ~150 bytes into an empty socket buffer: all of it goes
        except OSError as e:
            drop(link, f"send: {type(e).__name__}: {e}")
            send_next(link)

    def connected(link: _Link) -> None:
        assert link.sock is not None
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            drop(link, f"connect: {os.strerror(code)}")
            send_next(link)
            return
        link.connecting = False
        poller.modify(link.sock, select.EPOLLIN)
        if link.inflight is not None:
            write(link)
        elif id(link) in opening:  # opened ahead: its Nodes' first heartbeats now, then on their slots
            opening.discard(id(link))
            take_over(link)

    def take_over(link: _Link) -> None:
        now = time.monotonic()
        for index in range(link_index[id(link)], nodes, count):
            heapq.heappush(due, (now, index))

    def read(link: _Link) -> None:
        assert link.sock is not None
        try:
            data, ancillary, _, _ = link.sock.recvmsg(65536, TIMESPEC_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            drop(link, f"recv: {type(e).__name__}: {e}")
            send_next(link)
            return
        if not data:
            drop(link, "connection closed by the server")
            send_next(link)
            return
        link.buf += data
        end = link.buf.find(b"\r\n\r\n")
        if end < 0 or link.inflight is None:
            return
        head = bytes(link.buf[:end]).lower()
        found = re.search(rb"\r\ncontent-length: *([0-9]+)", head)
        size = int(found.group(1)) if found else 0
        if len(link.buf) < end + 4 + size:
            return
        del link.buf[:end + 4 + size]
        try:
            status = int(head[9:12])
        except ValueError:
            status = -1
        finish(link, status, kernel_time(ancillary) + to_monotonic)
        if b"\r\nconnection: close" in head:
            drop(link, "")
        send_next(link)

    base = time.monotonic()
    to_monotonic = base - time.time()
    link_index = {id(link): i for i, link in enumerate(links)}
    waiting = collections.deque(links)  # links not opened yet
    opening: set[int] = set()  # links being opened ahead of their Nodes' heartbeats (by id)
    due: list[tuple[float, int]] = []  # (due, node index), a heap: a Node joins once its connection is open
    start = connect_s = None
    unconnected = 0
    next_check = base
    for _ in range(MAX_POLLS):
        now = time.monotonic()
        if now > deadline:
            break
        if start is None:  # opening the connections, CONNECTS_IN_FLIGHT at a time
            while waiting and len(opening) < CONNECTS_IN_FLIGHT and now < base + PRECONNECT_LIMIT:
                link = waiting.popleft()
                if open_link(link):
                    if link.connecting:
                        opening.add(id(link))
                    else:
                        take_over(link)
            if not opening and (not waiting or now >= base + PRECONNECT_LIMIT):
                # Every connection is open (or the time is up: the rest open at their Nodes' first heartbeats).
                unconnected = len(waiting) + sum(link.sock is None for link in links)
                for link in waiting:
                    for index in range(link_index[id(link)], nodes, count):
                        heapq.heappush(due, (slot(index, now), index))
                waiting.clear()
                start, connect_s = now, now - base
                pipe.send(("started", start))
        if now >= next_check:  # the parent's word, the parent's life, and answers that never came
            next_check = now + 0.2
            if os.getppid() != parent or (pipe.poll() and pipe.recv() == "stop"):
                break
            for link in links:
                if link.inflight is not None and now - link.inflight[1] > request_timeout:
                    drop(link, f"no answer within {request_timeout} s")
                    send_next(link)
        while due and due[0][0] <= now:
            when, index = heapq.heappop(due)
            link = links[index % count]
            link.queue.append((when, index))
            send_next(link)
        wait = min(0.05, max(0.0, due[0][0] - now)) if due else 0.05
        for fd, events in poller.poll(wait):
            if (link := by_fd.get(fd)) is None:
                continue
            if link.connecting:
                if events & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                    connected(link)
            elif events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                read(link)
    for link in links:
        if link.sock is not None:
            link.sock.close()
    poller.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send(("done", {"samples": samples, "errors": errors, "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000,
                        "connections": count, "connect_s": connect_s, "unconnected_at_start": unconnected,
                        "unanswered": sum(link.inflight is not None for link in links)}))


class Heartbeats:
    """The child process that heartbeats the Nodes during the websocket and storm phases (see `heartbeat_child`).

    Opening thousands of connections can take the child tens of seconds on a loaded machine (a connect that meets a
    full listen queue waits for a SYN retransmit), longer than the registry's 12 s: meanwhile `keep_alive` (a sweep
    that heartbeats every Node once over a few connections) runs back to back, so no Node expires before the child
    takes over."""

    def __init__(self, ctx: Context, node_ids: list[str], keep_alive: Callable[[], object] | None = None) -> None:
        self.ctx = ctx
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this process's threads
        self.pipe, child_end = spawn.Pipe()
        self.process = spawn.Process(
            target=heartbeat_child, daemon=True,
            args=(child_end, ctx.server.host, ctx.server.port, node_ids, HEARTBEAT_INTERVAL,
                  ctx.ws.heartbeat_connections, ctx.deadline + 30, ctx.request_timeout))
        self.process.start()
        child_end.close()
        self.started: float | None = None
        self.keepalive_sweeps = 0
        limit = time.monotonic() + PRECONNECT_LIMIT + 30
        try:
            while time.monotonic() < limit and self.process.is_alive():
                if self.pipe.poll(0.2 if keep_alive is None else 0.0):
                    _, self.started = self.pipe.recv()
                    break
                if keep_alive is not None:
                    keep_alive()
                    self.keepalive_sweeps += 1
        except (OSError, EOFError):  # it died on the way (its error is on stderr)
            pass

    def stop(self) -> dict | None:
        """Stops the child (by its PID if it does not end by itself) and returns what it measured."""
        result = None
        try:
            self.pipe.send("stop")
            if self.pipe.poll(self.ctx.request_timeout + 15):
                _, result = self.pipe.recv()
        except (OSError, EOFError):
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        return result


def heartbeat_window(samples: list[tuple], start: float, end: float) -> dict:
    """The heartbeats due in [start, end): their wait from when each was due to its answer (which includes any wait
    for a free connection, as a real Node that sends on time would see it), and the longest a Node went unanswered."""
    inside = [s for s in samples if start <= s[0] < end]
    waits = sorted(s[2] - s[0] for s in inside)
    answered: dict[int, list[float]] = collections.defaultdict(list)
    for s in samples:
        if s[3] == 200:
            answered[s[4]].append(s[2])
    silence = 0.0
    for times in answered.values():
        times.sort()
        silence = max([silence, *(b - a for a, b in itertools.pairwise(times) if start <= b < end + DRAIN_LIMIT)])
    statuses = collections.Counter(s[3] for s in inside)
    worst = max(inside, key=lambda s: s[2] - s[0], default=None)
    return {"heartbeats": len(inside), "waits": waits, "statuses": statuses,
            # the wait split: before a connection was free to send it, and the round trip once sent
            "send_late_max_ms": max((s[1] - s[0] for s in inside), default=0.0) * 1000,
            "round_trip_max_ms": max((s[2] - s[1] for s in inside), default=0.0) * 1000,
            "worst_due_s": worst[0] - start if worst else None,
            "over_limit": sum(w * 1000 > HEARTBEAT_WAIT_LIMIT_MS for w in waits), "longest_silence_s": silence,
            "expired_nodes": len({s[4] for s in inside if s[3] == 404}),
            # whether the heartbeat process kept up: the rate it had due, and the rate of 200s it got back
            "due_per_s": len(inside) / (end - start) if end > start else None,
            "answered_per_s": statuses[200] / (end - start) if end > start else None}


def heartbeat_row(name: str, samples: list[tuple], start: float, end: float, server_cpu_ms: float | None,
                  judged: bool) -> dict:
    """A table row of the heartbeats due in [start, end): each one's wait from due to answer; when `judged`, the
    longest wait is held to HEARTBEAT_WAIT_LIMIT_MS (issue 13: "every other Node's worst heartbeat ... <= 1 s")."""
    seen = heartbeat_window(samples, start, end)
    rec = Recorder(latencies=seen["waits"], statuses=collections.Counter(
        {k: v for k, v in seen["statuses"].items() if k >= 0}), errors=seen["statuses"].get(-1, 0))
    row = figures(name, rec, end - start, server_cpu_ms, 0.0, False, None,
                  target_latency_ms=HEARTBEAT_WAIT_LIMIT_MS if judged else None, target_metric="max",
                  **{key: value for key, value in seen.items() if key not in ("waits", "statuses", "heartbeats")})
    row["client_cpu_ms_per_request"] = None
    return row


def quiet_baseline(ctx: Context, heartbeats: Heartbeats) -> dict[str, Any]:
    """Wait through the second heartbeat interval (in the first, each Node's connection is opened), heartbeats
    only: its bounds and the registry's CPU over it, the baseline the phases compare their load against."""
    base = heartbeats.started + HEARTBEAT_INTERVAL
    time.sleep(max(0.0, base - time.monotonic()))
    cpu0 = ctx.server.cpu_ms()
    time.sleep(max(0.0, base + HEARTBEAT_INTERVAL - time.monotonic()))
    cpu1 = ctx.server.cpu_ms()
    return {"baseline": (base, base + HEARTBEAT_INTERVAL),
            "baseline_server_cpu_ms": cpu1 - cpu0 if None not in (cpu0, cpu1) else None}


def heartbeat_details(measured: dict[str, Any], heartbeats: Heartbeats) -> dict[str, Any]:
    """What a phase reports of its heartbeat process: its CPU, errors, connections and how they were opened."""
    return {"heartbeat_process_cpu_ms": measured["cpu_ms"], "heartbeat_errors": measured["errors"],
            "heartbeat_connections": measured["connections"], "heartbeat_connect_s": measured["connect_s"],
            "heartbeat_keepalive_sweeps": heartbeats.keepalive_sweeps,
            "heartbeat_unconnected_at_start": measured["unconnected_at_start"]}
