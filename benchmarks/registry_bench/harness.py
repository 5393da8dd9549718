"""What every phase runs on: the Context the phases share (with the websocket phase's options), keep-alive
heartbeats during a long phase, the pool of keep-alive connections that runs a phase's requests, and the figures of
what a phase measured."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .http import Connection, Recorder, percentile
from .server import Server

# IS-04 "Behaviour - Registration": Nodes heartbeat every 5 s by default; registries garbage-collect after 12 s.
HEARTBEAT_INTERVAL = 5.0


@dataclass
class WsOptions:
    """The websocket phase's options (--ws-*)."""

    subscribers: int = 50
    registrations: int = 500
    nodes: int = 3000
    rate_ms: int = 0
    change_rate: float = 49.0
    after: float = 10.0
    sync_timeout: float = 300.0
    paths: tuple[str, ...] = ("nodes", "devices", "sources", "flows", "senders", "receivers")
    heartbeat_connections: int = 0  # 0: one per Node
    distinct: bool = False  # each subscriber its own subscription (a filter of its own that every resource matches)
    latency_rows: bool = True  # ws-1 and ws-S before the load scenario (--ws-no-latency: only the load scenario)


@dataclass
class StormOptions:
    """The storm phase's options (--storm-*)."""

    nodes: int = 3000
    resources: int = 2500
    connections: int = 8


@dataclass
class Context:
    """Everything the phases share: the server, the options, the synthetic population and what was registered."""

    server: Server
    nodes: int
    concurrency: int
    rounds: int
    keepalive: float
    deadline: float
    request_timeout: float
    query_resources: int = 50_000
    query_requests: int = 1000
    query_repeats: int = 10
    ws: WsOptions = field(default_factory=lambda: WsOptions())
    storm: StormOptions = field(default_factory=lambda: StormOptions())
    population: list[list[tuple[str, dict]]] = field(default_factory=list)  # every Node built so far, in order
    registered: list[str] = field(default_factory=list)  # node ids the registry accepted
    # A cluster's members: the pool's connections are spread over them (connection i to member i % len); without
    # them every connection goes to `server`.
    targets: list[tuple[str, int]] = field(default_factory=list)

    @property
    def host_header(self) -> str:
        return f"{self.server.host}:{self.server.port}"


class KeepAlive:
    """Heartbeats registered Nodes during a long phase, as real Nodes would, so the registry's 12 s GC keeps them."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.queue: collections.deque[tuple[float, str]] = collections.deque()  # (last contact, node id), oldest first
        self.lock = threading.Lock()

    def touch(self, node_id: str, at: float | None = None) -> None:
        """Notes a contact with the Node now, or at the monotonic time `at` (in the past: its heartbeat is due)."""
        with self.lock:
            self.queue.append((time.monotonic() if at is None else at, node_id))

    def due(self) -> str | None:
        if self.interval <= 0:
            return None
        with self.lock:
            if self.queue and time.monotonic() - self.queue[0][0] >= self.interval:
                return self.queue.popleft()[1]
        return None


def run_pool(ctx: Context, units: Sequence[Any], work: Callable[[Connection, Any, dict[str, Recorder]], None],
             kinds: Iterable[str]) -> tuple[dict[str, Recorder], float, bool]:
    """Runs `work` over every unit on `ctx.concurrency` persistent connections, one thread each.

    Returns the merged recorders per kind, the wall time, and whether the overall deadline cut the phase short."""
    kinds = list(kinds)
    lock = threading.Lock()
    cursor = iter(range(len(units)))
    per_thread: list[dict[str, Recorder]] = []
    timed_out = threading.Event()

    def worker() -> None:
        recorders = {kind: Recorder() for kind in kinds}
        with lock:
            per_thread.append(recorders)
            number = len(per_thread) - 1
        host, port = ctx.targets[number % len(ctx.targets)] if ctx.targets else (ctx.server.host, ctx.server.port)
        conn = Connection(host, port, ctx.request_timeout)
        try:
            while True:
                if time.monotonic() > ctx.deadline:
                    timed_out.set()
                    return
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                work(conn, units[index], recorders)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(ctx.concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        # Each request is bounded by the socket timeout, so this only waits past the deadline by one request.
        thread.join(max(0.0, ctx.deadline - time.monotonic()) + ctx.request_timeout + 5)
        if thread.is_alive():
            timed_out.set()
    wall = time.perf_counter() - start
    merged = {kind: Recorder() for kind in kinds}
    for recorders in per_thread:
        for kind, recorder in recorders.items():
            merged[kind].merge(recorder)
    return merged, wall, timed_out.is_set()


def figures(name: str, recorder: Recorder, wall: float, server_cpu_ms: float | None, client_cpu_ms: float,
            timed_out: bool, target_ms: float | None, **extra: Any) -> dict:
    """The figures of one phase as a flat, JSON-ready dict."""
    latencies = sorted(recorder.latencies)
    requests = len(latencies) + recorder.errors
    per_request = server_cpu_ms / requests if server_cpu_ms is not None and requests else None
    return {
        "phase": name, "requests": requests, "wall_s": wall, "requests_per_s": requests / wall if wall else None,
        "latency_p50_ms": (p * 1000 if (p := percentile(latencies, 0.50)) is not None else None),
        "latency_p99_ms": (p * 1000 if (p := percentile(latencies, 0.99)) is not None else None),
        "latency_max_ms": latencies[-1] * 1000 if latencies else None,
        "server_cpu_ms": server_cpu_ms, "server_cpu_ms_per_request": per_request,
        # Below ~90% with several connections the server was waiting: on the client, or on other load on the machine.
        "server_busy": server_cpu_ms / (wall * 1000) if server_cpu_ms is not None and wall else None,
        "target_server_cpu_ms_per_request": target_ms,
        "client_cpu_ms_per_request": client_cpu_ms / requests if requests else None,
        "statuses": {str(k): v for k, v in sorted(recorder.statuses.items())},
        "non_2xx": sum(v for k, v in recorder.statuses.items() if not 200 <= k < 300),
        "unexpected_status": recorder.unexpected, "transport_errors": recorder.errors,
        "error_samples": recorder.error_samples, "timed_out": timed_out, **extra,
    }


def measured(ctx: Context, run: Callable[[], tuple[dict[str, Recorder], float, bool]]):
    """Runs a pool and returns its results with the server's and this client's CPU milliseconds over it."""
    server_before, client_before = ctx.server.cpu_ms(), time.process_time()
    recorders, wall, timed_out = run()
    server_after, client_after = ctx.server.cpu_ms(), time.process_time()
    server_cpu = server_after - server_before if server_before is not None and server_after is not None else None
    return recorders, wall, timed_out, server_cpu, (client_after - client_before) * 1000


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
