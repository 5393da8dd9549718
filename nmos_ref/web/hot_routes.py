"""Klein with a direct dispatch for the few routes every Node calls all the time (heartbeats, registrations): the
same handlers and the same answers, without Werkzeug's URL matching and Klein's Deferreds on their path."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from nmos_ref.web.responses import as_nmos_error, render_error

# A hot route: its path's segments, literal (bytes) or a variable (None); its endpoint; how many segments Klein moves
# from postpath to prepath; its variables' names in order.
_HotRoute = tuple[tuple["bytes | None", ...], str, int, tuple[str, ...]]


class HotKlein(Klein):
    """Klein, plus routes answered without Werkzeug's matching and Klein's Deferreds: the Registration API's
    heartbeats and registrations, which every Node sends all the time (in a profile of a heartbeat storm, issue #13,
    Klein was about a fifth of the registry's CPU per request).

    `hot_route(url, method)` declares an ordinary Klein route (`strict_slashes=False`) and also keeps its shape.
    `HotResource` answers a request whose method and path fit a shape itself: the same handler with the same
    arguments, prepath and postpath as through Klein, its bytes written and the request finished as Klein does, any
    exception answered by the same NMOS error handler; so the answer is the same, byte for byte. Anything else
    (another method or path, an empty segment, which Werkzeug would redirect) goes to Klein as before. A hot route
    must be the only route of its method that can match its paths, with plain `<name>` variables (Werkzeug's default
    converter: one non-empty segment, taken as it is), and its handler must return bytes, or a Deferred of bytes
    (the etcd store's writes, nmos_ref.cluster), answered when it fires.
    """

    def __init__(self) -> None:
        super().__init__()
        self._hot: dict[tuple[bytes, int], list[_HotRoute]] = {}

    def hot_route(self, url: str, method: str) -> Callable[[Callable[..., bytes]], Callable[..., bytes]]:
        segments = url.strip("/").split("/")
        variables = tuple(part[1:-1] for part in segments if part.startswith("<"))
        if not all(part and (not part.startswith("<") or _PLAIN_VARIABLE.fullmatch(part)) for part in segments):
            raise ValueError(f"hot route {url!r}: only literal segments and plain <name> variables")
        shape = tuple(None if part.startswith("<") else part.encode("ascii") for part in segments)
        klein_route = self.route(url, methods=[method], strict_slashes=False)

        def register(handler: Callable[..., bytes]) -> Callable[..., bytes]:
            klein_route(handler)
            endpoint = handler.__name__  # Klein's endpoint name for it
            count = self.endpoints[endpoint].segment_count  # type: ignore[attr-defined]
            self._hot.setdefault((method.encode("ascii"), len(shape)), []).append((shape, endpoint, count, variables))
            return handler

        return register

    def __get__(self, instance: Any, owner: object) -> Klein:
        bound = super().__get__(instance, owner)
        if instance is not None:  # Klein's bound copy shares the routes, not what a subclass adds
            bound._hot = self._hot  # type: ignore[attr-defined]
        return bound

    def resource(self) -> KleinResource:
        return HotResource(self)

    def match_hot(self, request: IRequest) -> tuple[str, int, dict[str, str]] | None:
        """(endpoint, segment count, arguments) when the request is for a hot route, else None."""
        # The path as Klein hands it to Werkzeug: the postpath joined (a segment may hold a decoded "/").
        parts = b"/".join(request.postpath).split(b"/")
        if len(parts) > 1 and not parts[-1]:
            parts.pop()  # strict_slashes=False: with a trailing slash, the same route
        for shape, endpoint, count, variables in self._hot.get((request.method, len(parts)), ()):
            values = []
            for want, part in zip(shape, parts):
                if want is None and part:
                    values.append(part)
                elif want != part:  # (an empty variable segment ends here too: Werkzeug would redirect it)
                    break
            else:
                try:
                    return endpoint, count, dict(zip(variables, (value.decode("utf-8") for value in values)))
                except UnicodeDecodeError:
                    return None  # Klein's own answer
        return None


_PLAIN_VARIABLE = re.compile(r"<[A-Za-z_][A-Za-z0-9_]*>")


class HotResource(KleinResource):
    """Klein's resource, answering `HotKlein`'s hot routes itself (see there)."""

    _app: HotKlein

    def render(self, request: IRequest) -> Any:
        hot = self._app.match_hot(request)
        if hot is None:
            return super().render(request)
        endpoint, count, arguments = hot
        request.prepath.extend(request.postpath[:count])
        request.postpath = request.postpath[count:]
        try:
            body = self._app.execute_endpoint(endpoint, request, **arguments)
            if isinstance(body, Deferred):
                _answer_later(request, body, endpoint)
                return NOT_DONE_YET
            if not isinstance(body, bytes):
                raise TypeError(f"the hot route {endpoint} answered {type(body).__name__}, not bytes")
        except Exception:
            # What every versioned API's error handler answers (nmos_ref.api.versioned.add_error_handlers).
            body = render_error(request, as_nmos_error(Failure(), request))
        request.write(body)
        request.finish()
        return NOT_DONE_YET


def _answer_later(request: IRequest, answer: Deferred[Any], endpoint: str) -> None:
    """Write the bytes `answer` fires with (or its failure's NMOS error), unless the client went away first."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def done(body: Any) -> None:
        if not isinstance(body, bytes):
            raise TypeError(f"the hot route {endpoint} answered {type(body).__name__}, not bytes")
        if not gone:
            request.write(body)
            request.finish()

    def failed(failure: Failure) -> None:
        if not gone:
            request.write(render_error(request, as_nmos_error(failure, request)))
            request.finish()

    answer.addCallback(done).addErrback(failed)
