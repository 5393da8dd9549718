"""Listeners as services: when they listen, and the OCSP stapler their ssl: ones share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime

from nmos_ref.tls.server import serves_tls

if TYPE_CHECKING:
    from nmos_ref.tls.ocsp import OCSPStapler


def listening(services: Sequence[StreamServerEndpointService]) -> Deferred[list[tuple[str, Any]]]:
    """(protocol, address) of each strports service once it listens (twistd starts them before us)."""
    def one(service: StreamServerEndpointService) -> Deferred[tuple[str, Any]]:
        protocol = "https" if isinstance(service.endpoint, SSL4ServerEndpoint) else "http"
        found: Deferred[tuple[str, Any]] = Deferred()

        def listens(port: IListeningPort) -> IListeningPort:
            found.callback((protocol, port.getHost()))
            return port  # the service needs its port back to stop listening

        def fails(failure: Any) -> Any:
            found.errback(failure)
            return failure

        # Twisted keeps the port of a StreamServerEndpointService only here.
        service._waitingForPort.addCallbacks(listens, fails)  # type: ignore[attr-defined]
        return found
    return gatherResults([one(service) for service in services], consumeErrors=True)


def ocsp_stapler(reactor: Any, descriptions: Sequence[str], ca_file: str | None,
                 clock: IReactorTime) -> OCSPStapler | None:
    """For listeners `descriptions` with an `ssl:` one: a stapler with its own HTTP client, checking https
    responders against `ca_file` (the system's roots without one), its connections closed when it stops; else
    None."""
    if not serves_tls(descriptions):
        return None
    # cryptography's OCSP and an HTTP client only for ssl: listeners (idle footprint, issue 13)
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from nmos_ref.tls.ocsp import FETCH_TIMEOUT, OCSPStapler
    from nmos_ref.tls.trust import tls_policy

    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, contextFactory=tls_policy(ca_file), pool=pool, connectTimeout=FETCH_TIMEOUT))
    return OCSPStapler(http, clock, pool=pool)
