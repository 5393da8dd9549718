"""SDP transport files: the ones the Node serves for its RTP senders, and reading the ones its receivers are given.

Senders' files follow SMPTE ST 2110-20 (video/raw), ST 2110-30 (audio/L16, L20, L24), ST 2110-40 (video/smpte291)
and ST 2022-6 (video/SMPTE2022-6), with RFC 7273 clock signalling. The reader is deliberately small: it checks the
structure (RFC 8866: `v=0` first, an `o=`, `s=` and `t=` line, media descriptions) and works out each medium's media
type from its `m=` and `a=rtpmap:` lines, which is what a Receiver needs to decide whether it can take the stream.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from attrs import frozen

_PAYLOAD_TYPES = {"video/raw": 96, "audio/L16": 97, "audio/L20": 97, "audio/L24": 97, "video/smpte291": 100,
                  "video/SMPTE2022-6": 98}
PTP_DOMAIN = 127  # SMPTE ST 2059-2's default domain; IS-04 clocks do not carry one


class SdpError(ValueError):
    """Text that is not an SDP file a Receiver can use; the message says why."""


@frozen
class Medium:
    media: str  # "video", "audio", ...
    port: int
    media_type: str | None  # "video/raw"; None when the payload format has no rtpmap
    connection: str | None  # the c= address (without TTL or count), from the medium or the session


def format_of(media_type: str) -> str:
    """The IS-04 format URN of a media type (IS-04 flow schemas: SMPTE 291 is data, SMPTE 2022-6 is mux)."""
    if media_type == "video/smpte291":
        return "urn:x-nmos:format:data"
    if media_type == "video/SMPTE2022-6":
        return "urn:x-nmos:format:mux"
    top = media_type.split("/", 1)[0]
    return {"video": "urn:x-nmos:format:video", "audio": "urn:x-nmos:format:audio"}.get(top, "urn:x-nmos:format:data")


# --- writing

def make_sdp(*, sender: Mapping[str, Any], flow: Mapping[str, Any], source: Mapping[str, Any],
             node: Mapping[str, Any], destination_ip: str, destination_port: int, source_ip: str) -> str:
    """The SDP file of an RTP sender of `flow`. The session version follows the sender's `version`, so the file
    changes exactly when the sender does (IS-04 "Behaviour - Nodes": the version SHOULD change with the file)."""
    media_type = flow["media_type"]
    if media_type not in _PAYLOAD_TYPES:
        raise ValueError(f"no SDP for media type {media_type}")
    pt = _PAYLOAD_TYPES[media_type]
    session_id = int.from_bytes(uuid.UUID(sender["id"]).bytes[:4], "big")
    session_version = int(sender["version"].split(":")[0])
    family = "IP6" if ":" in destination_ip else "IP4"
    source_family = "IP6" if ":" in source_ip else "IP4"
    multicast = _is_multicast(destination_ip)
    lines = ["v=0", f"o=- {session_id} {session_version} IN {source_family} {source_ip}",
             f"s={_text(sender.get('label')) or '-'}"]
    if sender.get("description"):
        lines.append(f"i={_text(sender['description'])}")
    lines.append("t=0 0")
    media = "audio" if media_type.startswith("audio/") else "video"
    lines.append(f"m={media} {destination_port} RTP/AVP {pt}")
    lines.append(f"c=IN {family} {destination_ip}" + ("/64" if multicast and family == "IP4" else ""))
    if multicast:
        lines.append(f"a=source-filter: incl IN {family} {destination_ip} {source_ip}")
    lines += _media_lines(media_type, pt, flow, source)
    lines.append(_refclk(source, node, sender))
    lines.append("a=mediaclk:direct=0")
    return "\r\n".join(lines) + "\r\n"


def _text(value: Any) -> str:
    return " ".join(str(value or "").split())  # one line: no CR or LF inside a field


def _is_multicast(ip: str) -> bool:
    if ":" in ip:
        return ip.lower().startswith("ff")
    try:
        return 224 <= int(ip.split(".")[0]) <= 239
    except ValueError:
        return False


def _rate_text(rate: Mapping[str, Any]) -> str:
    value = Fraction(rate["numerator"], rate.get("denominator", 1))
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _sampling(components: Sequence[Mapping[str, Any]]) -> str:
    """ST 2110-20 sampling from IS-04 flow components (names and sizes)."""
    by_name = {component["name"]: component for component in components}
    if {"R", "G", "B"} <= set(by_name):
        return "RGB"
    luma = by_name.get("Y")
    chroma = by_name.get("Cb")
    if luma is None or chroma is None:
        return "YCbCr-4:2:2"
    wide = chroma["width"] * 2 == luma["width"]
    tall = chroma["height"] * 2 == luma["height"]
    if wide and tall:
        return "YCbCr-4:2:0"
    if wide:
        return "YCbCr-4:2:2"
    return "YCbCr-4:4:4"


def _media_lines(media_type: str, pt: int, flow: Mapping[str, Any], source: Mapping[str, Any]) -> list[str]:
    if media_type == "video/raw":
        rate = flow.get("grain_rate") or source.get("grain_rate") or {"numerator": 25, "denominator": 1}
        components = flow["components"]
        params = [f"sampling={_sampling(components)}", f"width={flow['frame_width']}",
                  f"height={flow['frame_height']}", f"exactframerate={_rate_text(rate)}",
                  f"depth={components[0]['bit_depth']}", f"TCS={flow.get('transfer_characteristic', 'SDR')}",
                  f"colorimetry={flow['colorspace']}", "PM=2110GPM", "SSN=ST2110-20:2017", "TP=2110TPN"]
        interlace = flow.get("interlace_mode", "progressive")
        if interlace != "progressive":
            params.append("interlace")
            if interlace == "interlaced_psf":
                params.append("segmented")
        return [f"a=rtpmap:{pt} raw/90000", f"a=fmtp:{pt} " + "; ".join(params) + ";"]
    if media_type.startswith("audio/"):
        channels = len(source.get("channels", [])) or 1
        rate = Fraction(flow["sample_rate"]["numerator"], flow["sample_rate"].get("denominator", 1))
        return [f"a=rtpmap:{pt} {media_type.split('/')[1]}/{int(rate)}/{channels}", "a=ptime:1"]
    if media_type == "video/smpte291":
        lines = [f"a=rtpmap:{pt} smpte291/90000"]
        did_sdids = ["{0x%s,0x%s}" % (entry["DID"][2:].upper(), entry["SDID"][2:].upper())
                     for entry in flow.get("DID_SDID", []) if "DID" in entry and "SDID" in entry]
        if did_sdids:
            lines.append(f"a=fmtp:{pt} " + "; ".join(f"DID_SDID={value}" for value in did_sdids) + ";")
        return lines
    return [f"a=rtpmap:{pt} SMPTE2022-6/27000000"]


def _refclk(source: Mapping[str, Any], node: Mapping[str, Any], sender: Mapping[str, Any]) -> str:
    """RFC 7273 reference clock of the source's clock: its PTP grandmaster, or the MAC of the sender's interface."""
    clock = next((c for c in node.get("clocks", []) if c["name"] == source.get("clock_name")), None)
    if clock is not None and clock["ref_type"] == "ptp":
        return f"a=ts-refclk:ptp={clock['version']}:{clock['gmid'].upper()}:{PTP_DOMAIN}"
    bound = sender.get("interface_bindings", [])
    interface = next((i for i in node.get("interfaces", []) if bound and i["name"] == bound[0]), None)
    if interface is not None:
        return f"a=ts-refclk:localmac={interface['port_id'].upper()}"
    return "a=ts-refclk:local"


# --- reading

_LINE = re.compile(r"([a-z])=(.*)")


def parse_sdp(text: str) -> list[Medium]:
    """The media of an SDP file; SdpError when it is not one."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("an SDP file starts with 'v=0'")
    session: dict[str, str] = {}
    media: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, 1):
        match = _LINE.fullmatch(raw.strip())
        if match is None:
            raise SdpError(f"line {number} is not '<type>=<value>': {raw[:60]!r}")
        kind, value = match.groups()
        if kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise SdpError(f"line {number}: 'm=' needs '<media> <port> <proto> <fmt> ...': {value!r}")
            media.append({"media": parts[0], "port": int(parts[1].split("/")[0]), "formats": parts[3:],
                          "rtpmap": {}, "c": None})
        elif media:
            if kind == "c":
                media[-1]["c"] = value
            elif kind == "a" and value.startswith("rtpmap:"):
                pt, _, encoding = value[len("rtpmap:"):].partition(" ")
                media[-1]["rtpmap"][pt] = encoding.split("/")[0]
        else:
            session.setdefault(kind, value)
    for required in ("o", "s", "t"):
        if required not in session:
            raise SdpError(f"the session has no '{required}=' line")
    if not media:
        raise SdpError("no media description ('m=' line)")
    found = []
    for medium in media:
        encoding = medium["rtpmap"].get(medium["formats"][0])
        connection = medium["c"] or session.get("c")
        if connection is None:
            raise SdpError(f"the {medium['media']} medium has no connection ('c=') line")
        address = connection.split()[-1].split("/")[0]
        found.append(Medium(medium["media"], medium["port"],
                            f"{medium['media']}/{encoding}" if encoding else None, address))
    return found
