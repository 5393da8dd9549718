"""The resources above the APIs: `/` lists `x-nmos/`, `/x-nmos/` lists the APIs served, anything else is an NMOS
404; and the one-error resource that answers every request below it."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from nmos_ref.web.errors import NmosError
from nmos_ref.web.responses import json_response, render_error


class ListingResource(Resource):
    """A fixed JSON listing (`/`, `/x-nmos/`) whose children are other resources; anything else is an NMOS 404."""

    def __init__(self, entries: list[str], children: dict[bytes, IResource] | None = None,
                 see_also: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__()
        self.entries = entries
        self.named = children or {}
        self.see_also = see_also  # (text, URL) links the page a browser gets shows

    def getChild(self, name: bytes, request: IRequest) -> IResource:
        if name == b"":
            return self
        child = self.named.get(name)
        return child if child is not None else ErrorResource(NmosError(404, "No such resource", request.path.decode(
            "utf-8", "replace")))

    def render(self, request: IRequest) -> bytes:
        if request.method in (b"GET", b"HEAD"):
            return json_response(request, 200, self.entries, self.see_also)
        if request.method == b"OPTIONS":
            request.setHeader(b"allow", b"GET, HEAD, OPTIONS")
            body = json_response(request, 200, [])
            request.setHeader(b"access-control-allow-methods", b"GET, HEAD, OPTIONS")
            return body
        return render_error(request, NmosError(405, f"{request.method.decode()} is not allowed here",
                                               "allowed: GET, HEAD, OPTIONS", {"Allow": "GET, HEAD, OPTIONS"}))


class ErrorResource(Resource):
    """Answers every request below it with one NMOS error."""

    isLeaf = True

    def __init__(self, error: NmosError) -> None:
        super().__init__()
        self.error = error

    def render(self, request: IRequest) -> bytes:
        return render_error(request, self.error)


def root_resource(apis: dict[str, IResource], others: dict[str, IResource] | None = None,
                  see_also: Sequence[tuple[str, str]] = ()) -> Resource:
    """`/` → ["x-nmos/"], `/x-nmos/` → the APIs served, `/x-nmos/<api>/...` → that API's Klein resource;
    `others` are served beside `/x-nmos` (IS-04 "APIs": other content MAY share the port) without being listed in
    the JSON; `see_also` links are shown on the page a browser gets for `/`."""
    x_nmos = ListingResource(sorted(f"{name}/" for name in apis), {name.encode(): api for name, api in apis.items()})
    children = {name.encode(): resource for name, resource in (others or {}).items()}
    return ListingResource(["x-nmos/"], {**children, b"x-nmos": x_nmos}, see_also)
