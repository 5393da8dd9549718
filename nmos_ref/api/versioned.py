"""What every versioned NMOS API (Klein app) shares: the NMOS error JSON for every failure, `/` listing the
versions, `/<version>` listing what is under it, and OPTIONS on any path (IS-10: OPTIONS never needs a token)."""

from __future__ import annotations

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from nmos_ref.web.errors import NmosError
from nmos_ref.web.responses import as_nmos_error, json_response, render_error


def add_error_handlers(app: Klein) -> None:
    """Make every error of `app` the NMOS error JSON. With `app = Klein()` as a class attribute Klein passes the
    instance first, hence `_api`."""

    @app.handle_errors(Exception)
    def _handle(_api: object, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, as_nmos_error(failure, request))


class VersionedAPI:
    """What every versioned NMOS API shares: the versions it serves and the listing of one version. A subclass has
    its own `app = Klein()` and calls `add_common_routes(app)` in its body."""

    api_name = "API"
    base: list[str] = []  # the listing of /<version>/
    versions: list[str]

    def _version(self, version: str) -> str:
        if version not in self.versions:
            raise NmosError(404, f"{self.api_name} version {version} is not served",
                            f"served: {', '.join(self.versions)}")
        return version


def add_common_routes(app: Klein) -> None:
    """The routes of every `VersionedAPI`: errors as the NMOS JSON, `/` lists the versions, `/<version>` lists what
    is under it, and OPTIONS answers any path with the methods it allows (IS-10: OPTIONS never needs a token)."""
    add_error_handlers(app)

    @app.route("/", methods=["GET"], strict_slashes=False)
    def versions_listing(api: VersionedAPI, request: IRequest) -> bytes:
        return json_response(request, 200, [f"{version}/" for version in api.versions])

    @app.route("/<version>", methods=["GET"], strict_slashes=False)
    def base_listing(api: VersionedAPI, request: IRequest, version: str) -> bytes:
        api._version(version)
        return json_response(request, 200, api.base)

    @app.route("/", methods=["OPTIONS"], strict_slashes=False)
    @app.route("/<path:_rest>", methods=["OPTIONS"], strict_slashes=False)
    def options(api: VersionedAPI, request: IRequest, _rest: str = "") -> bytes:
        return options_response(app, request)


def options_response(app: Klein, request: IRequest) -> bytes:
    """OPTIONS on any path of `app`: 200 with the methods that path allows, or 404 where there is no such path."""
    path = "/" + "/".join(segment.decode("utf-8", "replace") for segment in request.postpath)
    adapter = app.url_map.bind("localhost")
    methods = set()
    for candidate in {path, path.rstrip("/") or "/"}:
        try:
            methods.update(adapter.allowed_methods(candidate))
        except HTTPException:
            pass
    methods.discard("OPTIONS")
    if not methods:
        raise NmosError(404, "No such resource", request.path.decode("utf-8", "replace"))
    allowed = ", ".join(sorted(methods | {"OPTIONS"}))
    request.setHeader(b"allow", allowed.encode())
    body = json_response(request, 200, [])
    request.setHeader(b"access-control-allow-methods", allowed.encode())
    return body
