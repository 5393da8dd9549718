"""Multicast DNS through python-zeroconf, bridged into the reactor.

python-zeroconf runs on its own thread with its own asyncio loop (`use_asyncio=False`), so it works the same on any
reactor. Its async API is scheduled on that loop with `asyncio.run_coroutine_threadsafe`, and every result and
browse event comes back to the reactor thread through `callFromThread`: callers only ever see Deferreds and
callbacks on the reactor thread. The interfaces are always an explicit list of addresses: mDNS goes nowhere else
(never `InterfaceChoice.All` or `Default`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from nmos_ref.discovery import Advert, Found, Instance, InterfaceUnusable, fits_rfc6763, host_label

log = Logger()

SETTLE = 1.0  # seconds after a browse starts by which the answers already on the network are in
RESOLVE_TIMEOUT_MS = 3000  # how long to ask for an instance's SRV, TXT and address records


def _settle(result: Deferred[Any], future: concurrent.futures.Future[Any]) -> None:
    """Fire `result` (on the reactor thread) as `future` (from the zeroconf thread) ended."""
    if result.called:
        return  # cancelled meanwhile
    if future.cancelled():
        result.errback(Failure(CancelledError()))
    elif future.exception() is not None:
        result.errback(Failure(future.exception()))
    else:
        result.callback(future.result())


class MulticastDiscovery(Service):
    """mDNS (`Discovery`) on the given interfaces, from `startService` to `stopService`."""

    via = "mdns"

    def __init__(self, reactor: Any, interfaces: Sequence[str], host: str | None = None,
                 settle: float = SETTLE) -> None:
        if not interfaces:
            raise ValueError("mDNS needs at least one interface address")
        self.reactor = reactor
        self.interfaces = list(interfaces)
        self.host = host or host_label()  # the SRV target of our adverts is "<host>.local"
        self.settle = settle
        self._zc: Zeroconf | None = None
        self._registered: dict[tuple[str, str], ServiceInfo] = {}
        self._pending: set[Deferred[Any]] = set()
        self._browsing: list[_Browsing] = []

    def startService(self) -> None:
        try:
            self._zc = Zeroconf(interfaces=self.interfaces, use_asyncio=False)
        except OSError as exc:
            raise InterfaceUnusable(f"mDNS cannot use the interfaces {', '.join(self.interfaces)} ({exc}); set "
                                    f"mdns_interfaces to addresses of this machine, or dns_sd to off") from None
        super().startService()
        log.info("mDNS: on {interfaces} as {host}.local", interfaces=", ".join(self.interfaces), host=self.host)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        for browsing in list(self._browsing):
            browsing.stop()
        if self._pending:
            await DeferredList(list(self._pending), consumeErrors=True)
        zc, self._zc = self._zc, None
        self._registered.clear()
        if zc is not None:
            # close() sends goodbyes for whatever is still advertised and blocks until they are out; the reactor's
            # thread pool still runs during the "before shutdown" phase.
            await deferToThreadPool(self.reactor, self.reactor.getThreadPool(), zc.close)

    # --- the bridge

    def on_loop(self, work: Callable[[Zeroconf], Coroutine[Any, Any, Any]]) -> Deferred[Any]:
        """Run `work(zc)` on zeroconf's loop; its result as a Deferred on the reactor thread."""
        zc = self._zc
        if zc is None or zc.loop is None:
            return fail(RuntimeError("mDNS is not running"))
        future = asyncio.run_coroutine_threadsafe(work(zc), zc.loop)
        result: Deferred[Any] = Deferred(lambda _: future.cancel())
        future.add_done_callback(lambda done: self.reactor.callFromThread(_settle, result, done))
        self._pending.add(result)

        def forget(outcome: Any) -> Any:
            self._pending.discard(result)
            return outcome
        return result.addBoth(forget)

    # --- advertising

    def _info(self, advert: Advert, full_name: str, txt: Mapping[str, str]) -> ServiceInfo:
        return ServiceInfo(f"{advert.service_type}.local.", full_name, port=advert.port, properties=dict(txt),
                           server=f"{advert.host or self.host}.local.", parsed_addresses=list(advert.addresses))

    def advertise(self, advert: Advert) -> Deferred[None]:
        info = self._info(advert, f"{advert.name}.{advert.service_type}.local.", advert.txt)
        # The legacy _nmos-registration._tcp is longer than RFC 6763 allows: python-zeroconf refuses it unless
        # strict=False. Every other type is checked strictly.
        strict = fits_rfc6763(advert.service_type)

        async def register(zc: Zeroconf) -> None:
            announced = await zc.async_register_service(info, allow_name_change=True, strict=strict)
            await announced

        def registered(_: None) -> None:
            self._registered[advert.key] = info
            if info.name != f"{advert.name}.{advert.service_type}.local.":
                log.warn("mDNS: the name {wanted!r} is taken on the network; advertising as {name!r}",
                         wanted=advert.name, name=info.name)
        return self.on_loop(register).addCallback(registered)

    def update_txt(self, advert: Advert, txt: Mapping[str, str]) -> Deferred[None]:
        old = self._registered.get(advert.key)
        if old is None:
            return fail(KeyError(f"{advert.name} ({advert.service_type}) is not advertised"))
        info = self._info(advert, old.name, txt)

        async def update(zc: Zeroconf) -> None:
            announced = await zc.async_update_service(info)
            await announced

        def updated(_: None) -> None:
            self._registered[advert.key] = info
        return self.on_loop(update).addCallback(updated)

    def withdraw(self, advert: Advert) -> Deferred[None]:
        info = self._registered.pop(advert.key, None)
        if info is None:
            return fail(KeyError(f"{advert.name} ({advert.service_type}) is not advertised"))

        async def unregister(zc: Zeroconf) -> None:
            goodbyes = await zc.async_unregister_service(info)
            await goodbyes
        return self.on_loop(unregister)

    # --- browsing

    def browse(self, service_type: str, added: Found, updated: Found, removed: Found) -> _Browsing:
        browsing = _Browsing(self, service_type, added, updated, removed)
        self._browsing.append(browsing)
        browsing.start()
        return browsing


class _Browsing:
    """One mDNS browse: zeroconf's browser on its loop, resolving each instance there; the instances known, and the
    callbacks, on the reactor thread."""

    def __init__(self, owner: MulticastDiscovery, service_type: str, added: Found, updated: Found,
                 removed: Found) -> None:
        self.owner = owner
        self.service_type = service_type
        self.full_type = f"{service_type}.local."
        self.callbacks = (added, updated, removed)
        self.ready: Deferred[None] = Deferred()
        self.known: dict[str, Instance] = {}  # reactor thread only
        self.stopped = False
        self._browser: AsyncServiceBrowser | None = None  # zeroconf thread only, like _resolving
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._settling = owner.reactor.callLater(owner.settle, self.ready.callback, None)

    def start(self) -> None:
        async def start(zc: Zeroconf) -> None:
            self._browser = AsyncServiceBrowser(zc, [self.full_type], handlers=[self._changed])
        self.owner.on_loop(start).addErrback(
            lambda failure: log.failure("mDNS: cannot browse for {type}", failure, type=self.service_type))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self._settling.active():
            self._settling.cancel()
        if self in self.owner._browsing:
            self.owner._browsing.remove(self)

        async def stop(zc: Zeroconf) -> None:
            for task in self._resolving.values():
                task.cancel()
            self._resolving.clear()
            if self._browser is not None:
                await self._browser.async_cancel()
        if self.owner._zc is not None:
            self.owner.on_loop(stop).addErrback(lambda failure: None)

    # zeroconf's thread

    def _changed(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        task = self._resolving.pop(name, None)
        if task is not None:
            task.cancel()  # what it would find is older than this change
        if state_change is ServiceStateChange.Removed:
            self.owner.reactor.callFromThread(self._removed, name)
        else:
            self._resolving[name] = asyncio.ensure_future(self._resolve(zeroconf, service_type, name))

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        try:
            found = await info.async_request(zc, RESOLVE_TIMEOUT_MS)
        finally:
            if self._resolving.get(name) is asyncio.current_task():
                del self._resolving[name]
        if not found or info.port is None:
            self.owner.reactor.callFromThread(
                log.info, "mDNS: {name} did not answer with its SRV, TXT and address records", name=name)
            return
        suffix = f".{service_type}"
        txt = {key.lower(): value or "" for key, value in info.decoded_properties.items()}
        instance = Instance(self.service_type, name[:-len(suffix)] if name.endswith(suffix) else name, "local",
                            (info.server or "").rstrip("."), info.port, tuple(info.parsed_addresses()), txt, "mdns",
                            info.priority, info.weight)
        self.owner.reactor.callFromThread(self._resolved, name, instance)

    # the reactor thread

    def _resolved(self, name: str, instance: Instance) -> None:
        if self.stopped:
            return
        old = self.known.get(name)
        self.known[name] = instance
        if old is None:
            self.callbacks[0](instance)
        elif old != instance:
            self.callbacks[1](instance)

    def _removed(self, name: str) -> None:
        instance = self.known.pop(name, None)
        if instance is not None and not self.stopped:
            self.callbacks[2](instance)
