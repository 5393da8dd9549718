"""The command line, settings, and the real service: in-process on a loopback port, and as `twistd nmos-ref`."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import treq
from twisted.internet import defer, protocol, reactor
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool

import nmos_ref

from nmos_ref.config import DEFAULT_LISTEN, Settings
from nmos_ref.service import NodeOptions, Options, RegistryOptions, UsageExit
from nmos_ref.wiring.registry import build_registry
from tests.support.cases import SkipTest, SocketTest, UnitTest, cases
from tests.support.official import assert_official
from tests.support.samples import port_of

SOURCE = str(Path(nmos_ref.__file__).resolve().parents[1])  # the nmos_ref under test, installed or not


def parse(*argv: str) -> Settings:
    options = Options()
    options.parse(list(argv))
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
        ({"api_versions": ["v2.0"]}, "api_versions has v2.0, which is not supported"),
        ({"log_level": "loud"}, "log_level"),
        ({"listen": []}, "listen must be a non-empty list"),
        ([1, 2], "JSON object"),
    ], ids=["unknown_setting", "expiry_not_a_number", "unsupported_version", "bad_log_level", "listen_empty",
            "not_an_object"])
    def test_bad_config_files_name_the_problem(self, tmp_path: Path, content: Any, message: str) -> None:
        config = tmp_path / "nmos.json"
        config.write_text(json.dumps(content))
        with pytest.raises(usage.UsageError, match=re.escape(message)):
            parse("--config", str(config))

    @cases("key,value", [
        ("listen", "tcp:8235"), ("node_listen", "tcp:8236"), ("api_versions", "v1.3"),
        ("registries", "http://127.0.0.1:8235"), ("mdns_interfaces", "127.0.0.1"), ("dns_servers", "127.0.0.1"),
        ("auth_issuers", "https://auth.example.com"),
    ])
    def test_a_list_setting_given_as_a_string_is_refused_alike(self, tmp_path: Path, key: str, value: str) -> None:
        """docs/configuration.md: every list setting takes a JSON list, even of one item; a string is refused with
        the list to write instead (before, api_versions, registries, mdns_interfaces, dns_servers and auth_issuers
        took a string while listen and node_listen refused one)."""
        config = tmp_path / "nmos.json"
        config.write_text(json.dumps({key: value}))
        expected = f'{config}: {key} must be a list, even of one item: ["{value}"], not the string "{value}"'
        with pytest.raises(usage.UsageError, match=re.escape(expected)):
            parse("--config", str(config))
        config.write_text(json.dumps({key: [value]}))
        assert getattr(parse("--config", str(config)), key) == [value]

    def test_tls_certificates_are_checked_at_start_without_an_ssl_listener(self, tmp_path: Path) -> None:
        """docs/configuration.md says tls_certificates are checked at start: a missing file stops the start even
        when no ssl: listener uses the certificates yet (before, nothing read them then)."""
        chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
        config = tmp_path / "nmos.json"
        config.write_text(json.dumps({"tls_certificates": [{"certificate": str(chain), "key": str(key)}]}))
        with pytest.raises(usage.UsageError, match=re.escape(f"tls_certificates (in {config}): cannot read the TLS "
                                                             f"certificate chain {chain}: No such file or directory")):
            parse("registry", "--config", str(config))
        chain.write_text("-----BEGIN CERTIFICATE-----\n")
        key.write_text("not a key\n")
        with pytest.raises(usage.UsageError, match=re.escape(f"the TLS private key {key} holds no PEM block")):
            parse("registry", "--config", str(config))
        key.write_text("-----BEGIN PRIVATE KEY-----\n")
        assert parse("registry", "--config", str(config)).tls_certificates[0]["key"] == str(key)

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
        with pytest.raises(usage.UsageError, match="--log-level must be one of"):
            parse("--log-level", "chatty")

    @cases("argv,message", [
        (("registry", "--expiry", "0"), "--expiry must be a number of seconds from 1 to 3600, not 0"),
        (("--log-level", "chatty", "registry"), "--log-level must be one of debug, info, warn, error, critical, "
                                                "not 'chatty'"),
        (("--api-versions", "v1.3,v9.9"), "--api-versions has v9.9, which is not supported"),
        (("node", "--listen", "pigeon:1"), "--listen 'pigeon:1' is not a strports description"),
        (("node", "--heartbeat-interval", "0"), "--heartbeat-interval must be a number of seconds from 1 to 1000"),
        (("--dns-sd", "mdns"), "--dns-sd must be one of both, multicast, unicast, off, not 'mdns'"),
        (("--mdns-interface", "eth0", "registry"), "--mdns-interface: 'eth0' is not an address"),
        (("node", "--registry", "ftp://r"), "--registry: "),
    ], ids=["expiry", "log_level", "api_versions", "node_listen", "heartbeat", "dns_sd", "mdns_interface",
            "registry"])
    def test_a_bad_flag_is_named_as_typed(self, argv: tuple[str, ...], message: str) -> None:
        """issue 15: `--expiry 0` said `registration_expiry_interval must be ...`, a name the user never typed."""
        with pytest.raises(usage.UsageError) as raised:
            parse(*argv)
        assert str(raised.value).startswith(message), str(raised.value)

    def test_a_bad_key_in_the_file_is_named_with_the_file(self, tmp_path: Path) -> None:
        config = tmp_path / "nmos.json"
        config.write_text(json.dumps({"registration_expiry_interval": 0, "listen": ["pigeon:1"]}))
        with pytest.raises(usage.UsageError, match=re.escape(f"{config}: registration_expiry_interval must be a "
                                                             f"number of seconds from 1 to 3600, not 0")):
            parse("registry", "--config", str(config))
        config.write_text(json.dumps({"listen": ["pigeon:1"]}))
        with pytest.raises(usage.UsageError, match=re.escape(f"listen (in {config}) 'pigeon:1' is not a strports")):
            parse("registry", "--config", str(config))

    def test_twistd_sees_the_message_first_and_a_pointer_to_help(self) -> None:
        """What twistd calls (parseOptions) says the error in one line and where the options are, not the help
        text, and exits with status 2 (twistd prints its whole help before a UsageError's message)."""
        told = io.StringIO()
        self.patch(sys, "stderr", told)
        with pytest.raises(UsageExit) as raised:
            Options().parseOptions(["registry", "--expiry", "0"])
        assert raised.value.code == 2
        assert told.getvalue() == ("twistd nmos-ref registry: --expiry must be a number of seconds from 1 to 3600, "
                                   "not 0\nSee 'twistd nmos-ref registry --help' for the options.\n")
        told.truncate(0)
        told.seek(0)
        with pytest.raises(UsageExit):
            Options().parseOptions(["--expiri", "5"])
        assert told.getvalue().startswith("twistd nmos-ref: option --expiri not recognized\n")

    def test_the_store(self, tmp_path: Path) -> None:
        assert parse().store == "memory" and parse().store_prefix == "/nmos-ref/"
        assert parse("registry", "--store", "etcd://127.0.0.1:2379,[::1]:2379").store == \
            "etcd://127.0.0.1:2379,[::1]:2379"
        config = tmp_path / "nmos.json"
        config.write_text(json.dumps({"store": "etcd://etcd.example:2379", "store_prefix": "/facility-a/"}))
        settings = parse("--config", str(config))
        assert settings.store == "etcd://etcd.example:2379" and settings.store_prefix == "/facility-a/"
        for bad in ("etcd://127.0.0.1", "http://127.0.0.1:2379", "etcd://a:1,", "redis://a:1"):
            with pytest.raises(usage.UsageError, match="--store must be"):
                parse("--store", bad)
        config.write_text(json.dumps({"store_prefix": "no-slashes"}))
        with pytest.raises(usage.UsageError, match="store_prefix"):
            parse("--config", str(config))
        with pytest.raises(usage.UsageError, match="--store"):
            parse("node", "--store", "etcd://127.0.0.1:2379")

    def test_help_lists_the_options_and_the_subcommand(self) -> None:
        text = str(Options())
        for word in ("--listen", "--config", "--expiry", "--host-name", "--log-level", "--api-versions", "registry"):
            assert word in text

    def test_the_readme_table_lists_every_option(self) -> None:
        """README.md's command-line table names exactly the options the command line takes."""
        readme = Path(SOURCE) / "README.md"
        if not readme.is_file():
            raise SkipTest("runs from the source tree only (README.md is not installed)")
        rows = [line.split("|")[1] for line in readme.read_text(encoding="utf-8").splitlines()
                if line.startswith("| `--")]
        documented = set(re.findall(r"--[a-z][a-z-]+", " ".join(rows)))
        taken = set(re.findall(r"--[a-z][a-z-]+", str(Options()))) - {"--help"}
        assert documented == taken, (sorted(documented - taken), sorted(taken - documented))

    def test_each_role_s_help_lists_only_its_options(self) -> None:
        """issue 15: `registry --help` listed the Node's options and `node --help` the registry's."""
        def flags(options: usage.Options) -> set[str]:
            return set(re.findall(r"--[a-z][a-z-]+", str(options)))

        node_only = {"--registry", "--node-file", "--seed", "--heartbeat-interval", "--auth-client-method",
                     "--auth-state-dir", "--node-listen"}
        registry_only = {"--expiry", "--pri"}
        registry_help, node_help, both = flags(RegistryOptions()), flags(NodeOptions()), flags(Options())
        assert registry_help & node_only == set() and registry_only <= registry_help
        assert node_help & registry_only == set() and node_only - {"--node-listen"} <= node_help
        assert node_only | registry_only <= both
        for common in ("--listen", "--config", "--log-level", "--api-versions", "--auth", "--dns-sd", "--version"):
            assert common in registry_help & node_help & both, common

    @cases("argv,message", [
        (("--seed", "x", "registry"), "--seed is not for 'registry', which runs no Node"),
        (("--expiry", "20", "node"), "--expiry is not for 'node', which runs no registry"),
    ], ids=["node_flag_before_registry", "registry_flag_before_node"])
    def test_a_flag_of_the_other_role_is_refused_before_the_subcommand(self, argv: tuple[str, ...],
                                                                      message: str) -> None:
        with pytest.raises(usage.UsageError, match=re.escape(message)):
            parse(*argv)
        with pytest.raises(usage.UsageError, match="--seed"):
            parse("registry", "--seed", "x")  # after the subcommand: not an option of that subcommand at all

    def test_version_shows_nmos_ref_and_the_is04_versions(self) -> None:
        """issue 15: `twistd nmos-ref --version` showed only Twisted's version."""
        from twisted import version as twisted_version

        import nmos_ref

        for argv in (["--version"], ["registry", "--version"], ["node", "--version"]):
            shown = io.StringIO()
            self.patch(sys, "stdout", shown)
            with pytest.raises(SystemExit) as raised:
                Options().parse(argv)
            assert raised.value.code == 0
            lines = shown.getvalue().splitlines()
            assert lines[0] == (f"nmos-ref {nmos_ref.__version__}: AMWA NMOS IS-04 v1.0, v1.1, v1.2, v1.3 "
                                f"(Registration, Query and Node APIs)"), lines
            assert lines[1].startswith(f"Twisted {twisted_version.short()}, Python 3."), lines


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
        # Said once the port is open, with the address it really has.
        assert (f"nmos-ref: registry serving IS-04 v1.0, v1.1, v1.2, v1.3 at http://127.0.0.1:{port}/; Nodes "
                f"expire after 12 s").encode() in process.output, process.output.decode(errors="replace")

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


def run_twistd(*argv: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`twistd -n nmos-ref ARGV` to its end, as a user runs it (this interpreter's twistd, the nmos_ref under test)."""
    twistd = str(Path(sys.executable).with_name("twistd"))
    env = {**os.environ, "PYTHONPATH": SOURCE}
    return subprocess.run([twistd, "-n", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class StartFailureTests(SocketTest):
    """issue 15: a setting that cannot be used at start is one line naming it and a non-zero exit, never a
    traceback, and nothing says "serving" before the APIs listen. Real twistd processes on loopback."""

    def busy_port(self) -> int:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        return taken.getsockname()[1]

    @cases("role", ["registry", "node"])
    def test_a_port_in_use_is_one_line_naming_it(self, role: str, tmp_path: Path) -> None:
        port = self.busy_port()
        setting = {"registry": "listen", "node": "node_listen"}[role]
        done = run_twistd("nmos-ref", role, "--listen", f"tcp:{port}:interface=127.0.0.1", "--dns-sd", "off",
                          *(["--registry", "http://127.0.0.1:9"] if role == "node" else []), cwd=tmp_path)
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        said = [line for line in output.splitlines() if "cannot" in line]
        assert len(said) == 1 and said[0].endswith(
            f"[nmos_ref.wiring.tree#critical] nmos-ref cannot start: cannot listen on tcp:{port}:interface=127.0.0.1 "
            f"({setting}): Address already in use (another process listens there; stop it or choose another "
            f"port)"), output
        assert "Traceback" not in output and "serving" not in output, output
        assert list(tmp_path.iterdir()) == [], "twistd left its pid file behind"

    @cases("argv,message", [
        (("registry", "--listen", "tcp:99999:interface=127.0.0.1"),
         "twistd nmos-ref registry: --listen 'tcp:99999:interface=127.0.0.1': port 99999 is not from 0 to 65535"),
        (("registry", "--listen", "tcp:0:interface=127.0.0.1", "--mdns-interface", "192.0.2.254"),
         "twistd nmos-ref registry: --mdns-interface: 192.0.2.254 is not an address of this machine"),
        (("registry", "--expiry", "0"),
         "twistd nmos-ref registry: --expiry must be a number of seconds from 1 to 3600, not 0"),
    ], ids=["port_out_of_range", "mdns_interface_not_here", "usage_error"])
    def test_a_bad_setting_stops_before_anything_listens(self, argv: tuple[str, ...], message: str,
                                                         tmp_path: Path) -> None:
        done = run_twistd("nmos-ref", *argv, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        lines = done.stderr.splitlines()
        assert lines[0].startswith(message) and lines[1:] == [
            f"See 'twistd nmos-ref {argv[0]} --help' for the options."], done.stderr
        assert done.stdout == "", done.stdout  # no help text, no log: nothing started


class ProcessTreeStartTests(UnitTest):
    """A setting found unusable while the tree starts (mDNS that cannot join its interfaces, a port taken) is one
    critical line and CannotStart: status 1, no traceback, twistd's clean-up still done."""

    @cases("phase", ["privilegedStartService", "startService"])
    def test_a_config_error_while_starting_is_one_critical_line(self, phase: str) -> None:
        from twisted.application.service import Service
        from twisted.logger import LogLevel, globalLogPublisher

        from nmos_ref.config import ConfigError
        from nmos_ref.wiring.tree import CannotStart, ProcessTree

        from nmos_ref.discovery import InterfaceUnusable

        class Refuses(Service):  # a listener refuses while privileged, mDNS on start
            def fail(self) -> None:
                raise (ConfigError if phase == "privilegedStartService" else InterfaceUnusable)(
                    "mDNS cannot use the interfaces 192.0.2.254 (...)")

        broken = Refuses()
        setattr(broken, phase, broken.fail)
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        tree = ProcessTree([broken], None, None)
        with pytest.raises(CannotStart) as raised:
            getattr(tree, phase)()
        assert raised.value.code == 1 and isinstance(raised.value, Exception)  # twistd's clean-up catches Exception
        mine = [e for e in seen if e.get("log_namespace") == "nmos_ref.wiring.tree"]
        assert [(e["log_level"], e["reason"]) for e in mine] == [
            (LogLevel.critical, "mDNS cannot use the interfaces 192.0.2.254 (...)")]


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def wait_for(port: int, process: subprocess.Popen[str], timeout: float = 30) -> bool:
    """Whether http://127.0.0.1:PORT/ answers before `process` ends or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                answer.read()
                return True
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def serve_then_stop(argv: list[str], port: int, cwd: Path, linger: float = 0.0) -> tuple[int, str]:
    """Run `twistd -n --pidfile= nmos-ref ARGV` until http://127.0.0.1:PORT/ answers (and `linger` seconds more),
    then stop it with SIGTERM; its exit status and everything it wrote."""
    twistd = str(Path(sys.executable).with_name("twistd"))
    process = subprocess.Popen([twistd, "-n", "--pidfile=", "nmos-ref", *argv], cwd=cwd,
                               env={**os.environ, "PYTHONPATH": SOURCE}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(port, process)
        time.sleep(linger)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    return process.returncode, output


LEVELS = ("debug", "info", "warn", "error", "critical")


class LogLevelTests(SocketTest):
    """issue 15: --log-level holds from the process's first line to its last, for every role (`nmos-ref node`
    ignored it; the registry let through what came before its services started and after they stopped)."""

    def levels(self, output: str) -> set[str]:
        return set(re.findall(r"^\S+ \[[^\]]*#(" + "|".join(LEVELS) + r")\] ", output, re.M))

    def test_node_at_warn(self, tmp_path: Path) -> None:
        port, closed = free_port(), free_port()
        status, output = serve_then_stop(["node", "--listen", f"tcp:{port}:interface=127.0.0.1", "--dns-sd", "off",
                                          "--registry", f"http://127.0.0.1:{closed}", "--log-level", "warn"],
                                         port, tmp_path, linger=1.5)
        assert status in (-signal.SIGTERM, 143), output
        # "No registry could be used" warnings get through; no info or debug line at all.
        assert self.levels(output) == {"warn"}, output
        assert all(re.match(r"^\S+ \[[^\]]*#warn\] ", line) for line in output.splitlines()), output

    def test_registry_at_error_says_nothing_while_all_is_well(self, tmp_path: Path) -> None:
        port = free_port()
        status, output = serve_then_stop(["registry", "--listen", f"tcp:{port}:interface=127.0.0.1", "--dns-sd",
                                          "off", "--log-level", "error"], port, tmp_path)
        assert status in (-signal.SIGTERM, 143), output
        assert output == "", output  # not twistd's start-up lines, not the services' start or stop lines

    def test_debug_shows_debug_lines_from_the_start(self, tmp_path: Path) -> None:
        port = free_port()
        status, output = serve_then_stop(["registry", "--listen", f"tcp:{port}:interface=127.0.0.1", "--dns-sd",
                                          "off", "--log-level", "debug"], port, tmp_path)
        assert {"debug", "info"} <= self.levels(output), output

    def test_json_lines_for_log_collectors(self, tmp_path: Path) -> None:
        from twisted.logger import LogLevel, eventFromJSON

        port = free_port()
        status, output = serve_then_stop(["registry", "--listen", f"tcp:{port}:interface=127.0.0.1", "--dns-sd",
                                          "off", "--log-format", "json"], port, tmp_path)
        assert status in (-signal.SIGTERM, 143), output
        events = [json.loads(line) for line in output.splitlines()]  # every line one JSON object
        assert len(events) > 3
        serving = [event for event in events if event.get("log_namespace") == "nmos_ref.wiring.registry"]
        assert serving[0]["text"] == (f"nmos-ref: registry serving IS-04 v1.0, v1.1, v1.2, v1.3 at "
                                      f"http://127.0.0.1:{port}/; Nodes expire after 12 s")
        assert serving[0]["urls"] == f"http://127.0.0.1:{port}/" and serving[0]["log_level"]["name"] == "info"
        assert eventFromJSON(json.dumps(serving[0]))["log_level"] is LogLevel.info  # twisted.logger reads it back


class PidFileTests(SocketTest):
    """issue 15: `twistd -n nmos-ref registry` and `twistd -n nmos-ref node` started in one folder clashed on
    twistd.pid; each role now has its own pid file unless --pidfile says otherwise."""

    def test_twistd_takes_one_pid_file_per_role(self) -> None:
        from twisted.scripts._twistd_unix import ServerOptions

        for argv, name in ((["nmos-ref", "registry"], "nmos-ref-registry.pid"),
                           (["nmos-ref", "node"], "nmos-ref-node.pid"), (["nmos-ref"], "nmos-ref.pid"),
                           (["--pidfile=mine.pid", "nmos-ref", "node"], "mine.pid")):
            config = ServerOptions()
            config.parseOptions(["-n", *argv])
            assert config["pidfile"] == os.path.abspath(name), argv
        config = ServerOptions()
        config.parseOptions(["-n", "--pidfile=", "nmos-ref", "registry"])
        assert config["pidfile"] == ""

    def test_a_registry_and_a_node_in_one_folder(self, tmp_path: Path) -> None:
        twistd = str(Path(sys.executable).with_name("twistd"))
        env = {**os.environ, "PYTHONPATH": SOURCE}
        registry_port, node_port = free_port(), free_port()
        roles = [["registry", "--listen", f"tcp:{registry_port}:interface=127.0.0.1"],
                 ["node", "--listen", f"tcp:{node_port}:interface=127.0.0.1", "--registry",
                  f"http://127.0.0.1:{registry_port}"]]
        processes = []
        try:
            for role, port in zip(roles, (registry_port, node_port)):
                processes.append(subprocess.Popen([twistd, "-n", "nmos-ref", *role, "--dns-sd", "off"], cwd=tmp_path,
                                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                  text=True))
                assert wait_for(port, processes[-1]), processes[-1].communicate(timeout=30)[0]
            assert sorted(path.name for path in tmp_path.iterdir()) == ["nmos-ref-node.pid",
                                                                       "nmos-ref-registry.pid"]
            assert int((tmp_path / "nmos-ref-node.pid").read_text()) == processes[1].pid
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                process.communicate(timeout=30)
        assert list(tmp_path.iterdir()) == []  # twistd removes its own on a clean stop


class LogOutputTests(UnitTest):
    """nmos_ref.wiring.log_output: the observer twistd is offered, where and how it writes."""

    def test_the_filter_and_the_formats(self) -> None:
        from twisted.logger import Logger

        from nmos_ref.wiring.log_output import filtered, stream_observer

        for log_format in ("text", "json"):
            out = io.StringIO()
            logger = Logger(namespace="nmos_ref.test", observer=filtered(stream_observer(out, log_format), "warn"))
            logger.info("quiet {n}", n=1)
            logger.warn("loud {n}", n=2)
            lines = out.getvalue().splitlines()
            assert len(lines) == 1 and "loud 2" in lines[0] and "quiet" not in out.getvalue(), lines
            if log_format == "json":
                assert json.loads(lines[0])["text"] == "loud 2"

    def test_where_twistd_would_write(self, tmp_path: Path) -> None:
        from nmos_ref.wiring.log_output import twistd_output

        assert twistd_output({"logfile": "-", "nodaemon": False}, "text") is None  # twistd refuses this itself
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        twistd_output({"logfile": None, "nodaemon": True}, "text")({"log_format": "hello", "log_time": 0.0})
        assert out.getvalue().endswith("hello\n")
        self.patch(signal, "signal", lambda *args: None)  # the SIGUSR1 rotation handler twistd would set too
        self.patch(signal, "getsignal", lambda number: None)
        twistd_output({"logfile": str(tmp_path / "nmos.log"), "nodaemon": True}, "json")(
            {"log_format": "to {where}", "where": "a file", "log_time": 0.0})
        assert json.loads((tmp_path / "nmos.log").read_text())["text"] == "to a file"

    def test_the_process_tree_offers_its_observer_to_twistd_s_application(self) -> None:
        from twisted.application.service import Application
        from twisted.logger import ILogObserver

        from nmos_ref.wiring.tree import ProcessTree

        def observer(event: dict[str, Any]) -> None:
            return None

        application = Application("nmos-ref")
        ProcessTree([], None, None, observer).setServiceParent(application)
        assert application.getComponent(ILogObserver) is observer
