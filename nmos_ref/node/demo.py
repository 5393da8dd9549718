"""The built-in demo Node: one device with a video and an audio output and input, described as a Node file would
describe it (docs/node.md).
"""

from __future__ import annotations
import hashlib
from typing import Any
from nmos_ref.node.description import ASSET_FUNCTION, ASSET_INSTANCE, ASSET_MANUFACTURER, ASSET_PRODUCT, GROUPHINT, RTP


def demo_description(seed: str, hostname: str | None) -> dict[str, Any]:
    """A realistic small Node: one device with a 1080p25 video and a stereo audio output (ST 2110-20 and -30
    senders with SDP files) and a video and an audio input with BCP-004-01 capabilities; BCP-002-01 group hints
    and BCP-002-02 asset tags; an internal and a PTP clock; two interfaces with their switch ports (LLDP)."""
    digest = hashlib.sha256(f"nmos-ref demo:{seed}".encode()).digest()

    def mac(first: int, index: int) -> str:  # locally administered addresses, stable for the seed
        return "-".join(f"{b:02x}" for b in (first, *digest[0:4], index))

    instance = digest[:4].hex().upper()
    asset = {ASSET_MANUFACTURER: ["nmos-ref"], ASSET_INSTANCE: [f"DEMO-{instance}"]}
    name = hostname or seed
    video_rate = {"numerator": 25, "denominator": 1}
    return {
        "label": f"nmos-ref demo Node on {name}",
        "description": "A virtual Node from nmos-ref: one device with a video and an audio output and a video and an "
                       "audio input",
        "tags": {**asset, ASSET_PRODUCT: ["Demo Node"]},
        "clocks": [
            {"name": "clk0", "ref_type": "internal"},
            {"name": "clk1", "ref_type": "ptp", "traceable": False, "version": "IEEE1588-2008",
             "gmid": "-".join(f"{b:02x}" for b in (0x02, *digest[4:7], 0xff, 0xfe, digest[7], 0x01)),
             "locked": True},
        ],
        "interfaces": [
            {"name": "eth0", "chassis_id": mac(0x02, 0), "port_id": mac(0x02, 1),
             "attached_network_device": {"chassis_id": mac(0x06, 0), "port_id": "Ethernet1/1"}},
            {"name": "eth1", "chassis_id": mac(0x02, 0), "port_id": mac(0x02, 2),
             "attached_network_device": {"chassis_id": mac(0x0a, 0), "port_id": "Ethernet1/1"}},
        ],
        "devices": [
            {"key": "main", "label": "Demo device", "description": "Test signal generator and monitor",
             "tags": {**asset, ASSET_PRODUCT: ["Demo Device"], ASSET_FUNCTION: ["Generator", "Monitor"]}},
        ],
        "sources": [
            {"key": "video", "device": "main", "label": "Demo video", "description": "Colour bars, 1080p25",
             "format": "urn:x-nmos:format:video", "clock_name": "clk1", "grain_rate": video_rate},
            {"key": "audio", "device": "main", "label": "Demo audio", "description": "Line-up tone, stereo",
             "format": "urn:x-nmos:format:audio", "clock_name": "clk1",
             "channels": [{"label": "Left", "symbol": "L"}, {"label": "Right", "symbol": "R"}]},
        ],
        "flows": [
            {"key": "video", "source": "video", "label": "Demo video, 1080p25 4:2:2 10-bit",
             "format": "urn:x-nmos:format:video", "media_type": "video/raw", "grain_rate": video_rate,
             "frame_width": 1920, "frame_height": 1080, "interlace_mode": "progressive", "colorspace": "BT709",
             "transfer_characteristic": "SDR",
             "components": [{"name": "Y", "width": 1920, "height": 1080, "bit_depth": 10},
                            {"name": "Cb", "width": 960, "height": 1080, "bit_depth": 10},
                            {"name": "Cr", "width": 960, "height": 1080, "bit_depth": 10}]},
            {"key": "audio", "source": "audio", "label": "Demo audio, 48 kHz 24-bit",
             "format": "urn:x-nmos:format:audio", "media_type": "audio/L24",
             "sample_rate": {"numerator": 48000, "denominator": 1}, "bit_depth": 24},
        ],
        "senders": [
            {"key": "video", "flow": "video", "label": "Demo video output", "description": "ST 2110-20",
             "transport": "urn:x-nmos:transport:rtp.mcast", "interface_bindings": ["eth0"],
             "tags": {GROUPHINT: ["Output 1:Video"]}},
            {"key": "audio", "flow": "audio", "label": "Demo audio output", "description": "ST 2110-30",
             "transport": "urn:x-nmos:transport:rtp.mcast", "interface_bindings": ["eth0"],
             "tags": {GROUPHINT: ["Output 1:Audio 1"]}},
        ],
        "receivers": [
            {"key": "video", "device": "main", "label": "Demo video input", "description": "ST 2110-20",
             "format": "urn:x-nmos:format:video", "transport": RTP, "interface_bindings": ["eth0"],
             "tags": {GROUPHINT: ["Input 1:Video"]},
             "caps": {"media_types": ["video/raw"], "constraint_sets": [
                 {"urn:x-nmos:cap:meta:label": "1080i/p 25 and 50, 4:2:2 10-bit",
                  "urn:x-nmos:cap:meta:preference": 0, "urn:x-nmos:cap:meta:enabled": True,
                  "urn:x-nmos:cap:format:media_type": {"enum": ["video/raw"]},
                  "urn:x-nmos:cap:format:frame_width": {"enum": [1920]},
                  "urn:x-nmos:cap:format:frame_height": {"enum": [1080]},
                  "urn:x-nmos:cap:format:grain_rate": {"enum": [video_rate, {"numerator": 50, "denominator": 1}]},
                  "urn:x-nmos:cap:format:interlace_mode": {"enum": ["progressive", "interlaced_tff",
                                                                    "interlaced_bff", "interlaced_psf"]},
                  "urn:x-nmos:cap:format:color_sampling": {"enum": ["YCbCr-4:2:2"]},
                  "urn:x-nmos:cap:format:component_depth": {"enum": [10]},
                  "urn:x-nmos:cap:format:colorspace": {"enum": ["BT709"]},
                  "urn:x-nmos:cap:format:transfer_characteristic": {"enum": ["SDR"]}},
                 {"urn:x-nmos:cap:meta:label": "720p50, 4:2:2 10-bit",
                  "urn:x-nmos:cap:meta:preference": -10, "urn:x-nmos:cap:meta:enabled": True,
                  "urn:x-nmos:cap:format:media_type": {"enum": ["video/raw"]},
                  "urn:x-nmos:cap:format:frame_width": {"enum": [1280]},
                  "urn:x-nmos:cap:format:frame_height": {"enum": [720]},
                  "urn:x-nmos:cap:format:grain_rate": {"enum": [{"numerator": 50, "denominator": 1}]},
                  "urn:x-nmos:cap:format:interlace_mode": {"enum": ["progressive"]},
                  "urn:x-nmos:cap:format:color_sampling": {"enum": ["YCbCr-4:2:2"]},
                  "urn:x-nmos:cap:format:component_depth": {"enum": [10]}},
             ]}},
            {"key": "audio", "device": "main", "label": "Demo audio input", "description": "ST 2110-30",
             "format": "urn:x-nmos:format:audio", "transport": RTP, "interface_bindings": ["eth0"],
             "tags": {GROUPHINT: ["Input 1:Audio 1"]},
             "caps": {"media_types": ["audio/L24", "audio/L16"], "constraint_sets": [
                 {"urn:x-nmos:cap:meta:label": "48 kHz, up to 8 channels, 1 ms packets",
                  "urn:x-nmos:cap:meta:preference": 0, "urn:x-nmos:cap:meta:enabled": True,
                  "urn:x-nmos:cap:format:media_type": {"enum": ["audio/L24", "audio/L16"]},
                  "urn:x-nmos:cap:format:sample_rate": {"enum": [{"numerator": 48000, "denominator": 1}]},
                  "urn:x-nmos:cap:format:channel_count": {"minimum": 1, "maximum": 8},
                  "urn:x-nmos:cap:transport:packet_time": {"enum": [1]}},
                 {"urn:x-nmos:cap:meta:label": "48 kHz, up to 16 channels, 125 µs packets",
                  "urn:x-nmos:cap:meta:preference": -10, "urn:x-nmos:cap:meta:enabled": True,
                  "urn:x-nmos:cap:format:media_type": {"enum": ["audio/L24", "audio/L16"]},
                  "urn:x-nmos:cap:format:sample_rate": {"enum": [{"numerator": 48000, "denominator": 1}]},
                  "urn:x-nmos:cap:format:channel_count": {"minimum": 1, "maximum": 16},
                  "urn:x-nmos:cap:transport:packet_time": {"enum": [0.125]}},
             ]}},
        ],
    }
