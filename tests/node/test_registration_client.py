"""The registration client on a Clock against real Registration APIs on a fake network: every path of IS-04
"Behaviour - Registration" (registering, heartbeats, 200, 404, 409, 4xx, failover, backoff, changes, shutdown)."""

from __future__ import annotations

import random

import pytest

from nmos_ref.model.versions import TYPES
from nmos_ref.node.registries import Candidate, parse_registry_url, rank
from nmos_ref.web.backoff import Backoff
from tests.support.cases import UnitTest, cases
from tests.support.node import START, Events, Rig
from tests.support.official import assert_official

A, B, C = "reg-a:8235", "reg-b:8235", "reg-c:8235"
ORDER = {kind: index for index, kind in enumerate(TYPES)}


class RegistrationClientTests(UnitTest):
    """Registering, heartbeats, error answers, failover, backoff, changes and shutdown."""

    def test_registers_everything_parents_first_then_heartbeats_every_5_s(self) -> None:
        rig = Rig()
        rig.client.startService()
        posts = rig.network.posts(A)
        assert [kind for kind, _ in posts] == sorted((kind for kind, _ in posts), key=ORDER.__getitem__)
        assert posts[0] == ("node", rig.model.node_id)
        assert rig.registered(A) == rig.shown("v1.3")  # exactly as the Node API shows them at v1.3
        assert rig.client.state == "registered" and rig.client.synced().called
        for seen in rig.network.requests(A, "POST", "/resource"):
            assert seen.path == "/x-nmos/registration/v1.3/resource"
            assert seen.headers["content-type"] == "application/json"
            assert int(seen.headers["content-length"]) == len(seen.body)
            assert seen.headers["accept"] == "application/json"
            assert_official("v1.3", "registrationapi-resource-post-request", seen.json())
        registered_at = rig.network.requests(A, "POST", "/resource")[0].time
        assert rig.network.heartbeats(A) == []
        rig.clock.pump([1.0] * 21)
        beats = rig.network.heartbeats(A)
        assert [beat.time - registered_at for beat in beats] == [5.0, 10.0, 15.0, 20.0]
        for beat in beats:
            assert beat.path == f"/x-nmos/registration/v1.3/health/nodes/{rig.model.node_id}"
            # IS-04 "APIs - Client Side Implementation Notes": no body and no Content-Type; Content-Length: 0 (the tool
            # warns without it).
            assert beat.body == b"" and "content-type" not in beat.headers
            assert beat.headers["content-length"] == "0"
        assert rig.registries[A].last_seen(rig.model.node_id) == START + 20

    def test_a_slow_post_does_not_hold_back_heartbeats_while_it_is_out(self) -> None:
        rig = Rig(timeout=20.0)
        rig.client.startService()
        rig.host(A).hold = lambda method, path: method == "POST" and path.endswith("/resource")
        rid = next(rid for kind, rid in rig.shown() if kind == "sender")
        rig.model.update("sender", rid, label="renamed")
        rig.clock.pump([1.0] * 16)
        assert [beat.time - START for beat in rig.network.heartbeats(A)] == [5.0, 10.0, 15.0]
        rig.host(A).hold = None
        rig.host(A).release()
        assert rig.registered(A)[("sender", rid)]["label"] == "renamed"
        assert rig.client.synced().called

    def test_404_on_a_heartbeat_registers_everything_again_in_order(self) -> None:
        rig = Rig()
        rig.client.startService()
        rig.clock.advance(5)
        # The registry forgets the Node (it expired, or the registry restarted).
        rig.registries[A].delete("node", rig.model.node_id, "v1.3")
        before = len(rig.network.posts(A))
        with Events() as events:
            rig.clock.advance(5)
        again = rig.network.posts(A)[before:]
        assert again[0] == ("node", rig.model.node_id) and len(again) == len(rig.shown())
        assert [kind for kind, _ in again] == sorted((kind for kind, _ in again), key=ORDER.__getitem__)
        assert rig.registered(A) == rig.shown()
        assert any("does not know the Node" in text for text in events.texts())
        assert any(text.startswith("Registered the Node") for text in events.texts())
        rig.clock.advance(5)
        assert rig.network.heartbeats(A)[-1].time == START + 15  # still every 5 s

    def test_200_on_the_first_node_post_deletes_the_stale_node_and_registers_again(self) -> None:
        rig = Rig()
        stale = dict(rig.shown()[("node", rig.model.node_id)], version="1600000000:0", label="before the restart")
        rig.registries[A].register("node", stale, "v1.3", now=rig.clock.seconds())
        rig.client.startService()
        calls = [(seen.method, seen.path.split("/v1.3/")[1]) for seen in rig.network.requests(A)
                 if "/v1.3/" in seen.path][:3]
        node = rig.model.node_id
        assert calls == [("POST", "resource"), ("DELETE", f"resource/nodes/{node}"), ("POST", "resource")]
        assert len(rig.network.requests(A, "DELETE")) == 1  # only the Node (the tool warns on more)
        assert rig.registered(A) == rig.shown()
        assert rig.client.state == "registered"

    def test_409_on_registration_deletes_at_the_held_version_and_registers_again(self) -> None:
        rig = Rig()
        old = rig.model.view("node", rig.model.node_id, "v1.2")
        rig.registries[A].register("node", dict(old.data), "v1.2", now=rig.clock.seconds())
        rig.client.startService()
        deletes = rig.network.requests(A, "DELETE")
        assert [seen.path for seen in deletes] == [f"/x-nmos/registration/v1.2/resource/nodes/{rig.model.node_id}"]
        assert rig.registries[A].get("node", rig.model.node_id).api_version == "v1.3"
        assert rig.registered(A) == rig.shown()

    def test_409_on_a_heartbeat_deletes_at_the_held_version_and_registers_again(self) -> None:
        rig = Rig()
        rig.client.startService()
        registry, node = rig.registries[A], rig.model.node_id
        registry.delete("node", node, "v1.3")
        registry.register("node", dict(rig.model.view("node", node, "v1.2").data), "v1.2", now=rig.clock.seconds())
        rig.clock.advance(5)
        assert rig.network.requests(A, "DELETE")[-1].path == f"/x-nmos/registration/v1.2/resource/nodes/{node}"
        assert registry.get("node", node).api_version == "v1.3"
        assert rig.registered(A) == rig.shown()

    def test_a_refused_resource_is_not_sent_again_until_it_changes(self) -> None:
        rig = Rig()
        source = next(rid for kind, rid in rig.shown() if kind == "source")
        with Events() as events:
            rig.client.startService()
            # Another Node's device already has our source's id: the registry answers 400.
            registry = rig.registries[A]
            registry.delete("source", source, "v1.3")
            other = dict(rig.shown()[("node", rig.model.node_id)], id="11111111-1111-4111-8111-111111111111")
            registry.register("node", other, "v1.3", now=rig.clock.seconds())
            device = dict(next(data for (kind, _), data in rig.shown().items() if kind == "device"))
            registry.register("device", {**device, "id": source, "node_id": other["id"], "senders": [],
                                         "receivers": []}, "v1.3", now=rig.clock.seconds())
            rig.model.update("source", source, label="now refused")
        posts = [rid for _, rid in rig.network.posts(A)]
        assert posts.count(source) == 2
        assert any("refused source" in text for text in events.texts())
        rig.model.update("device", next(rid for kind, rid in rig.shown() if kind == "device"), label="other change")
        assert [rid for _, rid in rig.network.posts(A)].count(source) == 2  # not re-attempted unchanged
        rig.model.update("source", source, label="changed again")
        assert [rid for _, rid in rig.network.posts(A)].count(source) == 3
        assert rig.client.synced().called  # refused resources do not hold back the rest

    def test_failover_heartbeats_the_next_registry_without_registering_again(self) -> None:
        rig = Rig((A, B, C), shared=(A, B))
        rig.client.startService()
        rig.clock.advance(5)
        rig.host(A).status = 503
        posts = len(rig.network.posts())
        with Events() as events:
            rig.clock.advance(5)
        # At 10 s A answers 503; B is heartbeated at once, knows the Node (same cluster): nothing is POSTed.
        assert [beat.time - START for beat in rig.network.heartbeats(B)] == [10.0]
        assert len(rig.network.posts()) == posts
        assert rig.client.current.candidate.url == f"http://{B}"
        rig.clock.pump([1.0] * 10)
        assert [beat.time - START for beat in rig.network.heartbeats(B)] == [10.0, 15.0, 20.0]
        assert rig.network.heartbeats(C) == []
        texts = events.texts()
        assert any("503" in text and "moving to the next" in text for text in texts)
        assert any("knows the Node" in text for text in texts)

    def test_failover_to_a_registry_that_answers_404_registers_everything_there(self) -> None:
        rig = Rig((A, B))
        rig.client.startService()
        rig.host(A).mode = "refuse"
        rig.clock.advance(5)
        assert [beat.time - START for beat in rig.network.heartbeats(B)] == [5.0]
        assert rig.network.posts(B)[0] == ("node", rig.model.node_id)
        assert rig.registered(B) == rig.shown()
        rig.clock.advance(5)
        assert [beat.time - START for beat in rig.network.heartbeats(B)] == [5.0, 10.0]

    def test_a_registry_that_times_out_is_left_after_the_timeout(self) -> None:
        rig = Rig((A, B, C), shared=(A, B, C))
        rig.client.startService()
        rig.host(A).mode = "hang"
        rig.clock.advance(5)
        assert rig.network.heartbeats(B) == []
        rig.clock.advance(4)  # the 4 s request timeout
        assert [beat.time - START for beat in rig.network.heartbeats(B)] == [9.0]
        assert rig.network.cancelled and rig.network.posts(B) == []

    def test_failover_follows_priority_order(self) -> None:
        rig = Rig((A, B, C), shared=(A, B, C))
        rig.client.startService()
        for failing, following in ((A, B), (B, C)):
            rig.host(failing).status = 500
            rig.clock.advance(5)
            assert rig.client.current.candidate.url == f"http://{following}"
        firsts = [rig.network.heartbeats(name)[0].time for name in (A, B, C)]
        assert firsts == sorted(firsts)

    def test_backoff_only_after_every_registry_failed_then_grows(self) -> None:
        rig = Rig((A, B))
        for name in (A, B):
            rig.host(name).mode = "refuse"
        with Events() as events:
            rig.client.startService()
        assert rig.client.state == "backoff"
        # Every registry was tried (probed for its versions) once before backing off.
        assert {seen.host for seen in rig.network.seen} == {A, B}
        delays = []
        for _ in range(6):
            tried = len(rig.network.seen)
            call = rig.client._retry
            delays.append(call.getTime() - rig.clock.seconds())
            rig.clock.advance(delays[-1] - 0.001)
            assert len(rig.network.seen) == tried  # nothing during the wait
            rig.clock.advance(0.001)
            assert len(rig.network.seen) == tried + 2
        expected = Backoff()
        for attempt, delay in enumerate(delays):
            ceiling = min(expected.maximum, expected.minimum * expected.factor ** attempt)
            assert max(expected.minimum, ceiling / 2) <= delay <= ceiling
        assert delays[0] == 1.0 and delays[-1] > 3.0
        assert any("trying again in" in text for text in events.texts())
        rig.host(B).up()
        rig.clock.advance(rig.client._retry.getTime() - rig.clock.seconds())
        assert rig.client.state == "registered" and rig.client.current.candidate.url == f"http://{B}"
        assert rig.client._attempt == 0

    def test_all_registries_failing_on_heartbeats_backs_off_then_registers_where_it_can(self) -> None:
        rig = Rig((A, B), shared=(A, B))
        rig.client.startService()
        for name in (A, B):
            rig.host(name).status = 503
        rig.clock.advance(5)
        assert rig.client.state == "backoff"
        assert [beat.time - START for beat in rig.network.heartbeats(B)] == [5.0]
        rig.host(A).up()
        rig.clock.advance(1.0)  # the first backoff is 1 s
        # A new round: A answers again and still holds the Node, so a heartbeat is all it takes.
        assert rig.client.current.candidate.url == f"http://{A}" and rig.client.state == "registered"
        assert rig.network.heartbeats(A)[-1].time == START + 6

    def test_registries_that_appeared_meanwhile_are_tried_before_backing_off(self) -> None:
        rig = Rig((A, B), shared=(A, B), candidates=[Candidate(f"http://{A}", 0)])
        rig.client.startService()
        rig.candidates.append(Candidate(f"http://{B}", 10))  # found later (DNS-SD will do this)
        rig.host(A).status = 503
        rig.clock.advance(5)
        assert rig.client.current.candidate.url == f"http://{B}" and rig.client.state == "registered"
        assert [beat.time - START for beat in rig.network.heartbeats(B)] == [5.0]  # at once, no backoff
        assert rig.client._attempt == 0

    def test_a_registry_that_fails_every_post_is_not_retried_in_a_loop(self) -> None:
        rig = Rig((A, B), shared=(A, B))
        rig.client.startService()
        for name in (A, B):  # heartbeats still work, every POST fails
            rig.host(name).answer = lambda method, path: (500 if path.endswith("/resource") and method == "POST"
                                                          else None)
        rig.model.update("sender", next(rid for kind, rid in rig.shown() if kind == "sender"), label="changed")
        # A refuses the POST, B confirms the Node with a heartbeat and refuses the POST too: every registry has failed.
        assert rig.client.state == "backoff"
        assert len(rig.network.requests(method="POST", path="/resource")) == len(rig.shown()) + 2
        rig.host(B).up()
        rig.clock.advance(1.0)
        assert rig.client.state == "registered" and rig.registered(B) == rig.shown()

    def test_resource_changes_are_posted_added_and_deleted(self) -> None:
        rig = Rig()
        rig.client.startService()
        receiver = next(rid for kind, rid in rig.shown() if kind == "receiver")
        rig.model.update("receiver", receiver, subscription={"sender_id": None, "active": False}, label="changed")
        assert rig.registered(A)[("receiver", receiver)]["label"] == "changed"
        sender = next(rid for kind, rid in rig.shown() if kind == "sender")
        rig.model.remove("sender", sender)
        assert ("sender", sender) not in rig.registered(A)
        assert rig.network.requests(A, "DELETE")[-1].path.endswith(f"/senders/{sender}")
        device = next(data for (kind, _), data in rig.registered(A).items() if kind == "device")
        assert sender not in device["senders"]  # the device was updated too
        assert rig.registered(A) == rig.shown()

    def test_controlled_shutdown_deletes_children_first_and_stops_heartbeats(self) -> None:
        rig = Rig()
        rig.client.startService()
        rig.clock.advance(5)
        done = rig.client.stopService()
        assert done.called
        deletes = [seen.path.split("/resource/")[1].split("/")[0] for seen in rig.network.requests(A, "DELETE")]
        assert deletes[-1] == "nodes" and len(deletes) == len(rig.shown())
        assert deletes == sorted(deletes, key=lambda plural: -ORDER[plural[:-1]])
        assert rig.registered(A) == {}
        seen = len(rig.network.seen)
        rig.clock.advance(30)
        assert len(rig.network.seen) == seen and rig.client.state == "stopped"

    def test_shutdown_with_the_registry_gone_gives_up_at_once(self) -> None:
        rig = Rig()
        rig.client.startService()
        rig.host(A).mode = "refuse"
        done = rig.client.stopService()
        assert done.called and len(rig.network.requests(A, "DELETE")) == 1

    def test_a_watcher_that_stops_the_client_on_backoff_leaves_no_retry_behind(self) -> None:
        """Found by checking for a clean reactor after each test, as Trial does: a watcher hearing "backoff" and
        stopping the client at once (a shutdown) must not leave the backoff's retry to fire on a stopped client."""
        rig = Rig()
        rig.host(A).mode = "refuse"
        rig.client.watch(lambda state: rig.client.stopService() if state == "backoff" else None)
        rig.client.startService()
        assert rig.client.state == "stopped"
        assert rig.clock.getDelayedCalls() == []

    def test_late_answers_from_a_registry_left_behind_are_ignored(self) -> None:
        rig = Rig((A, B), shared=(A, B), timeout=20.0)
        rig.client.startService()
        rig.host(A).hold = lambda method, path: method == "POST" and path.endswith("/resource")
        sender = next(rid for kind, rid in rig.shown() if kind == "sender")
        rig.model.update("sender", sender, label="while A hangs")
        rig.host(A).hold = None
        rig.host(A).status = 503
        rig.clock.advance(5)  # A's heartbeat fails: on to B, cancelling the POST still out to A
        assert rig.client.current.candidate.url == f"http://{B}"
        assert rig.network.cancelled
        # B was confirmed by a heartbeat, then got the pending change.
        assert rig.registered(B)[("sender", sender)]["label"] == "while A hangs"

    def test_no_registry_configured_leaves_the_node_alone(self) -> None:
        rig = Rig(candidates=[])
        rig.client.startService()
        rig.clock.advance(60)
        assert rig.client.state == "no registry" and rig.network.seen == []


# --- choosing a registry

def candidate(priority: int, versions: tuple[str, ...] = ("v1.3",), **keys: object) -> Candidate:
    return Candidate(f"http://r{priority}-{len(versions)}-{len(keys)}:80", priority, versions=versions, **keys)


class RegistryChoiceTests(UnitTest):
    """Which registries the client uses, in which order, and Registration API URLs."""

    def test_rank_prefers_the_highest_common_version_then_priority(self) -> None:
        old = candidate(0, ("v1.0", "v1.1", "v1.2"))
        new_far = candidate(50, ("v1.2", "v1.3"))
        new_near = candidate(10, ("v1.3",))
        choices, rejected = rank([old, new_far, new_near], ["v1.0", "v1.1", "v1.2", "v1.3"], "http", False,
                                 random.Random(0))
        assert [(choice.candidate, choice.version) for choice in choices] == [
            (new_near, "v1.3"), (new_far, "v1.3"), (old, "v1.2")]
        assert rejected == []

    def test_rank_filters_unsuitable_registries_with_the_reason(self) -> None:
        wrong_version = candidate(0, ("v9.0",))
        wrong_protocol = Candidate("https://x:443", 0, "https", ("v1.3",))
        invalid_protocol = Candidate("http://y:80", 0, "invalid", ("v1.3",))
        needs_auth = Candidate("http://z:80", 0, "http", ("v1.3",), authorization=True)
        unknown = Candidate("http://w:80", 0)
        choices, rejected = rank([wrong_version, wrong_protocol, invalid_protocol, needs_auth, unknown],
                                 ["v1.2", "v1.3"], "http", False, random.Random(0))
        assert choices == []
        reasons = {rejection.candidate.url: rejection.reason for rejection in rejected}
        assert "no common API version" in reasons[wrong_version.url] and "v9.0" in reasons[wrong_version.url]
        assert "speaks https" in reasons[wrong_protocol.url] and "speaks invalid" in reasons[invalid_protocol.url]
        assert "authorization" in reasons[needs_auth.url] and "not known" in reasons[unknown.url]

    def test_rank_is_random_among_equals(self) -> None:
        equals = [Candidate(f"http://r{i}:80", 10, versions=("v1.3",)) for i in range(4)]
        firsts = {rank(equals, ["v1.3"], "http", False, random.Random(seed))[0][0].candidate.url for seed in range(40)}
        assert len(firsts) == 4

    def test_versions_of_a_registry_are_asked_unless_the_url_pins_one(self) -> None:
        rig = Rig((A,), versions=("v1.1", "v1.2"))
        rig.client.startService()
        assert rig.network.requests(A, "GET")[0].path == "/x-nmos/registration/"
        assert rig.client.current.version == "v1.2"
        assert rig.registered(A) == rig.shown("v1.2")  # shaped for v1.2: no v1.3 keys
        pinned = Rig((A,), candidates=[parse_registry_url(f"http://{A}/x-nmos/registration/v1.1", 0)])
        pinned.client.startService()
        assert pinned.network.requests(A, "GET") == [] and pinned.client.current.version == "v1.1"
        assert pinned.registered(A) == pinned.shown("v1.1")

    def test_choices_and_rejections_are_logged_with_reasons(self) -> None:
        rig = Rig((A, B), candidates=[Candidate(f"http://{A}", 0, versions=("v9.0",)), Candidate(f"http://{B}", 1),
                                      Candidate("http://nowhere:1", 2)])
        with Events() as events:
            rig.client.startService()
        texts = "\n".join(events.texts())
        assert f"Not using registry http://{A}: no common API version" in texts
        assert "Not using registry http://nowhere:1: GET http://nowhere:1/x-nmos/registration/ failed" in texts
        assert f"Registries to use, best first: http://{B} at v1.3 (priority 1)" in texts
        assert f"Registering with registry http://{B} at v1.3" in texts

    @cases("url,expected", [
        ("http://127.0.0.1:8235", ("http://127.0.0.1:8235", "http", None)),
        ("https://registry.example/", ("https://registry.example", "https", None)),
        ("http://[::1]:8235/x-nmos/registration/", ("http://[::1]:8235", "http", None)),
        ("http://r:1/x-nmos/registration/v1.2", ("http://r:1", "http", ("v1.2",))),
    ])
    def test_registry_urls(self, url: str, expected: tuple[object, ...]) -> None:
        parsed = parse_registry_url(url, 3)
        assert (parsed.url, parsed.protocol, parsed.versions) == expected and parsed.priority == 3

    @cases("url", ["ftp://r:1", "r:8235", "http://r:1/x-nmos/query", "http://r:1/?a=b", "http://"])
    def test_bad_registry_urls(self, url: str) -> None:
        with pytest.raises(ValueError, match="Registration API URL"):
            parse_registry_url(url, 0)
