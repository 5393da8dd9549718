"""The Node's own mDNS advert, `_nmos-node._tcp`, and its peer-to-peer TXT records.

IS-04 "Discovery - Peer to Peer Operation" (v1.3):
- "From v1.3, Node mDNS announcements SHOULD only be used for peer-to-peer mode ... However a Node supporting multiple
  versions including v1.2 or below MUST still provide mDNS announcements": a Node serving v1.2 or below is always
  advertised, a v1.3-only Node only in peer-to-peer mode.
- `api_proto`, `api_ver` and `api_auth` always; "When a Node is operating in peer-to-peer mode it MUST additionally
  advertise" `ver_slf`, `ver_src`, `ver_flw`, `ver_dvc`, `ver_snd` and `ver_rcv`, each "an unsigned 8-bit integer
  initialised to 0 ... incremented ... whenever a change is made to the corresponding HTTP API resource" and wrapping
  to 0 after 255; "If a Node is successfully registered with a Registration API it MUST withdraw" them.

Peer-to-peer mode follows the registration client: it starts when the client has no registry to use (none found, or
every one failed and it backs off), and ends as soon as the client has a usable registry and starts registering,
not only once the registry answers: the advert "SHOULD NOT be advertised when a Registration API is present on the
network", and peers (and the AMWA tool, which browses the moment a Node's first POST arrives) must not read stale
ver_* records meanwhile. While choosing again it stays as it was. The advert waits for the client's first decision,
so that it starts with the right records.

The adverts are kept in step with what they should be by one loop, so a burst of changes makes at most one TXT
update in flight and one after it; and changes are at least `SPACING` apart. RFC 6762 §10.2 has a receiver flush
a record that a new one replaces only if it got the old one more than a second before: records changed faster
stay in browsers' caches side by side (python-zeroconf then reports no change at all when a TXT record goes back to
an earlier value), and a peer could read either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from nmos_ref.discovery import NODE, PEER_TO_PEER_KEYS, Advert, Discovery, adverts_for, txt_text
from nmos_ref.model.versions import parse_version, sort_versions
from nmos_ref.node.state import NodeModel

log = Logger()

ENTER = ("no registry", "backoff")  # registration client states that mean peer-to-peer mode
LEAVE = ("registering", "registered", "refused")
SPACING = 1.1  # seconds from the end of one change of the adverts to the start of the next (RFC 6762 §10.2)


class NodeAdvertiser(Service):
    """Advertises the Node API over mDNS, with the ver_* records in peer-to-peer mode."""

    def __init__(self, discovery: Discovery, model: NodeModel, watch: Callable[[Callable[[str], None]],
                 Callable[[], None]], clock: IReactorTime, *, peer_to_peer: bool, authorization: bool, host: str,
                 interfaces: Sequence[str]) -> None:
        self.discovery = discovery
        self.clock = clock
        self.model = model
        self.watch = watch
        self.peer_to_peer = peer_to_peer
        self.authorization = authorization
        self.host = host
        self.interfaces = list(interfaces)
        self.versions = sort_versions(list(model.versions))
        # v1.0 to v1.2 Nodes MUST advertise; a v1.3-only one only in peer-to-peer mode
        self.always = any(parse_version(version) <= (1, 2) for version in self.versions)
        self.counters = {key: 0 for key in PEER_TO_PEER_KEYS.values()}
        self.in_peer_to_peer = False
        self.decided = not peer_to_peer  # whether the registration client has decided the mode yet
        self._last_change: float | None = None
        self.adverts: list[Advert] = []  # what to advertise, once the Node API listens
        self.actual: dict[tuple[str, str], tuple[Advert, dict[str, str]]] = {}  # what is advertised
        self._busy = False
        self._dirty = False
        self._idle: list[Deferred[None]] = []
        self._stops: list[Callable[[], None]] = []

    def listening(self, addresses: Sequence[tuple[str, Any]]) -> None:
        """Where the Node API answers ((protocol, address) pairs): one advert per protocol and port."""
        def txt(protocol: str) -> dict[str, str]:
            return {"api_proto": protocol, "api_ver": ",".join(self.versions),
                    "api_auth": "true" if self.authorization else "false"}
        self.adverts = adverts_for(NODE, addresses, txt, self.host, self.interfaces)
        self._kick()

    def startService(self) -> None:
        super().startService()
        self._stops = [self.model.subscribe(self._changed), self.watch(self._state)]
        self._kick()

    def stopService(self) -> Deferred[None]:
        """Withdraw every advert."""
        super().stopService()
        for stop in self._stops:
            stop()
        self._stops = []
        self._kick()
        return self.settled()

    def settled(self) -> Deferred[None]:
        """Fires once the adverts are as they should be now."""
        if not self._busy:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    # --- what should be advertised

    def _changed(self, kind: str, rid: str) -> None:
        key = PEER_TO_PEER_KEYS[kind]
        self.counters[key] = (self.counters[key] + 1) % 256  # "MUST wrap back to a value of 0 after ... 255"
        if self.in_peer_to_peer:
            self._kick()

    def _state(self, state: str) -> None:
        if not self.peer_to_peer or state not in ENTER + LEAVE:
            return
        first, self.decided = not self.decided, True
        if state in ENTER and not self.in_peer_to_peer:
            self.in_peer_to_peer = True
            log.info("Peer-to-peer mode: no Registration API to use; advertising the Node with ver_* TXT records")
        elif state in LEAVE and self.in_peer_to_peer:
            self.in_peer_to_peer = False
            log.info("Leaving peer-to-peer mode: a Registration API is in use; withdrawing the ver_* TXT records")
        elif not first:
            return
        self._kick()

    def wanted(self) -> dict[tuple[str, str], tuple[Advert, dict[str, str]]]:
        if not self.running or not self.decided or not (self.always or self.in_peer_to_peer):
            return {}
        extra = {key: str(value) for key, value in self.counters.items()} if self.in_peer_to_peer else {}
        return {advert.key: (advert, {**advert.txt, **extra}) for advert in self.adverts}

    # --- keeping the adverts in step

    def _kick(self) -> None:
        self._dirty = True
        if not self._busy:
            self._busy = True
            ensureDeferred(self._converge()).addErrback(
                lambda failure: log.failure("DNS-SD: advertising the Node failed", failure))

    async def _converge(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                if self._in_step(self.wanted()):
                    continue
                if self._last_change is not None and self.running:  # (stopping: no peer reads them any more)
                    wait = self._last_change + SPACING - self.clock.seconds()
                    if wait > 0:
                        await deferLater(self.clock, wait, lambda: None)
                        self._dirty = False  # what changed meanwhile is in what is wanted now
                await self._apply(self.wanted())
                self._last_change = self.clock.seconds()
        finally:
            self._busy = False
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def _in_step(self, wanted: dict[tuple[str, str], tuple[Advert, dict[str, str]]]) -> bool:
        return wanted.keys() == self.actual.keys() and all(
            self.actual[key][1] == txt for key, (_, txt) in wanted.items())

    async def _apply(self, wanted: dict[tuple[str, str], tuple[Advert, dict[str, str]]]) -> None:
        for key in [key for key in self.actual if key not in wanted]:
            advert, _ = self.actual[key]
            if await self._do("withdraw", advert, self.discovery.withdraw, advert):
                del self.actual[key]
                log.info("DNS-SD: withdrew {type} {name!r}", type=advert.service_type, name=advert.name)
        for key, (advert, txt) in wanted.items():
            if key not in self.actual:
                with_txt = Advert(advert.service_type, advert.name, advert.port, advert.addresses, txt, advert.host)
                if await self._do("advertise", advert, self.discovery.advertise, with_txt):
                    self.actual[key] = (advert, txt)
                    log.info("DNS-SD: advertising {type} {name!r} at {addresses} port {port} ({txt})",
                             type=advert.service_type, name=advert.name, addresses=", ".join(advert.addresses),
                             port=advert.port, txt=txt_text(txt))
            elif self.actual[key][1] != txt:
                if await self._do("update", advert, self.discovery.update_txt, advert, txt):
                    self.actual[key] = (advert, txt)
                    log.debug("DNS-SD: {name!r} now has {txt}", name=advert.name, txt=txt_text(txt))

    async def _do(self, operation: str, advert: Advert, call: Callable[..., Deferred[None]], *args: Any) -> bool:
        try:
            await call(*args)
        except Exception:
            log.failure("DNS-SD: cannot {operation} {type} {name!r}; trying again at the next change",
                        operation=operation, type=advert.service_type, name=advert.name)
            return False
        return True
