#!/usr/bin/env python3
"""Measures the nmos-ref registry over loopback and prints figures to paste into a note.

By default it starts the registry itself (`twistd -n --pidfile= nmos-ref registry --listen tcp:PORT:...`) on a free
loopback port, waits until `GET /x-nmos/registration/v1.3/` answers, runs the phases and stops it by its PID.
The figure that matters is the server's CPU per request, read from /proc/<pid>/stat: wall-clock rates on a shared
2-core VM vary a lot between identical runs, CPU time much less. See benchmarks/README.md.

The client is deliberately cheap (one thread per persistent HTTP/1.1 connection, requests built as bytes before the
clock starts, a minimal response parser) so that it leaves the second core to itself and does not starve the server.
Every loop runs over a fixed list of work and checks one overall deadline; the run always stops by itself.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
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

    def core(kind: str, rid: str) -> dict:
        return {"id": rid, "version": version, "label": f"bench-{kind}-{name}",
                "description": f"synthetic {kind} {name}", "tags": tags}

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
        ("source", core("source", video_source) | {
            "caps": {}, "device_id": device_id, "parents": [], "clock_name": "clk0",
            "grain_rate": {"numerator": 25, "denominator": 1}, "format": "urn:x-nmos:format:video"}),
        ("source", core("source", audio_source) | {
            "caps": {}, "device_id": device_id, "parents": [], "clock_name": "clk0",
            "format": "urn:x-nmos:format:audio",
            "channels": [{"label": "left", "symbol": "L"}, {"label": "right", "symbol": "R"}]}),
        ("flow", core("flow", video_flow) | {
            "source_id": video_source, "device_id": device_id, "parents": [],
            "grain_rate": {"numerator": 25, "denominator": 1}, "format": "urn:x-nmos:format:video",
            "frame_width": 1920, "frame_height": 1080, "interlace_mode": "progressive", "colorspace": "BT709",
            "transfer_characteristic": "SDR", "media_type": "video/raw",
            "components": [{"name": c, "width": w, "height": 1080, "bit_depth": 10}
                           for c, w in (("Y", 1920), ("Cb", 960), ("Cr", 960))]}),
        ("flow", core("flow", audio_flow) | {
            "source_id": audio_source, "device_id": device_id, "parents": [],
            "format": "urn:x-nmos:format:audio", "sample_rate": {"numerator": 48000, "denominator": 1},
            "media_type": "audio/L24", "bit_depth": 24}),
        *[("sender", core("sender", sid) | {
            "flow_id": fid, "transport": rtp, "device_id": device_id, "caps": {},
            "manifest_href": f"{base}/x-nmos/connection/v1.1/single/senders/{sid}/transportfile",
            "interface_bindings": ["eth0"], "subscription": idle_sender})
          for sid, fid in zip(senders, (video_flow, audio_flow))],
        *[("receiver", core("receiver", rid) | {
            "device_id": device_id, "transport": rtp, "format": fmt, "caps": {"media_types": [media]},
            "interface_bindings": ["eth0"], "subscription": idle_receiver})
          for rid, fmt, media in zip(receivers, ("urn:x-nmos:format:video", "urn:x-nmos:format:audio"),
                                     ("video/raw", "audio/L24"))],
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

    def call(self, conn: Connection, request: bytes, expect: int) -> tuple[int, bytes] | None:
        """One timed request; a transport error or a status other than `expect` is counted, never raised."""
        start = time.perf_counter()
        try:
            status, _, body = conn.exchange(request)
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
        return status, body

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
    population: list[list[tuple[str, dict]]] = field(default_factory=list)
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

    def touch(self, node_id: str) -> None:
        with self.lock:
            self.queue.append((time.monotonic(), node_id))

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
# Phases. Each takes the Context and returns its figures; add new ones (query, websocket) to PHASES.


def ensure_population(ctx: Context) -> None:
    if not ctx.population:
        now = time.time()
        ctx.population = [synthetic_node(index, now) for index in range(ctx.nodes)]


def phase_register(ctx: Context) -> dict:
    """POSTs every synthetic Node's ten resources, parents first per Node, Nodes spread over the connections."""
    ensure_population(ctx)
    post = API + "/resource"
    # Built before the clock starts, so the phase measures the server, not json.dumps.
    units = [(node[0][1]["id"], [build_request("POST", post, ctx.host_header,
                                               json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode())
                                 for kind, data in node]) for node in ctx.population]
    beats = {nid: build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header) for nid, _ in units}
    keepalive = KeepAlive(ctx.keepalive)
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
    ctx.registered = accepted
    beats_sent = len(recorders["keepalive"].latencies) + recorders["keepalive"].errors
    result = figures("register", recorders["register"], wall, server_cpu, client_cpu, timed_out, 0.8,
                     nodes=len(units), resources=sum(len(requests) for _, requests in units),
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


# Planned: "query" (GET collections, label query, single resource, paging walk at 50,000 resources), "websocket".
PHASES: dict[str, Callable[[Context], dict]] = {"register": phase_register, "heartbeat": phase_heartbeat}
NEEDS_REGISTERED = {"heartbeat"}  # phases that register the population first (unreported) if `register` is not asked


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
    for name, r in results.items():
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
    for name, r in results.items():
        for sample in r.get("error_samples", []):
            lines.append(f"  {name}: {sample}")
        if r.get("statuses") and set(r["statuses"]) - {"200", "201"}:
            lines.append(f"  {name} statuses: {r['statuses']}")
    return "\n".join(lines)


def failed(results: dict[str, dict]) -> bool:
    return any(r.get("unexpected_status") or r.get("transport_errors") or r.get("timed_out") or r.get("non_2xx")
               or r.get("keepalive_non_2xx") for r in results.values())


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
    p.add_argument("--keepalive", type=float, default=HEARTBEAT_INTERVAL,
                   help="heartbeat each registered Node this often during registration (0: never)")
    p.add_argument("--check-schemas", action="store_true",
                   help="only validate the synthetic payloads against the official schemas, then exit")
    p.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS, help="folder of the official IS-04 v1.3 schemas")
    args = p.parse_args(argv)
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    if unknown := [name for name in args.phases if name not in PHASES]:
        p.error(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    if min(args.nodes, args.concurrency, args.rounds) < 1:
        p.error("--nodes, --concurrency and --rounds must be at least 1")
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
                  time.monotonic() + args.timeout, args.request_timeout)
    results: dict[str, dict] = {}
    exit_status = None
    try:
        for name in args.phases:
            if name in NEEDS_REGISTERED and "register" not in results:
                print("registering the population first (not reported) ...", file=sys.stderr)
                phase_register(ctx)
            print(f"phase {name} ...", file=sys.stderr)
            results[name] = PHASES[name](ctx)
            results[name]["server_rss_kib_after"] = server.rss_kib()
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
