"""The Query API as the phases read it: its root and its v1.0 collections, and readers of its answers (a Link
header's target, the ids of a JSON list, every id of a collection, how many Nodes it lists)."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from .harness import Context
from .http import Connection, ProtocolError, build_request
from .server import Server

QUERY = "/x-nmos/query"
V10_COLLECTIONS = ("nodes", "devices", "sources", "flows", "senders", "receivers")  # together: every resource
LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([A-Za-z]+)"?')


def link_path(headers: dict[str, str], rel: str, server: Server) -> str:
    """The path and query of the `Link` target `rel`; ProtocolError if it is missing or leaves the registry."""
    for url, name in LINK.findall(headers.get("link", "")):
        if name == rel:
            parts = urlsplit(url)
            if (parts.hostname, parts.port) != (server.host, server.port):
                # The machine's rule: benchmark traffic stays on loopback, at the registry under test.
                raise ProtocolError(f"Link rel={rel} points away from the registry under test: {url}")
            return parts.path + (f"?{parts.query}" if parts.query else "")
    raise ProtocolError(f"no Link rel={rel} in {headers.get('link')!r}")


def json_ids(body: bytes) -> list[str] | None:
    """The ids of a JSON array of resources, or None if the body is not one."""
    try:
        items = json.loads(body)
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return None
    return [item.get("id") for item in items]


def listed_ids(ctx: Context, http: Connection, collection: str) -> set[str]:
    """Every id of a collection as the Query API lists it at v1.3 (pages of 1000 along rel="prev"; no translation,
    so no cache is built that the scenario would not otherwise have)."""
    path, ids = f"{QUERY}/v1.3/{collection}?paging.limit=1000", set()
    for _ in range(1000):
        status, headers, body = http.exchange(build_request("GET", path, ctx.host_header))
        if status != 200 or (page := json_ids(body)) is None:
            raise ProtocolError(f"GET {path} answered {status}")
        ids.update(page)
        if headers.get("x-paging-since") == "0:0":
            return ids
        path = link_path(headers, "prev", ctx.server)
    raise ProtocolError(f"GET {QUERY}/v1.3/{collection}: no end after 1000 pages")


def count_nodes(ctx: Context, http: Connection) -> int | None:
    """How many Nodes the Query API lists (v1.0: never paged)."""
    try:
        status, _, body = http.exchange(build_request("GET", f"{QUERY}/v1.0/nodes", ctx.host_header))
    except (OSError, ProtocolError):
        return None
    ids = json_ids(body) if status == 200 else None
    return None if ids is None else len(ids)
