"""The Node for real: the command line, then the service over loopback sockets, in-process (`build_all`) and as
`twistd nmos-ref` / `twistd nmos-ref node` processes, registering with our own registry; every resource is then
served by the Query API exactly as the Node API serves it."""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import treq
from twisted.internet import defer, protocol, reactor
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool

from nmos_ref.config import DEFAULT_LISTEN, DEFAULT_NODE_LISTEN, Settings
from nmos_ref.model.versions import ALL_VERSIONS
from nmos_ref.node.state import KEPT_AT
from nmos_ref.service import Options
from nmos_ref.wiring.registry import build_registry
from nmos_ref.wiring.tree import build_all
from tests.support.cases import SocketTest, UnitTest, cases
from tests.support.official import assert_official
from tests.support.samples import port_of

EXAMPLE = str(Path(__file__).resolve().parents[2] / "docs" / "node.example.json")
LOOPBACK = "tcp:0:interface=127.0.0.1"
COLLECTIONS = ("devices", "sources", "flows", "senders", "receivers")


def parse(*argv: str) -> Options:
    options = Options()
    options.parse(list(argv))
    return options


class TestCommandLine(UnitTest):
    def test_default_runs_the_registry_and_a_demo_node(self) -> None:
        options = parse()
        assert options["parts"] == ("registry", "node")
        settings = options["settings"]
        assert settings.listen == [DEFAULT_LISTEN] and settings.node_listen == [DEFAULT_NODE_LISTEN]
        assert settings.registries == [] and settings.node_file is None and settings.heartbeat_interval == 5.0
        assert parse("registry")["parts"] == ("registry",)

    def test_node_subcommand(self) -> None:
        options = parse("--listen", LOOPBACK, "node", "--listen", r"tcp:0:interface=\:\:1", "--registry",
                        "http://127.0.0.1:8235", "--registry", "http://backup:8235/x-nmos/registration/v1.3",
                        "--node-file", EXAMPLE, "--seed", "studio-1", "--heartbeat-interval", "2.5")
        settings = options["settings"]
        assert options["parts"] == ("node",)
        assert settings.node_listen == [LOOPBACK, r"tcp:0:interface=\:\:1"]  # --listen is the Node API's here
        assert settings.listen == [DEFAULT_LISTEN]
        assert settings.registries == ["http://127.0.0.1:8235", "http://backup:8235/x-nmos/registration/v1.3"]
        assert (settings.node_file, settings.node_seed, settings.heartbeat_interval) == (EXAMPLE, "studio-1", 2.5)

    def test_node_listen_in_the_default_mode(self) -> None:
        settings = parse("--listen", LOOPBACK, "--node-listen", "tcp:0")["settings"]
        assert settings.listen == [LOOPBACK] and settings.node_listen == ["tcp:0"]

    def test_config_file_keys(self, tmp_path: Path) -> None:
        config = tmp_path / "node.json"
        config.write_text('{"node_listen": ["tcp:0"], "registries": ["http://r:1"], "node_seed": "x", '
                          '"heartbeat_interval": 1, "registry_timeout": 0.5, "node_file": null}')
        settings = parse("node", "--config", str(config))["settings"]
        assert settings.node_listen == ["tcp:0"] and settings.registries == ["http://r:1"]
        assert settings.heartbeat_interval == 1.0 and settings.registry_timeout == 0.5

    @cases("argv,message", [
        (("node", "--registry", "ftp://r"), "not a Registration API URL"),
        (("node", "--heartbeat-interval", "soon"), "--heartbeat-interval"),
        (("node", "--heartbeat-interval", "0"), "--heartbeat-interval must be"),
        (("--node-listen", "pigeon:1"), "--node-listen 'pigeon:1' is not a strports"),
        (("node", "--node-file", "/nonexistent/node.json"), "cannot read the Node description"),
    ], ids=["registry_not_http", "heartbeat_not_a_number", "heartbeat_zero", "node_listen_not_strports",
            "node_file_missing"])
    def test_bad_flags(self, argv: tuple[str, ...], message: str) -> None:
        with pytest.raises(usage.UsageError, match=re.escape(message)):
            parse(*argv)

    def test_auth_client_settings(self, tmp_path: Path) -> None:
        token = tmp_path / "initial-token"
        token.write_text("  abc.def.ghi\n")
        settings = parse("--auth", "--auth-client-method", "client_secret_basic", "--auth-state-dir",
                         str(tmp_path / "state"), "--auth-issuers", "http://127.0.0.1:5010,http://127.0.0.1:5011")[
            "settings"]
        assert (settings.auth, settings.auth_client_method) == (True, "client_secret_basic")
        assert settings.auth_state_dir == str(tmp_path / "state")
        assert settings.auth_issuers == ["http://127.0.0.1:5010", "http://127.0.0.1:5011"]
        config = tmp_path / "auth.json"
        config.write_text(json.dumps({"auth": True, "auth_initial_token_file": str(token)}))
        assert parse("node", "--config", str(config))["settings"].auth_initial_token_file == str(token)
        with pytest.raises(usage.UsageError, match="--auth-client-method must be one of"):
            parse("--auth-client-method", "tls_client_auth")
        token.write_text("two tokens")
        with pytest.raises(usage.UsageError, match="must hold one token"):
            parse("node", "--config", str(config))
        token.unlink()
        with pytest.raises(usage.UsageError, match="cannot read the initial access token file"):
            parse("node", "--config", str(config))

    def test_a_broken_node_file_stops_the_start_naming_the_problem(self, tmp_path: Path) -> None:
        broken = tmp_path / "node.json"
        broken.write_text(Path(EXAMPLE).read_text().replace('"clock_name": "clk1"', '"clock_name": "clk7"', 1))
        with pytest.raises(usage.UsageError, match=r"sources\[0\] \('video'\): clock_name 'clk7'"):
            parse("node", "--node-file", str(broken))

    def test_help(self) -> None:
        assert "node" in str(Options())
        node_help = str(Options().subCommands[1][2]())
        for word in ("--registry", "--node-file", "--seed", "--listen", "--heartbeat-interval"):
            assert word in node_help


async def get(http: Any, url: str) -> tuple[int, Any, dict[str, str]]:
    response = await http.get(url)
    body = await response.json()
    headers = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, body, headers


def as_translated(kind: str, version: str, data: dict[str, Any]) -> dict[str, Any]:
    """What the registry serves at `version` for a resource the Node registered at v1.3: the Node's own view of that
    version, less the keys the Node keeps at old versions that the registry's translation strips."""
    kept = KEPT_AT.get(version, {}).get(kind, ())
    return {key: value for key, value in data.items() if key not in kept}


async def same_in_node_and_query_api(http: Any, node_base: str, query_base: str) -> int:
    """Every resource of the Node API, at every version, is in the Query API exactly (IS-04-01 test_04, 07-11);
    at versions below the one the Node registered at, as the registry translates it."""
    compared = 0
    for version in ALL_VERSIONS:
        code, node, headers = await get(http, f"{node_base}/x-nmos/node/{version}/self")
        assert code == 200 and headers["content-type"] == "application/json"
        assert_official(version, "node", node)
        code, registered, _ = await get(http, f"{query_base}/x-nmos/query/{version}/nodes/{node['id']}")
        assert code == 200 and registered == as_translated("node", version, node), version
        for collection in COLLECTIONS:
            code, items, _ = await get(http, f"{node_base}/x-nmos/node/{version}/{collection}")
            assert code == 200 and items
            assert_official(version, collection, items)
            for item in items:
                code, registered, _ = await get(http, f"{query_base}/x-nmos/query/{version}/{collection}/{item['id']}")
                assert code == 200 and registered == as_translated(collection[:-1], version, item), \
                    (version, collection)
                compared += 1
    return compared


def changed(model: Any, kind: str, rid: str) -> defer.Deferred[None]:
    done: defer.Deferred[None] = defer.Deferred()

    def listener(changed_kind: str, changed_id: str) -> None:
        if (changed_kind, changed_id) == (kind, rid) and not done.called:
            unsubscribe()
            done.callback(None)

    unsubscribe = model.subscribe(listener)
    return done


class TwistdProcess(protocol.ProcessProtocol):
    """Runs twistd, firing `seen[pattern]` when a log line matches (the first group, or the match)."""

    def __init__(self, patterns: dict[str, str]) -> None:
        self.output = b""
        self.patterns = {name: re.compile(pattern.encode()) for name, pattern in patterns.items()}
        self.seen: dict[str, defer.Deferred[str]] = {name: defer.Deferred() for name in patterns}
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for name, pattern in self.patterns.items():
            match = pattern.search(self.output)
            if match and not self.seen[name].called:
                self.seen[name].callback((match.group(1) if match.groups() else match.group(0)).decode())

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        for name, waiting in self.seen.items():
            if not waiting.called:
                waiting.errback(RuntimeError(f"twistd ended before {name!r}:\n{self.text()}"))
        self.ended.callback(reason.value)

    def text(self) -> str:
        return self.output.decode(errors="replace")


def spawn(process: TwistdProcess, args: list[str], cwd: Path) -> Any:
    twistd = str(Path(sys.executable).with_name("twistd"))
    return reactor.spawnProcess(process, twistd, [twistd, "-n", "--pidfile=", "nmos-ref", "--dns-sd", "off", *args],
                                env=None, path=str(cwd))


async def stop(process: TwistdProcess, transport: Any) -> None:
    if transport.pid is not None:
        transport.signalProcess("TERM")
    ended = await process.ended
    assert ended.signal == signal.SIGTERM or ended.exitCode == 143, process.text()
    assert b"Traceback" not in process.output, process.text()


class NodeServiceTests(SocketTest):
    """The Node and the registry on loopback ports, in-process and as twistd processes, with one HTTP client per
    test."""

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)

    async def test_registry_and_demo_node_in_one_process(self, http: Any) -> None:
        top = build_all(Settings(listen=[LOOPBACK], node_listen=[LOOPBACK], dns_sd="off"), reactor)
        top.startService()
        node = top.node
        stopped = False
        try:
            await node.ready
            await node.client.synced()
            query_base = node.client.current.candidate.url  # the registry of this process, over loopback
            assert query_base.startswith("http://127.0.0.1:")
            node_base = node.model.endpoints[0].base.rstrip("/")
            assert node_base.startswith("http://127.0.0.1:")
            assert await same_in_node_and_query_api(http, node_base, query_base) == 4 * 9

            # Subscribe the video receiver to the Node's own video sender through the Node API (its SDP is fetched
            # from this Node over HTTP), then see the change registered.
            receiver = next(r for r in node.model.all("receiver") if r["format"].endswith("video"))
            sender = next(s for s in node.model.all("sender") if node.model.get("flow", s["flow_id"])["media_type"]
                          == "video/raw")
            connected = changed(node.model, "receiver", receiver["id"])
            response = await http.put(f"{node_base}/x-nmos/node/v1.2/receivers/{receiver['id']}/target",
                                      json=dict(node.model.view("sender", sender["id"], "v1.2").data))
            assert response.code == 202 and (await response.json())["id"] == sender["id"]
            await connected
            await node.client.synced()
            code, registered, _ = await get(http, f"{query_base}/x-nmos/query/v1.3/receivers/{receiver['id']}")
            assert registered["subscription"] == {"sender_id": sender["id"], "active": True}
            assert await same_in_node_and_query_api(http, node_base, query_base) == 4 * 9

            response = await http.get(node.model.get("sender", sender["id"])["manifest_href"])
            assert response.code == 200 and response.headers.getRawHeaders(b"content-type") == [b"application/sdp"]
            await response.content()

            await top.stopService()
            stopped = True
            # The Node unregistered (children first) before the registry stopped.
            assert top.registry.count("node") == 0 and top.registry.count("receiver") == 0
        finally:
            if not stopped:
                await top.stopService()

    async def test_twistd_runs_the_registry_and_a_demo_node_registered_with_it(self, http: Any, tmp_path: Path) -> None:
        process = TwistdProcess({
            "node": r"Node API at (http://127\.0\.0\.1:\d+)/x-nmos/node/",
            "registered": r"Registered the Node and its \d+ resources with (http://127\.0\.0\.1:\d+) at v1\.3",
            "unregistered": r"Unregistered the Node",
        })
        transport = spawn(process, ["--listen", LOOPBACK, "--node-listen", LOOPBACK], tmp_path)
        try:
            node_base = await process.seen["node"]
            query_base = await process.seen["registered"]
            assert await same_in_node_and_query_api(http, node_base, query_base) == 4 * 9
        finally:
            await stop(process, transport)
        assert process.seen["unregistered"].called

    async def test_twistd_node_registers_with_a_registry_and_unregisters_on_sigterm(self, http: Any,
                                                                                    tmp_path: Path) -> None:
        top = build_registry(Settings(listen=[LOOPBACK], dns_sd="off"), reactor, reactor)
        top.startService()
        try:
            port = await port_of(top)
            registry = f"http://127.0.0.1:{port}"
            process = TwistdProcess({"node": r"Node API at (http://127\.0\.0\.1:\d+)/x-nmos/node/",
                                     "registered": r"Registered the Node and its (\d+) resources"})
            transport = spawn(process, ["node", "--listen", LOOPBACK, "--registry", registry, "--node-file", EXAMPLE,
                                        "--seed", "twistd-test"], tmp_path)
            try:
                node_base = await process.seen["node"]
                count = int(await process.seen["registered"])
                assert top.registry.count("node") == 1
                assert sum(top.registry.count(kind)
                           for kind in ("device", "source", "flow", "sender", "receiver")) == count
                code, node, _ = await get(http, f"{node_base}/x-nmos/node/v1.3/self")
                code, registered, _ = await get(http, f"{registry}/x-nmos/query/v1.3/nodes/{node['id']}")
                assert registered == node
            finally:
                await stop(process, transport)
            assert top.registry.count("node") == 0  # the controlled shutdown deleted everything
        finally:
            await top.stopService()
