"""The Node API in memory (StubTreq): every path at every version checked against the official schemas, the
NMOS error JSON and CORS, hiding what a version cannot show, the SDP files, and PUT /receivers/{id}/target."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from treq.testing import StubTreq

from tests.support.cases import UnitTest, cases
from tests.support.fake_network import FakeNetwork
from nmos_ref.web.root import root_resource
from nmos_ref.api.node import ManifestAPI, NodeAPI
from nmos_ref.model.versions import ALL_VERSIONS, PLURALS
from nmos_ref.node.state import NodeModel
from nmos_ref.node.demo import demo_description
from nmos_ref.node.description import MANIFEST_ROOT
from nmos_ref.node.sdp import parse_sdp
from nmos_ref.node.target import ReceiverTargets
from tests.support.node import NODE_ENDPOINT, Events, demo_model
from tests.support.official import assert_official
from tests.support.samples import Answer, stub_call
from twisted.internet.task import Clock

COLLECTIONS = ("devices", "sources", "flows", "senders", "receivers")
BASE = "http://192.0.2.10:8236"


class NodeHarness:
    """A demo Node's APIs on the fake network at NODE_ENDPOINT, so its Receivers can fetch its own SDP files."""

    def __init__(self, description: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.network = FakeNetwork(self.clock)
        self.model: NodeModel = demo_model(self.clock, description=description)
        self.targets = ReceiverTargets(self.model, self.network, self.clock)
        site = root_resource({"node": NodeAPI(self.model, self.targets).app.resource()},
                             {MANIFEST_ROOT: ManifestAPI(self.model).app.resource()})
        self.network.serve(f"{NODE_ENDPOINT.host}:{NODE_ENDPOINT.port}", site)
        self.stub = StubTreq(site)

    def call(self, path: str, method: str = "GET", body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers = {"Content-Type": "application/json", **(headers or {})}
        answer = stub_call(self.stub, method, BASE + path, data=data, headers=headers)
        if answer.code >= 400:
            assert answer.headers["content-type"] == "application/json"
            version = next((part for part in path.split("/") if part in ALL_VERSIONS), "v1.3")
            assert_official(version, "error", answer.body)
            assert answer.body["code"] == answer.code
        return answer


@functools.cache
def shared_node() -> NodeHarness:
    """One demo Node for every test that only reads it (as a module-scoped fixture was)."""
    return NodeHarness()


class SharedNodeTest(UnitTest):
    """Tests given `node`: the shared demo Node, which they must not change."""

    def setUp(self) -> None:
        self.node = shared_node()


class TestServing(SharedNodeTest):
    def test_listings(self, node: NodeHarness) -> None:
        assert node.call("/").body == ["x-nmos/"]
        assert node.call("/x-nmos/").body == ["node/"]
        assert node.call("/x-nmos/node").body == [f"{version}/" for version in ALL_VERSIONS]
        for version in ALL_VERSIONS:
            for path in (f"/x-nmos/node/{version}", f"/x-nmos/node/{version}/"):
                answer = node.call(path)
                assert answer.code == 200 and answer.headers["content-type"] == "application/json"
                assert_official(version, "nodeapi-base", answer.body)

    @cases("version", ALL_VERSIONS)
    def test_every_resource_at_every_version_is_valid_and_consistent(self, node: NodeHarness, version: str) -> None:
        answer = node.call(f"/x-nmos/node/{version}/self/")
        assert answer.code == 200 and answer.headers["content-type"] == "application/json"
        assert_official(version, "node", answer.body)
        assert answer.body == node.model.view("node", node.model.node_id, version).data
        for collection in COLLECTIONS:
            listing = node.call(f"/x-nmos/node/{version}/{collection}")
            assert listing.code == 200
            assert_official(version, collection, listing.body)
            assert len(listing.body) == len(node.model.all(collection[:-1])) > 0
            for item in listing.body:
                single = node.call(f"/x-nmos/node/{version}/{collection}/{item['id']}")
                assert single.code == 200 and single.body == item
                assert_official(version, collection[:-1], single.body)

    def test_older_versions_have_the_newer_keys_stripped(self, node: NodeHarness) -> None:
        v13 = node.call("/x-nmos/node/v1.3/self").body
        v12 = node.call("/x-nmos/node/v1.2/self").body
        v10 = node.call("/x-nmos/node/v1.0/self").body
        assert "attached_network_device" in v13["interfaces"][0] and \
            "attached_network_device" not in v12["interfaces"][0]
        assert "authorization" not in v12["api"]["endpoints"][0]
        assert not {"api", "clocks", "interfaces", "description"} & set(v10)
        # Kept at v1.0, whose schemas allow extra keys: asset tags (BCP-002-02) and grain rates.
        assert v10["tags"] == v13["tags"]
        source = node.call("/x-nmos/node/v1.0/sources").body[0]
        assert "grain_rate" in source and "clock_name" not in source
        receiver = node.call("/x-nmos/node/v1.1/receivers").body[0]
        assert "active" not in receiver["subscription"] and "interface_bindings" not in receiver

    def test_errors_are_nmos_json(self, node: NodeHarness) -> None:
        for path in ("/x-nmos/node/v1.3/senders/7c0d5b7f-8a55-4c44-9bd3-4a2fd3c6e0a1", "/x-nmos/node/v1.3/nodes",
                     "/x-nmos/node/v1.4/self", "/x-nmos/node/v1.3/self/extra", "/x-nmos/other/", "/nothing"):
            assert node.call(path).code == 404, path
        answer = node.call("/x-nmos/node/v1.3/self", method="POST", body={})
        assert answer.code == 405 and "GET" in answer.headers["allow"]
        receiver = node.model.all("receiver")[0]["id"]
        assert node.call(f"/x-nmos/node/v1.3/receivers/{receiver}/target").code == 405

    def test_options_and_head(self, node: NodeHarness) -> None:
        receiver = node.model.all("receiver")[0]["id"]
        answer = node.call(f"/x-nmos/node/v1.3/receivers/{receiver}/target", method="OPTIONS")
        assert answer.code == 200 and "PUT" in answer.headers["access-control-allow-methods"]
        assert "Content-Type" in answer.headers["access-control-allow-headers"]
        answer = node.call("/x-nmos/node/v1.3/senders", method="OPTIONS")
        assert answer.code == 200 and "GET" in answer.headers["access-control-allow-methods"]
        answer = node.call("/x-nmos/node/v1.3/self", method="HEAD")
        assert answer.code == 200 and answer.raw == b""

    def test_manifests_are_sdp(self, node: NodeHarness) -> None:
        for sender in node.call("/x-nmos/node/v1.3/senders").body:
            href = sender["manifest_href"]
            assert href.startswith(f"{BASE}/x-nmos-ref/sdp/")
            answer = node.call(href[len(BASE):])
            assert answer.code == 200 and answer.headers["content-type"] == "application/sdp"
            flow = node.model.get("flow", sender["flow_id"])
            media = parse_sdp(answer.raw.decode())
            assert [medium.media_type for medium in media] == [flow["media_type"]]
            assert "o=- " in answer.raw.decode() and "\r\n" in answer.raw.decode()
        assert node.call("/x-nmos-ref/sdp/7c0d5b7f-8a55-4c44-9bd3-4a2fd3c6e0a1.sdp").code == 404

    def test_an_inactive_sender_has_no_manifest(self) -> None:
        node = NodeHarness()
        sender = node.model.all("sender")[0]
        node.model.update("sender", sender["id"], subscription={"receiver_id": None, "active": False})
        assert node.call(sender["manifest_href"][len(BASE):]).code == 404


# --- PUT /receivers/{id}/target

def own_sender(node: NodeHarness, version: str, media_type: str) -> dict[str, Any]:
    flow = next(flow for flow in node.model.all("flow") if flow["media_type"] == media_type)
    sender = next(sender for sender in node.model.all("sender") if sender["flow_id"] == flow["id"])
    return dict(node.model.view("sender", sender["id"], version).data)


class TestReceiverTarget(UnitTest):
    @cases("version", ALL_VERSIONS)
    def test_put_a_sender_subscribes_once_its_sdp_is_read_and_empty_unsubscribes(self, version: str) -> None:
        node = NodeHarness()
        receiver = next(r for r in node.model.all("receiver") if r["format"] == "urn:x-nmos:format:video")
        sender = own_sender(node, version, "video/raw")
        before = receiver["version"]
        answer = node.call(f"/x-nmos/node/{version}/receivers/{receiver['id']}/target", "PUT", sender)
        assert answer.code == 202 and answer.body == sender
        assert_official(version, "nodeapi-receiver-target", answer.body)
        shown = node.call(f"/x-nmos/node/{version}/receivers/{receiver['id']}").body
        assert shown["subscription"]["sender_id"] == sender["id"]
        if version >= "v1.2":
            assert shown["subscription"]["active"] is True
        assert shown["version"] != before
        # The SDP was fetched from the Sender's manifest_href.
        assert node.network.requests(method="GET", path=f"/x-nmos-ref/sdp/{sender['id']}.sdp")
        answer = node.call(f"/x-nmos/node/{version}/receivers/{receiver['id']}/target", "PUT", {})
        assert answer.code == 202 and answer.body == {}
        shown = node.call(f"/x-nmos/node/{version}/receivers/{receiver['id']}").body
        assert shown["subscription"]["sender_id"] is None
        assert node.model.get("receiver", receiver["id"])["subscription"] == {"sender_id": None, "active": False}

    def test_a_receiver_keeps_its_subscription_when_the_sdp_does_not_fit(self) -> None:
        node = NodeHarness()
        audio = next(r for r in node.model.all("receiver") if r["format"] == "urn:x-nmos:format:audio")
        video_sender = own_sender(node, "v1.3", "video/raw")
        with Events("nmos_ref.node.target") as events:
            answer = node.call(f"/x-nmos/node/v1.3/receivers/{audio['id']}/target", "PUT", video_sender)
        assert answer.code == 202  # accepted: the transport file is only read afterwards
        assert node.model.get("receiver", audio["id"])["subscription"]["sender_id"] is None
        assert any("video/raw is not urn:x-nmos:format:audio" in text for text in events.texts())
        missing = {**own_sender(node, "v1.3", "audio/L24"), "manifest_href": f"{BASE}/x-nmos-ref/sdp/missing.sdp"}
        with Events("nmos_ref.node.target") as events:
            node.call(f"/x-nmos/node/v1.3/receivers/{audio['id']}/target", "PUT", missing)
        assert node.model.get("receiver", audio["id"])["subscription"]["sender_id"] is None
        assert any("answered 404" in text for text in events.texts())

    def test_a_manifest_that_never_comes_times_out(self) -> None:
        node = NodeHarness()
        node.network.serve("slow:80", root_resource({})).mode = "hang"
        audio = next(r for r in node.model.all("receiver") if r["format"] == "urn:x-nmos:format:audio")
        sender = {**own_sender(node, "v1.3", "audio/L24"), "manifest_href": "http://slow:80/a.sdp"}
        node.call(f"/x-nmos/node/v1.3/receivers/{audio['id']}/target", "PUT", sender)
        node.clock.advance(4)
        assert node.network.cancelled
        assert node.model.get("receiver", audio["id"])["subscription"]["sender_id"] is None

    def test_the_latest_put_wins(self) -> None:
        node = NodeHarness()
        host = node.network.hosts[f"{NODE_ENDPOINT.host}:{NODE_ENDPOINT.port}"]
        host.hold = lambda method, path: path.endswith(".sdp")
        audio = next(r for r in node.model.all("receiver") if r["format"] == "urn:x-nmos:format:audio")
        sender = own_sender(node, "v1.3", "audio/L24")
        node.call(f"/x-nmos/node/v1.3/receivers/{audio['id']}/target", "PUT", sender)
        node.call(f"/x-nmos/node/v1.3/receivers/{audio['id']}/target", "PUT", {})
        host.release()  # the first PUT's SDP arrives after the second PUT: too late to count
        assert node.model.get("receiver", audio["id"])["subscription"]["sender_id"] is None
        node.call(f"/x-nmos/node/v1.3/receivers/{audio['id']}/target", "PUT", sender)
        host.release()
        assert node.model.get("receiver", audio["id"])["subscription"]["sender_id"] == sender["id"]

    def test_bad_targets_are_refused(self) -> None:
        node = NodeHarness()
        receiver = node.model.all("receiver")[0]["id"]
        path = f"/x-nmos/node/v1.3/receivers/{receiver}/target"
        assert node.call(path, "PUT", {"id": "not a sender"}).code == 400
        assert node.call(path, "PUT", raw=b"{").code == 400
        assert node.call(path, "PUT", raw=b"{}", headers={"Content-Type": "text/plain"}).code == 415
        sender = own_sender(node, "v1.3", "video/raw")
        assert node.call(path, "PUT", {**sender, "transport": "urn:x-nmos:transport:websocket"}).code == 400
        v10 = own_sender(node, "v1.0", "video/raw")
        assert node.call(path, "PUT", {**v10, "tags": []}).code == 400
        unknown = "/x-nmos/node/v1.3/receivers/7c0d5b7f-8a55-4c44-9bd3-4a2fd3c6e0a1/target"
        assert node.call(unknown, "PUT", sender).code == 404
        assert node.model.get("receiver", receiver)["subscription"]["sender_id"] is None


# --- what a version cannot show is hidden

def with_event_receiver() -> dict[str, Any]:
    description = copy.deepcopy(demo_description("test-seed", "node-1"))
    description["receivers"].append({
        "key": "events", "device": "main", "label": "Tally input", "format": "urn:x-nmos:format:data",
        "transport": "urn:x-nmos:transport:websocket", "interface_bindings": ["eth0"],
        "caps": {"media_types": ["application/json"], "event_types": ["boolean"]}})
    return description


class TestHiddenByVersion(SharedNodeTest):
    def test_a_resource_a_version_cannot_show_is_hidden_there(self) -> None:
        node = NodeHarness(with_event_receiver())
        events = next(r for r in node.model.all("receiver") if r["transport"].endswith("websocket"))
        assert events["id"] in {r["id"] for r in node.call("/x-nmos/node/v1.3/receivers").body}
        for version in ("v1.0", "v1.1", "v1.2"):
            listing = node.call(f"/x-nmos/node/{version}/receivers").body
            assert events["id"] not in {r["id"] for r in listing} and len(listing) == 2
            assert node.call(f"/x-nmos/node/{version}/receivers/{events['id']}").code == 404
            assert_official(version, "receivers", listing)
        assert node.model.lowest_showing("receiver", events["id"]) == "v1.3"
        assert [view.id for view in node.model.registrable("v1.2") if view.kind == "receiver"] == [
            r["id"] for r in node.model.all("receiver") if r["id"] != events["id"]]
        # Its device still lists it (the registry's downgrade keeps it too, so the copies stay equal).
        device = node.call("/x-nmos/node/v1.2/devices").body[0]
        assert events["id"] in device["receivers"]

    def test_collections_are_only_the_five(self, node: NodeHarness) -> None:
        assert set(PLURALS.values()) - {"nodes"} == set(COLLECTIONS)
