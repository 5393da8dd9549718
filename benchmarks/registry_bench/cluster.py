"""A registry cluster for the cluster benchmark: three etcd members (Debian's etcd-server, on loopback ports, data in a
temporary folder, etcd's default timings, history compacted after 10 minutes as docs/cluster.md advises) and nmos-ref members sharing them (`--store etcd://...`); each process
started, measured (CPU, RSS) and stopped or killed by its PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .server import (
    Server,
    free_loopback_port,
    process_cpu_ms,
    start_registry,
    status_kib,
    stop_registry,
)

MEMBER_CMD = "nmos-ref registry --listen tcp:{port}:interface=127.0.0.1 --dns-sd off"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Etcd:
    """One etcd member on loopback."""

    name: str
    client_port: int
    peer_port: int
    folder: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def start(self, initial_cluster: str, token: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [shutil.which("etcd") or "etcd", "--name", self.name, "--data-dir", str(self.folder / "data"),
                   "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                   "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                   "--initial-cluster", initial_cluster, "--initial-cluster-token", token,
                   "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
                   # As docs/cluster.md tells a facility to run it: history older than 10 minutes compacted
                   "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "10m"]
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD")}
        with open(self.folder / "etcd.log", "wb") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)

    def _get(self, path: str, body: dict | None = None) -> dict | None:
        request = urllib.request.Request(self.url + path, data=None if body is None else json.dumps(body).encode())
        try:
            with _NO_PROXY.open(request, timeout=2) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    def healthy(self) -> bool:
        return (self._get("/health") or {}).get("health") == "true"

    def is_leader(self) -> bool:
        status = self._get("/v3/maintenance/status", {})
        return bool(status) and status.get("leader") == status.get("header", {}).get("member_id")

    def cpu_ms(self) -> float | None:
        return process_cpu_ms(self.pid) if self.pid else None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    """`etcd` etcd members and the nmos-ref members started on them (`members`, each a Server)."""

    folder: Path
    etcds: list[Etcd] = field(default_factory=list)
    members: list[Server] = field(default_factory=list)
    killed: list[Server] = field(default_factory=list)

    @classmethod
    def start_etcd(cls, size: int = 3, timeout: float = 30.0) -> Cluster:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not on PATH (Debian package etcd-server)")
        cluster = cls(Path(tempfile.mkdtemp(prefix="bench-cluster-")))
        ports = sorted({free_loopback_port() for _ in range(4 * size)})[:2 * size]
        cluster.etcds = [Etcd(f"e{i}", ports[2 * i], ports[2 * i + 1], cluster.folder / f"etcd-{i}")
                         for i in range(size)]
        initial = ",".join(f"{e.name}={e.peer_url}" for e in cluster.etcds)
        for etcd in cluster.etcds:
            etcd.start(initial, f"bench-{cluster.folder.name}")
        deadline = time.monotonic() + timeout
        while not all(etcd.healthy() for etcd in cluster.etcds):
            if time.monotonic() > deadline or any(e.process.poll() is not None for e in cluster.etcds):
                cluster.stop()
                raise RuntimeError("etcd did not start: see " + str(cluster.folder))
            time.sleep(0.1)
        return cluster

    @property
    def store(self) -> str:
        return "etcd://" + ",".join(f"127.0.0.1:{e.client_port}" for e in self.etcds)

    def add_member(self, command: str = MEMBER_CMD, startup_timeout: float = 60.0) -> Server:
        index = len(self.members) + len(self.killed)
        member = start_registry(f"{command} --store {self.store}", startup_timeout,
                                self.folder / f"member-{index}.log")
        self.members.append(member)
        return member

    def kill_member(self, member: Server) -> None:
        """SIGKILL an nmos-ref member, as a crash would."""
        os.kill(member.pid, signal.SIGKILL)
        member.process.wait(10)
        self.members.remove(member)
        self.killed.append(member)

    def leader(self) -> Etcd | None:
        return next((etcd for etcd in self.etcds if etcd.pid and etcd.is_leader()), None)

    def etcd_cpu_ms(self) -> float:
        return sum(etcd.cpu_ms() or 0.0 for etcd in self.etcds)

    def members_cpu_ms(self) -> float:
        return sum(member.cpu_ms() or 0.0 for member in self.members)

    def etcd_memory(self) -> list[dict]:
        return [{"name": etcd.name, "rss_kib": status_kib(etcd.pid, "VmRSS"), "peak_rss_kib": status_kib(etcd.pid, "VmHWM"),
                 "data_bytes": sum(p.stat().st_size for p in (etcd.folder / "data").rglob("*") if p.is_file())}
                for etcd in self.etcds if etcd.pid]

    def stop_members(self) -> None:
        for member in self.members:
            stop_registry(member)
        self.members = []

    def stop(self) -> None:
        self.stop_members()
        for etcd in self.etcds:
            etcd.stop()
        if keep := os.environ.get("BENCH_CLUSTER_LOGS"):  # a folder to keep every member's and etcd's log in
            into = Path(keep) / self.folder.name
            into.mkdir(parents=True, exist_ok=True)
            for log in self.folder.rglob("*.log"):
                shutil.copy(log, into / f"{log.parent.name}-{log.name}" if log.parent != self.folder else into)
        shutil.rmtree(self.folder, ignore_errors=True)


class Target:
    """What a phase of the registry benchmark measures, when it is a group of processes (a cluster's members and
    its etcd) rather than one registry: the Server the phase talks to, with `cpu_ms` counting every process."""

    def __init__(self, server: Server, cluster: Cluster) -> None:
        self._server, self._cluster = server, cluster

    def __getattr__(self, name: str):  # host, port, url, rss_kib, ... of the member the phase talks to
        return getattr(self._server, name)

    def cpu_ms(self) -> float | None:
        return self._cluster.members_cpu_ms() + self._cluster.etcd_cpu_ms()
