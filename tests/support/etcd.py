"""Real etcd servers for the cluster tests: members on loopback, free ports and temporary data folders.

`shared_member()` is one single-member etcd started on first use and stopped when the test process exits (tests
keep apart by key prefix: `unique_prefix()`); `EtcdCluster.start(size)` starts a cluster of its own for a test
that kills members (stop it in a cleanup). Each member is stopped by its PID and its folder removed. Without
`etcd` on PATH, `require_etcd()` skips the test with the reason (`.ci/run` installs Debian's etcd-server).

Members are timed for tests: a 100 ms heartbeat and a 700 ms election timeout, which also make etcd's shortest
lease one second (etcd raises shorter TTLs to 1.5 election timeouts, rounded up to a second).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from twisted.trial.unittest import SkipTest

ETCD = shutil.which("etcd")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def require_etcd() -> str:
    if ETCD is None:
        raise SkipTest("etcd is not on PATH (Debian package etcd-server; .ci/run installs it)")
    return ETCD


def unique_prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:12]}/"


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (held together while chosen, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            held = socket.socket()
            held.bind(("127.0.0.1", 0))
            sockets.append(held)
        return [held.getsockname()[1] for held in sockets]
    finally:
        for held in sockets:
            held.close()


class EtcdMember:
    """One etcd process of a cluster."""

    def __init__(self, name: str, client_port: int, peer_port: int, folder: Path) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, token: str) -> None:
        command = [require_etcd(), "--name", self.name, "--data-dir", str(self.folder / "data"),
                   "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                   "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                   "--initial-cluster", initial_cluster, "--initial-cluster-token", token,
                   "--initial-cluster-state", "new", "--heartbeat-interval", "100", "--election-timeout", "700",
                   "--logger", "zap", "--log-outputs", "stderr"]
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD")}
        with open(self.folder / "etcd.log", "wb") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)

    def healthy(self) -> bool:
        try:
            with _NO_PROXY.open(self.url + "/health", timeout=1) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """Stop the process at once (SIGKILL to its PID), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        try:
            return (self.folder / "etcd.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class EtcdCluster:
    """`size` etcd members on loopback, started and healthy (each one has a leader) when `start` returns."""

    def __init__(self, members: list[EtcdMember], folder: Path) -> None:
        self.members = members
        self.folder = folder

    @property
    def urls(self) -> list[str]:
        return [member.url for member in self.members]

    @property
    def store(self) -> str:
        """The `--store` setting naming every member."""
        return "etcd://" + ",".join(f"127.0.0.1:{member.client_port}" for member in self.members)

    @classmethod
    def start(cls, size: int = 1, timeout: float = 20.0) -> EtcdCluster:
        require_etcd()
        folder = Path(tempfile.mkdtemp(prefix="nmos-ref-etcd-"))
        ports = free_ports(2 * size)
        members = [EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1], folder / f"m{i}") for i in range(size)]
        initial = ",".join(f"{member.name}={member.peer_url}" for member in members)
        cluster = cls(members, folder)
        try:
            for member in members:
                member.folder.mkdir()
                member.start(initial, f"nmos-ref-{folder.name}")
            deadline = time.monotonic() + timeout
            while not all(member.healthy() for member in members):
                dead = [member for member in members if member.process and member.process.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start ({'ended' if dead else 'not healthy in time'}):\n"
                                       + "\n".join(member.log_tail() for member in dead or members))
                time.sleep(0.05)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


_shared: EtcdCluster | None = None


def shared_member() -> EtcdCluster:
    """One single-member etcd for the whole test process (started on first use)."""
    global _shared
    if _shared is None or _shared.members[0].process is None or _shared.members[0].process.poll() is not None:
        _shared = EtcdCluster.start(1)
        atexit.register(_shared.stop)
    return _shared
