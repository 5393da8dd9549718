"""The live registry page at `/ui/` (an extension, beside `/x-nmos` as IS-04 "APIs" allows): static HTML, CSS and
JavaScript shipped in the package (nmos_ref/web/ui/), and `config.json` telling the page which API versions to use.
The page reads the registry only through the Query API and its WebSocket subscriptions, with the token the user
gives it when the APIs ask for one; it holds no data itself, so it is served without a token."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from nmos_ref.web.errors import NmosError
from nmos_ref.web.responses import render_error, set_cors
from nmos_ref.web.root import ErrorResource

_TYPES = {"index.html": b"text/html; charset=utf-8", "ui.js": b"text/javascript; charset=utf-8",
          "ui.css": b"text/css; charset=utf-8", "config.json": b"application/json"}
# Nothing from elsewhere: scripts, styles and connections to this origin only (WebSockets included).
_POLICY = b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("."))


class _Asset(Resource):
    isLeaf = True

    def __init__(self, content: bytes, content_type: bytes) -> None:
        super().__init__()
        self.content = content
        self.content_type = content_type

    def render(self, request: IRequest) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return render_error(request, NmosError(405, f"{request.method.decode()} is not allowed here",
                                                   "allowed: GET, HEAD", {"Allow": "GET, HEAD"}))
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.content_type.startswith(b"text/html"):
            request.setHeader(b"content-security-policy", _POLICY)
        set_cors(request)
        request.setHeader(b"content-length", b"%d" % len(self.content))
        return self.content


class UiResource(Resource):
    """`/ui/` and its files; anything else below it is an NMOS 404."""

    def __init__(self, api_versions: list[str], expiry: float, auth: bool) -> None:
        super().__init__()
        folder = files("nmos_ref.web") / "ui"
        newest = max(api_versions, key=_version_key)
        config: dict[str, Any] = {"query_version": newest, "registration_version": newest, "expiry": expiry,
                                  "auth": auth}
        self.assets = {name.encode(): _Asset((folder / name).read_bytes(), kind)
                       for name, kind in _TYPES.items() if name != "config.json"}
        self.assets[b"config.json"] = _Asset(json.dumps(config).encode(), _TYPES["config.json"])

    def getChild(self, name: bytes, request: IRequest) -> IResource:
        if name in (b"", b"index.html"):
            return self.assets[b"index.html"]
        asset = self.assets.get(name)
        if asset is not None and not request.postpath:
            return asset
        return ErrorResource(NmosError(404, "No such resource", request.path.decode("utf-8", "replace")))

    def render(self, request: IRequest) -> bytes:
        # `/ui` without the slash: the same page (its URLs are absolute paths, so they resolve alike).
        return self.assets[b"index.html"].render(request)
