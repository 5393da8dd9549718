"""BCP-003-01 TLS for the APIs: a pyOpenSSL server context offering RSA and ECDSA certificates together, TLS 1.2 and
1.3 only, with the cipher suites BCP-003-01 "Secure Communication" lists, and the listen endpoints built from it.

Twisted's own `ssl:` strports take one certificate; OpenSSL keeps one certificate per key type in a context, so
loading an RSA and an ECDSA pair into the same context offers both and lets the client's signature algorithms choose.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IOpenSSLContextFactory, IStreamServerEndpoint
from zope.interface import implementer

from nmos_ref.config import ConfigError

if TYPE_CHECKING:
    from OpenSSL import SSL


class Stapler(Protocol):
    """What a listener needs of OCSP stapling (nmos_ref.tls.ocsp.OCSPStapler is one): each certificate chain it
    serves handed over once, and the callback OpenSSL asks for the response to staple."""

    def add(self, chain: bytes) -> object: ...

    def staple(self, connection: SSL.Connection, data: Any) -> bytes: ...

# BCP-003-01: TLS 1.3 suites in the order given; TLS 1.2: ECDHE-RSA-AES128-GCM-SHA256 SHALL, the rest SHOULD.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
TLS12_ECDHE = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA256:"
               "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
               "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384")
TLS12_DHE = "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-SHA256:DHE-RSA-AES256-SHA256"


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def check_pem_file(path: str, what: str) -> None:
    """ConfigError unless `path` can be read and holds a PEM block, without pyOpenSSL (whether the pair can be used
    together is checked by `server_context`, when a listener needs it)."""
    if b"-----BEGIN " not in _read(path, what):
        raise ConfigError(f"the TLS {what} {path} holds no PEM block (-----BEGIN ...)")


def server_context(pairs: Sequence[tuple[str, str]], dh_params: str | None = None,
                   stapler: Stapler | None = None) -> SSL.Context:
    """A server context with every (certificate chain PEM, private key PEM) pair loaded and checked; ConfigError
    names the file when one is missing, unreadable or does not belong with its partner. With a `stapler`, each
    chain is handed to it and the context staples its OCSP responses (RFC 6066 status_request)."""
    # pyOpenSSL is imported here, when a listener needs it: a process without TLS runs without it
    # (nmos_ref.wiring.footprint).
    from OpenSSL import SSL, crypto

    if not pairs:
        raise ConfigError("TLS needs at least one certificate and key (tls_certificates, or certKey= and "
                          "privateKey= in the ssl: description)")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)  # BCP-003-01: never SSL, TLS 1.0 or 1.1
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_TICKET)
    context.set_tls13_ciphersuites(TLS13_SUITES.encode())
    suites = TLS12_ECDHE + (":" + TLS12_DHE if dh_params else "")
    context.set_cipher_list(suites.encode())
    if dh_params:  # the DHE suites are offered only with parameters (e.g. RFC 7919 ffdhe2048)
        _read(dh_params, "DH parameters")
        context.load_tmp_dh(dh_params.encode())
    kinds = set()
    for chain, key in pairs:
        _read(chain, "certificate chain")
        _read(key, "private key")
        try:
            context.use_certificate_chain_file(chain.encode())
            context.use_privatekey_file(key.encode())
            context.check_privatekey()
        except SSL.Error as exc:
            raise ConfigError(f"the TLS certificate {chain} and key {key} cannot be used together: {exc}") from None
        leaf = crypto.load_certificate(crypto.FILETYPE_PEM, _read(chain, "certificate chain"))
        kind = leaf.get_pubkey().type()
        if kind in kinds:
            raise ConfigError(f"{chain}: a second certificate of the same key type replaces the first; give one RSA "
                              f"and one ECDSA certificate")
        kinds.add(kind)
    if stapler is not None:
        for chain, _key in pairs:
            stapler.add(chain)
        context.set_ocsp_server_callback(stapler.staple)
    return context


@implementer(IOpenSSLContextFactory)
class ServerContextFactory:
    """What SSL4ServerEndpoint asks for: the same checked context for every connection."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def _fields(description: str) -> tuple[int, dict[str, str]]:
    """`ssl:PORT[:key=value...]` split up (colons in values escaped as `\\:`, as strports does)."""
    parts, current, escaped = [], "", False
    for char in description[len("ssl:"):]:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    port_text, options = parts[0], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"{description}: {part!r} is not key=value")
        options[key] = value
    if port_text.startswith("port="):
        port_text = port_text[len("port="):]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{description}: the port must be a number") from None
    return port, options


KNOWN = {"interface", "backlog", "privateKey", "certKey", "dhParameters"}


def ssl_endpoint(reactor: Any, description: str, certificates: Sequence[dict[str, str]],
                 stapler: Stapler | None = None) -> IStreamServerEndpoint:
    """An endpoint for `ssl:PORT:interface=...[:certKey=chain.pem:privateKey=key.pem][:dhParameters=dh.pem]`, serving
    that pair (if given) and every pair of `certificates` ({"certificate", "key"}) together, their OCSP responses
    stapled by `stapler` when given."""
    port, options = _fields(description)
    unknown = set(options) - KNOWN
    if unknown:
        raise ConfigError(f"{description}: unknown option {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(KNOWN))}")
    pairs = [(item["certificate"], item["key"]) for item in certificates]
    if "certKey" in options or "privateKey" in options:
        chain = options.get("certKey") or options.get("privateKey")
        pairs.insert(0, (chain, options.get("privateKey") or chain))  # type: ignore[arg-type]
    context = server_context(pairs, options.get("dhParameters"), stapler)
    return SSL4ServerEndpoint(reactor, port, ServerContextFactory(context), backlog=int(options.get("backlog", 50)),
                              interface=options.get("interface", ""))


def serves_tls(descriptions: Sequence[str]) -> bool:
    """Whether any of these listen descriptions is an `ssl:` one."""
    return any(description.startswith("ssl:") for description in descriptions)


class Listener(StreamServerEndpointService):
    """A listen description as a service whose failure to listen stops the start with a ConfigError naming the
    description and its setting (`setting`), instead of a CannotListenError traceback."""

    _raiseSynchronously = True  # as Twisted's strports services: a port that cannot be opened fails the start

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any, description: str, setting: str) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.setting = setting

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as exc:
            raise ConfigError(f"cannot listen on {self.description} ({self.setting}): "
                              f"{_why(exc.socketError)}") from None
        except (OSError, OverflowError) as exc:
            raise ConfigError(f"cannot listen on {self.description} ({self.setting}): {exc}") from None


def _why(error: Any) -> str:
    """A listening socket's OSError, said with what to do about it."""
    reason = getattr(error, "strerror", None) or str(error)
    hint = {errno.EADDRINUSE: "another process listens there; stop it or choose another port",
            errno.EACCES: "ports below 1024 need privileges",
            errno.EADDRNOTAVAIL: "no interface of this machine has that address"}.get(getattr(error, "errno", None))
    return f"{reason} ({hint})" if hint else reason


def listen_service(description: str, site: Any, reactor: Any, certificates: Sequence[dict[str, str]] = (),
                   stapler: Stapler | None = None, setting: str = "listen") -> Listener:
    """The service listening on one description of `setting`: `ssl:` ones through `ssl_endpoint` (both key types,
    BCP-003-01 ciphers, OCSP stapling with a `stapler`), anything else through Twisted's strports."""
    if description.startswith("ssl:"):
        endpoint = ssl_endpoint(reactor, description, certificates, stapler)
    else:
        endpoint = serverFromString(reactor, description)
    return Listener(endpoint, site, description, setting)
