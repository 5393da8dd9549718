"""One HTTP exchange for the Node's clients: the whole answer read, within a time limit, on an injected client.

Reading the whole body every time keeps connections reusable (and the reactor clean in tests); one time limit covers
connecting, the answer and its body, measured on the injected clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.client import (HTTPConnectionPool, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived,
                                ResponseDone, _HTTP11ClientFactory)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from nmos_ref.model.jsontext import compact, decode


# What "could not talk to the server" looks like: no connection, a broken one (a TLS handshake that failed, a
# certificate that could not be verified, included), or no answer in time.
_UNREACHABLE = (ConnectError, DNSLookupError, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived,
                TimeoutError, CancelledError, ConnectingCancelledError, ConnectionError)


def quiet_pool(reactor: Any, persistent: bool = True) -> HTTPConnectionPool:
    """A connection pool that logs no line per connection it opens (a client's connections come and go all day)."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietFactory  # type: ignore[misc]
    return pool


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class PlainHTTP:
    """What `exchange` (and a streamed response's reader) asks of treq's HTTPClient, straight on a Twisted Agent:
    no cookie jar, redirects or content decoding, which cost more than the request itself for a client that calls
    one service hundreds of times a second (the etcd store, nmos_ref.cluster)."""

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent

    def request(self, method: str, url: str, *, data: bytes | None = None,
                headers: Mapping[str, str] | None = None, unbuffered: bool = False) -> Deferred[PlainResponse]:
        sent = Headers({name: [value] for name, value in (headers or {}).items()})
        body = _Body(data) if data is not None else None
        answer: Deferred[IResponse] = self.agent.request(method.encode("ascii"), url.encode("ascii"), sent, body)
        return answer.addCallback(PlainResponse)


class PlainResponse:
    """A response as treq hands it out: `code`, `headers`, `deliverBody`, and `content()` for the whole body."""

    def __init__(self, response: IResponse) -> None:
        self._response = response
        self.code = response.code
        self.headers = response.headers

    def deliverBody(self, protocol: Any) -> None:
        self._response.deliverBody(protocol)

    def content(self) -> Deferred[bytes]:
        collected = _Collect()
        self._response.deliverBody(collected)
        return collected.done


class _Collect(Protocol):
    """A whole response body (as treq's `content`: a body cut short without a length counts as whole)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # type: ignore[assignment]
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@implementer(IBodyProducer)
class _Body:
    """A request body written at once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Unreachable(Exception):
    """The server could not be reached, or did not answer in time; the message says how."""


@frozen
class Reply:
    code: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        """The body as strict JSON (nmos_ref.model.jsontext); `BadJSON`, a ValueError, when it is not."""
        return decode(self.body)

    def error_text(self) -> str:
        """The NMOS error JSON's `error` (and `debug`), or the start of the body."""
        try:
            body = self.json()
            if isinstance(body, dict) and "error" in body:
                debug = f" ({body['debug']})" if body.get("debug") else ""
                return f"{body['error']}{debug}"
        except ValueError:
            pass
        return " ".join(self.body[:200].decode("utf-8", "replace").split())  # one log line, even for HTML


def exchange(http: Any, clock: IReactorTime, method: str, url: str, *, timeout: float, json_body: Any = None,
             accept: str = "application/json", form: Mapping[str, str] | None = None,
             headers: Mapping[str, str] | None = None, data: bytes | None = None,
             content_type: str = "application/octet-stream") -> Deferred[Reply]:
    """Send one request and read the whole answer; fails with Unreachable. A JSON body (or a `form`, sent as
    application/x-www-form-urlencoded, or raw `data` sent as `content_type`, an OCSP request say) is sent with its
    Content-Type and Content-Length; without one, nothing (IS-04 "APIs - Client Side Implementation Notes": no body
    and no Content-Type on requests that have none, such as heartbeats). `headers` are added as given (an
    Authorization header, say)."""
    sent = {"Accept": accept, **(headers or {})}
    if json_body is not None:
        sent["Content-Type"] = "application/json"
        data = compact(json_body).encode("utf-8")
    elif form is not None:
        sent["Content-Type"] = "application/x-www-form-urlencoded"
        data = urlencode(form).encode("ascii")
    elif data is not None:
        sent["Content-Type"] = content_type
    request: Deferred[Any] = http.request(method, url, data=data, headers=sent)

    def read(response: IResponse) -> Deferred[Reply]:
        raw = response.headers.getAllRawHeaders()  # type: ignore[attr-defined]
        found = {name.decode("latin-1").lower(): b", ".join(values).decode("latin-1") for name, values in raw}
        return response.content().addCallback(  # type: ignore[attr-defined,no-any-return]
            lambda body: Reply(response.code, found, body))

    def unreachable(failure: Failure) -> Failure:
        if failure.check(*_UNREACHABLE):
            reason = failure.value
            if isinstance(reason, TimeoutError):
                raise Unreachable(f"no answer within {timeout:g} s")
            wrapped = (RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived)
            if isinstance(reason, wrapped) and reason.reasons:
                reason = reason.reasons[0].value
            raise Unreachable(f"{type(reason).__name__}: {reason}")
        return failure

    request.addCallback(read)
    request.addTimeout(timeout, clock)
    request.addErrback(unreachable)
    return request
