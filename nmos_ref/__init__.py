"""nmos-ref: the AMWA NMOS IS-04 registry and node, on Twisted."""

__version__ = "0.1.0"
