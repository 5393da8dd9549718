"""The command line, settings, and the real service: in-process on a loopback port, and as `twistd nmos-ref`."""

from __future__ import annotations

import json
import re
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import treq
from twisted.internet import defer, protocol, reactor
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool

from nmos_ref.config import DEFAULT_LISTEN, Settings
from nmos_ref.service import Options
from nmos_ref.wiring.registry import build_registry
from tests.support.cases import SocketTest, UnitTest, cases
from tests.support.official import assert_official
from tests.support.samples import port_of


def parse(*argv: str) -> Settings:
    options = Options()
    options.parseOptions(list(argv))
    return options["settings"]


class TestCommandLine(UnitTest):
    def test_defaults(self) -> None:
        settings = parse()
        assert settings.listen == [DEFAULT_LISTEN]
        assert settings.registration_expiry_interval == 12.0
        assert settings.api_versions == ["v1.0", "v1.1", "v1.2", "v1.3"]
        assert settings.log_level == "info" and settings.host_name is None and not settings.access_log

    def test_flags_before_and_after_the_subcommand(self) -> None:
        settings = parse("--listen", "tcp:0:interface=127.0.0.1", "registry", "--listen", r"tcp:0:interface=\:\:1",
                         "--expiry", "20", "--api-versions", "v1.3,v1.2", "--log-level", "debug")
        assert settings.listen == ["tcp:0:interface=127.0.0.1", r"tcp:0:interface=\:\:1"]
        assert settings.registration_expiry_interval == 20.0
        assert settings.api_versions == ["v1.2", "v1.3"] and settings.log_level == "debug"

    def test_config_file_then_flags(self, tmp_path: Path) -> None:
        config = tmp_path / "nmos.json"
        config.write_text(json.dumps({"listen": ["tcp:0:interface=127.0.0.1"], "registration_expiry_interval": 30,
                                      "host_name": "registry.example", "access_log": True}))
        settings = parse("registry", "--config", str(config), "--expiry", "15")
        assert settings.listen == ["tcp:0:interface=127.0.0.1"]
        assert settings.registration_expiry_interval == 15.0
        assert settings.host_name == "registry.example" and settings.access_log

    @cases("content,message", [
        ({"listn": []}, "unknown setting 'listn'"),
        ({"registration_expiry_interval": "12"}, "registration_expiry_interval"),
        ({"api_versions": ["v2.0"]}, "v2.0 not supported"),
        ({"log_level": "loud"}, "log_level"),
        ({"listen": "tcp:8235"}, "listen must be a non-empty list"),
        ([1, 2], "JSON object"),
    ], ids=["unknown_setting", "expiry_not_a_number", "unsupported_version", "bad_log_level", "listen_not_a_list",
            "not_an_object"])
    def test_bad_config_files_name_the_problem(self, tmp_path: Path, content: Any, message: str) -> None:
        config = tmp_path / "nmos.json"
        config.write_text(json.dumps(content))
        with pytest.raises(usage.UsageError, match=re.escape(message)):
            parse("--config", str(config))

    def test_unreadable_and_malformed_files(self, tmp_path: Path) -> None:
        with pytest.raises(usage.UsageError, match="cannot read"):
            parse("--config", str(tmp_path / "missing.json"))
        broken = tmp_path / "broken.json"
        broken.write_text("{")
        with pytest.raises(usage.UsageError, match="not valid JSON"):
            parse("--config", str(broken))

    def test_bad_flags(self) -> None:
        with pytest.raises(usage.UsageError, match="strports"):
            parse("--listen", "carrier-pigeon:8235")
        with pytest.raises(usage.UsageError, match="--expiry"):
            parse("--expiry", "soon")
        with pytest.raises(usage.UsageError, match="log_level"):
            parse("--log-level", "chatty")

    def test_the_store(self, tmp_path: Path) -> None:
        assert parse().store == "memory" and parse().store_prefix == "/nmos-ref/"
        assert parse("registry", "--store", "etcd://127.0.0.1:2379,[::1]:2379").store == \
            "etcd://127.0.0.1:2379,[::1]:2379"
        config = tmp_path / "nmos.json"
        config.write_text(json.dumps({"store": "etcd://etcd.example:2379", "store_prefix": "/facility-a/"}))
        settings = parse("--config", str(config))
        assert settings.store == "etcd://etcd.example:2379" and settings.store_prefix == "/facility-a/"
        for bad in ("etcd://127.0.0.1", "http://127.0.0.1:2379", "etcd://a:1,", "redis://a:1"):
            with pytest.raises(usage.UsageError, match="store must be"):
                parse("--store", bad)
        config.write_text(json.dumps({"store_prefix": "no-slashes"}))
        with pytest.raises(usage.UsageError, match="store_prefix"):
            parse("--config", str(config))

    def test_help_lists_the_options_and_the_subcommand(self) -> None:
        text = str(Options())
        for word in ("--listen", "--config", "--expiry", "--host-name", "--log-level", "--api-versions", "registry"):
            assert word in text


NODE_V13 = {
    "id": "", "version": "1700000000:0", "label": "test node", "description": "", "tags": {},
    "href": "http://127.0.0.1:9/", "hostname": "test", "caps": {}, "services": [], "clocks": [], "interfaces": [],
    "api": {"versions": ["v1.3"], "endpoints": [{"host": "127.0.0.1", "port": 9, "protocol": "http",
                                                  "authorization": False}]},
}


def a_node() -> dict[str, Any]:
    return {**NODE_V13, "id": str(uuid.uuid4())}


class TwistdProcess(protocol.ProcessProtocol):
    """Runs `twistd -n nmos-ref ...`, reporting the port from its log line "Site starting on N" and its end."""

    def __init__(self) -> None:
        self.output = b""
        self.port: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"Site starting on (\d+)", self.output)
        if match and not self.port.called:
            self.port.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.port.called:
            self.port.errback(RuntimeError(f"twistd ended before listening:\n{self.output.decode(errors='replace')}"))
        self.ended.callback(reason.value)


class ServiceTests(SocketTest):
    """The service on loopback ports, in-process and as a twistd process, with one HTTP client per test."""

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)

    async def test_service_on_a_loopback_port(self, http: Any) -> None:
        settings = Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off")
        top = build_registry(settings, reactor, reactor)
        top.startService()
        try:
            base = f"http://127.0.0.1:{await port_of(top)}"
            response = await http.get(f"{base}/x-nmos/")
            assert response.code == 200 and await response.json() == ["query/", "registration/"]
            node = a_node()
            response = await http.post(f"{base}/x-nmos/registration/v1.3/resource",
                                       json={"type": "node", "data": node})
            body = await response.json()
            assert response.code == 201, body
            assert_official("v1.3", "registrationapi-resource-response", body)
            response = await http.post(f"{base}/x-nmos/registration/v1.3/health/nodes/{node['id']}")
            health = await response.json()
            assert response.code == 200
            assert_official("v1.3", "registrationapi-health-response", health)
        finally:
            await top.stopService()

    async def test_twistd_serves_and_stops_cleanly_on_sigterm(self, http: Any, tmp_path: Path) -> None:
        twistd = str(Path(sys.executable).with_name("twistd"))
        process = TwistdProcess()
        transport = reactor.spawnProcess(process, twistd, [twistd, "-n", "--pidfile=", "nmos-ref", "registry",
                                                           "--listen", "tcp:0:interface=127.0.0.1"],
                                         env=None, path=str(tmp_path))
        try:
            port = await process.port
            response = await http.get(f"http://127.0.0.1:{port}/x-nmos/registration/")
            assert response.code == 200 and await response.json() == ["v1.0/", "v1.1/", "v1.2/", "v1.3/"]
        finally:
            if transport.pid is not None:
                transport.signalProcess("TERM")
        ended = await process.ended
        # twistd re-raises SIGTERM after a clean shutdown: a shell reports 143 (128 + 15).
        assert ended.signal == signal.SIGTERM or ended.exitCode == 143, process.output.decode(errors="replace")
        assert b"Traceback" not in process.output, process.output.decode(errors="replace")

    async def test_oversized_bodies_are_refused_without_being_kept(self, http: Any) -> None:
        top = build_registry(Settings(listen=["tcp:0:interface=127.0.0.1"], dns_sd="off"), reactor, reactor)
        top.startService()
        try:
            url = f"http://127.0.0.1:{await port_of(top)}/x-nmos/registration/v1.3/resource"
            big = json.dumps({"type": "node", "data": {**a_node(), "description": "x" * (2 << 20)}}).encode()
            response = await http.post(url, data=big, headers={"Content-Type": "application/json"})
            body = await response.json()
            assert response.code == 413 and body["code"] == 413
            assert_official("v1.3", "error", body)
            assert top.registry.count("node") == 0
        finally:
            await top.stopService()


class LogLevelTests(UnitTest):
    """The log_level setting, as a service that filters the global log publisher while it runs."""

    def test_log_level_filters_below_the_setting(self) -> None:
        from twisted.logger import Logger, globalLogPublisher

        from nmos_ref.wiring.tuning import LogLevelService

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        service = LogLevelService("warn")
        try:
            service.startService()
            logger = Logger(namespace="nmos_ref.test")
            logger.info("quiet {n}", n=1)
            logger.warn("loud {n}", n=2)
            service.stopService()
            logger.info("after {n}", n=3)  # unfiltered again once stopped
            mine = [event["log_format"] for event in seen if event.get("log_namespace") == "nmos_ref.test"]
            assert mine == ["loud {n}", "after {n}"]
        finally:
            if service.running:
                service.stopService()
            globalLogPublisher.removeObserver(seen.append)
