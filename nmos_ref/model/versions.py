"""IS-04 API versions ("v1.3") and resource types."""

from __future__ import annotations

import re

ALL_VERSIONS: tuple[str, ...] = ("v1.0", "v1.1", "v1.2", "v1.3")

# Resource types in the order a Node registers them: every type's parent comes before it.
TYPES: tuple[str, ...] = ("node", "device", "source", "flow", "sender", "receiver")
PLURALS: dict[str, str] = {kind: kind + "s" for kind in TYPES}
SINGULARS: dict[str, str] = {plural: kind for kind, plural in PLURALS.items()}

_VERSION = re.compile(r"v([0-9]+)\.([0-9]+)")


def parse_version(text: str) -> tuple[int, int]:
    """"v1.12" to (1, 12); ValueError otherwise. IS-04 "APIs": versions compare as integers, so v1.12 > v1.5."""
    match = _VERSION.fullmatch(text)
    if match is None:
        raise ValueError(f"not an API version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def sort_versions(versions: list[str] | tuple[str, ...]) -> list[str]:
    return sorted(versions, key=parse_version)
