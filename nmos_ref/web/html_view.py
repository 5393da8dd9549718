"""The APIs as a browser sees them: an HTML page showing the JSON answer a client would get, indented, with every
listing entry and every id or href naming another API resource as a link, and the status and headers that matter.

An extension (as nmos-cpp does): only a request that prefers `text/html` to `application/json` by its `Accept` header
(RFC 9110 §12.5.1: browsers send `text/html,...,*/*;q=0.8`) gets it; curl (`*/*`), the AMWA tool (none, or
`application/json`) and every other client get the JSON as before. Everything taken from the answer is escaped.
"""

from __future__ import annotations

import html
import json
import re
from http import HTTPStatus
from collections.abc import Sequence
from typing import Any

from twisted.web.iweb import IRequest

# IS-04 resource types, by the key that names one of them in another resource.
_ID_KEYS = {"node_id": "nodes", "device_id": "devices", "source_id": "sources", "flow_id": "flows",
            "sender_id": "senders", "receiver_id": "receivers"}
_COLLECTIONS = {"nodes", "devices", "sources", "flows", "senders", "receivers", "subscriptions"}
_API_PATH = re.compile(r"/x-nmos/(node|query|registration)/(v[0-9]+\.[0-9]+)(?:/|$)(.*)")
# The answer's headers worth showing, in this order.
_SHOWN = (b"location", b"link", b"x-paging-limit", b"x-paging-since", b"x-paging-until", b"x-paging-timestamp",
          b"x-ancestry-generations", b"allow", b"www-authenticate")
_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([A-Za-z]+)"?')
_STYLE = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}"
    "pre{background:#fff;border:1px solid #ddd;padding:1em;overflow:auto;font:13px/1.4 monospace}"
    "a{color:#0645ad}.bad{color:#b00}.ok{color:#070}table{border-collapse:collapse}"
    "td,th{padding:.15em .8em .15em 0;text-align:left;vertical-align:top;font-family:monospace}"
    "nav a{margin-right:.6em}.paging a{margin-right:1em}"
)


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def prefers_html(accept: bytes | None) -> bool:
    """Whether an `Accept` field value ranks `text/html` above `application/json` (RFC 9110 §12.5.1: the most
    specific media range that matches gives a type its quality; a tie keeps JSON)."""
    if not accept:
        return False
    accept = accept.lower()  # (media types are case-insensitive)
    if b"text/" not in accept:
        return False
    best: dict[str, tuple[int, float]] = {}  # media type -> (specificity, quality) of the range that decides it
    for item in accept.decode("latin-1").split(","):
        media, *params = item.split(";")
        media = media.strip()
        quality = _quality(params)
        for wanted in ("text/html", "application/json"):
            kind = wanted.split("/")[0]
            specificity = 3 if media == wanted else 2 if media == f"{kind}/*" else 1 if media == "*/*" else 0
            if specificity and specificity > best.get(wanted, (0, 0.0))[0]:
                best[wanted] = (specificity, quality)
    html_q = best.get("text/html", (0, 0.0))[1]
    return html_q > 0 and html_q > best.get("application/json", (0, 0.0))[1]


class _Linker:
    """Which strings of one answer name another API resource, and where it is served."""

    def __init__(self, path: str) -> None:
        self.path = path
        match = _API_PATH.match(path)
        self.api, self.version, rest = match.groups() if match else (None, None, "")
        segments = [part for part in rest.split("/") if part]
        if self.api == "registration" and segments[:1] == ["resource"]:
            segments = segments[1:]
        self.kind = segments[0] if segments and segments[0] in _COLLECTIONS else None

    def resource(self, kind: str | None, rid: Any) -> str | None:
        if kind is None or self.api is None or not isinstance(rid, str) or not rid:
            return None
        base = f"/x-nmos/{self.api}/{self.version}"
        if self.api == "query":
            return f"{base}/{kind}/{rid}"
        if self.api == "registration":
            return None if kind == "subscriptions" else f"{base}/resource/{kind}/{rid}"
        if kind == "nodes":  # the Node API serves its own Node at self/
            return f"{base}/self"
        return None if kind == "subscriptions" else f"{base}/{kind}/{rid}"

    def entry(self, name: str) -> str:
        """A listing entry ("v1.3/", "nodes/"): below the path answered."""
        return (self.path if self.path.endswith("/") else self.path + "/") + name


def _href(value: str) -> str | None:
    return value if value.startswith(("http://", "https://")) else None


def _json_html(value: Any, linker: _Linker, key: str | None, depth: int, listing: bool) -> str:
    """`value` as `json.dumps(value, indent=2, ensure_ascii=False)` writes it, HTML-escaped, with links."""
    pad = "  " * depth
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f'{pad}  {html.escape(json.dumps(name, ensure_ascii=False))}: '
                 f'{_json_html(item, linker, name, depth + 1, False)}' for name, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [pad + "  " + _json_html(item, linker, key, depth + 1, listing) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    text = html.escape(json.dumps(value, ensure_ascii=False))
    target = None
    if isinstance(value, str):
        if listing and value.endswith("/"):
            target = linker.entry(value)
        elif key == "id":
            target = linker.resource(linker.kind, value)
        elif key in _ID_KEYS:
            target = linker.resource(_ID_KEYS[key], value)
        elif key == "parents":  # a Source's parents are Sources, a Flow's Flows
            target = linker.resource(linker.kind, value)
        elif key in ("senders", "receivers", "devices"):  # a Device's (deprecated) lists of ids
            target = linker.resource(key, value)
        else:
            target = _href(value)
    return f'<a href="{html.escape(target)}">{text}</a>' if target else text


def _breadcrumbs(path: str) -> str:
    parts = [part for part in path.split("/") if part]
    crumbs = ['<a href="/">/</a>']
    for index, part in enumerate(parts):
        target = "/" + "/".join(parts[:index + 1]) + "/"
        crumbs.append(f'<a href="{html.escape(target)}">{html.escape(part)}/</a>')
    return "".join(crumbs)


def _headers(request: IRequest) -> tuple[str, str]:
    """The table of headers shown, and the paging links taken from `Link`."""
    rows, paging = [], []
    for name in _SHOWN:
        for raw in request.responseHeaders.getRawHeaders(name) or []:
            value = raw.decode("latin-1")
            shown = html.escape(value)
            if name == b"location":
                shown = f'<a href="{html.escape(value)}">{shown}</a>'
            if name == b"link":
                for target, rel in _LINK.findall(value):
                    if _href(target) or target.startswith("/"):
                        paging.append(f'<a rel="{html.escape(rel)}" href="{html.escape(target)}">'
                                      f'{html.escape(rel)}</a>')
            rows.append(f"<tr><th>{html.escape(name.decode('ascii').title())}</th><td>{shown}</td></tr>")
    return "".join(rows), "".join(paging)


def html_page(request: IRequest, status: int, value: Any, see_also: Sequence[tuple[str, str]] = ()) -> bytes:
    """The page for an answer of `status` carrying `value` (its headers already set on `request`)."""
    path = request.path.decode("utf-8", "replace")
    linker = _Linker(path)
    listing = isinstance(value, list) and all(isinstance(item, str) for item in value)
    body = _json_html(value, linker, None, 0, listing)
    rows, paging = _headers(request)
    state = "ok" if status < 400 else "bad"
    extra = "".join(f'<p><a href="{html.escape(target)}">{html.escape(text)}</a></p>' for text, target in see_also)
    title = html.escape(f"{request.method.decode('ascii', 'replace')} {path}")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title} - nmos-ref</title><style>{_STYLE}</style></head><body>"
        f"<nav>{_breadcrumbs(path)}</nav>"
        f"<h1 class=\"{state}\">{status} {html.escape(_phrase(status))}</h1>"
        f"<p>{title}</p>{extra}"
        f"<table>{rows}</table>"
        + (f'<p class="paging">Pages: {paging}</p>' if paging else "")
        + f"<pre id=\"json\">{body}</pre>"
        "<p><small>The same answer as application/json: ask without <code>text/html</code> in Accept "
        "(curl does).</small></p></body></html>\n"
    )
    return page.encode("utf-8", "replace")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
