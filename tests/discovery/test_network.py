"""DNS-SD for real, on loopback only: python-zeroconf on 127.0.0.1 (each advert takes about 1.6 s of probing, so
these are few), and unicast DNS-SD against a twisted.names server on 127.0.0.1. Nothing sleeps: every wait is on an
event, with a time limit."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from tests.support.cases import SocketTest
from tests.support.dnssd import DOMAIN, Zone, serve_zone
from nmos_ref.config import Settings
from nmos_ref.discovery import NODE, QUERY, REGISTER, REGISTRATION, Advert, Instance, InterfaceUnusable
from nmos_ref.discovery.mdns import MulticastDiscovery
from nmos_ref.discovery.unicast import UnicastDiscovery, make_resolver
from nmos_ref.wiring.listeners import listening
from nmos_ref.wiring.node import build_node
from nmos_ref.wiring.registry import build_registry

LOOPBACK = "tcp:0:interface=127.0.0.1"
LIMIT = 15.0  # seconds any one awaited event may take before the test fails


class Watch:
    """Browse events as they come, and Deferreds for the first one that matches."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Instance]] = []
        self._waiting: list[tuple[Callable[[str, Instance], bool], defer.Deferred[Instance]]] = []

    def callbacks(self) -> tuple[Any, Any, Any]:
        return (lambda i: self._event("added", i), lambda i: self._event("updated", i),
                lambda i: self._event("removed", i))

    def _event(self, kind: str, instance: Instance) -> None:
        self.events.append((kind, instance))
        for entry in list(self._waiting):
            if entry[0](kind, instance):
                self._waiting.remove(entry)
                entry[1].callback(instance)

    def when(self, test: Callable[[str, Instance], bool], limit: float = LIMIT) -> defer.Deferred[Instance]:
        for kind, instance in self.events:
            if test(kind, instance):
                return defer.succeed(instance)
        waiting: defer.Deferred[Instance] = defer.Deferred()
        self._waiting.append((test, waiting))
        return waiting.addTimeout(limit, reactor)


async def listening_port(service: Any) -> int:
    listeners = [child for child in service if isinstance(child, StreamServerEndpointService)]
    [(_, address)] = await listening(listeners)
    return address.port


class MulticastTests(SocketTest):
    """python-zeroconf on 127.0.0.1."""

    async def test_mdns_advertise_update_and_withdraw_seen_from_another_instance(self) -> None:
        mine, theirs = (MulticastDiscovery(reactor, ["127.0.0.1"], f"nmos-ref-test-{n}") for n in "ab")
        mine.startService()
        theirs.startService()
        name = f"test {uuid.uuid4().hex[:12]}"  # nothing else on loopback has it
        seen = Watch()
        browsing = theirs.browse(REGISTRATION, *seen.callbacks())
        try:
            # The legacy type is 18 characters: python-zeroconf advertises it only with strict=False.
            advert = Advert(REGISTRATION, name, 18235, ("127.0.0.1",),
                            {"pri": "5", "api_ver": "v1.2", "api_proto": "http"})
            await mine.advertise(advert)
            found = await seen.when(lambda kind, i: kind == "added" and i.name == name)
            assert (found.port, found.addresses, found.host) == (18235, ("127.0.0.1",), "nmos-ref-test-a.local")
            assert found.txt == {"pri": "5", "api_ver": "v1.2", "api_proto": "http"} and found.via == "mdns"
            await mine.update_txt(advert, {**advert.txt, "pri": "6"})
            changed = await seen.when(lambda kind, i: kind == "updated" and i.name == name)
            assert changed.txt["pri"] == "6"
            await mine.withdraw(advert)
            await seen.when(lambda kind, i: kind == "removed" and i.name == name)
        finally:
            browsing.stop()
            await mine.stopService()
            await theirs.stopService()

    def test_mdns_on_an_address_this_machine_lacks_stops_the_start_saying_so(self) -> None:
        discovery = MulticastDiscovery(reactor, ["198.51.100.254"], "nmos-ref-test")  # TEST-NET-2: on no interface here
        with pytest.raises(InterfaceUnusable,
                           match=r"mDNS cannot use the interfaces 198\.51\.100\.254 .*set mdns_interfaces"):
            discovery.startService()
        assert not discovery.running

    async def test_node_and_registry_over_mdns(self) -> None:
        """A Node alone goes peer-to-peer; a registry appears; the Node registers with it and withdraws ver_*."""
        mdns = {"dns_sd": "multicast", "mdns_interfaces": ["127.0.0.1"]}
        observer = MulticastDiscovery(reactor, ["127.0.0.1"], "nmos-ref-test-observer")
        observer.startService()
        nodes, registries = Watch(), Watch()
        browsing = [observer.browse(NODE, *nodes.callbacks())] + [
            observer.browse(service_type, *registries.callbacks()) for service_type in (REGISTER, REGISTRATION, QUERY)]
        # pri 0, and a Node that takes nothing else: other registries on this machine's loopback (default pri 10) cannot
        # lure it away
        node = build_node(Settings(node_listen=[LOOPBACK], node_seed=str(uuid.uuid4()), max_registry_pri=0, **mdns),
                          reactor, reactor)
        registry = build_registry(Settings(listen=[LOOPBACK], pri=0, **mdns), reactor, reactor)
        node.startService()
        try:
            await node.ready
            node_port = node.model.endpoints[0].port
            alone = await nodes.when(lambda kind, i: i.port == node_port and "ver_slf" in i.txt)
            assert alone.addresses == ("127.0.0.1",) and alone.txt["api_ver"] == "v1.0,v1.1,v1.2,v1.3"
            assert {key: alone.txt[key] for key in ("ver_slf", "ver_src", "ver_flw", "ver_dvc", "ver_snd",
                                                    "ver_rcv", "api_proto", "api_auth")} == {
                "ver_slf": "0", "ver_src": "0", "ver_flw": "0", "ver_dvc": "0", "ver_snd": "0", "ver_rcv": "0",
                "api_proto": "http", "api_auth": "false"}
            assert node.client.state == "no registry"

            registry.startService()
            port = await listening_port(registry)
            for service_type in (REGISTER, REGISTRATION, QUERY):
                advert = await registries.when(lambda kind, i: i.port == port and i.service_type == service_type)
                assert advert.addresses == ("127.0.0.1",)
                assert advert.txt == {"api_proto": "http", "api_ver": "v1.0,v1.1,v1.2,v1.3", "api_auth": "false",
                                      "pri": "0"}
            await nodes.when(lambda kind, i: kind == "updated" and i.port == node_port and "ver_slf" not in i.txt)
            await node.client.synced()
            assert node.client.current.candidate.url == f"http://127.0.0.1:{port}"
            assert registry.registry.get("node", node.model.node_id) is not None
        finally:
            await node.stopService()
            if registry.running:
                await registry.stopService()
            for one in browsing:
                one.stop()
            await observer.stopService()


class UnicastTests(SocketTest):
    """Unicast DNS-SD against a DNS server on loopback: a twisted.names server on 127.0.0.1, serving a zone each test
    fills."""

    def setUp(self) -> None:
        served = Zone()
        port = serve_zone(served, reactor)
        served.port = port.getHost().port
        self.zone = served
        self.addCleanup(port.stopListening)

    async def test_unicast_browse_ptr_srv_txt_and_a_records(self, zone: Any) -> None:
        clock = Clock()  # when to ask again; the questions themselves go over loopback
        resolver = make_resolver([("127.0.0.1", zone.port)], reactor)
        seen = Watch()
        browsing = UnicastDiscovery(resolver, DOMAIN, clock).browse(REGISTER, *seen.callbacks())
        try:
            await browsing.ready  # NXDOMAIN: nothing yet, asked again in 1 s
            assert seen.events == [] and clock.getDelayedCalls()[0].getTime() == 1.0
            zone.service(REGISTER, "reg-api-1", 5101, {"api_ver": "v1.3", "pri": "10"}, host="mocks")
            zone.service(REGISTER, "reg-api-2", 5102, {"api_ver": "v1.3", "pri": "20"}, host="mocks")
            clock.advance(1)
            first = await seen.when(lambda kind, i: i.name == "reg-api-1")
            await seen.when(lambda kind, i: i.name == "reg-api-2")
            assert (first.host, first.port, first.addresses, first.domain, first.via) == (
                f"mocks.{DOMAIN}", 5101, ("127.0.0.1",), DOMAIN, "unicast")
            assert first.txt == {"api_ver": "v1.3", "pri": "10"} and first.full_name == f"reg-api-1.{REGISTER}.{DOMAIN}"
            zone.service(REGISTER, "reg-api-1", 5101, {"api_ver": "v1.3", "pri": "5"}, host="mocks")
            zone.withdraw(REGISTER, "reg-api-2")
            clock.advance(60)  # the records' TTL
            assert (await seen.when(lambda kind, i: kind == "updated")).txt["pri"] == "5"
            await seen.when(lambda kind, i: kind == "removed" and i.name == "reg-api-2")
        finally:
            browsing.stop()

    async def test_node_registers_with_a_registry_found_by_unicast_dns_sd(self, zone: Any) -> None:
        registry = build_registry(Settings(listen=[LOOPBACK], dns_sd="off"), reactor, reactor)
        registry.startService()
        node = build_node(Settings(node_listen=[LOOPBACK], node_seed=str(uuid.uuid4()), dns_sd="unicast",
                                   dns_servers=[f"127.0.0.1:{zone.port}"], dns_sd_domain=DOMAIN), reactor, reactor)
        try:
            port = await listening_port(registry)
            zone.service(REGISTRATION, "decoy", 5101, {"api_ver": "v9.0", "api_proto": "http", "pri": "0"})
            zone.service(REGISTER, "ours", port, {"api_ver": "v1.2,v1.3", "api_proto": "http", "api_auth": "false",
                                                  "pri": "10"})
            zone.service(REGISTRATION, "ours", port, {"api_ver": "v1.2,v1.3", "api_proto": "http", "api_auth": "false",
                                                      "pri": "10"})
            node.startService()
            await node.ready
            await node.client.synced()
            assert node.client.current.candidate.url == f"http://127.0.0.1:{port}"
            assert node.client.current.candidate.origin == "unicast" and node.client.current.version == "v1.3"
            assert registry.registry.get("node", node.model.node_id) is not None
        finally:
            await node.stopService()
            await registry.stopService()
