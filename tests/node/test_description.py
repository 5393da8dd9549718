"""Node descriptions: the demo and docs/node.example.json are valid at every version and follow the BCPs; ids are
stable; every mistake in a description is refused with a message naming it; SDP files written and read."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from nmos_ref.config import ConfigError
from nmos_ref.model.versions import ALL_VERSIONS
from nmos_ref.node.demo import demo_description
from nmos_ref.node.description import (ASSET_FUNCTION, ASSET_INSTANCE, ASSET_MANUFACTURER, ASSET_PRODUCT, GROUPHINT,
                                       Endpoint, build, load_description, node_id_for)
from nmos_ref.node.sdp import SdpError, make_sdp, parse_sdp
from tests.support.cases import SkipTest, UnitTest, cases
from tests.support.node import SCHEMAS, demo_model
from tests.support.official import official_errors

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "node.example.json"
MIRRORS = Path("/work/.mirror")


def build_from(description: dict[str, Any], seed: str = "s") -> Any:
    return build(description, seed=seed, stamp="1700000000:0", hostname="h", endpoints=[Endpoint("192.0.2.1", 80)],
                 schemas=SCHEMAS)


def _git_json(repo: str, path: str) -> Any:
    folder = MIRRORS / f"AMWA-TV+{repo}" / "repo"
    if not folder.is_dir():
        raise SkipTest(f"no mirror of AMWA-TV/{repo} at {folder}")
    return json.loads(subprocess.run(["git", "-C", str(folder), "show", f"HEAD:{path}"], check=True,
                                     capture_output=True, text=True).stdout)


def broken(change: Any) -> dict[str, Any]:
    description = copy.deepcopy(demo_description("s", "h"))
    change(description)
    return description


# Each change to the demo description, and what the refusal must say.
MISTAKES = [
    (lambda d: d.update(colour="red"), "unknown key(s) colour"),
    (lambda d: d["devices"][0].pop("key"), "needs a 'key'"),
    (lambda d: d["sources"][1].update(key="video"), "the key 'video' is used by another source"),
    (lambda d: d["sources"][0].update(device="nope"), "'device' must name one of the devices"),
    (lambda d: d["flows"][0].update(source="nope"), "'source' must name one of the sources"),
    (lambda d: d["senders"][0].update(version="1:1"), "version is filled in by nmos-ref"),
    (lambda d: d["devices"][0].update(id="not-a-uuid"), "'id' must be a lower-case UUID"),
    (lambda d: d["sources"][0].update(clock_name="clk9"), "clock_name 'clk9' is not one of the Node's clocks"),
    (lambda d: d["clocks"].append({"name": "clk0", "ref_type": "internal"}), "clock names must be unique"),
    (lambda d: d["senders"][0].update(interface_bindings=["eth9"]), "'eth9', which is not one of"),
    (lambda d: d["receivers"][0].update(interface_bindings=[]), "must name at least one"),
    (lambda d: d["sources"][0].update(format="urn:x-nmos:format:mux"), "differs from its source's"),
    (lambda d: d["flows"][0].update(grain_rate={"numerator": 50}), "must divide its source's"),
    (lambda d: d["sources"][0].pop("grain_rate"), "needs a grain_rate"),
    (lambda d: d["senders"][0]["tags"].update({GROUPHINT: ["no-role"]}), "is not '<group>:<role>"),
    (lambda d: d["senders"][1]["tags"].update({GROUPHINT: ["Output 1:Video"]}), "already has a member with role"),
    (lambda d: d["senders"][0].update(transport="urn:x-nmos:transport:websocket"), "give 'manifest_href'"),
    (lambda d: d["senders"][0].update(destination={"ip": 5}), "'destination' needs an 'ip'"),
    (lambda d: d["receivers"][0].update(format="urn:x-nmos:format:smell"), "not a valid IS-04 v1.3 receiver"),
    (lambda d: d["flows"][0].pop("components"), "not a valid IS-04 v1.3 flow"),
]
MISTAKE_IDS = ["unknown_key", "device_without_key", "key_used_twice", "source_of_no_device", "flow_of_no_source",
               "version_given", "id_not_a_uuid", "unknown_clock", "clock_name_twice", "unknown_interface",
               "no_interface", "format_not_the_sources", "grain_rate_not_dividing", "no_grain_rate",
               "grouphint_without_role", "grouphint_role_twice", "websocket_without_manifest",
               "destination_without_ip", "invalid_receiver", "invalid_flow"]


class DescriptionTests(UnitTest):
    """Node descriptions: valid, following the BCPs, stable ids, mistakes refused."""

    @cases("source", ["demo", "example"])
    def test_descriptions_are_valid_at_every_version(self, source: str) -> None:
        description = demo_description("s", "h") if source == "demo" else load_description(EXAMPLE)
        model = demo_model(Clock(), description=description)
        for version in ALL_VERSIONS:
            for view in model.registrable(version):
                assert not official_errors(version, view.kind, view.data), (version, view.kind, view.data)
        assert len(model.views("receiver", "v1.3")) == len(model.all("receiver"))  # nothing hidden at v1.3
        if source == "demo":  # the demo hides nothing anywhere
            for version in ALL_VERSIONS:
                assert len(list(model.registrable(version))) == 1 + sum(
                    len(model.all(k)) for k in ("device", "source", "flow", "sender", "receiver"))

    def test_the_demo_follows_the_bcps_and_the_tools_data_model_checks(self) -> None:
        model = demo_model(Clock())
        node = model.node
        for kind in ("source", "flow", "sender", "receiver"):
            assert model.all(kind)
        assert {s["format"] for s in model.all("source")} == {"urn:x-nmos:format:video", "urn:x-nmos:format:audio"}
        # BCP-002-02: one manufacturer, product and instance id on the Node and the Devices, a function on Devices.
        for resource in [node, *model.all("device")]:
            for tag in (ASSET_MANUFACTURER, ASSET_PRODUCT, ASSET_INSTANCE):
                assert len(resource["tags"][tag]) == 1 and resource["tags"][tag][0]
        assert all(device["tags"][ASSET_FUNCTION] for device in model.all("device"))
        # BCP-002-01 group hints on every sender and receiver.
        for resource in model.all("sender") + model.all("receiver"):
            assert resource["tags"][GROUPHINT]
        # IS-04-01 test_17_01, 18, 19, 19_01, 24, 24_01, 26.
        device = model.all("device")[0]
        assert set(device["senders"]) == {s["id"] for s in model.all("sender")}
        assert set(device["receivers"]) == {r["id"] for r in model.all("receiver")}
        clocks = {clock["name"] for clock in node["clocks"]}
        assert all(source["clock_name"] in clocks for source in model.all("source"))
        interfaces = {interface["name"]: interface for interface in node["interfaces"]}
        for resource in model.all("sender") + model.all("receiver"):
            assert resource["interface_bindings"]
            assert all("attached_network_device" in interfaces[name] for name in resource["interface_bindings"])
        for flow in model.all("flow"):
            assert flow["format"] == model.get("source", flow["source_id"])["format"]
        assert all("grain_rate" in s for s in model.all("source") if s["format"].endswith("video"))
        # IS-04-01 test_13 takes caps.media_types[0] of each receiver as the stream to offer.
        assert [r["caps"]["media_types"][0] for r in model.all("receiver")] == ["video/raw", "audio/L24"]
        # BCP-004-01: caps.version not after the resource's; every constraint set labelled.
        for receiver in model.all("receiver"):
            caps = receiver["caps"]
            assert caps["version"] <= receiver["version"]
            assert all("urn:x-nmos:cap:meta:label" in cs for cs in caps["constraint_sets"])
            for constraint_set in caps["constraint_sets"]:
                media = constraint_set.get("urn:x-nmos:cap:format:media_type", {}).get("enum", [])
                assert set(media) <= set(caps["media_types"])

    def test_receiver_caps_are_valid_bcp_004_01_and_registered_parameters(self) -> None:
        from jsonschema import Draft4Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT4

        names = ["receiver_constraint_sets", "constraint_sets", "constraint_set", "param_constraint",
                 "param_constraint_boolean", "param_constraint_integer", "param_constraint_number",
                 "param_constraint_rational", "param_constraint_string"]
        base = "https://bcp-004-01.invalid/"
        registry = Registry().with_resources(
            (f"{base}{name}.json", Resource.from_contents(_git_json("bcp-004-01", f"APIs/schemas/{name}.json"), DRAFT4))
            for name in names)
        register = _git_json("nmos-parameter-registers", "capabilities/constraint_set.json")
        receiver_schema = Draft4Validator({"$ref": f"{base}receiver_constraint_sets.json"}, registry=registry)
        register_schema = Draft4Validator({**register, "id": f"{base}register.json"}, registry=registry)
        for description in (demo_description("s", "h"), load_description(EXAMPLE)):
            for receiver in build_from(description).resources["receiver"].values():
                assert not list(receiver_schema.iter_errors(receiver))
                for constraint_set in receiver["caps"].get("constraint_sets", []):
                    assert not list(register_schema.iter_errors(constraint_set))
                    assert set(constraint_set) <= set(register["properties"])

    def test_ids_are_stable_for_a_seed_and_differ_between_seeds(self) -> None:
        first, again, other = (build_from(demo_description("h", "h"), seed) for seed in ("studio-1", "studio-1", "x"))
        ids = [{rid for items in built.resources.values() for rid in items} | {built.node["id"]}
               for built in (first, again, other)]
        assert ids[0] == ids[1] and not ids[0] & ids[2]
        assert first.node["id"] == node_id_for("studio-1")
        renamed = copy.deepcopy(demo_description("h", "h"))
        renamed["senders"][0]["label"] = "a new name"
        assert {rid for items in build_from(renamed, "studio-1").resources.values() for rid in items} == ids[0] - {
            first.node["id"]}

    def test_explicit_ids_are_kept(self) -> None:
        description = copy.deepcopy(demo_description("s", "h"))
        description["devices"][0]["id"] = "5e9a0000-0000-4000-8000-000000000001"
        built = build_from(description)
        assert "5e9a0000-0000-4000-8000-000000000001" in built.resources["device"]
        assert all(s["device_id"] == "5e9a0000-0000-4000-8000-000000000001" for s in built.resources["source"].values())

    @cases("change,message", MISTAKES, ids=MISTAKE_IDS)
    def test_mistakes_are_refused_with_a_message_naming_them(self, change: Any, message: str) -> None:
        with pytest.raises(ConfigError) as raised:
            build_from(broken(change))
        assert message in str(raised.value)

    def test_unreadable_descriptions(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            load_description(tmp_path / "missing.json")
        (tmp_path / "bad.json").write_text("[1]")
        with pytest.raises(ConfigError, match="must be a JSON object"):
            load_description(tmp_path / "bad.json")

    def test_relative_service_and_control_hrefs_follow_the_endpoints(self) -> None:
        description = copy.deepcopy(demo_description("s", "h"))
        description["services"] = [{"href": "x-manufacturer/status/", "type": "urn:x-manufacturer:service:status"},
                                   {"href": "https://elsewhere.example/tally/",
                                    "type": "urn:x-manufacturer:service:tally"}]
        description["devices"][0]["controls"] = [{"href": "/x-manufacturer/control/",
                                                  "type": "urn:x-manufacturer:control:generic"}]
        model = demo_model(Clock(), description=description)
        node = model.node
        assert [s["href"] for s in node["services"]] == ["http://192.0.2.10:8236/x-manufacturer/status/",
                                                         "https://elsewhere.example/tally/"]
        device = model.all("device")[0]
        assert device["controls"][0]["href"] == "http://192.0.2.10:8236/x-manufacturer/control/"
        model.set_endpoints([Endpoint("198.51.100.7", 80)])
        assert model.node["services"][0]["href"] == "http://198.51.100.7:80/x-manufacturer/status/"
        assert model.all("device")[0]["controls"][0]["href"] == "http://198.51.100.7:80/x-manufacturer/control/"
        assert model.all("device")[0]["version"] != device["version"]
        for version in ALL_VERSIONS:
            for view in model.registrable(version):
                assert not official_errors(version, view.kind, view.data)


# --- SDP

SENDER_SDP = ("v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=Example\r\nt=0 0\r\nm=audio 5004 RTP/AVP 102\r\n"
              "c=IN IP4 232.40.50.7/32\r\na=rtpmap:102 L24/48000/2\r\na=ptime:1\r\n")


class SdpTests(UnitTest):
    """SDP files written and read."""

    def test_sdp_files_of_every_media_type_read_back(self) -> None:
        built = build_from(load_description(EXAMPLE))
        for rid, stream in built.streams.items():
            sender = built.resources["sender"][rid]
            flow = built.resources["flow"][sender["flow_id"]]
            source = built.resources["source"][flow["source_id"]]
            text = make_sdp(sender=sender, flow=flow, source=source, node=built.node,
                            destination_ip=stream.destination_ip, destination_port=stream.destination_port,
                            source_ip="192.0.2.1")
            assert text.startswith("v=0\r\n") and text.endswith("\r\n")
            media = parse_sdp(text)
            assert [medium.media_type for medium in media] == [flow["media_type"]]
            assert media[0].connection == stream.destination_ip and media[0].port == stream.destination_port
            assert "a=ts-refclk:ptp=IEEE1588-2008:08-00-11-FF-FE-21-E1-B0:127" in text
            if flow["media_type"] == "video/raw":
                assert "sampling=YCbCr-4:2:2; width=1920; height=1080; exactframerate=25; depth=10;" in text
                assert "interlace" in text
            if flow["media_type"] == "audio/L24":
                assert "a=rtpmap:97 L24/48000/4" in text
            if flow["media_type"] == "video/smpte291":
                assert "DID_SDID={0x60,0x60}; DID_SDID={0x61,0x01}" in text

    def test_reading_sdp(self) -> None:
        medium = parse_sdp(SENDER_SDP)[0]
        assert (medium.media, medium.port, medium.media_type, medium.connection) == ("audio", 5004, "audio/L24",
                                                                                       "232.40.50.7")
        assert parse_sdp(SENDER_SDP.replace("\r\n", "\n"))[0].media_type == "audio/L24"
        for text, message in [("", "starts with 'v=0'"), ("v=0\r\nnonsense\r\n", "not '<type>=<value>'"),
                              (SENDER_SDP.replace("t=0 0\r\n", ""), "no 't=' line"),
                              (SENDER_SDP.split("m=")[0], "no media description"),
                              (SENDER_SDP.replace("c=IN IP4 232.40.50.7/32\r\n", ""), "no connection"),
                              (SENDER_SDP.replace("m=audio 5004", "m=audio x"), "'m=' needs")]:
            with pytest.raises(SdpError, match=message):
                parse_sdp(text)
