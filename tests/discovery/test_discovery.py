"""DNS-SD without the network: the fake, the unicast-first browse, what the registry advertises, how settings
become mDNS interfaces and a unicast domain, and the settings themselves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.python import usage

from tests.support.cases import UnitTest, cases
from tests.support.dnssd import registry_advert
from nmos_ref.config import Settings
from nmos_ref.discovery import NODE, QUERY, REGISTER, REGISTRATION, Advert, Unsupported, adverts_for, \
    fits_rfc6763, instance_name, parse_txt
from nmos_ref.discovery.browse import UnicastFirst
from nmos_ref.discovery.fake import FakeDnsSd
from nmos_ref.discovery.registry_advert import RegistryAdvertiser, registry_adverts, registry_types
from nmos_ref.wiring.dnssd import build_dns_sd, interfaces_for, listen_host
from nmos_ref.discovery.unicast import parse_resolv_conf, parse_server
from nmos_ref.service import Options


class Recorder:
    """Browse callbacks that note what happened: ("added", name), ("updated", name), ("removed", name)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.txt: dict[str, dict[str, str]] = {}

    def added(self, instance: Any) -> None:
        self.events.append(("added", instance.name))
        self.txt[instance.name] = dict(instance.txt)

    def updated(self, instance: Any) -> None:
        self.events.append(("updated", instance.name))
        self.txt[instance.name] = dict(instance.txt)

    def removed(self, instance: Any) -> None:
        self.events.append(("removed", instance.name))
        self.txt.pop(instance.name, None)

    def callbacks(self) -> tuple[Any, Any, Any]:
        return self.added, self.updated, self.removed


# --- the fake


class FakeDnsSdTests(UnitTest):
    """The in-memory DNS-SD fake behaves as the real backends do."""

    def test_fake_advertise_update_withdraw_seen_by_every_browser(self) -> None:
        network = FakeDnsSd()
        a, b = network.endpoint("a"), network.endpoint("b")
        seen = Recorder()
        browsing = b.browse(REGISTER, *seen.callbacks())
        assert browsing.ready.called
        advert = registry_advert("192.0.2.1:8235", 5)
        assert a.advertise(advert).called
        a.update_txt(advert, {**advert.txt, "pri": "6"})
        a.withdraw(advert)
        assert seen.events == [("added", advert.name), ("updated", advert.name), ("removed", advert.name)]
        late = Recorder()
        a.advertise(advert)
        b.browse(REGISTER, *late.callbacks())  # what is already advertised is found at once
        assert late.txt == {advert.name: dict(advert.txt)}
        browsing.stop()
        a.withdraw(advert)
        assert seen.events[-1] == ("added", advert.name)  # nothing after stop

    def test_fake_refuses_what_the_real_ones_refuse(self) -> None:
        advert = registry_advert("192.0.2.1:8235")
        failures: list[Any] = []
        FakeDnsSd().endpoint().update_txt(advert, {}).addErrback(failures.append)
        FakeDnsSd("unicast", "example.test").endpoint().advertise(advert).addErrback(failures.append)
        assert failures[0].check(KeyError) and failures[1].check(Unsupported)


# --- unicast first, mDNS otherwise


class UnicastFirstTests(UnitTest):
    """Unicast DNS-SD first, mDNS only while unicast finds nothing."""

    def test_unicast_answers_keep_mdns_off(self) -> None:
        zone, mdns = FakeDnsSd("unicast", "example.test"), FakeDnsSd()
        zone.publish(zone.instance(registry_advert("192.0.2.1:8235", name="uni")))
        mdns.endpoint("tool").advertise(registry_advert("192.0.2.2:8235", name="multi"))
        seen = Recorder()
        browsing = UnicastFirst(zone.endpoint(), mdns.endpoint()).browse([REGISTER, REGISTRATION], *seen.callbacks())
        assert browsing.ready.called
        assert seen.events == [("added", "uni")]  # IS-04: "multicast browsing SHOULD NOT be performed"

    def test_mdns_while_unicast_finds_nothing_and_only_then(self) -> None:
        zone, mdns = FakeDnsSd("unicast", "example.test"), FakeDnsSd()
        tool = mdns.endpoint("tool")
        tool.advertise(registry_advert("192.0.2.2:8235", name="multi"))
        seen = Recorder()
        UnicastFirst(zone.endpoint(), mdns.endpoint()).browse([REGISTER], *seen.callbacks())
        assert seen.events == [("added", "multi")]
        zone.publish(zone.instance(registry_advert("192.0.2.1:8235", name="uni")))
        # Unicast answers now: the mDNS instances go, and mDNS is not browsed any more.
        assert seen.events[1:] == [("removed", "multi"), ("added", "uni")]
        tool.update_txt(registry_advert("192.0.2.2:8235", name="multi"), {"pri": "1"})
        assert len(seen.events) == 3
        zone.unpublish(REGISTER, "uni")
        assert seen.events[3:] == [("removed", "uni"), ("added", "multi")]  # back to mDNS

    def test_without_a_unicast_domain_only_mdns(self) -> None:
        mdns = FakeDnsSd()
        mdns.endpoint("tool").advertise(registry_advert("192.0.2.2:8235", name="multi"))
        seen = Recorder()
        assert UnicastFirst(None, mdns.endpoint()).browse([REGISTER], *seen.callbacks()).ready.called
        assert seen.events == [("added", "multi")]


# --- small pieces


class DiscoveryPiecesTests(UnitTest):
    """TXT records, service types, instance names, resolv.conf, DNS servers and listen addresses."""

    def test_txt_records_parse_as_rfc_6763_says(self) -> None:
        assert parse_txt([b"PRI=10", b"api_ver=v1.2,v1.3", b"pri=20", b"flag", b"=nokey", b"x="]) == {
            "pri": "10", "api_ver": "v1.2,v1.3", "flag": "", "x": ""}

    def test_the_legacy_type_is_too_long_for_rfc_6763(self) -> None:
        assert fits_rfc6763(REGISTER) and fits_rfc6763(QUERY) and fits_rfc6763(NODE)
        assert not fits_rfc6763(REGISTRATION)

    def test_instance_names_fit_a_dns_label(self) -> None:
        assert instance_name("studio-1", 8235) == "nmos-ref studio-1:8235"
        assert len(instance_name("x" * 80, 65535).encode()) == 63

    @cases("text,expected", [
        ("nameserver 127.0.0.1\nsearch testsuite.nmos.tv other.example\noptions timeout:1\n",
         ([("127.0.0.1", 53)], "testsuite.nmos.tv")),
        ("# c\nnameserver 192.0.2.53\nnameserver ::1\ndomain example.com.\n",
         ([("192.0.2.53", 53), ("::1", 53)], "example.com")),
        ("search a.example\ndomain b.example\n", ([], "b.example")),  # the last of search and domain wins
        ("nameserver 10.0.0.1 ; comment\n", ([("10.0.0.1", 53)], None)),
    ])
    def test_resolv_conf(self, text: str, expected: Any) -> None:
        assert parse_resolv_conf(text) == expected

    @cases("text,expected", [
        ("192.0.2.53", ("192.0.2.53", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("::1", ("::1", 53)),
        ("[2001:db8::53]:5353", ("2001:db8::53", 5353)),
    ])
    def test_dns_servers(self, text: str, expected: tuple[str, int]) -> None:
        assert parse_server(text) == expected

    @cases("text", ["dns.example", "127.0.0.1:0", "[::1]x", "1.2.3.4:99999"])
    def test_bad_dns_servers(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_server(text)

    @cases("description,host", [
        ("tcp:8235:interface=127.0.0.1", "127.0.0.1"), (r"tcp:8235:interface=\:\:1", "::1"), ("tcp:8235", ""),
        ("ssl:443:interface=192.0.2.1:privateKey=k.pem", "192.0.2.1"), ("tcp6:80", "::"), ("unix:/tmp/s", None),
    ])
    def test_listen_hosts(self, description: str, host: str | None) -> None:
        assert listen_host(description) == host

    def test_mdns_interfaces_default_to_where_the_apis_listen(self) -> None:
        assert interfaces_for(["tcp:8235:interface=127.0.0.1", "tcp:8236:interface=127.0.0.1"]) == ["127.0.0.1"]
        # python-zeroconf cannot use IPv6 loopback
        assert interfaces_for([r"tcp:8235:interface=\:\:1", "unix:/tmp/s"]) == []

    def test_dns_sd_from_settings(self, tmp_path: Path) -> None:
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\nsearch testsuite.nmos.tv\n")
        clock = Clock()
        loopback = ["tcp:8236:interface=127.0.0.1"]
        both = build_dns_sd(Settings(), reactor, clock, loopback, browse=True, resolv_conf=str(resolv))
        assert both.multicast is not None and both.multicast.interfaces == both.interfaces == ["127.0.0.1"]
        assert both.unicast is not None and both.unicast.domain == "testsuite.nmos.tv"
        assert both.unicast.resolver.servers == [("127.0.0.1", 53)]
        assert build_dns_sd(Settings(), reactor, clock, loopback, browse=False, resolv_conf=str(resolv)).unicast is None
        chosen = build_dns_sd(Settings(dns_sd="unicast", dns_sd_domain="example.test", dns_servers=["127.0.0.1:5353"]),
                              reactor, clock, loopback, browse=True, resolv_conf=str(resolv))
        assert chosen.multicast is None and chosen.unicast.domain == "example.test"
        assert chosen.unicast.resolver.servers == [("127.0.0.1", 5353)]
        assert chosen.browser() is not None
        picked = build_dns_sd(Settings(dns_sd="multicast", mdns_interfaces=["127.0.0.1"]), reactor, clock,
                              ["tcp:8236"], browse=True, resolv_conf=str(resolv))
        assert picked.multicast.interfaces == ["127.0.0.1"] and picked.unicast is None  # as set, not every address
        off = build_dns_sd(Settings(dns_sd="off"), reactor, clock, loopback, browse=True, resolv_conf=str(resolv))
        assert off.multicast is None and off.unicast is None and off.browser() is None
        no_domain = tmp_path / "plain.conf"
        no_domain.write_text("nameserver 127.0.0.1\n")
        assert build_dns_sd(Settings(), reactor, clock, loopback, browse=True,
                            resolv_conf=str(no_domain)).unicast is None


# --- what the registry advertises


class RegistryAdvertTests(UnitTest):
    """What the registry advertises, and when."""

    def test_registry_adverts_for_every_version_served(self) -> None:
        listening = [("http", IPv4Address("TCP", "127.0.0.1", 8235))]
        adverts = registry_adverts(listening, ["v1.0", "v1.1", "v1.2", "v1.3"], 10, False, "studio-1", ["127.0.0.1"])
        assert [advert.service_type for advert in adverts] == [REGISTER, REGISTRATION, QUERY]
        for advert in adverts:
            assert advert.port == 8235 and advert.addresses == ("127.0.0.1",)
            assert advert.name == "nmos-ref studio-1:8235"
            assert advert.txt == {"api_proto": "http", "api_ver": "v1.0,v1.1,v1.2,v1.3", "api_auth": "false",
                                  "pri": "10"}
        assert registry_types(["v1.3"]) == [REGISTER, QUERY]
        assert registry_types(["v1.1", "v1.2"]) == [REGISTRATION, QUERY]
        secure = registry_adverts([("https", IPv4Address("TCP", "0.0.0.0", 443))], ["v1.3"], 0, True, "h",
                                  ["192.0.2.1", "2001:db8::1"])
        assert [(a.addresses, a.txt["api_proto"], a.txt["api_auth"]) for a in secure] == [
            (("192.0.2.1",), "https", "true")] * 2  # a wildcard: the IPv4 interfaces

    def test_one_advert_per_port_with_every_address(self) -> None:
        listening = [("http", IPv4Address("TCP", "192.0.2.1", 80)), ("http", IPv6Address("TCP", "2001:db8::1", 80)),
                     ("http", IPv4Address("TCP", "192.0.2.1", 8080))]
        adverts = adverts_for(NODE, listening, lambda protocol: {"api_proto": protocol}, "h", [])
        assert [(a.port, a.addresses) for a in adverts] == [(80, ("192.0.2.1", "2001:db8::1")), (8080, ("192.0.2.1",))]

    def test_the_registry_advertiser_advertises_once_listening_and_withdraws_on_stop(self) -> None:
        network = FakeDnsSd()
        mine, browser = network.endpoint("registry"), network.endpoint("node")
        seen = Recorder()
        for service_type in (REGISTER, REGISTRATION, QUERY):
            browser.browse(service_type, *seen.callbacks())
        from twisted.internet.defer import Deferred
        where: Deferred[Any] = Deferred()
        advertiser = RegistryAdvertiser(mine, lambda: where, ["v1.2", "v1.3"], 20, False, "reg", ["127.0.0.1"])
        advertiser.startService()
        assert seen.events == []  # not before it listens
        where.callback([("http", IPv4Address("TCP", "127.0.0.1", 18235))])
        assert advertiser.ready.called and len(seen.events) == 3
        assert seen.txt["nmos-ref reg:18235"]["api_ver"] == "v1.2,v1.3"
        advertiser.stopService()
        assert [kind for kind, _ in seen.events[3:]] == ["removed"] * 3


# --- settings and flags


class DnsSdSettingsTests(UnitTest):
    """The DNS-SD settings and command-line flags."""

    def test_dns_sd_defaults(self) -> None:
        settings = Settings()
        assert (settings.dns_sd, settings.mdns_interfaces, settings.dns_sd_domain, settings.dns_servers) == (
            "both", None, None, None)
        assert settings.pri == 10 and settings.peer_to_peer and settings.max_registry_pri == 99

    def test_dns_sd_flags(self) -> None:
        options = Options()
        options.parse(["--dns-sd", "unicast", "--mdns-interface", "127.0.0.1", "node", "--mdns-interface",
                              "192.0.2.1", "--dns-server", "127.0.0.1:5353", "--dns-sd-domain", "example.test"])
        settings = options["settings"]
        assert settings.dns_sd == "unicast" and settings.mdns_interfaces == ["127.0.0.1", "192.0.2.1"]
        assert settings.dns_servers == ["127.0.0.1:5353"] and settings.dns_sd_domain == "example.test"
        registry = Options()
        registry.parse(["registry", "--pri", "5"])  # the registry's adverts have a pri; a Node's have none
        assert registry["settings"].pri == 5

    @cases("argv,message", [
        (["--dns-sd", "mdns"], "--dns-sd must be one of both, multicast, unicast, off"),
        (["--mdns-interface", "eth0"], "--mdns-interface: 'eth0' is not an address"),
        (["--dns-server", "dns.example"], "--dns-server: 'dns.example' is not an address"),
        (["--pri", "high"], "--pri must be an integer"),
        (["--pri", "-1"], "--pri must be an integer from 0"),
    ])
    def test_bad_dns_sd_flags(self, argv: list[str], message: str) -> None:
        with pytest.raises(usage.UsageError, match=re.escape(message)):
            Options().parse(argv)

    def test_adverts_are_values(self) -> None:
        one = Advert(NODE, "n", 1, ("127.0.0.1",), {"a": "b"})
        assert one == Advert(NODE, "n", 1, ("127.0.0.1",), {"a": "b"}) and one.key == (NODE, "n")
