"""The HTTP/1.1 edge of every API: the channel, the request class and the site that serve them, so that every answer
the process sends, including refusals made before any API code runs, is the NMOS error JSON with CORS headers.

Twisted's parser keeps deciding what is malformed; `NmosChannel` only says why, in NMOS JSON with the status that
fits (400, 413, 414, 431, 501, 505), instead of Twisted's bare `400 Bad Request`, and closes the connection after
it. `NmosRequest` serves every request target as the origin-form path it names (absolute form, repeated slashes),
so that no API sees a target Werkzeug would answer in plain text or with a redirect.
"""

from __future__ import annotations

import base64
import binascii
import re
from http import HTTPStatus
from time import perf_counter
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress
from twisted.web import server

# (names imported one by one: attributes of the twisted.web.http module go through its deprecation proxy, which costs
# microseconds per request on the hot path)
from twisted.web.http import (
    HTTPChannel,
    _ChunkedTransferDecoder,
    _GenericHTTPChannelProtocol,
    _MalformedChunkedDataError,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from nmos_ref.web.errors import NmosError
from nmos_ref.web.logs import Logger
from nmos_ref.web.metrics import Metrics
from nmos_ref.web.responses import MAX_BODY, render_error
from nmos_ref.web.root import ErrorResource

log = Logger()

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_VERSION = re.compile(rb"HTTP/[0-9]+(?:\.[0-9]+)?")
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#]*)(.*)")  # RFC 9112 §3.2.2, for http and https
_SLASHES = re.compile(rb"//+")
# RFC 9110 §7.2 (RFC 3986 §3.2.2): host [ ":" port ], the host an IP literal, an IPv4 address or a registered name.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)"
                   rb"(?::(?:[0-5]?[0-9]{0,4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?").fullmatch
# The usual target, one cheap C call: a path of single slashes, printable ASCII and no "%" (a query included).
_USUAL = re.compile(rb"(?:/[!-$&-.0-~]+)*/?").fullmatch


def _show(raw: bytes, limit: int = 200) -> str:
    """`raw` for a debug text: its first `limit` bytes, escaped as Python shows bytes."""
    return repr(raw[:limit])[2:-1] + ("..." if len(raw) > limit else "")


# --- refusals written straight to the transport


class _Answer:
    """What `render_error` sets on a request, collected for an answer that no `Request` writes."""

    def __init__(self) -> None:
        self.code = 500
        self.headers = Headers()

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers.setRawHeaders(name, [value])

    def getHeader(self, name: bytes) -> None:
        return None  # a refused request's own headers are not echoed back


def error_answer(error: NmosError) -> bytes:
    """A whole HTTP/1.1 answer carrying `error` as the NMOS error JSON, with CORS and `Connection: close`, for a
    connection that is closed once it is written."""
    answer = _Answer()
    body = render_error(answer, error)  # type: ignore[arg-type]
    answer.setHeader(b"connection", b"close")
    try:
        phrase = HTTPStatus(answer.code).phrase.encode("ascii")
    except ValueError:
        phrase = b"Error"
    head = [b"HTTP/1.1 %d %s" % (answer.code, phrase)]
    head += [name + b": " + value for name, values in answer.headers.getAllRawHeaders() for value in values]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _CappedChunkedDecoder(_ChunkedTransferDecoder):
    """Twisted's chunked decoder, refusing a body whose chunk sizes add up to more than `limit` as soon as a size
    line says so (before any of that chunk is read), and saying what is malformed in one."""

    def __init__(self, decoder: _ChunkedTransferDecoder, channel: NmosChannel, limit: int) -> None:
        super().__init__(decoder.dataCallback, decoder.finishCallback)
        self._channel = channel
        self._limit = limit
        self._declared = 0

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        done = super()._dataReceived_CHUNK_LENGTH()
        if done:
            self._declared += self.length
            if self._declared > self._limit:
                self._channel.pending_error = NmosError(413, f"The request body is larger than {self._limit} bytes",
                                                        f"chunk sizes add up to {self._declared} bytes or more")
                raise _MalformedChunkedDataError("too large")
        return done

    def dataReceived(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
        except _MalformedChunkedDataError as exc:
            if self._channel.pending_error is None:
                self._channel.pending_error = NmosError(400, "The chunked request body is malformed", str(exc))
            raise


class NmosChannel(HTTPChannel):
    """Twisted's HTTP/1.1 channel, whose refusals are NMOS error JSON naming what was wrong, followed by a close.

    Twisted answers everything it cannot parse with the same bare `400 Bad Request` (and a request line or header
    line over `MAX_LENGTH` with no answer at all); here the same decisions are explained after the fact, from the
    line being parsed and the counters Twisted keeps. Normal requests pay one attribute store per line.
    """

    pending_error: NmosError | None = None  # set where the reason is known before Twisted refuses
    _line = b""

    def lineReceived(self, line: bytes) -> None:
        self._line = line  # the request line, should Twisted refuse it (header lines are read from Twisted)
        return HTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver's default drops the connection without a word.
        if self._parsing_request_line():
            self._refuse(NmosError(414, f"The request line is longer than {self.MAX_LENGTH} bytes",
                                   _show(line, 80)))
        else:
            self._refuse(NmosError(431, f"A header line is longer than {self.MAX_LENGTH} bytes", _show(line, 80)))

    def allHeadersReceived(self) -> None:
        # Refuse a body declared larger than the request accepts at once (RFC 9110 §15.5.14 413; RFC 9112 §9.6 the
        # server closes the connection), rather than reading and discarding it.
        limit = getattr(self.requests[-1], "max_body", None)
        if limit is not None:
            if self.length is None:
                if isinstance(self._transferDecoder, _ChunkedTransferDecoder):
                    self._transferDecoder = _CappedChunkedDecoder(self._transferDecoder, self, limit)
            elif self.length > limit:
                self._refuse(NmosError(413, f"The request body is larger than {limit} bytes",
                                       f"Content-Length: {self.length}"))
                return
        HTTPChannel.allHeadersReceived(self)

    # A connection's local address and whether it is TLS do not change while it lasts; Twisted asks again for every
    # request (Request.__init__ calls getHost, a getsockname system call; isSecure is an interface adaptation).
    _host: IAddress | None = None
    _secure: bool | None = None

    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = HTTPChannel.getHost(self)
        return self._host

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = HTTPChannel.isSecure(self)
        return self._secure

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        # The same bytes as HTTPChannel.writeHeaders, handed to the transport as one piece instead of four per
        # header line: about 45 pieces on every answer, each checked and counted by the transport (issue #13).
        if not isinstance(headers, Headers):
            return HTTPChannel.writeHeaders(self, version, code, reason, headers)
        lines = [version + b" " + code + b" " + reason]
        lines += [name + b": " + value for name, values in headers.getAllRawHeaders() for value in values]
        lines.append(b"\r\n")
        self.transport.write(b"\r\n".join(lines))

    def timeoutConnection(self) -> None:
        # Twisted logs "Timing out client" at info each time it closes a connection left idle: routine with
        # keep-alive clients (every Node keeps one open to its registry), so a debug line here; the rest is
        # HTTPChannel.timeoutConnection's.
        log.debug("Timing out client: {peer}", peer=str(self.transport.getPeer()))
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        error, self.pending_error = self.pending_error or self._explain(), None
        self._refuse(error)

    def _refuse(self, error: NmosError) -> None:
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        self.transport.write(error_answer(error))
        self.loseConnection()

    def _parsing_request_line(self) -> bool:
        # Twisted sets _command once a request line is parsed and deletes it when the request is complete.
        return "_command" not in self.__dict__

    def _explain(self) -> NmosError:
        """Why Twisted refused the request it is parsing (HTTPChannel.lineReceived, headerReceived,
        _maybeChooseTransferDecoder, rawDataReceived, Request.requestReceived are the places it does)."""
        if self._receivedHeaderSize > self.totalHeadersSize:
            return NmosError(431, f"The request line and header fields are larger than {self.totalHeadersSize} "
                                  "bytes")
        if self._parsing_request_line():
            return _explain_request_line(self._line)
        if self.line_mode:
            if self._receivedHeaderCount > self.maxHeaders:
                return NmosError(431, f"There are more than {self.maxHeaders} header fields")
            # The header Twisted was processing: it keeps one back until the next line shows it is complete.
            return _explain_header(getattr(self, "_HTTPChannel__header", b""), self.requests[-1].requestHeaders)
        if self._handlingRequest:  # a form upload (not parsed by make_site's sites)
            return NmosError(400, "The request body is not a valid form")
        return NmosError(400, "The request body is malformed")


def _explain_request_line(line: bytes) -> NmosError:
    parts = line.split(b" ")
    if len(parts) != 3:
        return NmosError(400, "The request line is not 'method SP request-target SP HTTP-version'", _show(line))
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if _VERSION.fullmatch(version):
            return NmosError(505, f"{version.decode('ascii')} is not supported: use HTTP/1.1")
        return NmosError(400, "The request line does not end in an HTTP version", _show(line))
    if not _TOKEN.fullmatch(method):
        return NmosError(400, "The method is not a token", _show(method))
    if not target:
        return NmosError(400, "The request target is empty")
    return NmosError(400, "The request target has bytes other than printable ASCII", _show(target))


def _explain_header(line: bytes, accepted: Headers) -> NmosError:
    name, colon, value = line.partition(b":")
    if not colon:
        return NmosError(400, "A header line has no colon", _show(line))
    if not _TOKEN.fullmatch(name):
        return NmosError(400, "A header field name is not a token", _show(name))
    value = value.strip(b" \t")
    shown = name.decode("ascii")
    if value != value.translate(None, b"\x00\r\n"):
        return NmosError(400, f"The {shown} header field has a NUL, CR or LF in its value", _show(value))
    lowered = name.lower()
    if lowered == b"content-length" and not value.isdigit():
        return NmosError(400, "Content-Length is not a number", _show(value))
    if lowered == b"transfer-encoding" and value.lower() not in (b"chunked", b"identity"):
        # RFC 9112 §6.1: a server that receives a transfer coding it does not understand SHOULD answer 501.
        return NmosError(501, "Only the chunked transfer coding is supported", _show(value))
    if lowered in (b"content-length", b"transfer-encoding") and (accepted.hasHeader(b"content-length") or
                                                               accepted.hasHeader(b"transfer-encoding")):
        # RFC 9112 §6.3: both, or either twice, make the message length ambiguous (request smuggling).
        return NmosError(400, "Content-Length and Transfer-Encoding are ambiguous: only one, once, is allowed")
    return NmosError(400, "A header field is malformed", _show(line))


def _channel_factory(site: server.Site) -> _GenericHTTPChannelProtocol:
    """What Site.protocol builds (as twisted.web.http._genericHTTPChannelProtocolFactory), with an `NmosChannel`
    inside."""
    return _GenericHTTPChannelProtocol(NmosChannel())


class NmosSite(server.Site):
    """A Site whose connections are `NmosChannel`s."""

    protocol = _channel_factory  # type: ignore[assignment]


# --- the request


class NmosRequest(server.Request):
    """A request served at the origin-form path its target names, refused (NMOS JSON, then a close) when the target
    is not one; it stops keeping a body beyond the size cap, so a huge upload cannot fill memory or disk."""

    max_body = MAX_BODY
    body_too_large = False
    target_error: NmosError | None = None

    def _origin_form(self, method: bytes, target: bytes) -> bytes:
        """The origin-form target that `target` names; `self.target_error` set when there is none."""
        if b"\x7f" in target or not target.isascii():  # Twisted lets 0x7f to 0xb0 through
            self.target_error = NmosError(400, "The request target has bytes other than printable ASCII",
                                          _show(target))
            return b"/"
        if target == b"*":
            # RFC 9112 §3.2.4: the asterisk form is for a server-wide OPTIONS, answered as the root's.
            if method == b"OPTIONS":
                return b"/"
            self.target_error = NmosError(400, "The request target * is only for OPTIONS")
            return b"/"
        if target[:1] != b"/":
            absolute = _ABSOLUTE.fullmatch(target)
            if absolute is None or not absolute.group(1) or b"@" in absolute.group(1):
                self.target_error = NmosError(400, "The request target is neither a path nor an absolute http(s) "
                                                   "URL", _show(target))
                return b"/"
            # RFC 9112 §3.2.2: a server MUST accept the absolute form, and its authority replaces Host (§7.2).
            authority, target = absolute.groups()
            self.requestHeaders.setRawHeaders(b"host", [authority])
            if target[:1] != b"/":
                target = b"/" + target
        path, question, query = target.partition(b"?")
        # Served as if the slashes were single: Werkzeug would answer 308, and IS-04 wants no redirect.
        path = _SLASHES.sub(b"/", path)
        if b"%" in path:
            decoded = unquote_to_bytes(path)
            try:
                decoded.decode("utf-8")
            except UnicodeDecodeError:
                self.target_error = NmosError(400, "The path is not valid percent-encoded UTF-8", _show(path))
                return b"/"
            if b"//" in decoded:  # encoded slashes that would make an empty segment (and a redirect)
                self.target_error = NmosError(404, "No such resource", decoded.decode("utf-8"))
                return b"/"
        return path + question + query

    def process(self) -> None:
        self.began = perf_counter()  # what /metrics times the answer from (nmos_ref.web.metrics)
        # BCP-003-01: HTTPS answers carry HSTS (the site's hsts_max_age; 0 leaves it out).
        max_age = getattr(self.channel.site, "hsts_max_age", 0) if self.channel is not None else 0
        if max_age and self.isSecure():
            self.setHeader(b"strict-transport-security", b"max-age=%d" % max_age)
        if _USUAL(self.uri) is None:
            # (the query, and so self.args, stays as it is)
            self.uri = self._origin_form(self.method, self.uri)
            self.path = self.uri.partition(b"?")[0]
        hosts = self.requestHeaders.getRawHeaders(b"host")
        if (hosts is None or len(hosts) != 1 or _HOST(hosts[0]) is None) and self.target_error is None:
            self.target_error = _host_error(hosts, self.clientproto)
        if self.target_error is not None:
            self.site = self.channel.site
            self.channel.persistent = False  # a refusal at the HTTP edge closes the connection
            self.setHeader(b"connection", b"close")
            self.render(ErrorResource(self.target_error))
            return
        super().process()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large or self.content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


def _host_error(hosts: list[bytes] | None, version: bytes) -> NmosError | None:
    """Why the Host header fields are refused, if they are.

    RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request message that
    lacks a Host header field and to any request message that contains more than one Host header field line or a
    Host header field with an invalid field value."
    """
    if hosts is None:
        return NmosError(400, "An HTTP/1.1 request needs a Host header field") if version != b"HTTP/1.0" else None
    if len(hosts) != 1:
        return NmosError(400, "The request has more than one Host header field", _show(b", ".join(hosts)))
    if _HOST(hosts[0]) is None:
        return NmosError(400, "The Host header field is not host[:port]", _show(hosts[0]))
    return None


# --- WebSocket opening handshakes


def check_websocket_handshake(request: IRequest) -> None:
    """Raise NmosError unless `request` is a WebSocket opening handshake RFC 6455 §4.2.1 accepts, so that the API
    refuses a bad one (the connection kept, no subscription made) before Autobahn sees it."""
    if request.clientproto != b"HTTP/1.1":
        raise NmosError(400, "A WebSocket handshake needs HTTP/1.1")
    headers = request.requestHeaders
    if not headers.hasHeader(b"host"):
        raise NmosError(400, "A WebSocket handshake needs a Host header field")
    connection = b",".join(headers.getRawHeaders(b"connection") or [])
    if b"upgrade" not in (token.strip().lower() for token in connection.split(b",")):
        raise NmosError(400, "A WebSocket handshake needs 'Connection: Upgrade'", _show(connection) or None)
    versions = headers.getRawHeaders(b"sec-websocket-version") or []
    if not versions:
        raise NmosError(400, "A WebSocket handshake needs a Sec-WebSocket-Version header field")
    if [version.strip() for version in versions] != [b"13"]:
        # RFC 6455 §4.2.2: a version the server does not understand gets e.g. 426 and the versions it does.
        raise NmosError(426, "Only WebSocket version 13 (RFC 6455) is supported", _show(b", ".join(versions)),
                        {"Sec-WebSocket-Version": "13"})
    keys = headers.getRawHeaders(b"sec-websocket-key") or []
    if len(keys) != 1:
        raise NmosError(400, "A WebSocket handshake needs one Sec-WebSocket-Key header field")
    key = keys[0].strip()
    try:
        nonce = base64.b64decode(key, validate=True)
    except binascii.Error:
        nonce = b""
    if len(nonce) != 16:
        raise NmosError(400, "Sec-WebSocket-Key is not 16 bytes in base64", _show(key))


# --- the site


def make_site(root: IResource, access_log: bool = False, hsts_max_age: int = 31536000,
              metrics: Metrics | None = None) -> server.Site:
    """The site serving `root`; with `metrics`, every finished request is counted and timed there (Twisted calls
    the site's log hook once per request, as it finishes)."""
    # Form uploads are not parsed into request.args: the APIs take JSON only, so it would be work (and a refusal
    # Twisted could not explain) for nothing.
    site = NmosSite(root, requestFactory=NmosRequest, parsePOSTFormSubmission=False)
    site.hsts_max_age = hsts_max_age  # type: ignore[attr-defined]
    site.displayTracebacks = False
    if metrics is not None:
        if access_log:
            access = site.log

            def both(request: IRequest) -> None:
                metrics.request_done(request)
                access(request)

            site.log = both  # type: ignore[method-assign]
        else:
            site.log = metrics.request_done  # type: ignore[method-assign]
    elif not access_log:
        site.log = _no_access_log  # type: ignore[method-assign]
    return site


def _no_access_log(request: IRequest) -> None:
    return None
