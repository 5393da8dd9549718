"""What a process imports (nmos_ref/wiring/footprint.py and the lazy imports of nmos_ref/wiring): only the stacks its
settings use. Each case builds the service tree the way `twistd nmos-ref` does, in a fresh interpreter, and reads its
sys.modules; memory itself is measured by the benchmark, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nmos_ref
from nmos_ref.config import Settings
from nmos_ref.wiring.footprint import uses_tls, without_tls
from tests.support.cases import UnitTest, cases

SOURCE = str(Path(nmos_ref.__file__).resolve().parents[1])  # the nmos_ref under test, installed or not

# Options parsed and the tree built as by `twistd nmos-ref` (twistd's own modules first), the reactor not run.
BUILD = """
import json, sys
import twisted.scripts.twistd
from nmos_ref.service import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
makeService(options)
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""

LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]
TLS = ["OpenSSL", "cryptography", "service_identity", "twisted.internet.ssl"]
AUTH = ["jwt", "nmos_ref.auth.guard", "nmos_ref.auth.keys", "nmos_ref.wiring.auth"]
CLIENT = ["treq", "twisted.web.client"]  # the HTTP client of the Node, the key fetcher and the OCSP stapler
OCSP = ["nmos_ref.tls.ocsp"]
MDNS = ["zeroconf", "nmos_ref.discovery.mdns"]
UNICAST = ["twisted.names.client", "nmos_ref.discovery.unicast"]
NODE = ["nmos_ref.wiring.node", "nmos_ref.api.node", "nmos_ref.node.registration_client"]
WEBSOCKETS = ["autobahn", "nmos_ref.api.query_sockets"]  # loaded when the first subscription socket opens
NEVER = ["hypothesis", "pytest", "tests"]


def modules_of(*arguments: str) -> set[str]:
    """sys.modules of a fresh interpreter that built the service tree of `twistd nmos-ref <arguments>`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", BUILD, *arguments], capture_output=True, text=True, env=env,
                          cwd=SOURCE, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def missing(modules: set[str], names: list[str]) -> list[str]:
    return [name for name in names if name not in modules]


def present(modules: set[str], names: list[str]) -> list[str]:
    return [name for name in names if name in modules]


class FootprintTests(UnitTest):
    """Issue 13 (idle footprint): an empty registry without auth, TLS or mDNS loads none of their stacks."""

    def test_plain_registry_loads_no_optional_stack(self) -> None:
        modules = modules_of("registry", *LISTEN, "--dns-sd", "off")
        assert "nmos_ref.api.query" in modules and "klein" in modules  # it did build the registry
        assert present(modules, TLS + AUTH + CLIENT + OCSP + MDNS + UNICAST + NODE + WEBSOCKETS + NEVER) == []

    def test_mdns_loads_zeroconf_and_nothing_else(self) -> None:
        modules = modules_of("registry", *LISTEN, "--dns-sd", "multicast")
        assert missing(modules, MDNS) == []
        assert present(modules, TLS + AUTH + CLIENT + OCSP + UNICAST + NODE + WEBSOCKETS + NEVER) == []

    def test_auth_loads_the_resource_server_and_tls(self) -> None:
        modules = modules_of("registry", *LISTEN, "--dns-sd", "off", "--auth", "--auth-issuers",
                             "https://auth.example.com")
        assert missing(modules, TLS + AUTH + CLIENT) == []  # keys come from https authorization servers
        assert present(modules, OCSP + MDNS + NODE + WEBSOCKETS + NEVER) == []

    def test_registry_and_node_load_the_client_and_tls_but_not_auth(self) -> None:
        modules = modules_of(*LISTEN, "--node-listen", "tcp:0:interface=127.0.0.1", "--dns-sd", "off")
        assert missing(modules, TLS + CLIENT + NODE) == []  # a Receiver's manifest_href may be an https URL
        assert present(modules, AUTH + OCSP + MDNS + NEVER) == []


class UsesTlsTests(UnitTest):
    """When a process keeps pyOpenSSL."""

    @cases("settings, node, expected", [
        (Settings(), False, False),
        (Settings(), True, True),
        (Settings(auth=True), False, True),
        (Settings(listen=["tcp:0", "ssl:8443:interface=127.0.0.1"]), False, True),
        (Settings(node_listen=["ssl:8443"]), False, False),  # the Node's listeners count only with a Node
    ], ids=["registry", "node", "auth", "ssl_listener", "node_listeners_without_a_node"])
    def test_uses_tls(self, settings: Settings, node: bool, expected: bool) -> None:
        assert uses_tls(settings, node=node) is expected

    def test_a_process_whose_reactor_is_running_keeps_tls(self) -> None:
        """The test process imported the reactor (and with it pyOpenSSL) long ago: nothing is hidden."""
        assert "twisted.internet.tcp" in sys.modules
        assert without_tls(Settings(), node=False) is False
        assert sys.modules.get("OpenSSL") is not None
