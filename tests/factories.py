"""Valid IS-04 resources for any version, built in code (tests/test_factories.py proves them valid against the
official schemas). A family is a Node with one of each resource type below it."""

from __future__ import annotations

import uuid
from typing import Any

VERSIONS = ("v1.0", "v1.1", "v1.2", "v1.3")

# Keys each version added, per type (IS-04 "Upgrade Path"): removed to build an older version's resource.
_ADDED: dict[str, dict[str, tuple[str, ...]]] = {
    "v1.1": {"node": ("api", "clocks", "description", "tags"), "device": ("controls", "description", "tags"),
             "source": ("clock_name", "grain_rate"),
             "flow": ("device_id", "grain_rate", "frame_width", "frame_height", "colorspace", "interlace_mode",
                      "media_type", "components")},
    "v1.2": {"node": ("interfaces",), "sender": ("interface_bindings", "subscription"),
             "receiver": ("interface_bindings",)},
}


def new_id() -> str:
    return str(uuid.uuid4())


def tai(seconds: int = 1_700_000_000, nanoseconds: int = 0) -> str:
    return f"{seconds}:{nanoseconds}"


def node(version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data = {
        "id": new_id(), "version": tai(), "label": "test node", "description": "a node", "tags": {},
        "href": "http://127.0.0.1:8080/", "hostname": "node.example", "caps": {}, "services": [],
        "api": {"versions": [version], "endpoints": [{"host": "127.0.0.1", "port": 8080, "protocol": "http"}]},
        "clocks": [{"name": "clk0", "ref_type": "internal"}],
        "interfaces": [{"chassis_id": "00-11-22-33-44-55", "port_id": "66-77-88-99-aa-bb", "name": "eth0"}],
    }
    return _at(version, "node", {**data, **keys})


def device(node_id: str, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data = {"id": new_id(), "version": tai(), "label": "test device", "description": "a device", "tags": {},
            "type": "urn:x-nmos:device:generic", "node_id": node_id, "senders": [], "receivers": [], "controls": []}
    return _at(version, "device", {**data, **keys})


def source(device_id: str, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data = {"id": new_id(), "version": tai(), "label": "test source", "description": "a video source",
            "tags": {"location": ["Studio A"]}, "format": "urn:x-nmos:format:video", "caps": {},
            "device_id": device_id, "parents": [], "clock_name": "clk0",
            "grain_rate": {"numerator": 25, "denominator": 1}}
    return _at(version, "source", {**data, **keys})


def flow(source_id: str, device_id: str, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data = {"id": new_id(), "version": tai(), "label": "test flow", "description": "a raw video flow", "tags": {},
            "format": "urn:x-nmos:format:video", "source_id": source_id, "device_id": device_id, "parents": [],
            "grain_rate": {"numerator": 25, "denominator": 1}, "frame_width": 1920, "frame_height": 1080,
            "colorspace": "BT709", "interlace_mode": "progressive", "media_type": "video/raw",
            "components": [{"name": "Y", "width": 1920, "height": 1080, "bit_depth": 10},
                           {"name": "Cb", "width": 960, "height": 1080, "bit_depth": 10},
                           {"name": "Cr", "width": 960, "height": 1080, "bit_depth": 10}]}
    return _at(version, "flow", {**data, **keys})


def sender(device_id: str, flow_id: str | None, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data = {"id": new_id(), "version": tai(), "label": "test sender", "description": "a sender", "tags": {},
            "flow_id": flow_id, "transport": "urn:x-nmos:transport:rtp.mcast", "device_id": device_id,
            "manifest_href": "http://127.0.0.1:8080/sdp/sender.sdp", "interface_bindings": ["eth0"],
            "subscription": {"receiver_id": None, "active": False}}
    return _at(version, "sender", {**data, **keys})


def receiver(device_id: str, version: str = "v1.3", **keys: Any) -> dict[str, Any]:
    data = {"id": new_id(), "version": tai(), "label": "test receiver", "description": "a receiver", "tags": {},
            "format": "urn:x-nmos:format:video", "caps": {"media_types": ["video/raw"]}, "device_id": device_id,
            "transport": "urn:x-nmos:transport:rtp", "interface_bindings": ["eth0"],
            "subscription": {"sender_id": None, "active": False}}
    return _at(version, "receiver", {**data, **keys})


def _at(version: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """Strip what `version` does not know, newest additions first."""
    for added in ("v1.2", "v1.1"):
        if version < added:
            for key in _ADDED[added].get(kind, ()):
                data.pop(key, None)
    if version < "v1.2" and kind == "receiver":
        data["subscription"] = {"sender_id": data["subscription"].get("sender_id")}
    if version == "v1.0":
        if kind == "node":
            data.pop("hostname", None)
        if kind == "receiver":
            data["caps"] = {}
        if kind == "sender":
            data.pop("tags")
    return data


def family(version: str = "v1.3") -> list[tuple[str, dict[str, Any]]]:
    """A Node and one of each type below it, as (type, data) in the order they must be registered."""
    n = node(version)
    d = device(n["id"], version)
    s = source(d["id"], version)
    f = flow(s["id"], d["id"], version)
    return [("node", n), ("device", d), ("source", s), ("flow", f), ("sender", sender(d["id"], f["id"], version)),
            ("receiver", receiver(d["id"], version))]


def bump(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The same resource, changed and with a later version."""
    seconds, _, nanoseconds = data["version"].partition(":")
    return {**data, **changes, "version": f"{seconds}:{int(nanoseconds) + 1}"}
