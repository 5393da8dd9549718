"""The Node with DNS-SD (the in-memory fake, a Clock and registries on a FakeNetwork): which registries it uses and
why, how it reacts as they come and go, its own advert, and peer-to-peer mode."""

from __future__ import annotations

from tests.support.cases import UnitTest, cases
from tests.support.dnssd import DiscoveryRig, registry_advert
from nmos_ref.discovery import NODE, REGISTER, REGISTRATION, Advert, Instance
from nmos_ref.discovery.fake import FakeDnsSd
from nmos_ref.node.registry_browser import browsed_types, candidate_of, merged
from nmos_ref.node.registries import Candidate
from nmos_ref.node.advert import SPACING
from tests.support.node import START, Events

A, B, C, D = "192.0.2.1:8235", "192.0.2.2:8235", "192.0.2.3:8235", "192.0.2.4:8235"
P2P_KEYS = ("ver_slf", "ver_src", "ver_flw", "ver_dvc", "ver_snd", "ver_rcv")


def instance(txt: dict[str, str], addresses: tuple[str, ...] = ("192.0.2.1",), priority: int = 0,
             via: str = "mdns", service_type: str = REGISTER) -> Instance:
    return Instance(service_type, "reg", "local", "reg.local", 8235, addresses, txt, via, priority)


# --- from TXT records to candidates


class CandidateOfTests(UnitTest):
    """From an instance's records to a registry candidate, or the reason it is not used."""

    def test_a_v1_3_registry_advert(self) -> None:
        found = candidate_of(instance({"api_proto": "http", "api_ver": "v1.2,v1.3", "api_auth": "false",
                                       "pri": "10"}), 99)
        assert found == Candidate("http://192.0.2.1:8235", 10, "http", ("v1.2", "v1.3"), False, origin="mdns",
                                  name="reg")

    def test_a_v1_0_registry_advertises_only_pri(self) -> None:
        found = candidate_of(instance({"pri": "0"}), 99)
        assert isinstance(found, Candidate)
        assert (found.protocol, found.versions, found.authorization) == ("http", None, False)  # versions asked

    @cases("txt,reason", [
        ({"pri": "ten"}, "its pri 'ten' is not an integer"),
        ({"pri": "100"}, "its pri 100 is above 99 (IS-04 reserves 100 and up for development"),
        ({"pri": "-1"}, "its pri -1 is negative"),
        ({"pri": "0", "api_auth": "yes"}, "its api_auth 'yes' is neither true nor false"),
    ])
    def test_unusable_records(self, txt: dict[str, str], reason: str) -> None:
        found = candidate_of(instance(txt), 99)
        assert isinstance(found, str) and found.startswith(reason)

    def test_pri_from_srv_without_a_txt_pri_and_addresses(self) -> None:
        found = candidate_of(instance({}, priority=7, addresses=("2001:db8::1", "192.0.2.9")), 99)
        assert isinstance(found, Candidate) and found.priority == 7 and found.url == "http://192.0.2.9:8235"
        v6 = candidate_of(instance({"pri": "1"}, addresses=("2001:db8::1",)), 99)
        assert isinstance(v6, Candidate) and v6.url == "http://[2001:db8::1]:8235"
        secure = candidate_of(instance({"pri": "1", "api_proto": "https"}), 99)
        assert isinstance(secure, Candidate) and secure.url == "https://reg.local:8235"  # the name its certificate has
        assert candidate_of(instance({"pri": "1"}, addresses=()), 99) == "its host reg.local has no address"
        assert isinstance(candidate_of(instance({"pri": "150"}), 200), Candidate)  # max_registry_pri raised

    def test_one_registry_under_both_types_is_one_candidate(self) -> None:
        new = Candidate("http://192.0.2.1:8235", 10, versions=("v1.3",), origin="unicast")
        old = Candidate("http://192.0.2.1:8235", 20, versions=("v1.2", "v1.3"), origin="unicast")
        assert merged([new, old, Candidate("http://192.0.2.2:8235", 0)]) == [
            Candidate("http://192.0.2.1:8235", 10, versions=("v1.3", "v1.2"), origin="unicast"),
            Candidate("http://192.0.2.2:8235", 0)]

    def test_browsed_types_follow_the_versions_served(self) -> None:
        assert browsed_types(["v1.3"]) == [REGISTER]
        assert browsed_types(["v1.2", "v1.3"]) == [REGISTER, REGISTRATION]  # "Upgrade Path": MUST browse both


# --- choosing among what is found


class RegistryBrowserTests(UnitTest):
    """The registries the Node uses as they are found, change and go."""

    def test_registers_with_the_suitable_registry_and_never_the_decoys(self) -> None:
        # As IS-04-01 test_01 and test_01_01 do: two unsuitable adverts and a good one, all at pri 0.
        rig = DiscoveryRig((A, B))
        rig.tool.advertise(registry_advert(A, versions="v9.0", name="bad version"))
        rig.tool.advertise(registry_advert(A, proto="invalid", name="bad protocol"))
        rig.tool.advertise(registry_advert(B, name="good"))
        with Events("nmos_ref.node.registry_browser") as events:
            rig.start()
        assert rig.client.state == "registered" and rig.client.current.candidate.url == f"http://{B}"
        assert rig.network.requests(A) == []
        texts = "\n".join(events.texts())
        assert ("DNS-SD: Registration API 'bad version' (_nmos-register._tcp, mdns) at tool:8235 (192.0.2.1) "
                "[api_proto=http api_ver=v9.0 api_auth=false pri=0]: not used: no common API version") in texts
        assert "'bad protocol' (_nmos-register._tcp, mdns)" in texts and "it speaks invalid and this Node http" in texts
        assert "'good' (_nmos-register._tcp, mdns) at tool:8235 (192.0.2.2) [api_proto=http " in texts
        assert f"usable as http://{B}, priority 0" in texts
        assert rig.registered(B) == rig.shown()

    def test_registries_above_max_registry_pri_are_left_alone(self) -> None:
        rig = DiscoveryRig((A,))
        rig.tool.advertise(registry_advert(A, 100))
        rig.start()
        assert rig.client.state == "no registry" and rig.network.seen == []

    def test_a_legacy_registry_at_its_highest_common_version(self) -> None:
        rig = DiscoveryRig((A, B))
        rig.tool.advertise(registry_advert(A, 0, versions="v1.0,v1.1,v1.2", service_type=REGISTRATION))
        rig.tool.advertise(registry_advert(B, 50, versions="v1.3"))
        rig.start()
        assert rig.client.current.candidate.url == f"http://{B}"  # "Upgrade Path": the version before priority
        v13_only = DiscoveryRig((A,), node_versions=("v1.3",))
        v13_only.tool.advertise(registry_advert(A, 0, versions="v1.2,v1.3", service_type=REGISTRATION))
        v13_only.start()
        assert v13_only.client.state == "no registry"  # a v1.3-only Node does not browse the legacy type

    def test_a_registry_without_api_ver_is_asked_for_its_versions(self) -> None:
        rig = DiscoveryRig((A,))
        rig.tool.advertise(Advert(REGISTRATION, "old", 8235, ("192.0.2.1",), {"pri": "0"}))  # as a v1.0 registry
        rig.start()
        assert rig.network.requests(A, "GET")[0].path == "/x-nmos/registration/"
        assert rig.client.state == "registered" and rig.client.current.version == "v1.3"

    def test_a_registry_appearing_is_used_at_once(self) -> None:
        rig = DiscoveryRig((A,))
        rig.start()
        assert rig.client.state == "no registry"
        rig.tool.advertise(registry_advert(A))
        assert rig.client.state == "registered" and rig.registered(A) == rig.shown()

    def test_a_registry_appearing_cuts_the_backoff_short(self) -> None:
        rig = DiscoveryRig((A, B))
        rig.host(A).status = 503
        rig.tool.advertise(registry_advert(A))
        rig.start()
        assert rig.client.state == "backoff"
        rig.tool.advertise(registry_advert(B, 10))
        assert rig.client.state == "registered" and rig.client.current.candidate.url == f"http://{B}"
        assert rig.clock.seconds() == START

    def test_failover_to_registries_found_later_in_priority_order(self) -> None:
        # As IS-04-01 test_15 and test_16: more registries appear once the Node is registered, then fail one by one.
        rig = DiscoveryRig((A, B, C, D), shared=(A, B, C, D))
        rig.tool.advertise(registry_advert(A, 0))
        rig.start()
        node_posts = len([1 for kind, _ in rig.network.posts() if kind == "node"])
        for name, pri in ((D, 30), (B, 10), (C, 20)):
            rig.tool.advertise(registry_advert(name, pri))
        assert rig.client.current.candidate.url == f"http://{A}"  # no switch while A works
        for failing, following in ((A, B), (B, C), (C, D)):
            rig.host(failing).status = 503
            rig.clock.advance(5)
            assert rig.client.current.candidate.url == f"http://{following}"
        firsts = [rig.network.heartbeats(name)[0].time for name in (B, C, D)]
        assert firsts == sorted(firsts)
        assert len([1 for kind, _ in rig.network.posts() if kind == "node"]) == node_posts  # heartbeats only

    def test_a_withdrawn_registry_is_not_failed_over_to(self) -> None:
        rig = DiscoveryRig((A, B, C), shared=(A, B, C))
        for name, pri in ((A, 0), (B, 10), (C, 20)):
            rig.tool.advertise(registry_advert(name, pri))
        rig.start()
        with Events("nmos_ref.node.registry_browser") as events:
            rig.tool.withdraw(registry_advert(B, 10))
        assert any(text.endswith("is gone") for text in events.texts())
        rig.host(A).status = 503
        rig.clock.advance(5)
        assert rig.client.current.candidate.url == f"http://{C}" and rig.network.requests(B) == []

    def test_the_current_registry_withdrawn_is_kept_while_it_works(self) -> None:
        rig = DiscoveryRig((A,))
        rig.tool.advertise(registry_advert(A))
        rig.start()
        rig.tool.withdraw(registry_advert(A))
        rig.clock.pump([5, 5])
        assert rig.client.state == "registered" and len(rig.network.heartbeats(A)) == 2

    def test_unicast_registries_first(self) -> None:
        zone = FakeDnsSd("unicast", "example.test")
        rig = DiscoveryRig((A, B), unicast=zone)
        zone.publish(rig.unicast_registry(B, 50))
        rig.tool.advertise(registry_advert(A, 0))  # better, but mDNS is not browsed while unicast answers
        rig.start()
        assert rig.client.current.candidate.url == f"http://{B}" and rig.client.current.candidate.origin == "unicast"


# --- the Node's advert and peer-to-peer mode


class NodeAdvertTests(UnitTest):
    """The Node's own advert and peer-to-peer mode."""

    def test_peer_to_peer_while_no_registry_then_withdrawn_before_registering(self) -> None:
        rig = DiscoveryRig((A,))
        rig.start()
        txt = rig.node_txt()
        assert txt == {"api_proto": "http", "api_ver": "v1.0,v1.1,v1.2,v1.3", "api_auth": "false",
                       **{key: "0" for key in P2P_KEYS}}
        [advert] = rig.mdns.find(NODE)
        assert (advert.port, advert.addresses, advert.name) == (8236, ("192.0.2.10",), "nmos-ref node-1:8236")
        # A while later the registry appears; the first POST is parked: the ver_* records are gone already.
        rig.clock.advance(2)
        rig.host(A).hold = lambda method, path: method == "POST"
        rig.tool.advertise(registry_advert(A))
        assert rig.client.state == "registering" and rig.network.posts(A) == []
        assert rig.node_txt() == {"api_proto": "http", "api_ver": "v1.0,v1.1,v1.2,v1.3", "api_auth": "false"}
        rig.host(A).hold = None
        rig.host(A).release()
        assert rig.client.state == "registered"
        # The registry fails for good: peer-to-peer again, the counters where they were.
        rig.host(A).status = 503
        rig.clock.advance(5)
        assert rig.client.state == "backoff" and rig.node_txt()["ver_slf"] == "0"
        assert [call[0] for call in rig.node_mdns.calls] == ["advertise", "update", "update"]

    def test_changes_to_the_advert_are_at_least_a_second_apart(self) -> None:
        # RFC 6762 §10.2: faster, a browser keeps the old and the new records side by side
        rig = DiscoveryRig()
        rig.start()
        sender = rig.model.all("sender")[0]["id"]
        for index in range(3):
            rig.model.update("sender", sender, label=f"label {index}")
        assert rig.node_txt()["ver_snd"] == "0" and rig.node_mdns.calls == [("advertise", NODE, "nmos-ref node-1:8236")]
        rig.clock.advance(SPACING)
        assert rig.node_txt()["ver_snd"] == "3" and len(rig.node_mdns.calls) == 2  # the burst in one update
        rig.clock.advance(10)
        rig.model.update("sender", sender, label="later")
        assert rig.node_txt()["ver_snd"] == "4"  # at once

    def test_ver_counters_count_changes_per_collection_and_wrap(self) -> None:
        rig = DiscoveryRig()
        rig.start()
        sender = rig.model.all("sender")[0]["id"]
        receiver = rig.model.all("receiver")[0]["id"]
        for index in range(257):
            rig.model.update("sender", sender, label=f"label {index}")
        rig.model.update("receiver", receiver, label="changed")
        rig.clock.advance(SPACING)
        txt = rig.node_txt()
        assert txt["ver_snd"] == "1"  # 257 changes: 255, then 0, then 1
        assert txt["ver_rcv"] == "1" and txt["ver_dvc"] == "0" and txt["ver_slf"] == "0"
        rig.model.remove("sender", sender)  # its device lists it: two collections change
        rig.clock.advance(SPACING)
        assert (rig.node_txt()["ver_snd"], rig.node_txt()["ver_dvc"]) == ("2", "1")
        assert rig.node_txt()["ver_src"] == rig.node_txt()["ver_flw"] == "0"

    def test_a_v1_3_only_node_is_advertised_only_in_peer_to_peer_mode(self) -> None:
        rig = DiscoveryRig((A,), node_versions=("v1.3",))
        rig.start()
        assert rig.node_txt() == {"api_proto": "http", "api_ver": "v1.3", "api_auth": "false",
                                  **{key: "0" for key in P2P_KEYS}}
        rig.clock.advance(SPACING)
        rig.tool.advertise(registry_advert(A))
        assert rig.client.state == "registered" and rig.node_txt() is None
        assert [call[0] for call in rig.node_mdns.calls] == ["advertise", "withdraw"]

    def test_a_v1_2_node_stays_advertised_while_registered(self) -> None:
        rig = DiscoveryRig((A,), node_versions=("v1.1", "v1.2"))
        rig.tool.advertise(registry_advert(A, versions="v1.2", service_type=REGISTRATION))
        rig.start()
        assert rig.client.state == "registered" and rig.client.current.version == "v1.2"
        assert rig.node_txt() == {"api_proto": "http", "api_ver": "v1.1,v1.2", "api_auth": "false"}
        assert [call[0] for call in rig.node_mdns.calls] == ["advertise"]  # never in peer-to-peer mode

    def test_peer_to_peer_off(self) -> None:
        rig = DiscoveryRig(peer_to_peer=False)
        rig.start()
        assert rig.client.state == "no registry" and "ver_slf" not in rig.node_txt()
        v13 = DiscoveryRig(peer_to_peer=False, node_versions=("v1.3",))
        v13.start()
        assert v13.node_txt() is None

    def test_stopping_withdraws_the_advert(self) -> None:
        rig = DiscoveryRig()
        rig.start()
        assert rig.advertiser.stopService().called
        rig.client.stopService()
        rig.found.stopService()
        assert rig.mdns.find(NODE) == []

    def test_peer_to_peer_mode_changes_are_logged(self) -> None:
        rig = DiscoveryRig((A,))
        with Events("nmos_ref.node.advert") as events:
            rig.start()
            rig.tool.advertise(registry_advert(A))
        texts = events.texts()
        assert any(text.startswith("Peer-to-peer mode: no Registration API to use") for text in texts)
        assert any(text.startswith("Leaving peer-to-peer mode") for text in texts)
