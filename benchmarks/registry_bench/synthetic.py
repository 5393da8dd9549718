"""Synthetic IS-04 v1.3 resources: the ten resources of a synthetic Node, and their check against the official
schemas (--check-schemas)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

# The official schemas are only read from here (never copied into the project), for --check-schemas.
DEFAULT_SCHEMAS = Path(__file__).resolve().parents[3] / "shared/amwa/is-04/v1.3/APIs/schemas"
TAI_OFFSET = 37  # TAI - UTC in seconds since 2017
# Resources per synthetic Node, in the order they are posted (parents first).
NODE_LAYOUT = ("node", "device", "source", "source", "flow", "flow", "sender", "sender", "receiver", "receiver")


def tai_version(now: float) -> str:
    """An IS-04 version string (`<seconds>:<nanoseconds>` TAI) for a Unix time."""
    ns = int((now + TAI_OFFSET) * 1e9)
    return f"{ns // 1_000_000_000}:{ns % 1_000_000_000}"


def synthetic_node(index: int, now: float,
                   new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> list[tuple[str, dict]]:
    """The ten resources of one synthetic Node as (type, data), parents first, all valid IS-04 v1.3.

    Addresses in the data point at loopback; the registry stores them and never contacts them."""
    version = tai_version(now)
    port = 20000 + index % 40000
    base = f"http://127.0.0.1:{port}"
    name = f"{index:06d}"
    tags = {"bench": ["nmos-ref"], "group": [f"g{index % 10}"]}
    mac = f"02-00-{(index >> 16) & 0xFF:02x}-{(index >> 8) & 0xFF:02x}-{index & 0xFF:02x}-01"

    def core(kind: str, rid: str, role: str = "") -> dict:
        # Every label is unique in the registry (the query phase's label query must find exactly one resource).
        label = f"bench-{kind}-{name}" + (f"-{role}" if role else "")
        return {"id": rid, "version": version, "label": label, "description": f"synthetic {kind} {name}", "tags": tags}

    node_id, device_id = new_id(), new_id()
    video_source, audio_source = new_id(), new_id()
    video_flow, audio_flow = new_id(), new_id()
    senders, receivers = [new_id(), new_id()], [new_id(), new_id()]
    rtp = "urn:x-nmos:transport:rtp.mcast"
    idle_sender = {"receiver_id": None, "active": False}
    idle_receiver = {"sender_id": None, "active": False}
    return [
        ("node", core("node", node_id) | {
            "href": base + "/", "hostname": f"bench-node-{name}",
            "api": {"versions": ["v1.3"],
                    "endpoints": [{"host": "127.0.0.1", "port": port, "protocol": "http", "authorization": False}]},
            "caps": {}, "services": [],
            "clocks": [{"name": "clk0", "ref_type": "internal"}],
            "interfaces": [{"chassis_id": mac, "port_id": mac, "name": "eth0"}]}),
        ("device", core("device", device_id) | {
            "type": "urn:x-nmos:device:generic", "node_id": node_id, "senders": senders, "receivers": receivers,
            "controls": [{"href": base + "/x-nmos/connection/v1.1/", "type": "urn:x-nmos:control:sr-ctrl/v1.1"}]}),
        ("source", core("source", video_source, "video") | {
            "caps": {}, "device_id": device_id, "parents": [], "clock_name": "clk0",
            "grain_rate": {"numerator": 25, "denominator": 1}, "format": "urn:x-nmos:format:video"}),
        ("source", core("source", audio_source, "audio") | {
            "caps": {}, "device_id": device_id, "parents": [], "clock_name": "clk0",
            "format": "urn:x-nmos:format:audio",
            "channels": [{"label": "left", "symbol": "L"}, {"label": "right", "symbol": "R"}]}),
        ("flow", core("flow", video_flow, "video") | {
            "source_id": video_source, "device_id": device_id, "parents": [],
            "grain_rate": {"numerator": 25, "denominator": 1}, "format": "urn:x-nmos:format:video",
            "frame_width": 1920, "frame_height": 1080, "interlace_mode": "progressive", "colorspace": "BT709",
            "transfer_characteristic": "SDR", "media_type": "video/raw",
            "components": [{"name": c, "width": w, "height": 1080, "bit_depth": 10}
                           for c, w in (("Y", 1920), ("Cb", 960), ("Cr", 960))]}),
        ("flow", core("flow", audio_flow, "audio") | {
            "source_id": audio_source, "device_id": device_id, "parents": [],
            "format": "urn:x-nmos:format:audio", "sample_rate": {"numerator": 48000, "denominator": 1},
            "media_type": "audio/L24", "bit_depth": 24}),
        *[("sender", core("sender", sid, role) | {
            "flow_id": fid, "transport": rtp, "device_id": device_id, "caps": {},
            "manifest_href": f"{base}/x-nmos/connection/v1.1/single/senders/{sid}/transportfile",
            "interface_bindings": ["eth0"], "subscription": idle_sender})
          for sid, fid, role in zip(senders, (video_flow, audio_flow), ("video", "audio"))],
        *[("receiver", core("receiver", rid, role) | {
            "device_id": device_id, "transport": rtp, "format": fmt, "caps": {"media_types": [media]},
            "interface_bindings": ["eth0"], "subscription": idle_receiver})
          for rid, fmt, media, role in zip(receivers, ("urn:x-nmos:format:video", "urn:x-nmos:format:audio"),
                                           ("video/raw", "audio/L24"), ("video", "audio"))],
    ]


def check_schemas(schema_dir: Path, nodes: int) -> int:
    """Validates the synthetic payloads against the official IS-04 v1.3 schemas (read in place); returns exit status."""
    from jsonschema import Draft4Validator, FormatChecker
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    # The official files are draft-04, have no "id", and "$ref" siblings by relative name: give each a base URI.
    base = schema_dir.resolve().as_uri() + "/"
    registry = Registry().with_resources(
        (base + path.name, Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT4))
        for path in sorted(schema_dir.glob("*.json"))).crawl()

    def validator(name: str) -> Draft4Validator:
        return Draft4Validator({"$ref": base + name}, registry=registry, format_checker=FormatChecker())

    envelope = validator("registrationapi-resource-post-request.json")
    by_type = {kind: validator(f"{kind}.json") for kind in set(NODE_LAYOUT)}
    failures = checked = 0
    now = time.time()
    # the synthetic Nodes, then a small big Node of the storm phase (built from the same resources)
    payloads = [(f"node {index}", kind, data) for index in range(nodes) for kind, data in synthetic_node(index, now)]
    payloads += [("big node", kind, data) for stage in big_node(nodes, now, 60) for kind, data in stage]
    for where, kind, data in payloads:
        checked += 1
        # The per-type schema gives readable messages; the request envelope (a oneOf) only says "not valid".
        errors = [*by_type[kind].iter_errors(data)] or [*envelope.iter_errors({"type": kind, "data": data})]
        for error in errors[:3]:
            print(f"{where} {kind}: {error.message[:200]} at /{'/'.join(map(str, error.absolute_path))}")
        failures += bool(errors)
    print(f"checked {checked} payloads of {nodes} synthetic nodes and a big node against {schema_dir}: "
          f"{failures} invalid")
    return 1 if failures else 0


def big_node(index: int, now: float, resources: int,
             new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> list[list[tuple[str, dict]]]:
    """One Node with `resources` resources in all (itself included, at least 3), as (type, data) in three stages
    that may each be posted in any order, but after the stage before: the Node; its Devices (one per 100
    resources); then Sources, Flows, Senders and Receivers in turn, spread over the Devices (the registry checks a
    Device's Node and the others' Device, so nothing in the last stage waits for anything else in it).

    Built from `synthetic_node`'s resources, with ids and labels of their own (`bench-big-<kind>-<n>`)."""
    template = {kind: data for kind, data in reversed(synthetic_node(index, now, new_id))}  # the video ones
    node = template["node"]
    name = f"{index:06d}"
    devices = [template["device"] | {"id": new_id(), "label": f"bench-big-device-{name}-{d:04d}", "senders": [],
                                     "receivers": [], "node_id": node["id"]}
               for d in range(max(1, min(resources // 100, resources - 2)))]
    rest: list[tuple[str, dict]] = []
    source_id = flow_id = None
    for n in range(resources - 1 - len(devices)):
        kind = ("source", "flow", "sender", "receiver")[n % 4]
        device = devices[n // 4 % len(devices)]["id"]
        data = template[kind] | {"id": new_id(), "label": f"bench-big-{kind}-{name}-{n:05d}", "device_id": device}
        if kind == "source":
            source_id = data["id"]
        elif kind == "flow":
            data["source_id"], flow_id = source_id, data["id"]
        elif kind == "sender":
            data["flow_id"] = flow_id
            data["manifest_href"] = data["manifest_href"].replace(template["sender"]["id"], data["id"])
        rest.append((kind, data))
    return [[("node", node)], [("device", d) for d in devices], rest]
