"""The registry under test: starting it on a free loopback port, waiting until it answers, stopping it by its PID,
and its CPU and RSS (and the machine's CPU and listen-queue overflows) read from /proc."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .http import Connection, ProtocolError, build_request

API = "/x-nmos/registration/v1.3"
DEFAULT_REGISTRY_CMD = "twistd -n --pidfile= nmos-ref registry --listen tcp:{port}:interface=127.0.0.1"
CLEAN_EXIT = {0, 143, -signal.SIGTERM}  # twistd answers SIGTERM with exit status 143: a clean stop
# The registry logs the longest reactor turn it has seen (issue 13, goal 5). Only `longest_reactor_turn_ms` knows the
# line's format: adapt it there.
REACTOR_TURN = re.compile(r"reactor: longest turn ([0-9.]+) ms")


def longest_reactor_turn_ms(log_text: str) -> float | None:
    """The longest reactor turn in ms that the registry's log lines in `log_text` report, or None if none does."""
    return max((float(value) for value in REACTOR_TURN.findall(log_text)), default=None)


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
        return None if self.pid is None else process_cpu_ms(self.pid)

    def log_size(self) -> int:
        """Where the registry's log ends now (0 without a log), to read what it writes from here on."""
        try:
            return self.log_path.stat().st_size if self.log_path is not None else 0
        except OSError:
            return 0

    def log_text(self, since: int = 0) -> str | None:
        """The registry's log from byte `since` on, or None without a log file."""
        if self.log_path is None:
            return None
        try:
            with open(self.log_path, "rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except OSError:
            return None

    def status_kib(self, name: str) -> int | None:
        """A kB figure of `/proc/<pid>/status` (VmRSS, VmHWM, ...), or None without a PID."""
        return status_kib(self.pid, name)

    def rss_kib(self) -> int | None:
        return self.status_kib("VmRSS")

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the most RSS the registry has had since it started (the kernel keeps it; no sampling misses it)."""
        return self.status_kib("VmHWM")

    def settle(self, limit: float = 2.0, quiet: float = 0.5) -> float:
        """Waits, at most `limit` s, until the server has used no CPU for `quiet` s; returns the seconds waited."""
        start = time.monotonic()
        if self.pid is None:
            return 0.0
        last, still_since = self.cpu_ms(), start
        while (now := time.monotonic()) - start < limit and now - still_since < quiet:
            time.sleep(0.1)
            if (cpu := self.cpu_ms()) != last:
                last, still_since = cpu, time.monotonic()
        return time.monotonic() - start


def status_kib(pid: int | None, name: str) -> int | None:
    """A kB figure of `/proc/<pid>/status` (VmRSS, VmHWM, ...), or None without the process."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def process_cpu_ms(pid: int) -> float | None:
    """utime + stime of a process (all threads) in milliseconds, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # comm may contain spaces; fields after it start at "state" (3)
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


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
    # Prefer the twistd (or nmos-ref) beside this interpreter: a pyenv-style shim would put a shell in front of the
    # PID we measure.
    if argv[0] in ("twistd", "nmos-ref") and (local := Path(sys.executable).with_name(argv[0])).exists():
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
