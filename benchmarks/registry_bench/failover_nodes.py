"""The failover scenario's Nodes: a spawned child process that plays every synthetic Node against a registry cluster,
as IS-04 "Behaviour - Registration" asks of a Node with several registries to choose from.

Each Node has a home member and a keep-alive connection of its own. It registers its ten resources there (parents
first), then heartbeats every `interval` s at a fixed rate (Node i at i/N of the interval), and, when told, posts
changes (a resource again with a later version) on the same connection, at a fixed overall rate, Nodes and resource
kinds in turn. When a request to its member fails (connection refused or reset, closed, no answer within
`answer_timeout`, or a 5xx answer) the Node fails over: it moves to the next member of the list and sends the
same request there at once, each member once; if every member failed, it tries again at its next heartbeat. A Node
answered 404 to a heartbeat has expired (the scenario expects none); it is heartbeated no more.

One thread, epoll, nothing blocking. Times are `time.monotonic()`, the machine's, so the parent can compare them.
The child talks to the parent over a pipe: it sends ("registered", population, figures) once every Node is
registered; it takes ("changes", rate) and ("changes", 0); on ("stop",) it sends back ("done", report) and exits.
"""

from __future__ import annotations

import collections
import errno
import heapq
import json
import math
import os
import select
import socket
import time
import uuid
from typing import Any

from .http import build_request
from .server import API
from .synthetic import synthetic_node, tai_version

REGISTER_IN_FLIGHT = 24  # Nodes registering at once (their connections opened and their POSTs sent in turn)
CHANGED_KINDS = ("sender", "receiver", "flow", "source", "device", "node")


class _Node:
    __slots__ = (
        "buf",
        "connecting",
        "index",
        "inflight",
        "member",
        "queue",
        "resources",
        "sock",
        "tries",
    )

    def __init__(self, index: int, member: int, resources: list[tuple[str, dict]]) -> None:
        self.index, self.member, self.resources = index, member, resources
        self.sock: socket.socket | None = None
        self.connecting = False
        self.buf = bytearray()
        self.queue: collections.deque[tuple[str, Any, bytes, float]] = collections.deque()  # (what, detail, request, due)
        self.inflight: tuple[str, Any, bytes, float, float] | None = None  # (what, detail, request, sent, due)
        self.tries = 0  # members tried since the last answer


def _response(buf: bytearray) -> tuple[int, int] | None:
    """(status, length of the whole response) if `buf` holds a complete one."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if len(buf) < end + 4 + length:
        return None
    return int(head[0].split(" ", 2)[1]), end + 4 + length


def failover_child(pipe: Any, members: list[tuple[str, int]], nodes: int, interval: float, answer_timeout: float,
                   deadline: float) -> None:
    now = time.time()
    population = [synthetic_node(index, now, lambda: str(uuid.uuid4())) for index in range(nodes)]
    state = [_Node(i, i % len(members), population[i]) for i in range(nodes)]
    hosts = [f"{host}:{port}" for host, port in members]
    poller = select.epoll()
    poller.register(pipe.fileno(), select.EPOLLIN)
    by_fd: dict[int, _Node] = {}
    due: list[tuple[float, int, int]] = []  # (when, seq, node index): the next heartbeat of each Node
    retries: list[tuple[float, int]] = []  # (when, node index): requests that every member failed, sent again
    seq = 0
    samples: list[tuple] = []  # (what, node, member, due, sent, answered, status, detail)
    failovers: list[tuple[int, int, int, float, str]] = []  # (node, from member, to member, when, why)
    errors: list[str] = []
    expired: set[int] = set()
    registering = collections.deque(range(nodes))
    in_flight_registrations = 0
    registered = 0
    registration_failures = 0
    change_rate = 0.0
    change_next = 0.0
    change_count = 0
    base = 0.0

    def request(node: _Node, raw: bytes) -> bytes:
        # The Host header names the member the request goes to; the body alone decides what is registered.
        return raw.replace(b"Host: *\r\n", f"Host: {hosts[node.member]}\r\n".encode(), 1)

    def queue(node: _Node, what: str, detail: Any, raw: bytes, when: float) -> None:
        node.queue.append((what, detail, raw, when))
        pump(node)

    def pump(node: _Node) -> None:
        """Sends the Node's next request if its connection is free (opening it first if need be)."""
        if node.inflight is not None or not node.queue or node.connecting:
            return
        if node.sock is None:
            open_link(node)
            return
        what, detail, raw, when = node.queue.popleft()
        sent = time.monotonic()
        node.inflight = (what, detail, raw, sent, when)
        try:
            node.sock.send(request(node, raw))  # small requests: the socket buffer takes them whole
        except OSError as e:
            fail(node, f"send: {e}")

    def open_link(node: _Node) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(members[node.member])
        node.sock, node.connecting, node.buf = sock, True, bytearray()
        by_fd[sock.fileno()] = node
        if code not in (0, errno.EINPROGRESS):
            fail(node, f"connect: {os.strerror(code)}")
            return
        poller.register(sock, select.EPOLLOUT)

    def close_link(node: _Node) -> None:
        if node.sock is not None:
            by_fd.pop(node.sock.fileno(), None)
            try:
                poller.unregister(node.sock)
            except (OSError, ValueError):
                pass
            node.sock.close()
        node.sock, node.connecting, node.buf = None, False, bytearray()

    def fail(node: _Node, why: str, status: int = -1) -> None:
        """The member did not answer (or answered 5xx): fail over to the next member and retry there, each member
        once; after that the request waits for the Node's next heartbeat slot."""
        close_link(node)
        now = time.monotonic()
        retry = None
        if node.inflight is not None:
            what, detail, raw, sent, when = node.inflight
            node.inflight = None
            samples.append((what, node.index, node.member, when, sent, now, status, detail))
            retry = (what, detail, raw, when)
        if len(errors) < 10:
            errors.append(f"node {node.index} at member {node.member}: {why}")
        old = node.member
        node.tries += 1
        node.member = (node.member + 1) % len(members)
        failovers.append((node.index, old, node.member, now, why))
        if retry is not None:
            if retry[0] == "beat":
                # A heartbeat is not queued twice: the Node sends it to the new member now, or at its next slot
                # once every member has failed it.
                if node.tries < len(members):
                    node.queue.appendleft(retry)
            else:
                node.queue.appendleft(retry)  # a registration or a change is never dropped
        if node.tries < len(members):
            pump(node)
        else:
            # Every member failed it: a second later the Node begins again with the member it is at now (a heartbeat
            # waits for its next slot instead).
            node.tries = 0
            if node.queue:
                heapq.heappush(retries, (now + 1.0, node.index))

    def answered(node: _Node, status: int) -> None:
        nonlocal registered, in_flight_registrations, registration_failures
        what, detail, raw, sent, when = node.inflight
        node.inflight = None
        now = time.monotonic()
        if status >= 500:
            node.inflight = (what, detail, raw, sent, when)
            fail(node, f"HTTP {status}", status)
            return
        node.tries = 0
        samples.append((what, node.index, node.member, when, sent, now, status, detail))
        if what == "register":
            if status not in (200, 201):
                registration_failures += 1
            if detail == len(node.resources) - 1:
                registered += 1
                in_flight_registrations -= 1
                schedule(node, now)
        elif what == "beat" and status == 404:
            expired.add(node.index)
            node.queue.clear()
        pump(node)

    def schedule(node: _Node, after: float) -> None:
        nonlocal seq
        offset = base + interval * node.index / nodes
        when = offset + interval * max(1, math.ceil((after - offset) / interval))
        seq += 1
        heapq.heappush(due, (when, seq, node.index))

    def readable(node: _Node) -> None:
        try:
            data = node.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            fail(node, f"recv: {e}")
            return
        if not data:
            if node.inflight is None:
                # An idle keep-alive connection closed by the server: the Node learns whether its member is gone
                # at its next request (connection refused), as an HTTP client does.
                close_link(node)
            else:
                fail(node, "closed by the member")
            return
        node.buf += data
        while node.inflight is not None and (parsed := _response(node.buf)) is not None:
            status, length = parsed
            del node.buf[:length]
            answered(node, status)

    def start_registration() -> None:
        nonlocal in_flight_registrations
        while registering and in_flight_registrations < REGISTER_IN_FLIGHT:
            node = state[registering.popleft()]
            in_flight_registrations += 1
            for position, (kind, data) in enumerate(node.resources):
                body = json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode()
                node.queue.append(("register", position, build_request("POST", f"{API}/resource", "*", body),
                                   time.monotonic()))
            pump(node)

    def change() -> None:
        """The next change: Nodes in turn (a stride through them), kinds in turn."""
        nonlocal change_count
        index = (change_count * 7919) % nodes
        kind = CHANGED_KINDS[change_count % len(CHANGED_KINDS)]
        change_count += 1
        node = state[index]
        if index in expired:
            return
        position = next(i for i, (k, _) in enumerate(node.resources) if k == kind)
        data = dict(node.resources[position][1])
        data["version"] = tai_version(time.time())
        data["label"] = f"{data['label'].split('~')[0]}~{change_count}"
        node.resources[position] = (kind, data)
        body = json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode()
        queue(node, "change", (kind, data["id"], data["version"]),
              build_request("POST", f"{API}/resource", "*", body), time.monotonic())

    beat_requests = [build_request("POST", f"{API}/health/nodes/{node.resources[0][1]['id']}", "*") for node in state]
    base = time.monotonic()
    start_registration()
    told_registered = False
    stop = False
    next_scan = 0.0
    next_progress = time.monotonic() + 5.0
    while not stop and time.monotonic() < deadline:
        now = time.monotonic()
        # Heartbeats due, changes due, answers overdue
        while due and due[0][0] <= now:
            _, _, index = heapq.heappop(due)
            node = state[index]
            if index in expired:
                continue
            if not any(item[0] == "beat" for item in node.queue) and not (node.inflight and node.inflight[0] == "beat"):
                node.queue.append(("beat", None, beat_requests[index], now))
                pump(node)
            schedule(node, now)
        while retries and retries[0][0] <= now:
            pump(state[heapq.heappop(retries)[1]])
        if now >= next_progress:
            next_progress = now + 5.0
            pipe.send(("progress", registered, registration_failures, len(failovers)))
        if change_rate > 0:
            while change_next <= now:
                change()
                change_next += 1.0 / change_rate
        if now >= next_scan:  # answers overdue, looked for ten times a second
            next_scan = now + 0.1
            for node in state:
                if node.inflight is not None and now - node.inflight[3] > answer_timeout:
                    fail(node, "no answer in time")
        if not told_registered and registered + len(expired) >= nodes \
                and in_flight_registrations == 0 and not registering:
            told_registered = True
            pipe.send(("registered", [[(kind, data["id"]) for kind, data in node.resources] for node in state],
                       {"failures": registration_failures, "seconds": time.monotonic() - base}))
        start_registration()
        wait = min(0.05, max(0.0, (due[0][0] - now) if due else 0.05))
        if change_rate > 0:
            wait = min(wait, max(0.0, change_next - now))
        for fd, event in poller.poll(wait):
            if fd == pipe.fileno():
                message = pipe.recv()
                if message[0] == "changes":
                    change_rate, change_next = message[1], time.monotonic()
                elif message[0] == "stop":
                    stop = True
                continue
            node = by_fd.get(fd)
            if node is None:
                continue
            if node.connecting:
                code = node.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(node, f"connect: {os.strerror(code)}")
                    continue
                node.connecting = False
                poller.modify(node.sock, select.EPOLLIN)
                pump(node)
            elif event & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                readable(node)
    for node in state:
        close_link(node)
    pipe.send(("done", {"samples": samples, "failovers": failovers, "errors": errors, "expired": sorted(expired),
                        "changes_sent": change_count}))
