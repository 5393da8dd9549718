#!/usr/bin/env python3
"""Measures the nmos-ref registry over loopback and prints figures to paste into a note.

By default it starts the registry itself (`twistd -n --pidfile= nmos-ref registry --listen tcp:PORT:...`) on a free
loopback port, waits until `GET /x-nmos/registration/v1.3/` answers, runs the phases and stops it by its PID.
The figure that matters is the server's CPU per request, read from /proc/<pid>/stat: wall-clock rates on a shared
2-core VM vary a lot between identical runs, CPU time much less. See benchmarks/README.md.

The client is deliberately cheap (one thread per persistent HTTP/1.1 connection, requests built as bytes before the
clock starts, a minimal response parser) so that it leaves the second core to itself and does not starve the server.
Every loop runs over a fixed list of work and checks one overall deadline; the run always stops by itself.

The query phase measures the Query API at 50,000 resources (label query, id lookup, paging walks, unpaged v1.0 lists)
one request at a time, with nothing else sent to the registry meanwhile.

The websocket phase measures Query API subscriptions: the time from a registration's answer to its grain at 1 and at
50 subscribers, then 50 subscribers connecting at once to 3,000 Nodes that keep heartbeating (from a child process,
one connection per Node) while changes flow: initial sync time, heartbeat waits, expired Nodes, lost notifications.
"""

from __future__ import annotations

import argparse
import base64
import collections
import errno
import hashlib
import heapq
import json
import multiprocessing
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

API = "/x-nmos/registration/v1.3"
# The official schemas are only read from here (never copied into the project), for --check-schemas.
DEFAULT_SCHEMAS = Path(__file__).resolve().parents[2] / "shared/amwa/is-04/v1.3/APIs/schemas"
DEFAULT_REGISTRY_CMD = "twistd -n --pidfile= nmos-ref registry --listen tcp:{port}:interface=127.0.0.1"
CLEAN_EXIT = {0, 143, -signal.SIGTERM}  # twistd answers SIGTERM with exit status 143: a clean stop
TAI_OFFSET = 37  # TAI - UTC in seconds since 2017
# IS-04 "Behaviour - Registration": Nodes heartbeat every 5 s by default; registries garbage-collect after 12 s.
HEARTBEAT_INTERVAL = 5.0
# Resources per synthetic Node, in the order they are posted (parents first).
NODE_LAYOUT = ("node", "device", "source", "source", "flow", "flow", "sender", "sender", "receiver", "receiver")


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic IS-04 v1.3 resources


def tai_version(now: float) -> str:
    """An IS-04 version string (`<seconds>:<nanoseconds>` TAI) for a Unix time."""
    ns = int((now + TAI_OFFSET) * 1e9)
    return f"{ns // 1_000_000_000}:{ns % 1_000_000_000}"


def synthetic_node(index: int, now: float,
                   new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> list[tuple[str, dict]]:
    """The ten resources of one synthetic Node as (type, data), parents first, all valid IS-04 v1.3.

    Addresses in the data point at loopback; the registry stores them and never contacts them."""
    version = tai_version(now)
    port = 20000 + index % 40000
    base = f"http://127.0.0.1:{port}"
    name = f"{index:06d}"
    tags = {"bench": ["nmos-ref"], "group": [f"g{index % 10}"]}
    mac = "02-00-%02x-%02x-%02x-01" % ((index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF)

    def core(kind: str, rid: str, role: str = "") -> dict:
        # Every label is unique in the registry (the query phase's label query must find exactly one resource).
        label = f"bench-{kind}-{name}" + (f"-{role}" if role else "")
        return {"id": rid, "version": version, "label": label, "description": f"synthetic {kind} {name}", "tags": tags}

    node_id, device_id = new_id(), new_id()
    video_source, audio_source = new_id(), new_id()
    video_flow, audio_flow = new_id(), new_id()
    senders, receivers = [new_id(), new_id()], [new_id(), new_id()]
    rtp = "urn:x-nmos:transport:rtp.mcast"
    idle_sender = {"receiver_id": None, "active": False}
    idle_receiver = {"sender_id": None, "active": False}
    return [
        ("node", core("node", node_id) | {
            "href": base + "/", "hostname": f"bench-node-{name}",
            "api": {"versions": ["v1.3"],
                    "endpoints": [{"host": "127.0.0.1", "port": port, "protocol": "http", "authorization": False}]},
            "caps": {}, "services": [],
            "clocks": [{"name": "clk0", "ref_type": "internal"}],
            "interfaces": [{"chassis_id": mac, "port_id": mac, "name": "eth0"}]}),
        ("device", core("device", device_id) | {
            "type": "urn:x-nmos:device:generic", "node_id": node_id, "senders": senders, "receivers": receivers,
            "controls": [{"href": base + "/x-nmos/connection/v1.1/", "type": "urn:x-nmos:control:sr-ctrl/v1.1"}]}),
        ("source", core("source", video_source, "video") | {
            "caps": {}, "device_id": device_id, "parents": [], "clock_name": "clk0",
            "grain_rate": {"numerator": 25, "denominator": 1}, "format": "urn:x-nmos:format:video"}),
        ("source", core("source", audio_source, "audio") | {
            "caps": {}, "device_id": device_id, "parents": [], "clock_name": "clk0",
            "format": "urn:x-nmos:format:audio",
            "channels": [{"label": "left", "symbol": "L"}, {"label": "right", "symbol": "R"}]}),
        ("flow", core("flow", video_flow, "video") | {
            "source_id": video_source, "device_id": device_id, "parents": [],
            "grain_rate": {"numerator": 25, "denominator": 1}, "format": "urn:x-nmos:format:video",
            "frame_width": 1920, "frame_height": 1080, "interlace_mode": "progressive", "colorspace": "BT709",
            "transfer_characteristic": "SDR", "media_type": "video/raw",
            "components": [{"name": c, "width": w, "height": 1080, "bit_depth": 10}
                           for c, w in (("Y", 1920), ("Cb", 960), ("Cr", 960))]}),
        ("flow", core("flow", audio_flow, "audio") | {
            "source_id": audio_source, "device_id": device_id, "parents": [],
            "format": "urn:x-nmos:format:audio", "sample_rate": {"numerator": 48000, "denominator": 1},
            "media_type": "audio/L24", "bit_depth": 24}),
        *[("sender", core("sender", sid, role) | {
            "flow_id": fid, "transport": rtp, "device_id": device_id, "caps": {},
            "manifest_href": f"{base}/x-nmos/connection/v1.1/single/senders/{sid}/transportfile",
            "interface_bindings": ["eth0"], "subscription": idle_sender})
          for sid, fid, role in zip(senders, (video_flow, audio_flow), ("video", "audio"))],
        *[("receiver", core("receiver", rid, role) | {
            "device_id": device_id, "transport": rtp, "format": fmt, "caps": {"media_types": [media]},
            "interface_bindings": ["eth0"], "subscription": idle_receiver})
          for rid, fmt, media, role in zip(receivers, ("urn:x-nmos:format:video", "urn:x-nmos:format:audio"),
                                           ("video/raw", "audio/L24"), ("video", "audio"))],
    ]


def check_schemas(schema_dir: Path, nodes: int) -> int:
    """Validates the synthetic payloads against the official IS-04 v1.3 schemas (read in place); returns exit status."""
    from jsonschema import Draft4Validator, FormatChecker
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    # The official files are draft-04, have no "id", and "$ref" siblings by relative name: give each a base URI.
    base = schema_dir.resolve().as_uri() + "/"
    registry = Registry().with_resources(
        (base + path.name, Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT4))
        for path in sorted(schema_dir.glob("*.json"))).crawl()

    def validator(name: str) -> Draft4Validator:
        return Draft4Validator({"$ref": base + name}, registry=registry, format_checker=FormatChecker())

    envelope = validator("registrationapi-resource-post-request.json")
    by_type = {kind: validator(f"{kind}.json") for kind in set(NODE_LAYOUT)}
    failures = checked = 0
    now = time.time()
    for index in range(nodes):
        for kind, data in synthetic_node(index, now):
            checked += 1
            # The per-type schema gives readable messages; the request envelope (a oneOf) only says "not valid".
            errors = [*by_type[kind].iter_errors(data)] or [*envelope.iter_errors({"type": kind, "data": data})]
            for error in errors[:3]:
                print(f"node {index} {kind}: {error.message[:200]} at /{'/'.join(map(str, error.absolute_path))}")
            failures += bool(errors)
    print(f"checked {checked} payloads of {nodes} synthetic nodes against {schema_dir}: {failures} invalid")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------------------------------
# The HTTP client: one persistent connection per thread, hand-built requests


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


# ---------------------------------------------------------------------------------------------------------------------
# The server under test and its CPU/RSS, read from /proc


@dataclass
class Server:
    """The registry under test: where it listens and, when known, its PID (for CPU and RSS)."""

    host: str
    port: int
    pid: int | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cpu_ms(self) -> float | None:
        """utime + stime of the whole server process (all threads) in milliseconds, or None without a PID."""
        if self.pid is None:
            return None
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rpartition(")")[2].split()  # comm may contain spaces; fields after it start at "state" (3)
        return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int | None:
        if self.pid is None:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None


def machine_busy_ms() -> float | None:
    """CPU time all processes on the machine have used (user, nice, system, irq, softirq; all cores), in ms."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
    return (user + nice + system + irq + softirq) * 1000.0 / os.sysconf("SC_CLK_TCK")


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(server: Server, deadline: float) -> str | None:
    """Polls `GET /x-nmos/registration/v1.3/` until it answers 200; returns why not, or None once it does."""
    request = build_request("GET", API + "/", f"{server.host}:{server.port}")
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            return f"the registry exited with status {server.process.returncode} before answering"
        conn = Connection(server.host, server.port, timeout=2.0)
        try:
            status, _, body = conn.exchange(request)
        except (OSError, ProtocolError):
            time.sleep(0.1)
            continue
        finally:
            conn.close()
        return None if status == 200 else f"GET {API}/ answered {status}: {body[:200]!r}"
    return "the registry did not answer in time"


def start_registry(command: str, startup_timeout: float, log_path: Path | None) -> Server:
    """Starts the registry on a free loopback port and waits for it; RuntimeError (after stopping it) if it fails."""
    port = free_loopback_port()
    argv = [part.format(port=port) for part in shlex.split(command)]
    # Prefer the twistd beside this interpreter: a pyenv-style shim would put a shell in front of the PID we measure.
    if argv[0] == "twistd" and (local := Path(sys.executable).with_name("twistd")).exists():
        argv[0] = str(local)
    workdir = Path(tempfile.mkdtemp(prefix="bench-registry-"))  # twistd's droppings (logs, pid files) land here
    log_path = log_path or workdir / "registry.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = Server("127.0.0.1", port, pid=process.pid, process=process, log_path=log_path)
    problem = wait_until_up(server, time.monotonic() + startup_timeout)
    if problem:
        stop_registry(server)
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError("\n".join([f"{problem} ({shlex.join(argv)})", *tail]))
    return server


def stop_registry(server: Server, timeout: float = 15.0) -> int | None:
    """Stops the registry this script started, by its PID: SIGTERM, then SIGKILL if it hangs. Returns the status."""
    process = server.process
    if process is None:
        return None
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
    return process.returncode


# ---------------------------------------------------------------------------------------------------------------------
# Running a phase


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
    population: list[list[tuple[str, dict]]] = field(default_factory=list)  # every Node built so far, in order
    registered: list[str] = field(default_factory=list)  # node ids the registry accepted

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
        per_thread.append(recorders)
        conn = Connection(ctx.server.host, ctx.server.port, ctx.request_timeout)
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


# ---------------------------------------------------------------------------------------------------------------------
# Phases. Each takes the Context and returns its figures; add new ones to PHASES.


def new_nodes(ctx: Context, count: int) -> list[list[tuple[str, dict]]]:
    """`count` synthetic Nodes never handed out before (labels continue the numbering), added to the population."""
    now, start = time.time(), len(ctx.population)
    ctx.population += [synthetic_node(index, now) for index in range(start, start + count)]
    return ctx.population[start:]


def register_nodes(ctx: Context, nodes: Sequence[list[tuple[str, dict]]], alive: Sequence[str] = ()) \
        -> tuple[dict[str, Recorder], float, bool, float | None, float, int, list[str]]:
    """POSTs the resources of `nodes`, parents first per Node, Nodes spread over the connections.

    Keeps every accepted Node, and every Node of `alive` (registered earlier), alive with keep-alive heartbeats.
    Returns the recorders ("register", "keepalive"), wall, timed-out flag, server and client CPU ms, the number of
    POSTs built and the ids of the Nodes accepted; adds those to `ctx.registered`."""
    post = API + "/resource"
    # Built before the clock starts, so the phase measures the server, not json.dumps.
    units = [(node[0][1]["id"], [build_request("POST", post, ctx.host_header,
                                               json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode())
                                 for kind, data in node]) for node in nodes]
    beats = {nid: build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header)
             for nid in [*alive, *(nid for nid, _ in units)]}
    keepalive = KeepAlive(ctx.keepalive)
    overdue = time.monotonic() - ctx.keepalive  # when they were last heard is not known here: heartbeat them first
    for node_id in alive:
        keepalive.touch(node_id, at=overdue)
    accepted: list[str] = []

    def register_node(conn: Connection, unit: tuple[str, list[bytes]], rec: dict[str, Recorder]) -> None:
        while (due := keepalive.due()) is not None:
            rec["keepalive"].call(conn, beats[due], 200)
            keepalive.touch(due)
        node_id, requests = unit
        for position, request in enumerate(requests):
            answer = rec["register"].call(conn, request, 201)
            if position == 0 and answer and answer[0] == 201:  # the node itself: IS-04 counts it as a heartbeat
                keepalive.touch(node_id)
                accepted.append(node_id)

    recorders, wall, timed_out, server_cpu, client_cpu = measured(
        ctx, lambda: run_pool(ctx, units, register_node, ("register", "keepalive")))
    ctx.registered += accepted
    return recorders, wall, timed_out, server_cpu, client_cpu, sum(len(requests) for _, requests in units), accepted


def phase_register(ctx: Context) -> dict:
    """Registers `ctx.nodes` new synthetic Nodes, ten resources each (see `register_nodes`)."""
    nodes = new_nodes(ctx, ctx.nodes)
    recorders, wall, timed_out, server_cpu, client_cpu, posts, accepted = register_nodes(ctx, nodes, ctx.registered)
    beats_sent = len(recorders["keepalive"].latencies) + recorders["keepalive"].errors
    result = figures("register", recorders["register"], wall, server_cpu, client_cpu, timed_out, 0.8,
                     nodes=len(nodes), resources=posts,
                     nodes_accepted=len(accepted),
                     keepalive_heartbeats=beats_sent,
                     keepalive_non_2xx=sum(v for k, v in recorders["keepalive"].statuses.items() if not 200 <= k < 300),
                     keepalive_transport_errors=recorders["keepalive"].errors)
    # The keep-alive heartbeats' server CPU stays in the phase's figure, which is divided by the registrations alone:
    # a slight overstatement of a registration's cost (see README). Their failures count like any other.
    result["unexpected_status"] += recorders["keepalive"].unexpected
    result["transport_errors"] += recorders["keepalive"].errors
    result["error_samples"] += recorders["keepalive"].error_samples[:5 - len(result["error_samples"])]
    return result


def phase_heartbeat(ctx: Context) -> dict:
    """Heartbeats every registered Node `rounds` times: round after round, each round over all Nodes."""
    if not ctx.registered:
        return figures("heartbeat", Recorder(), 0.0, None, 0.0, False, 0.3,
                       skipped="no registered nodes (run the register phase first)")
    beats = [build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header) for nid in ctx.registered]
    units = [beat for _ in range(ctx.rounds) for beat in beats]

    def heartbeat(conn: Connection, request: bytes, rec: dict[str, Recorder]) -> None:
        rec["heartbeat"].call(conn, request, 200)

    recorders, wall, timed_out, server_cpu, client_cpu = measured(
        ctx, lambda: run_pool(ctx, units, heartbeat, ("heartbeat",)))
    return figures("heartbeat", recorders["heartbeat"], wall, server_cpu, client_cpu, timed_out, 0.3,
                   nodes=len(beats), rounds=ctx.rounds)


# The query phase. Its figures are taken on one connection, one request at a time, with nothing else sent to the
# registry meanwhile; the registered Nodes are heartbeated between blocks of measured requests, never during one.

QUERY = "/x-nmos/query"
V10_COLLECTIONS = ("nodes", "devices", "sources", "flows", "senders", "receivers")  # together: every resource
# IS-04 "Behaviour - Registration": the registry removes a Node 12 s after its last heartbeat. A block of measured
# requests must end within this many seconds of the start of the keep-alive sweep before it (3 s to spare).
QUIET_BUDGET = 9.0
LABEL_TARGET_MS = 3.6  # issue 3: a tenth of nmos-cpp's measured 36 ms for a label query at 50,000 resources
LATENCY_LIMIT_MS = 1000.0  # issue 3: every request, the full unpaged v1.0 list included, answers well within 1 s
LABEL_CHUNK = 100  # label queries and id lookups per measured block
LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([A-Za-z]+)"?')


class OutOfTime(Exception):
    """The overall --timeout passed before the next measured block."""


@dataclass
class Cost:
    """What one block of measured requests cost: server CPU ms (None without a PID), client CPU ms, wall s."""

    server_ms: float | None
    client_ms: float
    wall_s: float


@dataclass
class Tally:
    """One row of the query phase being measured: its requests, and the summed cost of its blocks."""

    recorder: Recorder = field(default_factory=Recorder)
    wall: float = 0.0
    server_ms: float | None = 0.0
    client_ms: float = 0.0
    blocks: list[Cost] = field(default_factory=list)
    wrong: int = 0  # 200 answers whose content was not what the query must return
    wrong_samples: list[str] = field(default_factory=list)

    def add(self, cost: Cost) -> None:
        self.blocks.append(cost)
        self.wall += cost.wall_s
        self.client_ms += cost.client_ms
        self.server_ms = None if self.server_ms is None or cost.server_ms is None else self.server_ms + cost.server_ms

    def mistake(self, text: str) -> None:
        self.wrong += 1
        if len(self.wrong_samples) < 5:
            self.wrong_samples.append(text)

    def merged(self, *others: Tally) -> Tally:
        whole = Tally()
        for tally in (self, *others):
            whole.recorder.merge(tally.recorder)
            for cost in tally.blocks:
                whole.add(cost)
            whole.wrong += tally.wrong
            whole.wrong_samples += tally.wrong_samples[:5 - len(whole.wrong_samples)]
        return whole

    def figures(self, name: str, timed_out: bool, target_ms: float | None = None, **extra: Any) -> dict:
        result = figures(name, self.recorder, self.wall, self.server_ms, self.client_ms, timed_out, target_ms,
                         wrong_results=self.wrong, blocks=len(self.blocks), **extra)
        result["error_samples"] += self.wrong_samples[:5 - len(result["error_samples"])]
        return result


class Quiet:
    """Measured requests on one keep-alive connection, one at a time, with nothing else sent to the registry.

    Before a block of requests that might not end within QUIET_BUDGET of the last keep-alive sweep's start, every
    registered Node is heartbeated (over the pool), so none expires while figures are taken and no heartbeat runs
    during a block. The server's CPU is read at block boundaries; consecutive blocks share a reading, so the 10 ms
    tick error does not add up block after block."""

    def __init__(self, ctx: Context, node_ids: Sequence[str], budget: float = QUIET_BUDGET) -> None:
        self.ctx, self.budget = ctx, budget
        self.beats = [build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header) for nid in node_ids]
        self.conn = Connection(ctx.server.host, ctx.server.port, ctx.request_timeout)
        self.keepalive = Recorder()
        self.sweeps = 0
        self.short_windows = 0  # blocks started with less time left than estimated (a slow sweep)
        self.fresh_at: float | None = None  # monotonic start of the last keep-alive sweep
        self._server_mark: float | None = None  # server CPU at the end of the last block, if no sweep since

    def close(self) -> None:
        self.conn.close()

    def left(self) -> float:
        return -1.0 if self.fresh_at is None else self.fresh_at + self.budget - time.monotonic()

    def sweep(self) -> None:
        def beat(conn: Connection, request: bytes, rec: dict[str, Recorder]) -> None:
            rec["keepalive"].call(conn, request, 200)

        self.fresh_at, self._server_mark = time.monotonic(), None
        recorders, _, _ = run_pool(self.ctx, self.beats, beat, ("keepalive",))
        self.keepalive.merge(recorders["keepalive"])
        self.sweeps += 1

    def block(self, estimate: float, run: Callable[[Connection], Any]) -> tuple[Any, Cost]:
        """Runs `run(connection)` as one measured block, sweeping first if it might outlast the window."""
        if time.monotonic() > self.ctx.deadline:
            raise OutOfTime
        if self.left() < estimate:
            self.sweep()
            self.short_windows += self.left() < estimate
        server_before = self._server_mark if self._server_mark is not None else self.ctx.server.cpu_ms()
        client_before, start = time.process_time(), time.perf_counter()
        result = run(self.conn)
        wall = time.perf_counter() - start
        server_after, client_after = self.ctx.server.cpu_ms(), time.process_time()
        self._server_mark = server_after
        server = server_after - server_before if server_before is not None and server_after is not None else None
        return result, Cost(server, (client_after - client_before) * 1000, wall)


def settle(server: Server, limit: float = 2.0) -> float:
    """Waits, at most `limit` s, until the server has used no CPU for 0.5 s; returns the seconds waited."""
    start = time.monotonic()
    if server.pid is None:
        return 0.0
    last, still_since = server.cpu_ms(), start
    while (now := time.monotonic()) - start < limit and now - still_since < 0.5:
        time.sleep(0.1)
        if (cpu := server.cpu_ms()) != last:
            last, still_since = cpu, time.monotonic()
    return time.monotonic() - start


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """Up to `count` items taken evenly across `items`."""
    count = min(count, len(items))
    return [items[i * len(items) // count] for i in range(count)]


def link_path(headers: dict[str, str], rel: str, server: Server) -> str:
    """The path and query of the `Link` target `rel`; ProtocolError if it is missing or leaves the registry."""
    for url, name in LINK.findall(headers.get("link", "")):
        if name == rel:
            parts = urlsplit(url)
            if (parts.hostname, parts.port) != (server.host, server.port):
                # The machine's rule: benchmark traffic stays on loopback, at the registry under test.
                raise ProtocolError(f"Link rel={rel} points away from the registry under test: {url}")
            return parts.path + (f"?{parts.query}" if parts.query else "")
    raise ProtocolError(f"no Link rel={rel} in {headers.get('link')!r}")


def json_ids(body: bytes) -> list[str] | None:
    """The ids of a JSON array of resources, or None if the body is not one."""
    try:
        items = json.loads(body)
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return None
    return [item.get("id") for item in items]


def top_up(ctx: Context, wanted_nodes: int) -> dict:
    """Registers new Nodes until `wanted_nodes` are registered (unreported); what it did, for the summary."""
    missing = wanted_nodes - len(ctx.registered)
    if missing <= 0:
        return {"nodes_registered": 0}
    print(f"registering {missing} more nodes for the query phase (not reported) ...", file=sys.stderr)
    recorders, wall, timed_out, server_cpu, _, posts, accepted = register_nodes(ctx, new_nodes(ctx, missing),
                                                                                ctx.registered)
    rec = recorders["register"]
    rec.merge(recorders["keepalive"])
    return {"nodes_registered": len(accepted), "nodes_attempted": missing, "posts": posts, "wall_s": wall,
            "server_cpu_ms": server_cpu, "timed_out": timed_out,
            "keepalive_heartbeats": len(recorders["keepalive"].latencies) + recorders["keepalive"].errors,
            "failures": rec.unexpected + rec.errors, "error_samples": rec.error_samples}


def phase_query(ctx: Context) -> dict:
    """Query API figures at `ctx.query_resources` resources: label query, id lookup, paging walks, v1.0 full lists.

    Registers (unreported) as many new Nodes as it takes first; see `Quiet` for how the figures are taken."""
    wanted_nodes = max(-(-ctx.query_resources // len(NODE_LAYOUT)), 1)
    setup = top_up(ctx, wanted_nodes)
    by_id = {node[0][1]["id"]: node for node in ctx.population}
    held = [by_id[nid] for nid in ctx.registered if nid in by_id]
    if not held:
        return {"phase": "query", "skipped": "no registered nodes", "setup": setup, "rows": {}}
    expected = {f"{kind}s": count * len(held) for kind, count in collections.Counter(NODE_LAYOUT).items()}
    senders = [data for node in held for kind, data in node if kind == "sender"]
    server, host, repeats = ctx.server, ctx.host_header, max(1, ctx.query_repeats)
    settled = settle(server)
    quiet = Quiet(ctx, ctx.registered)
    rows: dict[str, Tally] = {}
    details: dict[str, Any] = {}
    cold: dict[str, Tally] = {}
    sizes: dict[str, int] = {}
    timed_out = False

    def looked_up(name: str, paths: list[str], want: list[str], single: bool) -> None:
        """GETs each path once, in blocks of LABEL_CHUNK; each must answer 200 with exactly the resource `want`."""
        tally = rows[name] = Tally()
        estimate = 3.0
        for first in range(0, len(paths), LABEL_CHUNK):
            requests = [build_request("GET", path, host) for path in paths[first:first + LABEL_CHUNK]]
            answers, cost = quiet.block(estimate, lambda conn: [tally.recorder.call(conn, r, 200) for r in requests])
            tally.add(cost)
            estimate = 2 * cost.wall_s + 0.5
            for answer, rid, path in zip(answers, want[first:], paths[first:]):
                if answer is None or answer[0] != 200:
                    continue
                if single:
                    try:
                        got = [json.loads(answer[2]).get("id")]
                    except (ValueError, AttributeError):
                        got = None
                else:
                    got = json_ids(answer[2])
                if got != [rid]:
                    tally.mistake(f"GET {path}: {len(got) if got is not None else 'no'} results, not [{rid}]")

    def walks(name: str, limit: int) -> None:
        """Walks every Sender at v1.3 from the newest page along rel="prev" (older items) until X-Paging-Since is
        0:0 ("no older match left out"), `repeats` times; each walk must return every Sender exactly once."""
        tally = rows[name] = Tally()
        per_walk = details.setdefault("walks", {})[name] = []
        most = expected["senders"] // limit + 5
        estimate = 5.0

        def walk(conn: Connection) -> tuple[list[bytes], str | None]:
            bodies: list[bytes] = []
            path = f"{QUERY}/v1.3/senders?paging.limit={limit}"
            for _ in range(most):
                answer = tally.recorder.call(conn, build_request("GET", path, host), 200)
                if answer is None or answer[0] != 200:
                    return bodies, f"GET {path} failed"
                _, headers, body = answer
                bodies.append(body)
                if headers.get("x-paging-limit") != str(limit):
                    return bodies, f"X-Paging-Limit {headers.get('x-paging-limit')!r}, asked {limit}"
                if headers.get("x-paging-since") == "0:0":
                    return bodies, None
                try:
                    path = link_path(headers, "prev", server)
                except ProtocolError as e:
                    return bodies, str(e)
            return bodies, f"still not at the oldest page after {most} pages"

        for _ in range(repeats):
            (bodies, problem), cost = quiet.block(estimate, walk)
            tally.add(cost)
            estimate = 2 * cost.wall_s + 0.5
            ids = [rid for body in bodies for rid in (json_ids(body) or [])]
            if problem is None and (len(ids) != len(set(ids)) or len(ids) != expected["senders"]):
                problem = f"{len(ids)} items, {len(set(ids))} distinct, {expected['senders']} senders held"
            if problem is not None:
                tally.mistake(f"walk with paging.limit={limit}: {problem}")
            per_walk.append({"pages": len(bodies), "items": len(ids), "wall_ms": cost.wall_s * 1000,
                             "server_cpu_ms": cost.server_ms, "problem": problem})

    def v10_list(tally: Tally, collection: str, cold_size: int | None) -> tuple[int, int | None]:
        """GETs one whole v1.0 collection as one block; returns its size in bytes and, when parsed, its count."""
        request = build_request("GET", f"{QUERY}/v1.0/{collection}", host)
        estimate = 2 * max((c.wall_s for c in tally.blocks), default=1.5) + 0.5
        answer, cost = quiet.block(estimate, lambda conn: tally.recorder.call(conn, request, 200))
        tally.add(cost)
        if answer is None or answer[0] != 200:
            return 0, None
        body, count = answer[2], None
        if len(body) != cold_size:  # the registry has not changed, so neither should the answer: count otherwise
            count = len(ids) if (ids := json_ids(body)) is not None else None
            if count != expected[collection]:
                tally.mistake(f"GET {QUERY}/v1.0/{collection}: {count} resources, {expected[collection]} held")
        return len(body), count

    try:
        # 1. label queries: each a different Sender's unique label, so each must find exactly that Sender
        picks = spread(senders, ctx.query_requests)
        looked_up("q-label", [f"{QUERY}/v1.3/senders?label={quote(s['label'])}" for s in picks],
                  [s["id"] for s in picks], single=False)
        # 2. single resources by id
        picks = spread(senders[1:] + senders[:1], ctx.query_requests)  # other Senders than the label queries'
        looked_up("q-id", [f"{QUERY}/v1.3/senders/{s['id']}" for s in picks], [s["id"] for s in picks], single=True)
        # 3. paging walks (the first walk encodes each Sender at v1.3 for the first time)
        walks("q-page100", 100)
        walks("q-page1000", 1000)
        # 4. v1.0 lists: never paged, every resource translated from v1.3 (cold: the first GET of each collection)
        counts: dict[str, int | None] = {}
        for collection in V10_COLLECTIONS:
            cold[collection] = Tally()
            sizes[collection], counts[collection] = v10_list(cold[collection], collection, None)
        details["v1.0_cold"] = {c: {"bytes": sizes[c], "resources": counts[c],
                                    "latency_ms": t.recorder.latencies[0] * 1000 if t.recorder.latencies else None,
                                    "server_cpu_ms": t.server_ms} for c, t in cold.items()}
        largest = max(V10_COLLECTIONS, key=lambda c: sizes[c])
        details["largest"] = largest
        rows["q-v10-cold"] = cold[largest]
        rows["q-v10-warm"] = warm = Tally()
        for _ in range(repeats):
            v10_list(warm, largest, sizes[largest])
        rows["q-all-cold"] = Tally().merged(*cold.values())
        rows["q-all-warm"] = sweeps = Tally()
        details["all_warm_sweeps"] = []
        estimate = 2 * sum(tally.wall for tally in cold.values()) + 0.5
        for _ in range(repeats):
            requests = [build_request("GET", f"{QUERY}/v1.0/{c}", host) for c in V10_COLLECTIONS]
            answers, cost = quiet.block(estimate, lambda conn: [sweeps.recorder.call(conn, r, 200) for r in requests])
            # One block per sweep: its CPU is the sweep's; the row still counts HTTP requests.
            sweeps.add(cost)
            estimate = 2 * cost.wall_s + 0.5
            details["all_warm_sweeps"].append({"wall_ms": cost.wall_s * 1000, "server_cpu_ms": cost.server_ms})
            for collection, answer in zip(V10_COLLECTIONS, answers):
                if answer and answer[0] == 200 and len(answer[2]) != sizes[collection]:
                    count = len(ids) if (ids := json_ids(answer[2])) is not None else None
                    if count != expected[collection]:
                        sweeps.mistake(f"GET {QUERY}/v1.0/{collection}: {count} resources, {expected[collection]} held")
    except OutOfTime:
        timed_out = True
    finally:
        quiet.close()

    order = ("q-label", "q-id", "q-page100", "q-page1000", "q-v10-cold", "q-v10-warm", "q-all-cold", "q-all-warm")
    results = {name: rows[name].figures(name, timed_out, LABEL_TARGET_MS if name == "q-label" else None)
               for name in order if name in rows}
    if "q-all-cold" in results:
        results["q-all-cold"]["sweep_wall_ms"] = sum(t.wall for t in cold.values()) * 1000
    keepalive = quiet.keepalive
    return {
        "phase": "query", "rows": results, "timed_out": timed_out,
        "nodes_held": len(held), "resources_held": sum(expected.values()), "expected_counts": expected,
        "setup": setup, "settle_s": settled,
        "keepalive_sweeps": quiet.sweeps, "keepalive_heartbeats": len(keepalive.latencies) + keepalive.errors,
        "keepalive_non_2xx": sum(v for k, v in keepalive.statuses.items() if not 200 <= k < 300),
        "keepalive_transport_errors": keepalive.errors, "short_windows": quiet.short_windows,
        "error_samples": keepalive.error_samples + setup.get("error_samples", []),
        "latency_limit_ms": LATENCY_LIMIT_MS, **details,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The websocket phase (benchmarks/README.md): how long a registration takes to reach 1 and S subscribers, then S
# subscribers connecting at once to a registry of --ws-nodes Nodes that keep heartbeating while changes flow.
#
# Every arrival time is the kernel's (SO_TIMESTAMPNS on each read), for the HTTP answers as for the grains, so this
# client's own delays (parsing one socket while another has data waiting) never count as the server's. The
# subscribers are plain sockets read by one epoll loop with a small RFC 6455 reader; the heartbeats come from a child
# process, so that parsing the initial state (up to a core's worth) cannot hold them back.

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the ancillary message has the same number
TIMESPEC_SPACE = socket.CMSG_SPACE(16)  # one struct timespec
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
KIND = {"nodes": "node", "devices": "device", "sources": "source", "flows": "flow", "senders": "sender",
        "receivers": "receiver"}
WS_P99_TARGET_MS = 25.0  # issue 4: nmos-cpp's p99 at 50 subscribers; ours must be at most that
HEARTBEAT_WAIT_LIMIT_MS = 1000.0  # issue 4: at 3,000 Nodes x 50 subscribers "no heartbeat waits more than 1 s"
HEARTBEAT_LATE_MS = 100.0  # a heartbeat sent this late by the heartbeat process makes its figures the client's
GRAIN_WAIT = 5.0  # seconds a latency row waits for a registration's grain on every socket before counting it lost
OPEN_WAIT = 30.0  # seconds for every handshake of a batch of subscribers to be answered
MAX_POLLS = 10_000_000  # a bound on every read loop, besides its time limit
DRAIN_LIMIT = 15.0  # seconds after the last change for every subscriber to have every notification
MODIFIED_KINDS = ("sender", "receiver", "flow", "source", "device", "node")  # round-robin order of modifications
CYCLE_MODIFICATIONS = 38  # per change cycle, with one Node registered (10 POSTs) and one deleted: 49 requests
SCENARIO_NODE_LIFETIME = 4  # cycles a Node registered during the load scenario lives before it is deleted
SCENARIO_NODE_BASE = 900_000  # label numbers of those Nodes: far from the population's


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


def listen_overflows() -> int | None:
    """The machine's count of connections dropped because a listen queue was full (TcpExt ListenOverflows)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


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


# The heartbeats of the websocket phase: a child process, so that the WebSocket reader's parsing never holds them.

class _Link:
    """One keep-alive connection of the heartbeat process: non-blocking, one request at a time, a queue behind it."""

    __slots__ = ("sock", "connecting", "buf", "queue", "inflight")

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

    Like real Nodes, each Node has its own keep-alive connection (`connections` 0), opened at its first heartbeat,
    so a heartbeat is sent when it is due even while the registry is slow to answer the others; with fewer
    connections, Node i uses connection i % connections and waits behind it. One thread, epoll, nothing blocking:
    a connect waits in epoll too (a blocking one, held up by a full accept queue, would hold every other heartbeat
    back). A heartbeat's `sent` is when it was started, its connect included. Answers are timed by the kernel's
    receipt (SO_TIMESTAMPNS). Monotonic times are the machine's, so the parent can compare them."""
    parent, start = os.getppid(), time.monotonic()
    to_monotonic = start - time.time()
    nodes = len(node_ids)
    count = max(1, min(connections or nodes, nodes))
    requests = [build_request("POST", f"{API}/health/nodes/{nid}", f"{host}:{port}") for nid in node_ids]
    due = [(start + interval * i / max(1, nodes), i) for i in range(nodes)]  # sorted, so a heap
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
            heapq.heappush(due, (when + interval, index))

    def drop(link: _Link, why: str) -> None:
        if link.sock is not None:
            by_fd.pop(link.sock.fileno(), None)
            poller.unregister(link.sock)
            link.sock.close()
        link.sock, link.buf, link.connecting = None, bytearray(), False
        if link.inflight is not None:
            note(why)
            finish(link, -1, time.monotonic())

    def send_next(link: _Link) -> None:
        while link.inflight is None and link.queue:
            when, index = link.queue.popleft()
            link.inflight = (when, time.monotonic(), index)
            if link.sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                enable_timestamps(sock)
                code = sock.connect_ex((host, port))
                if code not in (0, errno.EINPROGRESS):
                    sock.close()
                    drop(link, f"connect: {os.strerror(code)}")
                    continue
                link.sock, link.connecting = sock, code != 0
                by_fd[sock.fileno()] = link
                poller.register(sock, select.EPOLLIN | (select.EPOLLOUT if link.connecting else 0))
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

    pipe.send(("started", start))
    next_check = start
    for _ in range(MAX_POLLS):
        now = time.monotonic()
        if now > deadline:
            break
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
                        "connections": count,
                        "unanswered": sum(link.inflight is not None for link in links)}))


class Heartbeats:
    """The child process that heartbeats the Nodes during the websocket phase (see `heartbeat_child`)."""

    def __init__(self, ctx: Context, node_ids: list[str]) -> None:
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
        try:
            if self.pipe.poll(30):
                _, self.started = self.pipe.recv()
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
        silence = max([silence, *(b - a for a, b in zip(times, times[1:]) if start <= b < end + DRAIN_LIMIT)])
    statuses = collections.Counter(s[3] for s in inside)
    worst = max(inside, key=lambda s: s[2] - s[0], default=None)
    return {"heartbeats": len(inside), "waits": waits, "statuses": statuses,
            # the wait split: before a connection was free to send it, and the round trip once sent
            "send_late_max_ms": max((s[1] - s[0] for s in inside), default=0.0) * 1000,
            "round_trip_max_ms": max((s[2] - s[1] for s in inside), default=0.0) * 1000,
            "worst_due_s": worst[0] - start if worst else None,
            "over_limit": sum(w * 1000 > HEARTBEAT_WAIT_LIMIT_MS for w in waits), "longest_silence_s": silence,
            "expired_nodes": len({s[4] for s in inside if s[3] == 404})}


# The rows

@dataclass
class WsState:
    """What the registry holds, as the websocket phase knows it: ids per type, and the data of the population's
    resources (modified in place as the load scenario changes them)."""

    known: dict[str, set[str]]
    data: dict[str, tuple[str, dict]]
    modifiable: dict[str, list[str]]


def ws_latency(ctx: Context, state: WsState, http: TimedConnection, name: str, count: int,
               posts: list[tuple[str, str, bytes]], target_ms: float | None) -> dict:
    """`count` subscribers of /senders, then each of `posts` (a new Sender) registered, one at a time: the time from
    the kernel's receipt of its 201 to its receipt of the grain holding that Sender, on every socket."""
    statuses: collections.Counter = collections.Counter()
    paths = []
    for _ in range(count):
        status, path = subscribe(http, ctx, "senders")
        statuses[status] += 1
        paths.append(path)
    hub, subscribers = Hub(), []
    expect = set(state.known["sender"])
    rec, latencies, from_sent, lost, timed_out = Recorder(), [], [], 0, False
    wall = 0.0
    server_cpu = client_cpu = None
    try:
        first = time.time()
        for index, path in enumerate(paths):
            subscribers.append(Subscriber(index, "senders", path, ctx.server, expect, ctx.request_timeout))
            hub.add(subscribers[-1])
        synced = hub.wait(lambda: all(s.sync_done is not None or s.closed for s in subscribers),
                          min(ctx.deadline, time.monotonic() + ctx.ws.sync_timeout))
        sync_s = max(s.sync_done for s in subscribers) - first if synced and not any(s.closed for s in subscribers) \
            else None
        window_start = time.monotonic()
        server_before, client_before, start = ctx.server.cpu_ms(), time.process_time(), time.perf_counter()
        for rid, version, request in posts:
            if time.monotonic() > ctx.deadline:
                timed_out = True
                break
            sent = time.time()
            answer = rec.call(http, request, 201)
            if answer is None or answer[0] != 201:
                continue
            answered, key = http.arrived, (rid, version)
            state.known["sender"].add(rid)
            hub.wait(lambda: all(key in s.changes or s.closed for s in subscribers), time.monotonic() + GRAIN_WAIT)
            for s in subscribers:
                if key in s.changes:
                    latencies.append(s.changes[key] - answered)
                    from_sent.append(s.changes[key] - sent)
                else:
                    lost += 1
        wall = time.perf_counter() - start
        server_after, client_after = ctx.server.cpu_ms(), time.process_time()
        window_end = time.monotonic()
        if server_before is not None and server_after is not None:
            server_cpu = server_after - server_before
        client_cpu = (client_after - client_before) * 1000
    finally:
        hub.close()
    http_figures = figures(name, rec, wall, server_cpu, client_cpu or 0.0, timed_out, None)
    latencies.sort()
    from_sent.sort()
    closed = [f"subscriber {s.index}: {s.closed}" for s in subscribers if s.closed and s.closed != "closed by us"]
    result = http_figures | {
        "from_sent_p50_ms": ms(percentile(from_sent, 0.50)), "from_sent_p99_ms": ms(percentile(from_sent, 0.99)),
        "from_sent_max_ms": ms(from_sent[-1] if from_sent else None),
        "latency_p50_ms": ms(percentile(latencies, 0.50)), "latency_p99_ms": ms(percentile(latencies, 0.99)),
        "latency_max_ms": ms(latencies[-1] if latencies else None),
        "latency_min_ms": ms(latencies[0] if latencies else None),
        "registration_http_p50_ms": http_figures["latency_p50_ms"],
        "registration_http_p99_ms": http_figures["latency_p99_ms"],
        "target_latency_ms": target_ms, "target_metric": "p99",
        "subscribers": count, "subscriptions_created": statuses[201], "subscriptions_reused": statuses[200],
        "pairs": len(latencies), "lost_notifications": lost, "wrong_results": lost + len(closed),
        "sync_events_per_subscriber": len(expect), "sync_s": sync_s,
        "duplicates": sum(s.duplicates for s in subscribers), "malformed": sum(s.malformed for s in subscribers),
        "client_read_lag_max_ms": max((s.read_lag for s in subscribers), default=0.0) * 1000,
        "closed_early": closed, "window": (window_start, window_end) if wall else None,
    }
    result["error_samples"] += closed[:5 - len(result["error_samples"])]
    return result


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class Changer:
    """Changes the registry at `rate` requests per second from its own thread and connection, in cycles: one new
    Node (its ten resources, parents first, in one burst), CYCLE_MODIFICATIONS modifications of the population's
    resources (a new description and version), round-robin over the six types, and the deletion of the Node
    registered SCENARIO_NODE_LIFETIME cycles before (its ten resources removed by cascade). Once stopped, it
    deletes the Nodes it registered that are still there. Each change is noted as (type, id, version or "removed",
    kernel time of the answer)."""

    def __init__(self, ctx: Context, state: WsState, rate: float, limit_s: float) -> None:
        self.ctx, self.state, self.rate = ctx, state, rate
        self.conn = TimedConnection(ctx.server.host, ctx.server.port, ctx.request_timeout)
        self.stop = threading.Event()
        self.changes: list[tuple[str, str, str, float]] = []
        self.recorder = Recorder()
        self.requests = self.nodes_created = self.nodes_deleted = self.modifications = 0
        self.scenario_nodes_gone = 0  # DELETE answered 404: the Node had expired
        self.behind_max = 0.0
        self.alive: collections.deque[list[tuple[str, str, str]]] = collections.deque()
        self.next_modified = {kind: 0 for kind in MODIFIED_KINDS}
        per_cycle = 10 + CYCLE_MODIFICATIONS + 1
        self.cycles = int(limit_s * rate / per_cycle) + 1
        self.started: float | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        self.started = start = time.monotonic()
        try:
            for cycle in range(self.cycles):
                actions: list[Callable[[], int]] = [self.register_node]
                actions += [lambda k=MODIFIED_KINDS[(cycle * CYCLE_MODIFICATIONS + i) % len(MODIFIED_KINDS)]:
                            self.modify(k) for i in range(CYCLE_MODIFICATIONS)]
                if len(self.alive) >= SCENARIO_NODE_LIFETIME:
                    actions.append(self.delete_oldest)
                for action in actions:
                    wait = start + self.requests / self.rate - time.monotonic()
                    if wait > 0:
                        self.stop.wait(wait)
                    else:
                        self.behind_max = max(self.behind_max, -wait)
                    if self.stop.is_set() or time.monotonic() > self.ctx.deadline:
                        break
                    self.requests += action()
                else:
                    continue
                break
            for _ in range(len(self.alive)):
                if time.monotonic() > self.ctx.deadline:
                    break
                self.requests += self.delete_oldest()
        finally:
            self.conn.close()

    def _post(self, kind: str, data: dict, expect: int) -> bool:
        body = json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode()
        answer = self.recorder.call(self.conn, build_request("POST", API + "/resource", self.ctx.host_header, body),
                                    expect)
        if answer is None or answer[0] != expect:
            return False
        self.changes.append((kind, data["id"], data["version"], self.conn.arrived))
        return True

    def register_node(self) -> int:
        node = synthetic_node(SCENARIO_NODE_BASE + self.nodes_created, time.time())
        self.nodes_created += 1
        registered = [(kind, data["id"], data["version"]) for kind, data in node if self._post(kind, data, 201)]
        if registered and registered[0][0] == "node":
            self.alive.append(registered)
        return len(node)

    def modify(self, kind: str) -> int:
        ids = self.state.modifiable[kind]
        if not ids:
            return 0
        rid = ids[self.next_modified[kind] % len(ids)]
        self.next_modified[kind] += 1
        self.modifications += 1
        _, data = self.state.data[rid]
        # A new description and a later version: a change (IS-04: id + version name one variant), label kept.
        changed = data | {"description": f"synthetic {kind}, change {self.modifications}",
                          "version": tai_version(time.time())}
        if self._post(kind, changed, 200):
            self.state.data[rid] = (kind, changed)
        return 1

    def delete_oldest(self) -> int:
        resources = self.alive.popleft()
        answer = self.recorder.call(self.conn, build_request(
            "DELETE", f"{API}/resource/nodes/{resources[0][1]}", self.ctx.host_header), 204)
        if answer is not None and answer[0] == 204:
            self.nodes_deleted += 1
            self.changes += [(kind, rid, "removed", self.conn.arrived) for kind, rid, _ in resources]
        elif answer is not None and answer[0] == 404:
            self.scenario_nodes_gone += 1
        return 1


def ws_load(ctx: Context, state: WsState, http: TimedConnection) -> dict:
    """S subscribers, spread over `--ws-paths`, connect at once; changes flow from when every handshake is answered
    until `--ws-after` s after the last subscriber has its initial state; then every subscriber must get every
    change of its type (DRAIN_LIMIT s at most)."""
    opts = ctx.ws
    paths = []
    collections_ = [opts.paths[i % len(opts.paths)] for i in range(opts.subscribers)]
    statuses: collections.Counter = collections.Counter()
    for collection in collections_:
        status, path = subscribe(http, ctx, collection)
        statuses[status] += 1
        paths.append(path)
    # What each subscriber's initial state must hold: what the Query API lists now (nothing changes until the
    # subscribers are connected), checked against what this phase registered.
    expect = {collection: listed_ids(ctx, http, collection) for collection in set(collections_)}
    mismatch = {c: {"listed_not_registered": len(ids - state.known[KIND[c]]),
                    "registered_not_listed": len(state.known[KIND[c]] - ids)}
                for c, ids in expect.items() if ids != state.known[KIND[c]]}
    hub, subscribers = Hub(), []
    changer = Changer(ctx, state, opts.change_rate, opts.sync_timeout + opts.after + 60)
    rss = [ctx.server.rss_kib()]
    sync_timed_out = timed_out = drained = False
    sync_cpu: tuple[float | None, float] | None = None
    synced_at = changes_end = None
    server_before, client_before = ctx.server.cpu_ms(), time.process_time()
    first, window_start = time.time(), time.monotonic()
    try:
        for index, (collection, path) in enumerate(zip(collections_, paths)):
            subscribers.append(Subscriber(index, collection, path, ctx.server, expect[collection],
                                          ctx.request_timeout))
            hub.add(subscribers[-1])
        connects_s = time.time() - first
        hub.wait(lambda: all(s.state != "handshake" for s in subscribers), time.monotonic() + OPEN_WAIT)
        # Every subscriber has its snapshot now (the server takes it as it answers the handshake): from here on
        # every change must reach every subscriber of its type.
        changer.thread.start()
        sync_limit = min(ctx.deadline, window_start + opts.sync_timeout)
        last_rss = time.monotonic()
        for _ in range(MAX_POLLS):  # and the times below
            now = time.monotonic()
            if now - last_rss >= 0.5:
                rss.append(ctx.server.rss_kib())
                last_rss = now
            if synced_at is None and all(s.sync_done is not None or s.closed for s in subscribers):
                synced_at = now
                sync_cpu = ctx.server.cpu_ms(), time.process_time()
            if synced_at is not None and now >= synced_at + opts.after:
                break
            if synced_at is None and now > sync_limit:
                sync_timed_out, timed_out = True, now > ctx.deadline
                break
            if not changer.thread.is_alive():
                break
            hub.poll(0.05)
        changer.stop.set()
        hub.wait(lambda: not changer.thread.is_alive(), time.monotonic() + 2 * ctx.request_timeout)
        changes_end = time.monotonic()
        expected: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for kind, rid, marker, _ in changer.changes:
            expected[kind].append((rid, marker))
        drained = hub.wait(lambda: all(s.closed or all(k in s.changes for k in expected[s.kind])
                                       for s in subscribers), time.monotonic() + DRAIN_LIMIT)
        rss.append(ctx.server.rss_kib())
    finally:
        changer.stop.set()
        if changer.thread.ident is not None:
            changer.thread.join(ctx.request_timeout + 5)
        window_end = time.monotonic()
        server_after, client_after = ctx.server.cpu_ms(), time.process_time()
        hub.close()
    wall = window_end - window_start
    server_cpu = server_after - server_before if server_before is not None and server_after is not None else None
    # What every subscriber got of the changes of its type, and how long after the change's answer.
    answered = {(rid, marker): at for _, rid, marker, at in changer.changes}
    latencies, lost, extra, population_removed = [], 0, 0, 0
    synced_latencies, syncing_latencies = [], []  # to subscribers that had their initial state then, and not yet
    lost_by: dict[int, int] = {}
    held_nodes = state.known["node"]
    for s in subscribers:
        mine = expected[s.kind]
        missed = sum(key not in s.changes for key in mine)
        lost += missed
        if missed:
            lost_by[s.index] = missed
        for key in mine:
            if key in s.changes:
                latency = s.changes[key] - answered[key]
                latencies.append(latency)
                (synced_latencies if s.sync_done is not None and s.sync_done <= answered[key]
                 else syncing_latencies).append(latency)
        wanted = set(mine)
        for key in s.changes:
            if key not in wanted:
                extra += 1
                population_removed += key[1] == "removed" and key[0] in held_nodes
    latencies.sort()
    synced_latencies.sort()
    syncing_latencies.sort()
    sync_times = sorted(s.sync_done - first for s in subscribers if s.sync_done is not None)
    incomplete = [{"subscriber": s.index, "collection": s.collection, "state": s.state, "closed": s.closed,
                   "missing": len(s.missing), "missing_sample": sorted(s.missing)[:3], "sync_events": s.sync_events,
                   "expected_sync": s.expected_sync, "grains": s.grains, "bytes": s.bytes,
                   "last_grain_s": s.last_grain - first if s.last_grain else None,
                   "buffered": len(s.buf)} for s in subscribers if s.sync_done is None]
    closed = [f"subscriber {s.index} ({s.collection}): {s.closed}" for s in subscribers
              if s.closed and s.closed != "closed by us"]
    rec = changer.recorder
    result = figures("ws-load", rec, wall, None, (client_after - client_before) * 1000, timed_out, None)
    result.update({
        "requests": changer.requests,
        "requests_per_s": changer.requests / (changes_end - changer.started) if changer.started and changes_end
        else None,
        "latency_p50_ms": ms(percentile(latencies, 0.50)), "latency_p99_ms": ms(percentile(latencies, 0.99)),
        "latency_max_ms": ms(latencies[-1] if latencies else None),
        "client_cpu_ms_per_request": None, "server_cpu_ms": server_cpu, "server_cpu_ms_per_request": None,
        "server_busy": server_cpu / (wall * 1000) if server_cpu is not None and wall else None,
        "subscribers": len(subscribers), "collections": dict(collections.Counter(collections_)),
        "subscriptions_created": statuses[201], "subscriptions_reused": statuses[200],
        "expected_sync_per_collection": {c: len(ids) for c, ids in expect.items()},
        "sync_events": sum(s.sync_events for s in subscribers), "sync_bytes": sum(s.bytes for s in subscribers),
        "connects_s": connects_s, "client_cpu_ms": (client_after - client_before) * 1000,
        "handshakes_s": max((s.opened for s in subscribers if s.opened), default=first) - first,
        "sync_s": (max(sync_times) if len(sync_times) == len(subscribers) else None),
        "sync_p50_s": percentile(sync_times, 0.5), "sync_min_s": sync_times[0] if sync_times else None,
        "sync_complete": len(sync_times), "sync_timed_out": sync_timed_out, "incomplete": incomplete,
        "listing_mismatch": mismatch,
        # CPU from the first connect until every subscriber had its initial state (as this loop noticed it)
        "sync_server_cpu_ms": (sync_cpu[0] - server_before if sync_cpu and sync_cpu[0] is not None
                               and server_before is not None else None),
        "sync_client_cpu_ms": (sync_cpu[1] - client_before) * 1000 if sync_cpu else None,
        "sync_window_s": (synced_at - window_start) if synced_at else None,
        "synced_notifications": len(synced_latencies),
        "synced_p50_ms": ms(percentile(synced_latencies, 0.5)), "synced_p99_ms": ms(percentile(synced_latencies, 0.99)),
        "synced_max_ms": ms(synced_latencies[-1] if synced_latencies else None),
        "syncing_notifications": len(syncing_latencies),
        "syncing_p50_ms": ms(percentile(syncing_latencies, 0.5)),
        "syncing_p99_ms": ms(percentile(syncing_latencies, 0.99)),
        "syncing_max_ms": ms(syncing_latencies[-1] if syncing_latencies else None),
        "first_change_s": (changer.started - window_start) if changer.started else None,
        "changes_s": (changes_end - changer.started) if changer.started and changes_end else None,
        "changes": len(changer.changes), "nodes_created": changer.nodes_created,
        "nodes_deleted": changer.nodes_deleted, "modifications": changer.modifications,
        "scenario_nodes_gone": changer.scenario_nodes_gone, "changer_behind_max_s": changer.behind_max,
        "notifications_expected": sum(len(expected[s.kind]) for s in subscribers),
        "notifications_received": len(latencies), "lost_notifications": lost, "lost_by_subscriber": lost_by,
        "drained": drained, "extra_events": extra, "population_nodes_removed_events": population_removed,
        "duplicates": sum(s.duplicates for s in subscribers), "malformed": sum(s.malformed for s in subscribers),
        "other_sync_events": sum(s.other_sync for s in subscribers),
        "client_read_lag_max_ms": max((s.read_lag for s in subscribers), default=0.0) * 1000,
        "server_rss_kib_before": rss[0], "server_rss_kib_peak": max((r for r in rss if r), default=None),
        "server_rss_kib_end": rss[-1], "closed_early": closed, "window": (window_start, window_end),
        "wrong_results": lost + len(closed) + changer.scenario_nodes_gone + len(incomplete) + len(mismatch),
    })
    result["error_samples"] += closed[:5 - len(result["error_samples"])]
    return result


def listed_ids(ctx: Context, http: Connection, collection: str) -> set[str]:
    """Every id of a collection as the Query API lists it at v1.3 (pages of 1000 along rel="prev"; no translation,
    so no cache is built that the scenario would not otherwise have)."""
    path, ids = f"{QUERY}/v1.3/{collection}?paging.limit=1000", set()
    for _ in range(1000):
        status, headers, body = http.exchange(build_request("GET", path, ctx.host_header))
        if status != 200 or (page := json_ids(body)) is None:
            raise ProtocolError(f"GET {path} answered {status}")
        ids.update(page)
        if headers.get("x-paging-since") == "0:0":
            return ids
        path = link_path(headers, "prev", ctx.server)
    raise ProtocolError(f"GET {QUERY}/v1.3/{collection}: no end after 1000 pages")


def count_nodes(ctx: Context, http: Connection) -> int | None:
    """How many Nodes the Query API lists (v1.0: never paged)."""
    try:
        status, _, body = http.exchange(build_request("GET", f"{QUERY}/v1.0/nodes", ctx.host_header))
    except (OSError, ProtocolError):
        return None
    ids = json_ids(body) if status == 200 else None
    return None if ids is None else len(ids)


def sweep_alive(ctx: Context, node_ids: Sequence[str]) -> tuple[list[str], Recorder]:
    """Heartbeats every Node once over the pool; the ones still registered (not answered 404)."""
    gone: set[str] = set()
    units = [(nid, build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header)) for nid in node_ids]

    def beat(conn: Connection, unit: tuple[str, bytes], rec: dict[str, Recorder]) -> None:
        answer = rec["keepalive"].call(conn, unit[1], 200)
        if answer is not None and answer[0] == 404:
            gone.add(unit[0])

    recorders, _, _ = run_pool(ctx, units, beat, ("keepalive",))
    return [nid for nid in node_ids if nid not in gone], recorders["keepalive"]


def phase_websocket(ctx: Context) -> dict:
    """Grain latency at 1 and at S subscribers (ws-1, ws-S), then S subscribers connecting at once at --ws-nodes
    Nodes heartbeating every 5 s while changes flow (ws-load), with the heartbeats' figures (ws-hb-*)."""
    opts = ctx.ws
    rows: dict[str, dict] = {}
    details: dict[str, Any] = {"options": {k: v for k, v in vars(opts).items()}}
    http = TimedConnection(ctx.server.host, ctx.server.port, ctx.request_timeout)
    heartbeats: Heartbeats | None = None
    latency_node: str | None = None
    timed_out = False
    overflows = listen_overflows()
    try:
        # 1. The population: the Nodes of earlier phases still registered, plus new ones up to --ws-nodes.
        held, sweep = sweep_alive(ctx, ctx.registered) if ctx.registered else ([], Recorder())
        setup: dict[str, Any] = {"earlier_nodes": len(ctx.registered), "earlier_nodes_gone": len(ctx.registered)
                                 - len(held), "sweep_failures": sweep.unexpected + sweep.errors}
        if (missing := opts.nodes - len(held)) > 0:
            print(f"registering {missing} nodes for the websocket phase (not reported) ...", file=sys.stderr)
            recorders, wall, _, _, _, posts, accepted = register_nodes(ctx, new_nodes(ctx, missing), held)
            held += accepted
            setup |= {"nodes_registered": len(accepted), "posts": posts, "wall_s": wall,
                      "failures": recorders["register"].unexpected + recorders["register"].errors
                      + recorders["keepalive"].unexpected + recorders["keepalive"].errors,
                      "error_samples": recorders["register"].error_samples}
        details["setup"] = setup
        by_id = {node[0][1]["id"]: node for node in ctx.population}
        state = WsState({kind: set() for kind in KIND.values()}, {}, {kind: [] for kind in KIND.values()})
        for nid in held:
            for kind, data in by_id[nid]:
                state.known[kind].add(data["id"])
                state.data[data["id"]] = (kind, data)
                state.modifiable[kind].append(data["id"])
        # 2. The latency rows' Node: node, device, video source and flow; its Senders are registered by the rows.
        template = synthetic_node(SCENARIO_NODE_BASE - 1, time.time())
        parents = [template[0], template[1], template[2], template[4]]  # node, device, video source, video flow
        for kind, data in parents:
            body = json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode()
            status, _, reply = http.exchange(build_request("POST", API + "/resource", ctx.host_header, body))
            if status != 201:
                raise ProtocolError(f"registering the latency rows' {kind} answered {status}: {reply[:200]!r}")
            state.known[kind].add(data["id"])
        latency_node = template[0][1]["id"]
        sender = template[6][1]
        posts = []
        now = time.time()
        for k in range(2 * opts.registrations):
            data = sender | {"id": str(uuid.uuid4()), "label": f"bench-sender-latency-{k:06d}",
                             "version": tai_version(now)}
            posts.append((data["id"], data["version"], build_request(
                "POST", API + "/resource", ctx.host_header,
                json.dumps({"type": "sender", "data": data}, separators=(",", ":")).encode())))
        # 3. Every Node heartbeated once, then every 5 s by the child process, phases spread over the interval.
        alive, _ = sweep_alive(ctx, [*held, latency_node])
        details["nodes_held"] = len(held)
        details["resources_held"] = sum(len(ids) for ids in state.known.values())
        heartbeats = Heartbeats(ctx, alive)
        if heartbeats.started is None:
            raise ProtocolError("the heartbeat process did not start")
        # 4. A quiet interval, heartbeats only, for their baseline and their server CPU: the second one, since in
        # the first each Node's connection is opened.
        base = heartbeats.started + HEARTBEAT_INTERVAL
        time.sleep(max(0.0, base - time.monotonic()))
        base_cpu0 = ctx.server.cpu_ms()
        time.sleep(max(0.0, base + HEARTBEAT_INTERVAL - time.monotonic()))
        base_cpu1 = ctx.server.cpu_ms()
        details["baseline"] = (base, base + HEARTBEAT_INTERVAL)
        details["baseline_server_cpu_ms"] = base_cpu1 - base_cpu0 if None not in (base_cpu0, base_cpu1) else None
        # 5. Latency at 1, then at S subscribers; 6. the load scenario.
        print("websocket: latency with 1 subscriber ...", file=sys.stderr)
        rows["ws-1"] = ws_latency(ctx, state, http, "ws-1", 1, posts[:opts.registrations], None)
        print(f"websocket: latency with {opts.subscribers} subscribers ...", file=sys.stderr)
        rows[f"ws-{opts.subscribers}"] = ws_latency(ctx, state, http, f"ws-{opts.subscribers}", opts.subscribers,
                                                    posts[opts.registrations:], WS_P99_TARGET_MS)
        if held:
            print(f"websocket: {opts.subscribers} subscribers connecting at once to {len(held)} nodes ...",
                  file=sys.stderr)
            rows["ws-load"] = ws_load(ctx, state, http)
            details["nodes_listed_after"] = count_nodes(ctx, http)
            details["nodes_expected_after"] = len(held) + 1
    except (OSError, ProtocolError) as e:
        details["error"] = f"{type(e).__name__}: {e}"
    finally:
        measured_hb = heartbeats.stop() if heartbeats is not None else None
        if latency_node is not None:
            try:
                http.exchange(build_request("DELETE", f"{API}/resource/nodes/{latency_node}", ctx.host_header))
            except (OSError, ProtocolError):
                pass
        http.close()
    timed_out = time.monotonic() > ctx.deadline
    if overflows is not None and (after := listen_overflows()) is not None:
        details["listen_overflows"] = after - overflows
    # The heartbeats' rows, from the child's samples.
    if measured_hb is not None:
        samples = measured_hb["samples"]
        details["heartbeat_process_cpu_ms"] = measured_hb["cpu_ms"]
        details["heartbeat_errors"] = measured_hb["errors"]
        details["heartbeat_connections"] = measured_hb["connections"]
        start, end = details["baseline"]
        windows = {"ws-hb-base": (start, end, details.get("baseline_server_cpu_ms"))}
        if "ws-load" in rows:
            load_start, load_end = rows["ws-load"]["window"]
            windows["ws-hb-load"] = (load_start, load_end, None)
        per_beat = None
        for name, (start, end, cpu) in windows.items():
            seen = heartbeat_window(samples, start, end)
            rec = Recorder(latencies=seen["waits"], statuses=collections.Counter(
                {k: v for k, v in seen["statuses"].items() if k >= 0}), errors=seen["statuses"].get(-1, 0))
            rows[name] = figures(name, rec, end - start, cpu, 0.0, False, None,
                                 target_latency_ms=HEARTBEAT_WAIT_LIMIT_MS if name == "ws-hb-load" else None,
                                 target_metric="max", over_limit=seen["over_limit"],
                                 longest_silence_s=seen["longest_silence_s"], expired_nodes=seen["expired_nodes"],
                                 send_late_max_ms=seen["send_late_max_ms"],
                                 round_trip_max_ms=seen["round_trip_max_ms"], worst_due_s=seen["worst_due_s"])
            rows[name]["client_cpu_ms_per_request"] = None
            if name == "ws-hb-base" and cpu is not None and seen["heartbeats"]:
                per_beat = cpu / seen["heartbeats"]
        details["expired_nodes"] = len({s[4] for s in samples if s[3] == 404})
        # Server CPU per registration without the background heartbeats, at the baseline's rate.
        for name, r in rows.items():
            if name.startswith("ws-") and r.get("window") and name != "ws-load" and not name.startswith("ws-hb"):
                beats = sum(r["window"][0] <= s[1] < r["window"][1] for s in samples)
                r["heartbeats_in_window"] = beats
                if per_beat is not None and r["server_cpu_ms"] is not None and r["requests"]:
                    r["server_cpu_ms_per_request_net"] = (r["server_cpu_ms"] - beats * per_beat) / r["requests"]
        details["heartbeat_server_cpu_ms"] = per_beat
    return {"phase": "websocket", "rows": rows, "timed_out": timed_out, **details}


PHASES: dict[str, Callable[[Context], dict]] = {"register": phase_register, "heartbeat": phase_heartbeat,
                                                 "query": phase_query, "websocket": phase_websocket}
# Phases that register the population first (unreported) if `register` is not asked. The query and websocket phases
# register what they need themselves.
NEEDS_REGISTERED = {"heartbeat"}


# ---------------------------------------------------------------------------------------------------------------------
# Report


def fmt(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`; a trailing "%" in `spec` is a literal suffix."""
    if value is None:
        return "n/a"
    return format(value, spec[:-1]) + "%" if spec.endswith("%") else format(value, spec)


def report(meta: dict, results: dict[str, dict]) -> str:
    lines = [
        f"nmos-ref registry benchmark, {meta['date']}",
        "  " + (f"{meta['nodes']} nodes x 10 resources, {meta['concurrency']} keep-alive connections, "
                f"{meta['rounds']} heartbeat rounds; " if {"register", "heartbeat"} & set(meta["phases"]) else "")
        + f"{meta['cpus']} CPUs, Python {meta['python']}, "
        f"load average {meta['load_average_start'][0]:.2f} at start, {meta.get('load_average_end', [0])[0]:.2f} at end",
        f"  registry: {meta['registry']} " + (f"(pid {meta['server_pid']})" if meta["server_pid"] else "(pid unknown)"),
        "",
        f"{'phase':<10} {'requests':>8} {'wall s':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv CPU ms/req':>14} {'target':>14} {'srv busy':>8} {'cli CPU ms/req':>14} {'non-2xx':>7} {'errors':>6}",
    ]
    for name, r in rows(results):
        if "skipped" in r:
            lines.append(f"{name:<10} skipped: {r['skipped']}")
            continue
        cpu = r["server_cpu_ms_per_request"]
        lines.append(
            f"{name:<10} {r['requests']:>8} {r['wall_s']:>7.2f} {fmt(r['requests_per_s'], '.0f'):>7} "
            f"{fmt(r['latency_p50_ms'], '.2f'):>7} {fmt(r['latency_p99_ms'], '.2f'):>7} "
            f"{fmt(cpu, '.3f'):>14} {target_text(r):>14} "
            f"{fmt(r['server_busy'] and r['server_busy'] * 100, '.0f%'):>8} "
            f"{fmt(r['client_cpu_ms_per_request'], '.3f'):>14} "
            f"{r['non_2xx']:>7} {r['transport_errors']:>6}" + ("  TIMED OUT" if r["timed_out"] else ""))
    if "register" in results and "skipped" not in results["register"]:
        r = results["register"]
        lines.append("")
        lines.append(f"register: {r['requests']} of {r['resources']} resource POSTs sent, {r['nodes_accepted']} of "
                     f"{r['nodes']} nodes accepted, plus {r['keepalive_heartbeats']} keep-alive heartbeats "
                     "in the phase")
        hb = results.get("heartbeat", {}).get("server_cpu_ms_per_request")
        if r["server_cpu_ms"] is not None and hb is not None and r["requests"]:
            net = (r["server_cpu_ms"] - r["keepalive_heartbeats"] * hb) / r["requests"]
            lines.append(f"  server CPU per registration without the keep-alive heartbeats: {net:.3f} ms")
    rss0, rss1 = meta.get("server_rss_kib_start"), results.get("register", {}).get("server_rss_kib_after")
    if rss1 is not None:
        stored = results["register"]["statuses"].get("201", 0)
        grown = f", +{(rss1 - rss0) / stored:.2f} KiB per stored resource" if rss0 and stored else ""
        lines.append(f"server RSS: {fmt(rss0 and rss0 / 1024, '.1f')} MiB at start, {rss1 / 1024:.1f} MiB after "
                     f"registration{grown}")
    if (q := results.get("query")) and "skipped" not in q:
        lines += query_report(q)
    if (w := results.get("websocket")) is not None:
        lines += websocket_report(w)
    loads = [f"{name} {r['other_cpu_cores']:.2f} cores, load average {r['load_average_after'][0]:.2f} after"
             for name, r in results.items() if r.get("other_cpu_cores") is not None]
    if loads:
        lines.append("other processes' CPU during each phase: " + "; ".join(loads))
    for name, r in [*results.items(), *results.get("query", {}).get("rows", {}).items()]:
        for sample in r.get("error_samples", []):
            lines.append(f"  {name}: {sample}")
        if r.get("statuses") and set(r["statuses"]) - {"200", "201", "204"}:
            lines.append(f"  {name} statuses: {r['statuses']}")
    return "\n".join(lines)


def target_text(r: dict) -> str:
    """The row's target and whether it is met: the server's CPU per request, or a latency (p99 or max) in ms."""
    if (limit := r.get("target_latency_ms")) is not None:
        metric = r.get("target_metric", "p99")
        value = r.get(f"latency_{metric}_ms")
        verdict = "" if value is None else (" ok" if value <= limit else " MISS")
        return f"{metric}<={limit:g}{verdict}"
    cpu, target = r["server_cpu_ms_per_request"], r["target_server_cpu_ms_per_request"]
    if target is None:
        return ""
    return f"<={target:g}" + ("" if cpu is None else (" ok" if cpu <= target else " MISS"))


def rows(results: dict[str, dict]) -> list[tuple[str, dict]]:
    """The table's rows: one per phase, but one per measurement for the query phase."""
    return [row for name, r in results.items()
            for row in ([(name, r)] if "rows" not in r or "skipped" in r else r["rows"].items())]


def query_report(q: dict) -> list[str]:
    """What the query phase's rows measured, and the figures the table has no room for."""
    rows_, setup, cold = q["rows"], q["setup"], q.get("v1.0_cold", {})
    lines = ["", f"query: {q['resources_held']} resources held by {q['nodes_held']} nodes"
             + (f"; {setup['nodes_registered']} of them registered for the phase first (not reported: "
                f"{setup['posts']} POSTs in {setup['wall_s']:.1f} s, {setup['failures']} failed)"
                if setup.get("nodes_registered") else ""),
             f"  one connection, one request at a time, nothing else sent meanwhile; between blocks of requests "
             f"{q['keepalive_sweeps']} keep-alive sweeps, {q['keepalive_heartbeats']} heartbeats "
             f"({q['keepalive_non_2xx'] + q['keepalive_transport_errors']} failed)"]

    def walk_text(name: str, limit: int) -> str:
        walks = q.get("walks", {}).get(name, [])
        if not walks:
            return ""
        first, rest = walks[0], sorted(w["wall_ms"] for w in walks[1:])
        rest_cpu = [w["server_cpu_ms"] for w in walks[1:] if w["server_cpu_ms"] is not None]
        text = (f"{len(walks)} walks of {first['pages']} pages, {first['items']} senders each; walk 1 (first "
                f"encoding at v1.3) {first['wall_ms']:.0f} ms, {fmt(first['server_cpu_ms'], '.0f')} ms server CPU")
        if rest:
            text += (f"; the others p50 {percentile(rest, 0.5):.0f} ms, max {rest[-1]:.0f} ms, "
                     f"{fmt(sum(rest_cpu) / len(rest_cpu) if rest_cpu else None, '.0f')} ms server CPU each")
        return text

    largest = q.get("largest")
    meaning = {
        "q-label": f"GET {QUERY}/v1.3/senders?label=<a Sender's unique label>, each a different Sender, "
                   "each must return exactly it; target: a tenth of nmos-cpp's 36 ms",
        "q-id": f"GET {QUERY}/v1.3/senders/{{id}}, each a different Sender",
        "q-page100": f"GET {QUERY}/v1.3/senders?paging.limit=100, then rel=\"prev\" (older) to the end: "
                     + walk_text("q-page100", 100),
        "q-page1000": "the same with paging.limit=1000: " + walk_text("q-page1000", 1000),
        "q-v10-cold": f"the first GET {QUERY}/v1.0/{largest}, the largest collection "
                      f"({fmt(cold.get(largest, {}).get('resources'), 'd')} resources, "
                      f"{cold.get(largest, {}).get('bytes', 0) / 1e6:.1f} MB; v1.0 lists are never paged)",
        "q-v10-warm": "the same GET again (translations and encodings cached)",
        "q-all-cold": "the first GET of every v1.0 collection: " + ", ".join(
            f"{c} {fmt(v['resources'], 'd')} ({v['bytes'] / 1e6:.1f} MB) {fmt(v['latency_ms'], '.0f')} ms, "
            f"{fmt(v['server_cpu_ms'], '.0f')} ms CPU" for c, v in cold.items()),
        "q-all-warm": "every v1.0 collection again, one after the other",
    }
    for name, r in rows_.items():
        lines.append(f"  {name:<10} {meaning.get(name, '')}")
    if cold:
        total_bytes = sum(v["bytes"] for v in cold.values())
        all_resources = sum(v["resources"] or 0 for v in cold.values())
        sweep = rows_.get("q-all-cold", {})
        lines.append(f"  all {len(cold)} v1.0 collections, {all_resources} resources, {total_bytes / 1e6:.1f} MB: "
                     f"cold {fmt(sweep.get('sweep_wall_ms'), '.0f')} ms and "
                     f"{fmt(sweep.get('server_cpu_ms'), '.0f')} ms server CPU for the six GETs")
        if warm := sorted(s["wall_ms"] for s in q.get("all_warm_sweeps", [])):
            cpu = [s["server_cpu_ms"] for s in q["all_warm_sweeps"] if s["server_cpu_ms"] is not None]
            lines[-1] += (f"; warm p50 {percentile(warm, 0.5):.0f} ms, max {warm[-1]:.0f} ms over {len(warm)} "
                          f"sweeps, {fmt(sum(cpu) / len(cpu) if cpu else None, '.0f')} ms server CPU per sweep")
    measured = [(r["latency_max_ms"], name) for name, r in rows_.items() if r["latency_max_ms"] is not None]
    if measured:
        lines.append("  max ms: " + ", ".join(f"{name} {value:.2f}" for value, name in measured))
        slowest, where = max(measured)
        verdict = "yes" if slowest < q["latency_limit_ms"] else "NO"
        lines.append(f"  slowest query request {slowest:.0f} ms ({where}); every request within "
                     f"{q['latency_limit_ms']:.0f} ms: {verdict}")
    wrong = sum(r.get("wrong_results", 0) for r in rows_.values())
    lines.append(f"  wrong answers (a 200 with other resources than the query must return): {wrong}"
                 + (f"; {q['short_windows']} blocks began with less time left than estimated"
                    if q.get("short_windows") else ""))
    return lines


def websocket_report(w: dict) -> list[str]:
    """What the websocket phase's rows measured, the load scenario's figures and the issue's targets, judged."""
    rows_, opts = w.get("rows", {}), w.get("options", {})
    setup = w.get("setup", {})
    lines = ["", f"websocket: {fmt(w.get('nodes_held'), 'd')} Nodes held ({fmt(w.get('resources_held'), 'd')} "
                 f"resources)" + (f", {setup['nodes_registered']} of them registered for the phase first (not "
                                  f"reported: {setup['posts']} POSTs in {setup['wall_s']:.1f} s, "
                                  f"{setup['failures']} failed)" if setup.get("nodes_registered") else "")
             + f"; each heartbeated every {HEARTBEAT_INTERVAL:g} s by a separate process over "
               f"{fmt(w.get('heartbeat_connections'), 'd')} keep-alive connections; subscriptions at v1.3, "
               + ("each with a filter of its own that every resource matches (--ws-distinct), " if opts.get("distinct")
                  else "no filter, ")
               + f"max_update_rate_ms {opts.get('rate_ms')}; times are the kernel's receive timestamps"]
    if w.get("error"):
        lines.append(f"  phase stopped by an error: {w['error']}")
    for name, r in rows_.items():
        if name.startswith("ws-hb") or name == "ws-load":
            continue
        lines.append(
            f"  {name:<10} {r['subscribers']} subscriber(s) of /senders ({r['subscriptions_created']} subscription(s) "
            f"created, {r['subscriptions_reused']} POSTs answered with an existing one); {r['requests']} Senders "
            f"registered one at a time; latency from the kernel's receipt of each 201 to its receipt of the grain, "
            f"over {r['pairs']} (Sender, subscriber) pairs: p50 {fmt(r['latency_p50_ms'], '.2f')}, "
            f"p99 {fmt(r['latency_p99_ms'], '.2f')}, max {fmt(r['latency_max_ms'], '.2f')}, "
            f"min {fmt(r['latency_min_ms'], '.2f')} ms; lost {r['lost_notifications']}; from the POST sent instead: "
            f"p50 {fmt(r['from_sent_p50_ms'], '.2f')}, p99 {fmt(r['from_sent_p99_ms'], '.2f')}, "
            f"max {fmt(r['from_sent_max_ms'], '.2f')} ms (the registration's own 201: p50 "
            f"{fmt(r['registration_http_p50_ms'], '.2f')}, p99 {fmt(r['registration_http_p99_ms'], '.2f')} ms)")
        lines.append(
            f"  {'':<10} server CPU per registration {fmt(r['server_cpu_ms_per_request'], '.3f')} ms, "
            f"{fmt(r.get('server_cpu_ms_per_request_net'), '.3f')} ms without the "
            f"{fmt(r.get('heartbeats_in_window'), 'd')} background heartbeats; client CPU "
            f"{fmt(r['client_cpu_ms_per_request'], '.3f')} ms per registration; longest wait of a received grain "
            f"to be parsed {r['client_read_lag_max_ms']:.1f} ms; initial state ({r['sync_events_per_subscriber']} "
            f"Senders each) in {fmt(r['sync_s'], '.2f')} s")
    if (r := rows_.get("ws-load")) is not None:
        mix = ", ".join(f"{n} on /{c}" for c, n in r["collections"].items())
        sync = r["sync_s"]
        lines += [
            f"  ws-load    {r['subscribers']} subscribers connecting at once ({mix}; {r['subscriptions_created']} "
            f"subscriptions created, {r['subscriptions_reused']} reused); initial state per subscriber: "
            + ", ".join(f"/{c} {n}" for c, n in r["expected_sync_per_collection"].items()) + " resources",
            f"  {'':<10} TCP connects and handshake requests sent in {r['connects_s'] * 1000:.0f} ms; every "
            f"handshake answered {r['handshakes_s'] * 1000:.0f} ms after the first connect",
            f"  {'':<10} initial sync, first connect to the last subscriber's full initial state: "
            + (f"{sync:.2f} s" if sync is not None else
               f"NOT COMPLETE ({r['sync_complete']} of {r['subscribers']} subscribers)")
            + f" (first subscriber {fmt(r['sync_min_s'], '.2f')} s, median {fmt(r['sync_p50_s'], '.2f')} s); "
              f"{r['sync_events']} sync events, {r['sync_bytes'] / 1e6:.0f} MB received; CPU until then: server "
              f"{fmt(r['sync_server_cpu_ms'] and r['sync_server_cpu_ms'] / 1000, '.1f')} s, this client "
              f"{fmt(r['sync_client_cpu_ms'] and r['sync_client_cpu_ms'] / 1000, '.1f')} s, in "
              f"{fmt(r['sync_window_s'], '.1f')} s",
            *([f"  {'':<10} the Query API's lists before the scenario differ from what the phase registered: {m}"
               ] if (m := r.get("listing_mismatch")) else []),
            *[f"  {'':<10} INCOMPLETE: subscriber {i['subscriber']} (/{i['collection']}, {i['state']}"
              + (f", {i['closed']}" if i["closed"] else "") + f"): {i['missing']} of {i['expected_sync']} missing "
              f"(e.g. {', '.join(i['missing_sample'])}), {i['grains']} grains, {i['bytes']} bytes, the last "
              f"{fmt(i['last_grain_s'], '.2f')} s after the first connect" for i in r.get("incomplete", [])],
            f"  {'':<10} changes from {fmt(r['first_change_s'], '.2f')} s after the first connect for "
            f"{fmt(r['changes_s'], '.1f')} s: {r['requests']} requests at {fmt(r['requests_per_s'], '.0f')}/s "
            f"({r['nodes_created']} Nodes registered, {r['modifications']} modifications, {r['nodes_deleted']} "
            f"Nodes deleted) = {r['changes']} changes; the change thread was at most "
            f"{r['changer_behind_max_s'] * 1000:.0f} ms behind its schedule",
            f"  {'':<10} notifications: {r['notifications_expected']} expected (each change, to every subscriber "
            f"of its type), {r['notifications_received']} received, {r['lost_notifications']} lost; latency from "
            f"the change's answer p50 {fmt(r['latency_p50_ms'], '.1f')}, p99 {fmt(r['latency_p99_ms'], '.1f')}, "
            f"max {fmt(r['latency_max_ms'], '.1f')} ms; {r['duplicates']} duplicates, {r['extra_events']} events "
            f"for no change of ours ({r['population_nodes_removed_events']} removals of held Nodes)",
            f"  {'':<10} of these, to subscribers that had their initial state when the change was answered: "
            f"{r['synced_notifications']}, p50 {fmt(r['synced_p50_ms'], '.1f')}, p99 {fmt(r['synced_p99_ms'], '.1f')}, "
            f"max {fmt(r['synced_max_ms'], '.1f')} ms; to subscribers still receiving it (they come after it, by "
            f"design): {r['syncing_notifications']}, p50 {fmt(r['syncing_p50_ms'], '.0f')}, "
            f"p99 {fmt(r['syncing_p99_ms'], '.0f')}, max {fmt(r['syncing_max_ms'], '.0f')} ms",
            f"  {'':<10} server: {fmt(r['server_cpu_ms'] and r['server_cpu_ms'] / 1000, '.1f')} s CPU over "
            f"{r['wall_s']:.1f} s ({fmt(r['server_busy'] and r['server_busy'] * 100, '.0f%')} of a core); RSS "
            f"{fmt(r['server_rss_kib_before'] and r['server_rss_kib_before'] / 1024, '.0f')} MiB before, "
            f"{fmt(r['server_rss_kib_peak'] and r['server_rss_kib_peak'] / 1024, '.0f')} MiB at most, "
            f"{fmt(r['server_rss_kib_end'] and r['server_rss_kib_end'] / 1024, '.0f')} MiB after; this client "
            f"{r['client_cpu_ms'] / 1000:.1f} s CPU ({r['client_cpu_ms'] / 1000 / r['wall_s'] * 100:.0f}% of a "
            f"core), longest wait of a received grain to be parsed {r['client_read_lag_max_ms']:.0f} ms",
        ]
    for name in ("ws-hb-base", "ws-hb-load"):
        if (r := rows_.get(name)) is not None:
            what = "before any subscriber (heartbeats only)" if name == "ws-hb-base" else "during ws-load"
            lines.append(
                f"  {name:<10} heartbeats due {what}: {r['requests']}, wait from due to answer p50 "
                f"{fmt(r['latency_p50_ms'], '.2f')}, p99 {fmt(r['latency_p99_ms'], '.2f')}, max "
                f"{fmt(r['latency_max_ms'], '.2f')} ms (the longest due {fmt(r['worst_due_s'], '.2f')} s into the "
                f"window; longest wait to be sent {r['send_late_max_ms']:.0f} ms, longest round trip "
                f"{r['round_trip_max_ms']:.0f} ms); {r['over_limit']} over {HEARTBEAT_WAIT_LIMIT_MS:.0f} ms; "
                f"longest a Node went without an answered heartbeat {r['longest_silence_s']:.2f} s; "
                f"{r['expired_nodes']} answered 404")
    late = [(name, r["send_late_max_ms"]) for name, r in rows_.items()
            if name.startswith("ws-hb") and (r.get("send_late_max_ms") or 0) > HEARTBEAT_LATE_MS]
    if late:
        lines.append("  WARNING: the heartbeat process itself sent heartbeats late (" + ", ".join(
            f"{name} up to {value:.0f} ms" for name, value in late) + "): those waits are partly this client's, "
            "and Nodes may have expired because of it; the heartbeat figures of this run do not judge the registry")
    if w.get("heartbeat_server_cpu_ms") is not None:
        lines.append(f"  server CPU per heartbeat (ws-hb-base) {w['heartbeat_server_cpu_ms']:.3f} ms; heartbeat "
                     f"process {w.get('heartbeat_process_cpu_ms', 0) / 1000:.1f} s CPU in all; connections refused "
                     f"by a full listen queue during the phase (TcpExt ListenOverflows, whole machine): "
                     f"{fmt(w.get('listen_overflows'), 'd')}")
    # The issue's targets.
    verdicts = []
    if (r := next((r for n, r in rows_.items() if r.get("target_metric") == "p99" and r.get("target_latency_ms")),
                  None)) is not None:
        value = r["latency_p99_ms"]
        verdicts.append(f"p99 at {r['subscribers']} subscribers {fmt(value, '.2f')} ms <= {WS_P99_TARGET_MS:g}: "
                        + ("yes" if value is not None and value <= WS_P99_TARGET_MS else "NO"))
    if (load := rows_.get("ws-load")) is not None:
        listed, held = w.get("nodes_listed_after"), w.get("nodes_expected_after")
        expired = w.get("expired_nodes", 0)
        verdicts.append(f"Nodes expired {expired} (404 heartbeats), Query API lists {fmt(listed, 'd')} of "
                        f"{fmt(held, 'd')} Nodes after: "
                        + ("yes" if not expired and listed == held and not load["population_nodes_removed_events"]
                           else "NO"))
        verdicts.append(f"notifications lost {load['lost_notifications']} of {load['notifications_expected']}"
                        + (f" ({len(load['closed_early'])} subscriber(s) closed early)" if load["closed_early"]
                           else "") + ": " + ("yes" if not load["lost_notifications"] else "NO"))
        if (hb := rows_.get("ws-hb-load")) is not None:
            verdicts.append(f"longest heartbeat wait {fmt(hb['latency_max_ms'], '.0f')} ms <= "
                            f"{HEARTBEAT_WAIT_LIMIT_MS:.0f}: " + ("yes" if hb["over_limit"] == 0 else "NO"))
    if verdicts:
        lines.append("  targets (issue 4): " + "; ".join(verdicts))
    return lines


def failed(results: dict[str, dict]) -> bool:
    everything = [*results.values(), *(r for _, r in rows(results))]
    return any(r.get("unexpected_status") or r.get("transport_errors") or r.get("timed_out") or r.get("non_2xx")
               or r.get("keepalive_non_2xx") or r.get("keepalive_transport_errors") or r.get("wrong_results")
               or (r.get("setup") or {}).get("failures") or r.get("error") or r.get("expired_nodes")
               for r in everything)


# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nodes", "-n", type=int, default=1000, help="synthetic Nodes (10 resources each)")
    p.add_argument("--concurrency", "-c", type=int, default=8, help="keep-alive HTTP/1.1 connections, one thread each")
    p.add_argument("--rounds", type=int, default=5, help="heartbeats per Node in the heartbeat phase")
    p.add_argument("--phases", default="register,heartbeat", help=f"comma-separated, from: {', '.join(PHASES)}")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write every figure to FILE as JSON")
    p.add_argument("--url", help="target an already running registry (http://127.0.0.1:PORT) instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the registry's PID, so its CPU and RSS can be read")
    p.add_argument("--registry-cmd", default=DEFAULT_REGISTRY_CMD,
                   help="command that starts the registry; {port} is replaced by a free loopback port")
    p.add_argument("--registry-log", type=Path, help="keep the started registry's output in this file")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for the registry to answer")
    p.add_argument("--timeout", type=float, default=900.0, help="overall limit in seconds for all phases")
    p.add_argument("--request-timeout", type=float, default=30.0, help="socket timeout in seconds per request")
    p.add_argument("--query-resources", type=int, default=50_000,
                   help="query phase: resources registered before it measures (Nodes are added 10 resources each)")
    p.add_argument("--query-requests", type=int, default=1000,
                   help="query phase: label queries, and id lookups, each for a different Sender")
    p.add_argument("--query-repeats", type=int, default=10,
                   help="query phase: paging walks per limit, warm GETs of the largest v1.0 list, warm v1.0 sweeps")
    p.add_argument("--ws-nodes", type=int, default=3000,
                   help="websocket phase: Nodes registered (10 resources each, heartbeating) for the load scenario "
                        "(0: latency rows only)")
    p.add_argument("--ws-subscribers", type=int, default=50,
                   help="websocket phase: subscribers of the second latency row and of the load scenario")
    p.add_argument("--ws-registrations", type=int, default=500,
                   help="websocket phase: Senders registered one at a time in each latency row")
    p.add_argument("--ws-rate-ms", type=int, default=0, help="websocket phase: max_update_rate_ms of every subscription")
    p.add_argument("--ws-paths", default=",".join(V10_COLLECTIONS),
                   help="websocket phase: collections the load scenario's subscribers take in turn")
    p.add_argument("--ws-change-rate", type=float, default=49.0,
                   help="websocket phase: change requests per second during the load scenario")
    p.add_argument("--ws-after", type=float, default=10.0,
                   help="websocket phase: seconds changes go on after the last subscriber has its initial state")
    p.add_argument("--ws-sync-timeout", type=float, default=300.0,
                   help="websocket phase: seconds the initial state may take before the scenario gives up")
    p.add_argument("--ws-heartbeat-connections", type=int, default=0,
                   help="websocket phase: connections of the process that heartbeats every Node (0: one per Node, "
                        "as real Nodes have)")
    p.add_argument("--ws-distinct", action="store_true",
                   help="websocket phase: give each subscriber a subscription of its own (an RQL filter every "
                        "resource matches) instead of identical POSTs, which the registry answers with one subscription")
    p.add_argument("--keepalive", type=float, default=HEARTBEAT_INTERVAL,
                   help="heartbeat each registered Node this often during registration (0: never)")
    p.add_argument("--check-schemas", action="store_true",
                   help="only validate the synthetic payloads against the official schemas, then exit")
    p.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS, help="folder of the official IS-04 v1.3 schemas")
    args = p.parse_args(argv)
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    if unknown := [name for name in args.phases if name not in PHASES]:
        p.error(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    if min(args.nodes, args.concurrency, args.rounds, args.query_resources, args.query_requests,
           args.query_repeats) < 1:
        p.error("--nodes, --concurrency, --rounds and the --query-* counts must be at least 1")
    if args.pid is not None and not args.url:
        p.error("--pid goes with --url")
    paths = tuple(name.strip() for name in args.ws_paths.split(",") if name.strip())
    if not paths or set(paths) - set(V10_COLLECTIONS):
        p.error(f"--ws-paths takes names from {', '.join(V10_COLLECTIONS)}")
    if min(args.ws_subscribers, args.ws_registrations) < 1 or args.ws_nodes < 0 or args.ws_heartbeat_connections < 0 \
            or args.ws_rate_ms < 0 or args.ws_change_rate <= 0 or args.ws_after < 0 or args.ws_sync_timeout <= 0:
        p.error("the --ws-* counts, rates and times must be positive (--ws-nodes, --ws-rate-ms and --ws-after may "
                "be 0)")
    args.ws = WsOptions(args.ws_subscribers, args.ws_registrations, args.ws_nodes, args.ws_rate_ms,
                        args.ws_change_rate, args.ws_after, args.ws_sync_timeout, paths,
                        args.ws_heartbeat_connections, args.ws_distinct)
    return args


def target_from_url(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--url must be http://HOST:PORT, not {url!r}")
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") and not parts.hostname.startswith("127."):
        # The machine's rule: benchmarks send traffic only to loopback.
        raise SystemExit(f"--url must point at loopback, not {parts.hostname}")
    return parts.hostname, parts.port or 80


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_schemas:
        return check_schemas(args.schemas, min(args.nodes, 20))

    if args.url:
        host, port = target_from_url(args.url)
        server = Server(host, port, pid=args.pid)
        if problem := wait_until_up(server, time.monotonic() + args.startup_timeout):
            print(f"{args.url}: {problem}", file=sys.stderr)
            return 2
        registry = args.url
    else:
        try:
            server = start_registry(args.registry_cmd, args.startup_timeout, args.registry_log)
        except (RuntimeError, OSError) as e:
            print(f"could not start the registry: {e}", file=sys.stderr)
            return 2
        registry = f"{args.registry_cmd.format(port=server.port)}"

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nodes": args.nodes, "concurrency": args.concurrency,
        "rounds": args.rounds, "phases": args.phases, "registry": registry, "url": server.url,
        "server_pid": server.pid, "cpus": os.cpu_count(), "python": platform.python_version(),
        "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"), "server_rss_kib_start": server.rss_kib(),
        "load_average_start": os.getloadavg(),  # other load on the 2 cores shows in wall time, not in CPU per request
    }
    ctx = Context(server, args.nodes, args.concurrency, args.rounds, args.keepalive,
                  time.monotonic() + args.timeout, args.request_timeout,
                  args.query_resources, args.query_requests, args.query_repeats, args.ws)
    results: dict[str, dict] = {}
    exit_status = None
    try:
        for name in args.phases:
            if name in NEEDS_REGISTERED and "register" not in results:
                print("registering the population first (not reported) ...", file=sys.stderr)
                phase_register(ctx)
            print(f"phase {name} ...", file=sys.stderr)
            before = machine_busy_ms(), server.cpu_ms(), time.process_time(), time.monotonic()
            results[name] = PHASES[name](ctx)
            after = machine_busy_ms(), server.cpu_ms(), time.process_time(), time.monotonic()
            results[name]["server_rss_kib_after"] = server.rss_kib()
            results[name]["load_average_after"] = os.getloadavg()
            if None not in (*before, *after):
                # What the rest of the machine used meanwhile, in cores: the registry and this script (with the
                # websocket phase's heartbeat process) left out.
                others = (after[0] - before[0]) - (after[1] - before[1]) - (after[2] - before[2]) * 1000 \
                    - results[name].get("heartbeat_process_cpu_ms", 0.0)
                results[name]["other_cpu_cores"] = max(0.0, others) / ((after[3] - before[3]) * 1000)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        meta["load_average_end"] = os.getloadavg()
        if server.process is not None:
            exit_status = stop_registry(server)
            meta["server_exit_status"] = exit_status
    text = report(meta, results)
    if exit_status is not None:
        # Popen shows "ended by SIGTERM" as -15; a shell shows the same as 143.
        shown = f"{exit_status} (SIGTERM)" if exit_status == -signal.SIGTERM else str(exit_status)
        verdict = "clean" if exit_status in CLEAN_EXIT else "NOT a clean stop"
        text += f"\nregistry stopped, exit status {shown}: {verdict}"
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "phases": results}, indent=2) + "\n")
    unclean = exit_status is not None and exit_status not in CLEAN_EXIT
    bad = failed(results) or len(results) < len(args.phases) or unclean
    if bad and server.log_path is not None and not args.registry_log:
        print(f"registry output kept in {server.log_path}", file=sys.stderr)
    elif server.log_path is not None and not args.registry_log:
        shutil.rmtree(server.log_path.parent, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
