"""Which registry the Node uses: candidates (configured, found by DNS-SD, or this process's own), what makes one
unsuitable (version, protocol, authorization), and their ranking (IS-04 "Behaviour - Registration": highest API
version, then priority, then at random among equals). Pure: no HTTP, no clock.
"""

from __future__ import annotations
import random
import re
from collections.abc import Sequence
from urllib.parse import urlsplit
from attrs import frozen
from nmos_ref.model.versions import parse_version


_PATH = re.compile(r"/*(?:x-nmos/registration/*(?:(v[0-9]+\.[0-9]+)/*)?)?")


@frozen
class Candidate:
    """A Registration API the Node may use: configured, or found by DNS-SD (with its TXT records)."""

    url: str  # "http://127.0.0.1:8235": scheme, host and port, no path
    priority: int
    protocol: str = "http"
    versions: tuple[str, ...] | None = None  # None: not known yet; the registry is asked
    authorization: bool = False
    origin: str = "configured"  # configured, local (the registry of this process), mdns or unicast
    name: str | None = None  # the DNS-SD instance name

    def api(self, version: str, path: str) -> str:
        return f"{self.url}/x-nmos/registration/{version}/{path}"


@frozen
class Choice:
    candidate: Candidate
    version: str  # the API version to register at

    def __str__(self) -> str:
        return f"{self.candidate.url} at {self.version}"


@frozen
class Rejection:
    candidate: Candidate
    reason: str


def parse_registry_url(text: str, priority: int) -> Candidate:
    """A configured Registration API: its base URL, optionally with `/x-nmos/registration[/<version>]` (which pins
    the version); ValueError says what is wrong."""
    parts = urlsplit(text.strip())
    match = _PATH.fullmatch(parts.path)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment or match is None:
        raise ValueError(f"{text!r} is not a Registration API URL such as http://registry.example:8235 or "
                         "http://registry.example:8235/x-nmos/registration/v1.3")
    version = match.group(1)
    return Candidate(f"{parts.scheme}://{parts.netloc}", priority, parts.scheme,
                     (version,) if version else None)


def unsuitable(candidate: Candidate, versions: Sequence[str], protocol: str, authorization: bool) -> str | None:
    """Why the Node cannot use this registry (its protocol, authorization mode or API versions), or None; versions
    not known yet are not held against it."""
    if candidate.protocol != protocol:
        return f"it speaks {candidate.protocol} and this Node {protocol}"
    if candidate.authorization != authorization:
        mode = "requires" if candidate.authorization else "does not use"
        return f"it {mode} authorization (IS-10) and this Node {'does' if authorization else 'does not'}"
    if candidate.versions is not None and not set(candidate.versions) & set(versions):
        return (f"no common API version (it offers {', '.join(candidate.versions) or 'none'}; this Node "
                f"{', '.join(versions)})")
    return None


def rank(candidates: Sequence[Candidate], versions: Sequence[str], protocol: str, authorization: bool,
         rng: random.Random) -> tuple[list[Choice], list[Rejection]]:
    """The usable candidates, best first, each with the version to use; and the others, each with the reason."""
    ours = set(versions)
    usable: list[tuple[tuple[int, int], int, float, Choice]] = []
    rejected = []
    for candidate in candidates:
        reason = unsuitable(candidate, versions, protocol, authorization)
        if candidate.versions is None or reason is not None:
            rejected.append(Rejection(candidate, reason or "its API versions are not known"))
            continue
        best = max((v for v in candidate.versions if v in ours), key=parse_version)
        usable.append((parse_version(best), candidate.priority, rng.random(), Choice(candidate, best)))
    usable.sort(key=lambda item: (-item[0][0], -item[0][1], item[1], item[2]))
    return [item[3] for item in usable], rejected
