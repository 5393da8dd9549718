"""What every NMOS API shares: JSON responses with CORS, the NMOS error JSON, body reading, and the root resources.

IS-04 "APIs": every response, errors included, carries CORS headers; JSON is served as `application/json` (the AMWA
tool warns on a charset parameter); every error is `{"code", "error", "debug"}`; GET answers with and without a
trailing slash and no 3xx is sent. One exception type (`NmosError`) and one renderer (`render_error`) serve them all,
so no HTML page from Twisted, Klein or Werkzeug ever reaches a client.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from nmos_ref.model.errors import InvalidResource, ModelError, NotOwner, UnknownResource, VersionConflict
from nmos_ref.model.jsontext import BadJSON, compact, decode
from nmos_ref.validation import SchemaViolation

log = Logger()

ALLOWED_HEADERS = "Content-Type, Accept, Authorization"
EXPOSED_HEADERS = "Link, Location, X-Paging-Limit, X-Paging-Since, X-Paging-Until, X-Paging-Timestamp, " \
                  "X-Ancestry-Generations"
MAX_BODY = 1 << 20  # bytes; a registration is a few KB, so 1 MiB leaves room and bounds memory



class Encoded(str):
    """JSON text that is already encoded (a stored resource), sent as it is."""


class NmosError(Exception):
    """An error answer: HTTP status, the `error` text and an optional `debug` text."""

    def __init__(self, status: int, error: str, debug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.debug = debug
        self.headers = headers or {}


def set_cors(request: IRequest) -> None:
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"access-control-allow-methods", b"GET, PUT, POST, PATCH, HEAD, OPTIONS, DELETE")
    requested = request.getHeader(b"access-control-request-headers")
    request.setHeader(b"access-control-allow-headers", requested or ALLOWED_HEADERS.encode())
    request.setHeader(b"access-control-expose-headers", EXPOSED_HEADERS.encode())
    request.setHeader(b"access-control-max-age", b"3600")


# Reason phrases twisted.web does not know (it would send "Unknown Status").
_REASONS = {426: b"Upgrade Required"}


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    """Set status, `Content-Type: application/json` (exactly) and CORS; the encoded body."""
    request.setResponseCode(status, _REASONS.get(status))
    request.setHeader(b"content-type", b"application/json")
    set_cors(request)
    # Stored resources are servable by construction (nmos_ref.model.jsontext.servable); "replace" only keeps an
    # error text that echoes a client's lone surrogate from ever failing to send.
    data = (body if isinstance(body, Encoded) else compact(body)).encode("utf-8", "replace")
    # A length instead of chunked framing: cheaper for both ends on these small bodies.
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def json_list(items: Iterable[str]) -> Encoded:
    """A JSON array of already encoded items."""
    return Encoded("[" + ",".join(items) + "]")


def empty_response(request: IRequest, status: int = 204) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"0")
    set_cors(request)
    return b""


def error_body(status: int, error: str, debug: str | None = None) -> dict[str, Any]:
    return {"code": status, "error": error, "debug": debug}


def render_error(request: IRequest, error: NmosError) -> bytes:
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    return json_response(request, error.status, error_body(error.status, error.error, error.debug))


def as_nmos_error(failure: Failure, request: IRequest) -> NmosError:
    """Map any failure of a handler to the error a client should see."""
    exc = failure.value
    if isinstance(exc, NmosError):
        return exc
    if isinstance(exc, SchemaViolation):
        return NmosError(400, "The request body does not match the schema", exc.message)
    if isinstance(exc, VersionConflict):
        return NmosError(409, str(exc), None, {"Location": resource_location(exc.held_version, exc.kind, exc.rid)})
    if isinstance(exc, InvalidResource):
        return NmosError(400, str(exc))
    if isinstance(exc, UnknownResource):
        return NmosError(404, str(exc))
    if isinstance(exc, NotOwner):
        # BCP-003-02: 403 with the RFC 6750 challenge, as for any token that does not grant the request.
        host = (request.getRequestHostname() or b"nmos").decode("ascii", "replace")
        return NmosError(403, str(exc), None, {"WWW-Authenticate": f"Bearer realm={host},error=insufficient_scope"})
    if isinstance(exc, ModelError):
        return NmosError(400, str(exc))
    if isinstance(exc, MethodNotAllowed) and set(exc.valid_methods or ()) - {"OPTIONS"}:
        allowed = ", ".join(exc.valid_methods or [])
        return NmosError(405, f"{request.method.decode()} is not allowed here", f"allowed: {allowed}",
                         {"Allow": allowed})
    if isinstance(exc, (NotFound, MethodNotAllowed)):  # only the OPTIONS catch-all matched: no such path
        return NmosError(404, "No such resource", request.path.decode("utf-8", "replace"))
    if isinstance(exc, HTTPException):
        return NmosError(exc.code or 500, exc.name, exc.description)
    log.failure("Unexpected error answering {method} {path}", failure, method=request.method, path=request.path)
    return NmosError(500, "Internal error", f"{failure.type.__name__}: {failure.getErrorMessage()}")


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


def read_json(request: IRequest, max_body: int = MAX_BODY) -> Any:
    """The request body as JSON, or an NmosError: 413 over the size cap, 415 not JSON, 400 malformed."""
    if getattr(request, "body_too_large", False):
        raise NmosError(413, f"The request body is larger than {max_body} bytes")
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        raise NmosError(415, "The request body must be application/json",
                        f"Content-Type was {content_type.decode('latin-1') or 'missing'}")
    raw = request.content.read() if request.content is not None else b""
    if len(raw) > max_body:
        raise NmosError(413, f"The request body is larger than {max_body} bytes")
    try:
        return decode(raw)
    except BadJSON as exc:
        raise NmosError(400, "The request body is not valid JSON", str(exc)) from None


def resource_location(version: str, kind: str, rid: str) -> str:
    return f"/x-nmos/registration/{version}/resource/{kind}s/{rid}"


class ListingResource(Resource):
    """A fixed JSON listing (`/`, `/x-nmos/`) whose children are other resources; anything else is an NMOS 404."""

    def __init__(self, entries: list[str], children: dict[bytes, IResource] | None = None) -> None:
        super().__init__()
        self.entries = entries
        self.named = children or {}

    def getChild(self, name: bytes, request: IRequest) -> IResource:
        if name == b"":
            return self
        child = self.named.get(name)
        return child if child is not None else ErrorResource(NmosError(404, "No such resource", request.path.decode(
            "utf-8", "replace")))

    def render(self, request: IRequest) -> bytes:
        if request.method in (b"GET", b"HEAD"):
            return json_response(request, 200, self.entries)
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


def root_resource(apis: dict[str, IResource], others: dict[str, IResource] | None = None) -> Resource:
    """`/` → ["x-nmos/"], `/x-nmos/` → the APIs served, `/x-nmos/<api>/...` → that API's Klein resource;
    `others` are served beside `/x-nmos` (IS-04 "APIs": other content MAY share the port) without being listed."""
    x_nmos = ListingResource(sorted(f"{name}/" for name in apis), {name.encode(): api for name, api in apis.items()})
    children = {name.encode(): resource for name, resource in (others or {}).items()}
    return ListingResource(["x-nmos/"], {**children, b"x-nmos": x_nmos})
