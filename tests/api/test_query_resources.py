"""The query tests' resources (tests/support/samples.py) are valid against the official schemas of their version."""

from __future__ import annotations

from tests.support.cases import UnitTest, cases
from tests.support.official import assert_official
from tests.support.samples import VERSIONS, Family, at_least, flow, receiver, sender, source


class TestSampleResources(UnitTest):
    @cases("version", VERSIONS)
    def test_family_is_valid(self, version: str) -> None:
        for kind, data in Family.build(version).members():
            assert_official(version, kind, data)
            assert_official(version, "registrationapi-resource-post-request", {"type": kind, "data": data})

    @cases("version", VERSIONS)
    def test_variants_are_valid(self, version: str) -> None:
        family = Family.build(version)
        device_id = family.device["id"]
        audio = source(device_id, version, format="urn:x-nmos:format:audio", tags={"Studio": ["HQ1", "HQ2"]})
        assert_official(version, "source", audio)
        assert_official(version, "flow", flow(audio["id"], device_id, version, parents=[family.flow["id"]]))
        assert_official(version, "receiver", receiver(device_id, version, subscription=(
            {"sender_id": family.sender["id"], "active": True} if at_least(version, "v1.2")
            else {"sender_id": family.sender["id"]})))
        if at_least(version, "v1.1"):
            assert_official(version, "sender", sender(device_id, None, version))
        if at_least(version, "v1.3"):
            data = source(device_id, version, format="urn:x-nmos:format:data")
            assert "event_type" in data
            assert_official(version, "source", data)
            data_flow = flow(data["id"], device_id, version, format="urn:x-nmos:format:data")
            assert "event_type" in data_flow
            assert_official(version, "flow", data_flow)
