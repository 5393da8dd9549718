"""Authorization servers found by DNS-SD `_nmos-auth._tcp` (the in-memory fake): which are used and why, their
order, and how the list follows them as they come, change and go."""

from __future__ import annotations

import random

import pytest

from tests.support.cases import UnitTest, cases
from tests.support.node import Events
from nmos_ref.discovery import Advert, Instance
from nmos_ref.discovery.auth_servers import AUTH, AuthServer, AuthServerBrowser, auth_server_of
from nmos_ref.discovery.browse import UnicastFirst
from nmos_ref.discovery.fake import FakeDnsSd

NAMESPACE = "nmos_ref.discovery.auth_servers"


def auth_txt(pri: str = "0", proto: str = "https", versions: str = "v1.0", **more: str) -> dict[str, str]:
    return {"api_proto": proto, "api_ver": versions, "pri": pri, **more}


def instance(txt: dict[str, str], addresses: tuple[str, ...] = ("192.0.2.20",), host: str = "auth.local",
             port: int = 443) -> Instance:
    return Instance(AUTH, "auth", "local", host, port, addresses, txt, "mdns")


def auth_advert(name: str, address: str = "192.0.2.20", port: int = 443, host: str = "auth.local",
                **txt: str) -> Advert:
    return Advert(AUTH, name, port, (address,), auth_txt(**txt), host=host)


class AuthRig:
    """An AuthServerBrowser over fake mDNS (and a fake unicast zone if given); `tool` advertises servers, and every
    call of `added` and `changed` is recorded (`changes` holds `servers()` as each `changed` call saw it)."""

    def __init__(self, protocol: str = "https", max_pri: int = 99, unicast: FakeDnsSd | None = None,
                 seed: int = 1) -> None:
        self.mdns = FakeDnsSd()
        self.tool = self.mdns.endpoint("tool")
        self.unicast = unicast
        browser = UnicastFirst(unicast.endpoint() if unicast is not None else None, self.mdns.endpoint("client"))
        self.found = AuthServerBrowser(browser, protocol, max_pri, rng=random.Random(seed))
        self.added: list[str] = []
        self.changes: list[list[str]] = []
        self.found.added = self.added.append
        self.found.changed = lambda: self.changes.append(self.found.servers())

    def start(self) -> None:
        self.found.startService()


# --- from TXT records to a server


class AuthServerOfTests(UnitTest):
    """From an instance's records to an authorization server, or the reason it is not used."""

    def test_an_https_server_is_named_by_its_host_name(self) -> None:
        # IS-10 "Discovery", "Use with TLS": the host name must match the certificate
        assert auth_server_of(instance(auth_txt("10")), "https", 99) == AuthServer("https://auth.local:443", 10)

    def test_an_http_server_by_its_ipv4_address_else_its_ipv6_one(self) -> None:
        both = instance(auth_txt(proto="http"), addresses=("2001:db8::5", "192.0.2.21"), port=80)
        assert auth_server_of(both, "http", 99) == AuthServer("http://192.0.2.21:80", 0)
        v6 = instance(auth_txt(proto="http"), addresses=("2001:db8::5",), port=80)
        assert auth_server_of(v6, "http", 99) == AuthServer("http://[2001:db8::5]:80", 0)

    def test_api_selector_is_the_path_of_the_issuer(self) -> None:
        # IS-10 "Discovery": "with the initial '/' and any trailing '/' omitted"; an empty one means no path
        found = auth_server_of(instance(auth_txt(api_selector="x-nmos/auth/v1.0")), "https", 99)
        assert found == AuthServer("https://auth.local:443/x-nmos/auth/v1.0", 0)
        slashed = auth_server_of(instance(auth_txt(api_selector="/tenant-a/")), "https", 99)
        assert isinstance(slashed, AuthServer) and slashed.url == "https://auth.local:443/tenant-a"
        empty = auth_server_of(instance(auth_txt(api_selector="")), "https", 99)
        assert isinstance(empty, AuthServer) and empty.url == "https://auth.local:443"

    def test_other_versions_beside_v1_0_and_development_pri_when_allowed(self) -> None:
        assert auth_server_of(instance(auth_txt(versions="v1.0,v2.0")), "https", 99) == AuthServer(
            "https://auth.local:443", 0)
        assert auth_server_of(instance(auth_txt("150")), "https", 200) == AuthServer("https://auth.local:443", 150)

    @cases("txt,protocol,reason", [
        ({"api_proto": "https", "api_ver": "v1.0"}, "https", "it has no pri TXT record (IS-10 requires one)"),
        (auth_txt("ten"), "https", "its pri 'ten' is not an integer"),
        (auth_txt("1.5"), "https", "its pri '1.5' is not an integer"),
        (auth_txt(""), "https", "its pri '' is not an integer"),
        (auth_txt("-1"), "https", "its pri -1 is negative"),
        ({"api_ver": "v1.0", "pri": "0"}, "https", "it has no api_proto TXT record (IS-10 requires one)"),
        (auth_txt(proto="http"), "https", "it speaks http and https is wanted"),
        (auth_txt(proto="https"), "http", "it speaks https and http is wanted"),
        ({"api_proto": "https", "pri": "0"}, "https", "it has no api_ver TXT record (IS-10 requires one)"),
        (auth_txt(versions="v2.0"), "https", "it does not offer IS-10 v1.0 (its api_ver is 'v2.0')"),
        (auth_txt(versions="v1.00"), "https", "it does not offer IS-10 v1.0 (its api_ver is 'v1.00')"),
        (auth_txt("100"), "https", "its pri 100 is above 99 (IS-10 reserves 100 and up for development"),
    ])
    def test_unusable_records(self, txt: dict[str, str], protocol: str, reason: str) -> None:
        found = auth_server_of(instance(txt), protocol, 99)
        assert isinstance(found, str) and found.startswith(reason)

    def test_an_http_server_without_an_address_is_unusable(self) -> None:
        assert auth_server_of(instance(auth_txt(proto="http"), addresses=()), "http", 99) == (
            "its host auth.local has no address")


# --- browsing


class AuthServerBrowserTests(UnitTest):
    """The list of authorization servers as they come, change and go."""

    def test_a_usable_server_is_added_and_logged(self) -> None:
        rig = AuthRig()
        rig.tool.advertise(auth_advert("auth 1", pri="10"))
        with Events(NAMESPACE) as events:
            rig.start()
        assert rig.found.servers() == ["https://auth.local:443"]
        assert rig.added == ["https://auth.local:443"] and rig.changes == [["https://auth.local:443"]]
        assert ("DNS-SD: authorization server 'auth 1' (_nmos-auth._tcp, mdns) at auth.local:443 (192.0.2.20) "
                "[api_proto=https api_ver=v1.0 pri=10]: usable as https://auth.local:443, priority 10"
                ) in events.texts()

    def test_a_server_appearing_later_is_added_at_once(self) -> None:
        rig = AuthRig()
        rig.start()
        assert rig.found.servers() == [] and rig.added == [] and rig.changes == []
        rig.tool.advertise(auth_advert("auth 1"))
        assert rig.added == ["https://auth.local:443"] and rig.changes == [["https://auth.local:443"]]

    def test_servers_in_pri_order(self) -> None:
        rig = AuthRig()
        rig.start()
        for name, pri in (("c", "20"), ("a", "0"), ("b", "10")):
            rig.tool.advertise(auth_advert(name, host=f"{name}.local", pri=pri))
        expected = ["https://a.local:443", "https://b.local:443", "https://c.local:443"]
        assert rig.found.servers() == expected
        assert rig.added == ["https://c.local:443", "https://a.local:443", "https://b.local:443"]  # as they came
        assert rig.changes[-1] == expected and len(rig.changes) == 3

    def test_unusable_servers_are_logged_with_the_reason_and_never_added(self) -> None:
        rig = AuthRig()
        rig.tool.advertise(auth_advert("plain", proto="http"))
        rig.tool.advertise(auth_advert("future", versions="v2.0"))
        rig.tool.advertise(auth_advert("garbled", pri="high"))
        rig.tool.advertise(auth_advert("dev", pri="100"))
        with Events(NAMESPACE) as events:
            rig.start()
        assert rig.found.servers() == [] and rig.added == [] and rig.changes == []
        texts = "\n".join(events.texts())
        assert "'plain' (_nmos-auth._tcp, mdns) at auth.local:443 (192.0.2.20) [api_proto=http " in texts
        assert "'plain' (_nmos-auth._tcp, mdns)" in texts and "]: not used: it speaks http and https is wanted" in texts
        assert "]: not used: it does not offer IS-10 v1.0 (its api_ver is 'v2.0')" in texts
        assert "]: not used: its pri 'high' is not an integer" in texts
        assert "]: not used: its pri 100 is above 99 (IS-10 reserves 100 and up for development" in texts
        assert len(events.texts()) == 5  # the browse starting, and one line per instance

    def test_max_pri_admits_development_servers(self) -> None:
        rig = AuthRig(max_pri=199)
        rig.tool.advertise(auth_advert("dev", pri="150"))
        rig.start()
        assert rig.found.servers() == ["https://auth.local:443"]

    def test_a_withdrawn_server_is_gone(self) -> None:
        rig = AuthRig()
        rig.tool.advertise(auth_advert("a", host="a.local", pri="0"))
        rig.tool.advertise(auth_advert("b", host="b.local", pri="10"))
        rig.start()
        with Events(NAMESPACE) as events:
            rig.tool.withdraw(auth_advert("a", host="a.local", pri="0"))
        assert rig.found.servers() == ["https://b.local:443"]
        assert rig.changes[-1] == ["https://b.local:443"] and len(rig.changes) == 3
        assert events.texts() == ["DNS-SD: authorization server 'a' (_nmos-auth._tcp, mdns) is gone"]
        rig.tool.withdraw(auth_advert("b", host="b.local", pri="10"))
        assert rig.found.servers() == [] and rig.changes[-1] == []

    def test_a_txt_update_can_make_a_server_unusable_and_usable_again(self) -> None:
        rig = AuthRig()
        advert = auth_advert("auth 1")
        rig.tool.advertise(advert)
        rig.start()
        with Events(NAMESPACE) as events:
            rig.tool.update_txt(advert, auth_txt(versions="v2.0"))
        assert rig.found.servers() == [] and rig.changes == [["https://auth.local:443"], []]
        assert events.texts()[0].endswith("[api_proto=https api_ver=v2.0 pri=0]: not used: it does not offer "
                                          "IS-10 v1.0 (its api_ver is 'v2.0')")
        rig.tool.update_txt(advert, auth_txt(versions="v1.0,v2.0"))
        assert rig.found.servers() == ["https://auth.local:443"]
        assert rig.added == ["https://auth.local:443", "https://auth.local:443"]  # found again

    def test_a_pri_update_reorders_without_adding(self) -> None:
        rig = AuthRig()
        a = auth_advert("a", host="a.local", pri="0")
        rig.tool.advertise(a)
        rig.tool.advertise(auth_advert("b", host="b.local", pri="10"))
        rig.start()
        rig.tool.update_txt(a, auth_txt("20"))
        assert rig.found.servers() == ["https://b.local:443", "https://a.local:443"]
        assert rig.changes[-1] == ["https://b.local:443", "https://a.local:443"] and len(rig.added) == 2
        changes = len(rig.changes)
        rig.tool.update_txt(a, auth_txt("30"))  # same order: servers() unchanged, so no call
        assert len(rig.changes) == changes

    def test_http_servers_by_address_and_ipv6_bracketed(self) -> None:
        rig = AuthRig("http")
        rig.tool.advertise(auth_advert("v4", "192.0.2.21", 80, proto="http", pri="0"))
        rig.tool.advertise(auth_advert("v6", "2001:db8::5", 8080, proto="http", pri="1"))
        rig.tool.advertise(auth_advert("tls", proto="https", pri="0"))
        rig.start()
        assert rig.found.servers() == ["http://192.0.2.21:80", "http://[2001:db8::5]:8080"]

    def test_one_server_advertised_twice_is_listed_once_at_its_best_pri(self) -> None:
        rig = AuthRig()
        rig.tool.advertise(auth_advert("other", host="other.local", pri="7"))
        rig.tool.advertise(auth_advert("twice a", pri="10"))
        rig.tool.advertise(auth_advert("twice b", pri="5"))
        rig.start()
        assert rig.found.servers() == ["https://auth.local:443", "https://other.local:443"]
        assert rig.added == ["https://other.local:443", "https://auth.local:443"]  # once each
        rig.tool.withdraw(auth_advert("twice b", pri="5"))
        assert rig.found.servers() == ["https://other.local:443", "https://auth.local:443"]  # at pri 10 now
        rig.tool.withdraw(auth_advert("twice a", pri="10"))
        assert rig.found.servers() == ["https://other.local:443"]
        assert rig.added == ["https://other.local:443", "https://auth.local:443"]

    def test_random_order_among_equal_pri_stable_until_they_change(self) -> None:
        orders = set()
        for seed in range(20):
            rig = AuthRig(seed=seed)
            rig.tool.advertise(auth_advert("a", host="a.local"))
            rig.tool.advertise(auth_advert("b", host="b.local"))
            rig.start()
            first = rig.found.servers()
            assert rig.found.servers() == first == rig.changes[-1]
            rig.tool.advertise(auth_advert("c", host="c.local", pri="5"))  # another server keeps their order
            assert rig.found.servers() == first + ["https://c.local:443"]
            orders.add(tuple(first))
        assert orders == {("https://a.local:443", "https://b.local:443"),
                          ("https://b.local:443", "https://a.local:443")}

    def test_unicast_servers_first(self) -> None:
        zone = FakeDnsSd("unicast", "example.test")
        rig = AuthRig(unicast=zone)
        zone.publish(zone.instance(auth_advert("zone", "192.0.2.30", host="auth.example.test", pri="50")))
        rig.tool.advertise(auth_advert("local", pri="0"))  # better, but mDNS is not browsed while unicast answers
        with Events(NAMESPACE) as events:
            rig.start()
        assert rig.found.servers() == ["https://auth.example.test:443"]
        assert rig.added == ["https://auth.example.test:443"]
        assert "'zone' (_nmos-auth._tcp, unicast)" in events.texts()[1] and len(events.texts()) == 2
        # Every unicast server gone: mDNS is browsed, and finds the other.
        zone.unpublish(AUTH, "zone")
        assert rig.found.servers() == ["https://auth.local:443"]
        assert rig.changes == [["https://auth.example.test:443"], [], ["https://auth.local:443"]]

    def test_stopping_stops_the_browse_and_starting_again_starts_afresh(self) -> None:
        rig = AuthRig()
        a = auth_advert("a", host="a.local")
        rig.tool.advertise(a)
        rig.start()
        rig.found.stopService()
        assert rig.mdns._browsing == []
        rig.tool.advertise(auth_advert("b", host="b.local"))
        rig.tool.withdraw(a)
        assert rig.found.servers() == ["https://a.local:443"]  # what was known when it stopped
        assert rig.added == ["https://a.local:443"] and len(rig.changes) == 1
        rig.start()
        assert rig.found.servers() == ["https://b.local:443"]
        assert rig.added == ["https://a.local:443", "https://b.local:443"]

    def test_a_failing_callback_is_logged_and_the_browse_goes_on(self) -> None:
        rig = AuthRig()

        def refuse(url: str) -> None:
            raise RuntimeError("no")
        rig.found.added = refuse
        rig.start()
        with Events(NAMESPACE) as events:
            rig.tool.advertise(auth_advert("a", host="a.local"))
            rig.tool.advertise(auth_advert("b", host="b.local", pri="1"))
        assert rig.found.servers() == ["https://a.local:443", "https://b.local:443"] and len(rig.changes) == 2
        failures = [event for event in events.events if "log_failure" in event]
        assert len(failures) == 2 and failures[0]["log_failure"].check(RuntimeError)
        # Logged failures fail a trial test unless it takes them: these two are what the test expects.
        assert len(self.flushLoggedErrors(RuntimeError)) == 2

    def test_only_http_or_https(self) -> None:
        with pytest.raises(ValueError, match="http or https"):
            AuthServerBrowser(UnicastFirst(None, None), "ftp")
