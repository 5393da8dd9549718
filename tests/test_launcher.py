"""`nmos-ref` / `python -m nmos_ref` (nmos_ref/launcher.py): the service of `twistd -n nmos-ref`, started as a real
process on loopback; without TLS it runs without the standard library's TLS and OpenSSL hash modules, and still
serves every API and WebSocket (whose handshake hashes with SHA-1)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

import nmos_ref
from nmos_ref.launcher import TLS_MODULES
from tests.support.cases import SocketTest, UnitTest
from tests.support.official import assert_official
from tests.support.samples import new_id, node
from tests.support.websockets import connect, kind_of, subscription_body

SOURCE = str(Path(nmos_ref.__file__).resolve().parents[1])  # the nmos_ref under test, installed or not
STARTED = re.compile(r"NmosSite starting on (\d+)")
DEADLINE = 60.0  # seconds a process gets to start or stop


def launch(*arguments: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")])}
    env.pop("NMOS_REF_WHOLE_STDLIB", None)
    return subprocess.Popen([sys.executable, "-m", "nmos_ref", *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=SOURCE)


def port_of(process: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """The port the process's first listener took (its log says), and the lines read until then."""
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        found = STARTED.search(line)
        if found:
            return int(found.group(1)), lines
    raise AssertionError(f"exited with {process.wait(DEADLINE)} before listening:\n{''.join(lines)}")


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, and what it logged until it ended."""
    if process.poll() is None:
        process.terminate()
    rest, _ = process.communicate(timeout=DEADLINE)
    return process.returncode, rest


def ended(process: subprocess.Popen[str]) -> tuple[int, str]:
    """What a process that must stop by itself logged, and its status (stopped with SIGTERM after DEADLINE)."""
    try:
        out, _ = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        _, out = stop(process)
        raise AssertionError(f"still running after {DEADLINE} s:\n{out}") from None
    return process.returncode, out


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def uses_c_module(pid: int, name: str) -> bool:
    """Whether the process has loaded the extension module `name` (`_ssl`, `_hashlib`): its shared object is
    mapped."""
    return re.search(rf"/{name}\.cpython-[^/\s]*\.so", mapped(pid)) is not None


async def answer(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    response = await http.request(method, url, json=body)
    return response.code, json.loads(await response.content())


class PlainRegistryTests(SocketTest):
    """A registry without TLS: no libcrypto, every API working."""

    async def setUp(self) -> None:
        self.process = launch("registry", "--listen", "tcp:0:interface=127.0.0.1", "--dns-sd", "off")
        self.addCleanup(stop, self.process)
        port, self.lines = port_of(self.process)
        self.base = f"http://127.0.0.1:{port}/x-nmos"

    async def test_without_tls_modules_it_registers_queries_and_streams(self) -> None:
        pid = self.process.pid
        assert [name for name in TLS_MODULES if uses_c_module(pid, name)] == []
        assert "libcrypto" not in mapped(pid)
        data = node("v1.3", id=new_id())
        code, body = await answer("POST", f"{self.base}/registration/v1.3/resource", {"type": "node", "data": data})
        assert code == 201 and body == data
        code, body = await answer("GET", f"{self.base}/query/v1.3/nodes")
        assert code == 200 and [item["id"] for item in body] == [data["id"]]
        assert_official("v1.3", "nodes", body)
        code, subscription = await answer("POST", f"{self.base}/query/v1.3/subscriptions",
                                          subscription_body("v1.3", resource_path="/nodes"))
        assert code == 201
        assert_official("v1.3", "queryapi-subscription-response", subscription)
        client = await connect(subscription, "v1.3")  # the handshake's SHA-1 without OpenSSL
        try:
            [synced] = await client.events(1)
            assert kind_of(synced) == "sync" and synced["post"]["id"] == data["id"]
            label = dict(data, label="renamed", version="1700000001:0")
            code, _ = await answer("POST", f"{self.base}/registration/v1.3/resource",
                                   {"type": "node", "data": label})
            assert code == 200
            [modified] = await client.events(1)
            assert kind_of(modified) == "modified" and modified["post"]["label"] == "renamed"
        finally:
            await client.close()
        assert [name for name in TLS_MODULES if uses_c_module(pid, name)] == []  # still none, after all that
        code, log = stop(self.process)
        assert code == 0, log
        assert "Traceback" not in "".join(self.lines) + log


class WholeStdlibTests(SocketTest):
    """Settings that may need TLS (here a Node: its registries may be https URLs) get the whole standard library."""

    async def test_a_node_starts_again_with_the_tls_modules(self) -> None:
        process = launch("node", "--listen", "tcp:0:interface=127.0.0.1", "--dns-sd", "off",
                         "--registry", "http://127.0.0.1:9")
        self.addCleanup(stop, process)
        port, _ = port_of(process)
        assert uses_c_module(process.pid, "_ssl")
        code, body = await answer("GET", f"http://127.0.0.1:{port}/x-nmos/node/v1.3/self")
        assert code == 200
        assert_official("v1.3", "node", body)
        code, log = stop(process)
        assert code == 0, log


class StartFailureTests(UnitTest):
    """What the launcher says when it cannot start: one line, no traceback, a non-zero status."""

    def test_a_usage_error_is_one_line_and_status_2(self) -> None:
        process = launch("registry", "--expiry", "0", "--dns-sd", "off")
        code, log = ended(process)
        assert code == 2, log
        assert "Traceback" not in log
        first = log.splitlines()[0]
        assert first.startswith("nmos-ref registry: ") and "--expiry" in first, log
        assert "--help" in log

    def test_a_port_in_use_is_one_line_and_status_1(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = launch("registry", "--listen", f"tcp:{port}:interface=127.0.0.1", "--dns-sd", "off")
        code, log = ended(process)
        assert code == 1, log
        assert "Traceback" not in log
        assert [line for line in log.splitlines() if "cannot start" in line and str(port) in line], log
