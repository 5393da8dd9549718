"""What every client of the process trusts (BCP-003-01): the configured CA file, else the system's roots."""

from __future__ import annotations

from twisted.internet.ssl import Certificate
from twisted.web.client import BrowserLikePolicyForHTTPS


def tls_policy(ca_file: str | None) -> BrowserLikePolicyForHTTPS:
    """Verify servers against `ca_file` (PEM) when given, else the system's roots; host names checked either way."""
    if ca_file is None:
        return BrowserLikePolicyForHTTPS()
    with open(ca_file, "rb") as pem:
        return BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(pem.read()))
