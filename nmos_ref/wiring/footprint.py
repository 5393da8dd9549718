"""What a process loads: only the stacks its settings use (issue 13, idle footprint).

Twisted imports pyOpenSSL, and with it cryptography and service_identity, as soon as the reactor or
`twisted.internet.endpoints` is imported, whenever pyOpenSSL is installed: about 12 MiB of an empty registry's
resident memory, for TLS it may never speak. A process that can need no TLS at all (no `ssl:` listener, no
authorization server to fetch keys from, no Node whose clients may follow an https URL) hides pyOpenSSL before the
reactor is imported, and Twisted takes the path it takes when pyOpenSSL is not installed. The other optional stacks
(IS-10's pyjwt, zeroconf, the Node's HTTP client) are imported by the `wiring` functions that build them.
"""

from __future__ import annotations

import sys

from nmos_ref.config import Settings

TLS_STACK = "OpenSSL"  # what Twisted tries to import for TLS; with None in sys.modules the import fails


def uses_tls(settings: Settings, *, node: bool) -> bool:
    """Whether the process may need TLS: an `ssl:` listener, IS-10 (keys fetched from https authorization servers),
    or a Node (its registries, authorization servers and Receivers' manifest_href may be https URLs)."""
    listens = settings.listen + (settings.node_listen if node else [])
    return node or settings.auth or any(description.startswith("ssl:") for description in listens)


def without_tls(settings: Settings, *, node: bool) -> bool:
    """Hide pyOpenSSL from this process when it cannot need TLS and nothing has imported Twisted's TCP support yet
    (which decides once whether TLS is available: a test process, which has its reactor already, keeps TLS).
    True if hidden."""
    if uses_tls(settings, node=node) or TLS_STACK in sys.modules or "twisted.internet.tcp" in sys.modules:
        return False
    sys.modules[TLS_STACK] = None  # type: ignore[assignment]  # `import OpenSSL` now raises ImportError
    return True
