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
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
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
# Phases. Each takes the Context and returns its figures; add new ones (websocket) to PHASES.


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


# Planned: "websocket".
PHASES: dict[str, Callable[[Context], dict]] = {"register": phase_register, "heartbeat": phase_heartbeat,
                                                 "query": phase_query}
# Phases that register the population first (unreported) if `register` is not asked. The query phase registers
# what it needs itself.
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
        f"  {meta['nodes']} nodes x 10 resources, {meta['concurrency']} keep-alive connections, "
        f"{meta['rounds']} heartbeat rounds; {meta['cpus']} CPUs, Python {meta['python']}, "
        f"load average {meta['load_average_start'][0]:.2f} at start, {meta.get('load_average_end', [0])[0]:.2f} at end",
        f"  registry: {meta['registry']} " + (f"(pid {meta['server_pid']})" if meta["server_pid"] else "(pid unknown)"),
        "",
        f"{'phase':<10} {'requests':>8} {'wall s':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv CPU ms/req':>14} {'target':>9} {'srv busy':>8} {'cli CPU ms/req':>14} {'non-2xx':>7} {'errors':>6}",
    ]
    for name, r in rows(results):
        if "skipped" in r:
            lines.append(f"{name:<10} skipped: {r['skipped']}")
            continue
        cpu, target = r["server_cpu_ms_per_request"], r["target_server_cpu_ms_per_request"]
        verdict = "" if cpu is None or target is None else (" ok" if cpu <= target else " MISS")
        target_text = "" if target is None else f"<={target:g}{verdict}"
        lines.append(
            f"{name:<10} {r['requests']:>8} {r['wall_s']:>7.2f} {fmt(r['requests_per_s'], '.0f'):>7} "
            f"{fmt(r['latency_p50_ms'], '.2f'):>7} {fmt(r['latency_p99_ms'], '.2f'):>7} "
            f"{fmt(cpu, '.3f'):>14} {target_text:>9} {fmt(r['server_busy'] and r['server_busy'] * 100, '.0f%'):>8} "
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
    loads = [f"{name} {r['other_cpu_cores']:.2f} cores, load average {r['load_average_after'][0]:.2f} after"
             for name, r in results.items() if r.get("other_cpu_cores") is not None]
    if loads:
        lines.append("other processes' CPU during each phase: " + "; ".join(loads))
    for name, r in [*results.items(), *results.get("query", {}).get("rows", {}).items()]:
        for sample in r.get("error_samples", []):
            lines.append(f"  {name}: {sample}")
        if r.get("statuses") and set(r["statuses"]) - {"200", "201"}:
            lines.append(f"  {name} statuses: {r['statuses']}")
    return "\n".join(lines)


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


def failed(results: dict[str, dict]) -> bool:
    everything = [*results.values(), *(r for _, r in rows(results))]
    return any(r.get("unexpected_status") or r.get("transport_errors") or r.get("timed_out") or r.get("non_2xx")
               or r.get("keepalive_non_2xx") or r.get("keepalive_transport_errors") or r.get("wrong_results")
               or (r.get("setup") or {}).get("failures") for r in everything)


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
                  args.query_resources, args.query_requests, args.query_repeats)
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
                # What the rest of the machine used meanwhile, in cores: the registry and this script left out.
                others = (after[0] - before[0]) - (after[1] - before[1]) - (after[2] - before[2]) * 1000
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
